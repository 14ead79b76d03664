//! Unix domain sockets: echo with permissions and group, peer credentials, stale-socket
//! handling, drain and file removal at shutdown, the same events as TCP.
#![cfg(all(unix, feature = "smol"))]

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_net::unix::UnixStream;
use berth::{Addr, Builder, CloseReason, Config, ConfigError, Conn, ConnEvent, Error, UnixConfig};
use common::{Ev, LIMIT, Recorder, Rt, SmolRt, TokioRt, run, within};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

/// A fresh directory for one test's socket; removed (with anything left in it) on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("berth-unix-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("s.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unix_config(path: &Path) -> Config {
    {
        let mut c_config = Config::default();
        c_config.unix = Some(UnixConfig::new(path));
        c_config
    }
}

/// Echoes until EOF, a failed write, or a drain between messages.
async fn echo(mut conn: Conn) {
    let mut buf = vec![0u8; 4096];
    while conn.readable().await.is_ok() && !conn.is_draining() {
        match conn.read(&mut buf).await {
            Ok(n @ 1..) if conn.write_all(&buf[..n]).await.is_ok() => {}
            _ => return,
        }
    }
}

async fn roundtrip(c: &mut UnixStream, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    within(LIMIT, "echo", c.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg);
}

fn euid_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
fn echo_with_mode_group_and_peer_credentials() {
    let dir = Dir::new("echo");
    let path = dir.sock();
    // Root may give the file any group; anyone else, their own.
    let group = if euid_is_root() {
        4242
    } else {
        std::fs::metadata(&dir.0).unwrap().gid()
    };
    let mut config = unix_config(&path);
    config.unix.as_mut().unwrap().mode = Some(0o600);
    config.unix.as_mut().unwrap().group = Some(group);
    // IP lists and per-IP limits do not apply to Unix peers: this would refuse any IP.
    config.limits.allow = vec!["192.0.2.0/24".parse().unwrap()];
    config.limits.max_per_ip = Some(1);
    run::<SmolRt>(LIMIT, async {
        let (tx, rx) = async_channel::unbounded();
        let rec = Recorder::new();
        let server = rec
            .attach(Builder::new(config).runtime(SmolRt::runtime()))
            .bind()
            .expect("bind_unix");
        assert_eq!(server.local_addr().as_unix_path(), Some(path.as_path()));
        let handle = server.serve(move |conn: Conn| {
            let tx = tx.clone();
            async move {
                let _ = tx
                    .send((
                        conn.peer_addr().clone(),
                        conn.local_addr().clone(),
                        conn.peer_cred(),
                    ))
                    .await;
                echo(conn).await;
            }
        });

        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(meta.gid(), group);

        let mut a = UnixStream::connect(&path).await.unwrap();
        let mut b = UnixStream::connect(&path).await.unwrap();
        roundtrip(&mut a, b"hello over unix").await;
        roundtrip(&mut b, &common::pattern(200_000, 3)).await;

        let (peer, local, cred) = within(LIMIT, "handler report", rx.recv()).await.unwrap();
        assert_eq!(
            peer,
            Addr::Unix(None),
            "clients connect from unnamed sockets"
        );
        assert_eq!(local.as_unix_path(), Some(path.as_path()));
        let cred = cred.expect("peer credentials on Linux");
        let ours = std::fs::metadata("/proc/self").unwrap();
        assert_eq!((cred.uid, cred.gid), (ours.uid(), ours.gid()));
        assert_eq!(cred.pid, Some(std::process::id() as i32));

        assert_eq!(handle.open_connections(), 2);
        drop(a);
        rec.closed().await;
        assert!(rec.log().iter().any(|e| matches!(
            e,
            Ev::Conn(ConnEvent::Accepted { peer_addr: Addr::Unix(None), local_addr, .. })
                if local_addr.as_unix_path() == Some(path.as_path())
        )));
        assert_eq!(handle.stats().rejected, 0);
        drop(b);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

#[test]
fn drain_finishes_the_message_then_removes_the_socket_file() {
    let dir = Dir::new("drain");
    let path = dir.sock();
    run::<SmolRt>(LIMIT, async {
        let rec = Recorder::new();
        let handle = rec
            .attach(Builder::new(unix_config(&path)).runtime(SmolRt::runtime()))
            .bind()
            .unwrap()
            .serve(echo);
        let mut c = UnixStream::connect(&path).await.unwrap();
        roundtrip(&mut c, b"before").await;
        // The handler is idle between messages: the drain ends it and the client reads a
        // clean end of file.
        let client = async move {
            let mut rest = Vec::new();
            let read = c.read_to_end(&mut rest).await;
            (read, rest) // and close: the lingering close ends on our FIN
        };
        let (report, (read, rest)) =
            futures_lite::future::zip(handle.shutdown_within(Duration::from_secs(10)), client)
                .await;
        let report = report.expect("drained in time");
        assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
        assert_eq!((report.drained, report.forced), (1, 0));
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "the socket file goes with the listener"
        );
        assert_eq!(
            UnixStream::connect(&path)
                .await
                .map(drop)
                .map_err(|e| e.kind()),
            Err(std::io::ErrorKind::NotFound)
        );
        // The handler returned between messages, on the drain.
        assert!(rec.log().iter().any(|e| matches!(
            e,
            Ev::Conn(ConnEvent::Closed {
                peer_addr: Addr::Unix(None),
                reason: CloseReason::HandlerDone,
                ..
            })
        )));
    });
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = Dir::new("stale");
    let path = dir.sock();
    // A server that died without cleaning up: the file stays, nobody accepts.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path).is_ok());
    run::<SmolRt>(LIMIT, async {
        let handle = Builder::new(unix_config(&path))
            .runtime(SmolRt::runtime())
            .bind()
            .expect("a stale socket is replaced")
            .serve(echo);
        let mut c = UnixStream::connect(&path).await.unwrap();
        roundtrip(&mut c, b"fresh").await;
        drop(c);
        handle.close().await;
    });
}

#[test]
fn a_live_socket_or_another_file_is_left_alone() {
    let dir = Dir::new("live");
    let path = dir.sock();
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = Builder::new(unix_config(&path))
        .runtime(SmolRt::runtime())
        .bind()
        .unwrap_err();
    match &err {
        Error::Bind { addr, source } => {
            assert_eq!(addr.as_unix_path(), Some(path.as_path()));
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{err}");
        }
        other => panic!("expected a bind error, got {other}"),
    }
    assert!(
        err.to_string().contains("stop the server on that path"),
        "{err}"
    );
    // The running server keeps its socket.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.accept().unwrap();
    drop(live);

    let file = dir.0.join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    let err = Builder::new(unix_config(&file))
        .runtime(SmolRt::runtime())
        .bind()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Bind { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[test]
fn a_unix_listener_without_unix_settings_is_a_config_error() {
    // `bind` picks the listener from the config; building one by hand can still mismatch.
    let runtime = SmolRt::runtime();
    let reactor = berth::runtime::Runtime::reactor(&runtime);
    let err =
        berth::listener::UnixListener::bind(&Config::new("127.0.0.1:0"), reactor).unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::ListenerMismatch(_))),
        "{err}"
    );
}

/// The listener runs on async-io's reactor; tasks may run on any runtime.
#[test]
fn serves_on_the_tokio_runtime_too() {
    let dir = Dir::new("tokio");
    let path = dir.sock();
    run::<TokioRt>(LIMIT, async {
        let handle = Builder::new(unix_config(&path))
            .runtime(TokioRt::runtime())
            .bind()
            .unwrap()
            .serve(echo);
        let mut c = UnixStream::connect(&path).await.unwrap();
        roundtrip(&mut c, b"tokio").await;
        drop(c);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(std::fs::symlink_metadata(&path).is_err());
    });
}

/// Connects to the socket named by `BERTH_UNIX_CLIENT` and checks the outcome against
/// `BERTH_UNIX_EXPECT` (`denied` or `allowed`). Not a test of its own: the test below runs
/// it as another user, by starting this test binary again with those variables set.
#[test]
#[ignore = "helper: run by file_mode_decides_which_users_may_connect as another user"]
fn unix_client_helper() {
    let path = std::env::var_os("BERTH_UNIX_CLIENT").expect("run by another test");
    let expect = std::env::var("BERTH_UNIX_EXPECT").expect("run by another test");
    match (
        std::os::unix::net::UnixStream::connect(path),
        expect.as_str(),
    ) {
        (Ok(_), "allowed") => {}
        (Err(e), "denied") if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        (outcome, expect) => panic!("expected {expect}, got {outcome:?}"),
    }
}

/// With mode 0o600 another user is refused by the kernel; with 0o666 it gets in.
#[test]
fn file_mode_decides_which_users_may_connect() {
    use std::os::unix::process::CommandExt;
    if !euid_is_root() {
        eprintln!(
            "SKIPPED file_mode_decides_which_users_may_connect: needs root to act as another user"
        );
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("mode");
    let path = dir.sock();
    // The other user runs a copy of this test binary from the temporary directory: the
    // checkout may sit in a directory only root can enter (a `mktemp -d`, /root).
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helper = dir.0.join("unix-client-helper");
    std::fs::copy(std::env::current_exe().unwrap(), &helper).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (mode, expect) in [(0o600, "denied"), (0o666, "allowed")] {
        let mut config = unix_config(&path);
        config.unix.as_mut().unwrap().mode = Some(mode);
        let server = Builder::new(config)
            .runtime(SmolRt::runtime())
            .bind()
            .unwrap();
        let handle = server.serve(echo);
        let status = std::process::Command::new(&helper)
            .args(["--exact", "unix_client_helper", "--ignored", "--quiet"])
            .env("BERTH_UNIX_CLIENT", &path)
            .env("BERTH_UNIX_EXPECT", expect)
            .uid(65534) // nobody
            .gid(65534)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mode {mode:o}: the other user was not {expect}"
        );
        async_io::block_on(within(LIMIT, "close", handle.close()));
    }
}

/// An inherited Unix listener is served as is, and its file is not ours to remove.
#[test]
fn an_inherited_unix_listener_is_served_and_its_file_left_alone() {
    let dir = Dir::new("inherited");
    let path = dir.sock();
    let std = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std.set_nonblocking(true).unwrap();
    run::<SmolRt>(LIMIT, async {
        let runtime = SmolRt::runtime();
        let reactor = berth::runtime::Runtime::reactor(&runtime);
        let listener = berth::listener::UnixListener::from_std(std, reactor).unwrap();
        let server = Builder::new(Config::default())
            .runtime(SmolRt::runtime())
            .listener(listener)
            .unwrap();
        assert_eq!(server.local_addr().as_unix_path(), Some(path.as_path()));
        let handle = server.serve(echo);
        let mut c = UnixStream::connect(&path).await.unwrap();
        roundtrip(&mut c, b"inherited").await;
        drop(c);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
    assert!(
        std::fs::symlink_metadata(&path).is_ok(),
        "not created by berth: kept"
    );
}
