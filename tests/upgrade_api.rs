//! The upgrade API's edges, in process: an upgrade whose caller gives up, and a new process
//! that fails after it adopted the sockets. (`tests/upgrade.rs` upgrades the echo example
//! as a black box.)
//!
//! Waiting is on server events and on the upgrade's own result; the one timer is the
//! caller's own impatience, which is the condition under test.
#![cfg(all(target_os = "linux", feature = "smol"))]

mod common;

use std::time::Duration;

use berth::ServerEvent;
use futures_lite::FutureExt as _;

const WAIT: Duration = Duration::from_secs(20);

fn server_events(builder: berth::Builder) -> (berth::Builder, async_channel::Receiver<String>) {
    let (tx, rx) = async_channel::unbounded();
    let builder = builder.on_server_event(move |e| {
        if let ServerEvent::UpgradeFailed { reason } = e {
            let _ = tx.try_send(reason.clone());
        }
    });
    (builder, rx)
}

/// An upgrade future dropped by its caller (a timeout around it, a `select`) still finishes
/// on its own: it fails in time, is reported, and a later upgrade may be tried.
#[test]
fn an_abandoned_upgrade_finishes_and_a_later_one_may_run() {
    common::run::<common::SmolRt>(common::LIMIT, async {
        let mut config = berth::Config::new("127.0.0.1:0");
        config.upgrade_timeout = Duration::from_millis(500);
        let (builder, failures) =
            server_events(berth::Builder::new(config).runtime(berth::runtime::Smol::global()));
        let handle = builder
            .bind()
            .unwrap()
            .serve(|conn: berth::Conn| async move { drop(conn) });
        // A "new program" that never becomes ready: the hand-over waits upgrade_timeout.
        let mut never_ready = std::process::Command::new("sleep");
        never_ready.arg("30");
        let gave_up = async { Some(handle.upgrade_with(never_ready).await) }
            .or(async {
                async_io::Timer::after(Duration::from_millis(100)).await;
                None
            })
            .await;
        assert!(gave_up.is_none(), "the caller gave up first");
        // The abandoned attempt times out on its own and says so.
        let reason = common::within(WAIT, "UpgradeFailed", failures.recv())
            .await
            .unwrap();
        assert!(reason.contains("ready"), "{reason}");
        assert!(handle.is_running());
        // It no longer counts as under way.
        let again = handle
            .upgrade_with(std::process::Command::new("false"))
            .await
            .unwrap_err()
            .to_string();
        assert!(!again.contains("under way"), "{again}");
        assert!(again.contains("exited"), "{again}");
        assert!(handle.is_running());
        handle.close().await;
    });
}

const CHILD_SOCKET: &str = "BERTH_UPGRADE_API_SOCKET";
const CHILD_BUSY: &str = "BERTH_UPGRADE_API_BUSY";

/// The "new process" of the test below (this binary again): the old process's config (so
/// its Unix listener is adopted) plus a listener whose port is taken, so `bind` fails after
/// the adoption.
#[test]
fn child_that_fails_after_adopting() {
    let Some(path) = std::env::var_os(CHILD_SOCKET) else {
        return; // not started as the upgrade's new process
    };
    let mut config = berth::Config::new("127.0.0.1:0");
    config.unix = Some(berth::UnixConfig::new(std::path::PathBuf::from(path)));
    config.listeners.push(berth::ListenerConfig::tcp(
        std::env::var(CHILD_BUSY).unwrap(),
    ));
    let result = berth::Builder::new(config)
        .runtime(berth::runtime::Smol::global())
        .bind();
    assert!(result.is_err(), "the busy port cannot be bound");
    std::process::exit(3);
}

/// A new process that adopts a Unix listener and then fails leaves the socket file in
/// place: the old process serves on.
#[test]
fn a_failed_upgrade_leaves_the_unix_socket_file_serving() {
    if std::env::var_os(CHILD_SOCKET).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("berth-upgrade-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();

    common::run::<common::SmolRt>(common::LIMIT, async {
        let mut config = berth::Config::new("127.0.0.1:0");
        config.unix = Some(berth::UnixConfig::new(path.clone()));
        config.upgrade_timeout = WAIT;
        let handle = berth::Builder::new(config)
            .runtime(berth::runtime::Smol::global())
            .bind()
            .unwrap()
            .serve(|conn: berth::Conn| async move { drop(conn) });

        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "child_that_fails_after_adopting", "--nocapture"])
            .env(CHILD_SOCKET, &path)
            .env(CHILD_BUSY, busy.local_addr().unwrap().to_string());
        let failed = handle.upgrade_with(child).await.unwrap_err().to_string();
        assert!(failed.contains("exited"), "{failed}");
        assert!(
            handle.is_running(),
            "a failed upgrade leaves the old process serving"
        );
        let reached = std::os::unix::net::UnixStream::connect(&path);
        handle.close().await;
        assert!(reached.is_ok(), "the socket file is gone: {reached:?}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}
