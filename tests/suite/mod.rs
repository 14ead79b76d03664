//! The integration suite, generic over the runtime adapter. `instantiate!` turns every test
//! here into a `#[test]` for one adapter (see `tests/smol.rs`, `tests/async_std.rs`).
#![allow(dead_code)]

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::{
    Builder, CloseReason, Config, ConfigError, Conn, ConnEvent, Error, ServerEvent, State,
};
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};

use crate::common::*;

#[macro_export]
macro_rules! instantiate {
    ($rt:ty: $($name:ident),* $(,)?) => {
        $( #[test] fn $name() { suite::$name::<$rt>() } )*
    };
}

#[macro_export]
macro_rules! all_tests {
    ($rt:ty) => {
        $crate::instantiate!($rt:
            echo_is_byte_exact_with_split_halves,
            open_connections_counts_up_and_down,
            churn_returns_to_zero_and_reuses_slots,
            resets_mid_stream_are_counted_and_closed,
            handler_panic_is_contained,
            idle_timeout_subsecond_reaps_and_fails_pending_io,
            idle_timeout_spares_active_connections,
            shutdown_returns_when_handlers_finish,
            shutdown_deadline_force_closes_and_reports,
            new_connects_refused_while_draining,
            shutdown_is_idempotent_and_concurrent,
            shutdown_before_serve_is_a_noop,
            shutdown_right_after_serve_is_not_lost,
            close_closes_every_socket_at_once,
            draining_handler_loses_no_acknowledged_request,
            bind_conflict_is_an_error_and_reported,
            invalid_config_is_a_typed_error,
            max_connections_applies_backpressure,
            connection_event_sequence,
            state_transitions,
            tune_hook_runs_after_defaults_and_errors_close,
            hooks_are_replaceable_and_panics_contained,
            stale_conn_handle_cannot_touch_reused_slot,
            conn_context_addresses_extensions_and_eof,
            conn_handle_close_aborts_pending_io,
            lingering_close_delivers_everything_and_is_bounded,
            struct_handler_serves_with_its_own_state,
            readable_waits_without_consuming_and_fails_when_closed,
            readable_returns_when_draining_begins,
        );
    };
}

/// Echo through split halves, copied concurrently.
async fn echo_split(conn: Conn) {
    let (reader, mut writer) = conn.split();
    let _ = futures_lite::io::copy(reader, &mut writer).await;
}

/// Echo that stops between chunks once the server drains (like the example).
async fn echo_draining(mut conn: Conn) {
    let mut draining = conn.draining();
    let mut buf = vec![0u8; 4096];
    loop {
        let read = async { Some(conn.read(&mut buf).await) };
        let drained = async {
            (&mut draining).await;
            None
        };
        let n = match read.or(drained).await {
            Some(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if conn.write_all(&buf[..n]).await.is_err() || conn.is_draining() {
            return;
        }
    }
}

/// Reads until EOF or error, ignoring draining: only a forced close ends it early.
async fn hold(mut conn: Conn) {
    let mut buf = [0u8; 64];
    while let Ok(1..) = conn.read(&mut buf).await {}
}

/// Never returns and does no I/O: only cancellation ends it.
async fn stuck(conn: Conn) {
    std::future::pending::<()>().await;
    drop(conn);
}

/// Reads from the client until EOF or error; true if the stream ended (EOF or reset).
async fn ends(stream: &mut async_net::TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

async fn roundtrip(stream: &mut async_net::TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    within(LIMIT, "echo", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, msg);
}

pub fn echo_is_byte_exact_with_split_halves<R: Rt>() {
    run::<R>(Duration::from_secs(60), async {
        let (handle, _rec) = start::<R>(config(), echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for (i, len) in [1usize, 2, 1000, 65_543, (1 << 20) + 3, 8 << 20]
            .into_iter()
            .enumerate()
        {
            let data = pattern(len, i as u64);
            let stream = connect(addr).await;
            let (mut r, mut w) = (stream.clone(), stream);
            let send = async {
                w.write_all(&data).await.unwrap();
                w.close().await.unwrap(); // FIN: the server's copy then ends
            };
            let recv = async {
                let mut back = Vec::with_capacity(len);
                r.read_to_end(&mut back).await.unwrap();
                back
            };
            let ((), back) = futures_lite::future::zip(send, recv).await;
            assert_eq!(back.len(), len, "length for {len} bytes");
            assert!(back == data, "content for {len} bytes");
        }
        handle.close().await;
    });
}

pub fn open_connections_counts_up_and_down<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), hold);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        assert_eq!(handle.open_connections(), 0);
        let mut clients = Vec::new();
        for n in 1..=3 {
            clients.push(connect(addr).await);
            rec.accepted().await;
            assert_eq!(handle.open_connections(), n);
        }
        for n in (0..3).rev() {
            drop(clients.pop());
            rec.closed().await;
            assert_eq!(handle.open_connections(), n);
        }
        let stats = handle.stats();
        assert_eq!(stats.accepted, 3);
        assert_eq!(stats.closed_by(CloseReason::PeerClosed), 3);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn churn_returns_to_zero_and_reuses_slots<R: Rt>() {
    run::<R>(Duration::from_secs(60), async {
        let (handle, rec) = start::<R>(config(), echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for i in 0..500u32 {
            let mut c = connect(addr).await;
            roundtrip(&mut c, &i.to_le_bytes()).await;
            drop(c);
            rec.closed().await;
        }
        // Concurrent churn too: 10 waves of 20.
        for _ in 0..10 {
            let mut wave = Vec::new();
            for _ in 0..20 {
                wave.push(connect(addr).await);
            }
            for c in &mut wave {
                roundtrip(c, b"x").await;
            }
            drop(wave);
            for _ in 0..20 {
                rec.closed().await;
            }
        }
        assert_eq!(handle.open_connections(), 0);
        let stats = handle.stats();
        assert_eq!(stats.accepted, 700);
        assert_eq!(stats.closed(), 700);
        // Sequential connections reuse one slot; a wave of 20 needs about 20.
        assert!(
            stats.slots_allocated <= 25,
            "slots are reused at steady state: {} allocated for 700 connections",
            stats.slots_allocated
        );
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn resets_mid_stream_are_counted_and_closed<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for _ in 0..20 {
            let mut c = connect(addr).await;
            roundtrip(&mut c, b"hello").await;
            // Unread data plus SO_LINGER 0: the close is an RST with bytes in flight.
            c.write_all(&pattern(100_000, 7)).await.unwrap();
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(c);
            let (_, reason) = rec.closed().await;
            assert!(
                matches!(reason, CloseReason::Error | CloseReason::PeerClosed),
                "{reason:?}"
            );
        }
        assert_eq!(handle.open_connections(), 0);
        // The server still serves.
        let mut c = connect(addr).await;
        roundtrip(&mut c, b"still here").await;
        drop(c);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn handler_panic_is_contained<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), |mut conn: Conn| async move {
            let mut first = [0u8; 1];
            if conn.read_exact(&mut first).await.is_ok() && first[0] == b'!' {
                panic!("boom from the handler");
            }
            let _ = conn.write_all(&first).await;
            echo_split(conn).await;
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut good = connect(addr).await;
        roundtrip(&mut good, b"a").await;
        let mut bad = connect(addr).await;
        bad.write_all(b"!").await.unwrap();
        let error = rec.error().await;
        assert!(error.contains("boom from the handler"), "{error}");
        assert!(
            ends(&mut bad).await,
            "the panicking handler's connection is closed"
        );
        // The connection is closed (in unwinding) before the error hook hears of the panic.
        let closed: Vec<_> = rec
            .log()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Conn(ConnEvent::Closed { id, reason, .. }) => Some((id, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(closed, vec![(2, CloseReason::Panicked)]);
        assert_eq!(handle.open_connections(), 1);
        roundtrip(&mut good, b"other connections are unaffected").await;
        drop(good);
        rec.closed().await;
        assert_eq!(handle.open_connections(), 0);
        assert_eq!(handle.stats().closed_by(CloseReason::Panicked), 1);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn idle_timeout_subsecond_reaps_and_fails_pending_io<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_millis(200);
        let (tx, rx) = async_channel::unbounded();
        let cfg = {
            let mut c_config = config();
            c_config.idle_timeout = Some(timeout);
            c_config
        };
        let (handle, rec) = start::<R>(cfg, move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let mut buf = [0u8; 16];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(n @ 1..) => {
                            let _ = conn.write_all(&buf[..n]).await;
                        }
                        Ok(_) => return,
                        Err(e) => {
                            let _ = tx.send((e.kind(), conn.is_connected())).await;
                            return;
                        }
                    }
                }
            }
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        roundtrip(&mut c, b"ping").await;
        let last_activity = Instant::now();
        assert!(ends(&mut c).await);
        let idle = last_activity.elapsed();
        let (kind, connected) = within(LIMIT, "handler error", rx.recv()).await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(!connected);
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::IdleTimeout);
        assert_eq!(handle.open_connections(), 0);
        // Never early (the small allowance is the OS timer's jitter); late by at most a
        // tick plus scheduling.
        assert!(
            idle >= timeout - Duration::from_millis(5),
            "reaped after {idle:?}"
        );
        assert!(idle < timeout * 4, "reaped after {idle:?}");
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn idle_timeout_spares_active_connections<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_secs(2);
        let cfg = {
            let mut c_config = config();
            c_config.idle_timeout = Some(timeout);
            c_config
        };
        let (handle, rec) = start::<R>(cfg, echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut idle = connect(addr).await;
        let idle_since = Instant::now();
        let idle_id = rec.accepted().await;
        let mut active = connect(addr).await;
        rec.accepted().await;
        // Keep one connection busy for twice the timeout: it must survive.
        let busy_until = Instant::now() + timeout * 2;
        let mut round = 0u32;
        while Instant::now() < busy_until {
            roundtrip(&mut active, &round.to_le_bytes()).await;
            round += 1;
            async_io::Timer::after(Duration::from_millis(100)).await;
        }
        // The idle one was reaped meanwhile, the active one was not.
        let (id, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::IdleTimeout);
        assert_eq!(id, idle_id);
        assert!(ends(&mut idle).await);
        assert!(idle_since.elapsed() >= timeout);
        assert_eq!(handle.open_connections(), 1);
        roundtrip(&mut active, b"still alive").await;
        handle.close().await;
    });
}

pub fn shutdown_returns_when_handlers_finish<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), echo_draining);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut c = connect(addr).await;
            roundtrip(&mut c, b"hi").await;
            clients.push(c);
        }
        // A deadline far beyond the test's limit: passing means shutdown returned early.
        // The clients behave like real ones: they close when they see the server's FIN.
        let clients_close = async {
            for c in &mut clients {
                assert!(ends(c).await);
            }
            clients.clear();
        };
        let (report, ()) = futures_lite::future::zip(
            handle.shutdown_within(Duration::from_secs(3600)),
            clients_close,
        )
        .await;
        let report = report.unwrap();
        assert_eq!(report.forced, 0);
        assert_eq!(report.drained, 5);
        assert_eq!(handle.open_connections(), 0);
        assert_eq!(handle.state(), State::Stopped);
        assert!(rec.log().contains(&Ev::Server(ServerEvent::Stopped {
            drained: 5,
            forced: 0
        })));
    });
}

pub fn shutdown_deadline_force_closes_and_reports<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), stuck);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        rec.accepted().await;
        rec.accepted().await;
        let err = handle
            .shutdown_within(Duration::from_millis(200))
            .await
            .unwrap_err();
        match &err {
            Error::ShutdownTimeout {
                forced, drained, ..
            } => {
                assert_eq!((*forced, *drained), (2, 0));
            }
            other => panic!("expected ShutdownTimeout, got {other:?}"),
        }
        assert!(
            err.to_string().starts_with("timeout on stopping socket"),
            "{err}"
        );
        assert_eq!(handle.open_connections(), 0);
        assert!(ends(&mut a).await && ends(&mut b).await);
        assert_eq!(handle.stats().closed_by(CloseReason::ShutdownForced), 2);
        // Repeating returns the same result.
        assert!(matches!(
            handle.shutdown_within(Duration::from_secs(1)).await,
            Err(Error::ShutdownTimeout { forced: 2, .. })
        ));
    });
}

pub fn new_connects_refused_while_draining<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), hold);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let _held = connect(addr).await;
        rec.accepted().await;
        let h = handle.clone();
        let shutdown = async move { h.shutdown_within(Duration::from_secs(3600)).await };
        let check = async {
            rec.next("Draining", |e| {
                matches!(e, Ev::Server(ServerEvent::Draining { .. }))
            })
            .await;
            assert!(handle.is_draining());
            let refused = async_net::TcpStream::connect(addr).await;
            assert!(refused.is_err(), "a connect while draining must be refused");
            handle.close().await;
        };
        let (result, ()) = futures_lite::future::zip(shutdown, check).await;
        assert!(matches!(
            result,
            Err(Error::ShutdownTimeout { forced: 1, .. })
        ));
        assert_eq!(handle.state(), State::Stopped);
    });
}

pub fn shutdown_is_idempotent_and_concurrent<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), echo_draining);
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        roundtrip(&mut c, b"x").await;
        let (h1, h2, h3) = (handle.clone(), handle.clone(), handle.clone());
        let (r1, (r2, r3)) = futures_lite::future::zip(
            async move { h1.shutdown_within(Duration::from_secs(3600)).await },
            futures_lite::future::zip(
                async move { h2.shutdown_within(Duration::from_secs(3600)).await },
                async move { h3.close().await },
            ),
        )
        .await;
        // Whichever won, all agree and the server is stopped with nothing open.
        assert_eq!(r3.drained + r3.forced, 1);
        for r in [r1, r2] {
            match r {
                Ok(report) => assert_eq!(report, r3),
                Err(Error::ShutdownTimeout { forced, .. }) => assert_eq!(forced, r3.forced),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(handle.state(), State::Stopped);
        assert_eq!(handle.open_connections(), 0);
        // Again, after stop.
        let again = handle.shutdown_within(Duration::from_secs(1)).await;
        assert!(again.is_ok() || matches!(again, Err(Error::ShutdownTimeout { .. })));
        assert_eq!(handle.close().await, r3);
        let stopped = rec
            .log()
            .iter()
            .filter(|e| matches!(e, Ev::Server(ServerEvent::Stopped { .. })))
            .count();
        assert_eq!(stopped, 1, "one Stopped event");
    });
}

pub fn shutdown_before_serve_is_a_noop<R: Rt>() {
    run::<R>(LIMIT, async {
        let server = Builder::new(config()).runtime(R::runtime()).bind().unwrap();
        let handle = server.handle();
        assert_eq!(handle.state(), State::Created);
        assert!(!handle.is_running() && !handle.is_draining());
        assert_eq!(handle.open_connections(), 0);
        assert_eq!(
            handle
                .shutdown_within(Duration::from_secs(1))
                .await
                .unwrap(),
            Default::default()
        );
        assert_eq!(handle.close().await, Default::default());
        assert_eq!(handle.state(), State::Created);
        // Serving afterwards still works.
        let handle = server.serve(echo_split);
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        roundtrip(&mut c, b"served").await;
        drop(c);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn shutdown_right_after_serve_is_not_lost<R: Rt>() {
    run::<R>(LIMIT, async {
        for _ in 0..20 {
            let server = Builder::new(config()).runtime(R::runtime()).bind().unwrap();
            let addr = server.local_addr().as_socket_addr().unwrap();
            let handle = server.serve(echo_split);
            handle
                .shutdown_within(Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(handle.state(), State::Stopped);
            assert!(async_net::TcpStream::connect(addr).await.is_err());
        }
    });
}

pub fn close_closes_every_socket_at_once<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), hold);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(connect(addr).await);
            rec.accepted().await;
        }
        let report = handle.close().await;
        assert_eq!(report.forced, 10);
        assert_eq!(report.still_open, 0);
        assert_eq!(handle.open_connections(), 0);
        assert_eq!(handle.state(), State::Stopped);
        for c in &mut clients {
            assert!(ends(c).await);
        }
        assert_eq!(handle.stats().closed_by(CloseReason::ShutdownForced), 10);
    });
}

pub fn draining_handler_loses_no_acknowledged_request<R: Rt>() {
    run::<R>(LIMIT, async {
        let processed = Arc::new(AtomicUsize::new(0));
        let p = processed.clone();
        let (handle, _rec) = start::<R>(config(), move |conn: Conn| {
            let p = p.clone();
            async move {
                let mut draining = conn.draining();
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                loop {
                    // Wait for the next request or for draining, whichever comes first.
                    let read = async { Some(reader.read_line(&mut line).await) };
                    let drained = async {
                        (&mut draining).await;
                        None
                    };
                    let Some(Ok(1..)) = read.or(drained).await else {
                        return;
                    };
                    // Acknowledge the request in hand, then stop if draining.
                    let ack = format!("ack {}\n", line.trim_end());
                    if reader.get_mut().write_all(ack.as_bytes()).await.is_err() {
                        return;
                    }
                    p.fetch_add(1, Ordering::SeqCst);
                    if reader.get_ref().is_draining() {
                        return;
                    }
                    line.clear();
                }
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut c = connect(addr).await;
        // Pipeline many requests, start shutdown after the first ack, and count acks.
        let mut requests = String::new();
        for i in 0..2000 {
            requests.push_str(&format!("{i}\n"));
        }
        c.write_all(requests.as_bytes()).await.unwrap();
        let mut acks = BufReader::new(c.clone()).lines();
        let first = acks.next().await.unwrap().unwrap();
        assert_eq!(first, "ack 0");
        let h = handle.clone();
        let shutdown = async move { h.shutdown_within(Duration::from_secs(3600)).await };
        let count = async move {
            let mut n = 1;
            while let Some(Ok(line)) = acks.next().await {
                assert_eq!(line, format!("ack {n}"));
                n += 1;
            }
            drop((acks, c)); // close on EOF, as a real client does
            n
        };
        let (report, acked) = futures_lite::future::zip(shutdown, count).await;
        assert_eq!(report.unwrap().forced, 0);
        // Every request the server acknowledged reached the client.
        assert_eq!(acked, processed.load(Ordering::SeqCst));
    });
}

pub fn bind_conflict_is_an_error_and_reported<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, _rec) = start::<R>(config(), hold);
        let taken = handle.local_addr().as_socket_addr().unwrap();
        let rec = Recorder::new();
        let result = rec
            .attach(Builder::new(Config::new(taken.to_string())).runtime(R::runtime()))
            .bind();
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::Bind { addr, .. } if *addr == taken),
            "{err}"
        );
        assert!(err.to_string().contains(&taken.to_string()));
        let reported = rec.error().await;
        assert_eq!(reported, err.to_string());
        handle.close().await;
    });
}

pub fn invalid_config_is_a_typed_error<R: Rt>() {
    run::<R>(LIMIT, async {
        let bind = |c: Config| Builder::new(c).runtime(R::runtime()).bind().unwrap_err();
        type Expect = fn(&ConfigError) -> bool;
        let cases: Vec<(Config, Expect)> = vec![
            (Config::new(""), |e| matches!(e, ConfigError::EmptyAddress)),
            (Config::new("abc"), |e| {
                matches!(e, ConfigError::MissingPort(_))
            }),
            (Config::new("localhost"), |e| {
                matches!(e, ConfigError::MissingPort(_))
            }),
            (Config::new("127.0.0.1:70000"), |e| {
                matches!(e, ConfigError::InvalidPort { .. })
            }),
            (Config::new("127.0.0.1:-5"), |e| {
                matches!(e, ConfigError::InvalidPort { .. })
            }),
            (
                {
                    let mut c_config = config();
                    c_config.max_connections = Some(0);
                    c_config
                },
                |e| matches!(e, ConfigError::ZeroMaxConnections),
            ),
            (
                {
                    let mut c_config = config();
                    c_config.idle_timeout = Some(Duration::ZERO);
                    c_config
                },
                |e| matches!(e, ConfigError::ZeroIdleTimeout),
            ),
            (
                {
                    let mut c_config = config();
                    c_config.backlog = 0;
                    c_config
                },
                |e| matches!(e, ConfigError::InvalidBacklog(0)),
            ),
        ];
        for (cfg, expected) in cases {
            let address = cfg.address.clone();
            match bind(cfg) {
                Error::Config(e) => {
                    assert!(expected(&e), "{address:?}: unexpected {e:?}");
                    assert!(!e.to_string().is_empty());
                }
                other => panic!("{address:?}: expected a config error, got {other:?}"),
            }
        }
    });
}

pub fn max_connections_applies_backpressure<R: Rt>() {
    run::<R>(LIMIT, async {
        let cfg = {
            let mut c_config = config();
            c_config.max_connections = Some(2);
            c_config
        };
        let (handle, rec) = start::<R>(cfg, echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut a = connect(addr).await;
        let mut b = connect(addr).await;
        roundtrip(&mut a, b"a").await;
        roundtrip(&mut b, b"b").await;
        // The third connects (the kernel completes the handshake into the backlog) but is
        // not accepted: its echo does not come while two are open.
        let mut c = connect(addr).await;
        c.write_all(b"c").await.unwrap();
        let mut buf = [0u8; 1];
        let early = completes_within(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(early.is_none(), "the third client was served at the limit");
        assert_eq!(handle.stats().accepted, 2);
        assert_eq!(handle.open_connections(), 2);
        // One leaves; the third is served.
        drop(a);
        within(LIMIT, "the third client's echo", c.read_exact(&mut buf))
            .await
            .unwrap();
        assert_eq!(&buf, b"c");
        assert_eq!(handle.stats().accepted, 3);
        assert!(handle.open_connections() <= 2);
        drop((b, c));
        let _ = rec;
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn connection_event_sequence<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut c = connect(addr).await;
        let local = c.local_addr().unwrap();
        roundtrip(&mut c, b"x").await;
        drop(c);
        rec.closed().await;
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        let log = rec.log();
        assert_eq!(log.len(), 5, "{log:#?}");
        assert_eq!(
            log[0],
            Ev::Server(ServerEvent::Listening {
                addr: addr.into(),
                tls: false
            })
        );
        assert!(matches!(
            &log[1],
            Ev::Conn(ConnEvent::Accepted { id: 1, peer_addr, local_addr })
                if *peer_addr == local && *local_addr == addr
        ));
        assert!(matches!(
            &log[2],
            Ev::Conn(ConnEvent::Closed { id: 1, peer_addr, reason: CloseReason::PeerClosed, .. })
                if *peer_addr == local
        ));
        assert_eq!(
            log[3],
            Ev::Server(ServerEvent::Draining {
                open_connections: 0
            })
        );
        assert_eq!(
            log[4],
            Ev::Server(ServerEvent::Stopped {
                drained: 0,
                forced: 0
            })
        );
    });
}

pub fn state_transitions<R: Rt>() {
    run::<R>(LIMIT, async {
        let rec = Recorder::new();
        let server = rec
            .attach(Builder::new(config()).runtime(R::runtime()))
            .bind()
            .unwrap();
        let handle = server.handle();
        assert_eq!(handle.state(), State::Created);
        let handle = server.serve(hold);
        assert_eq!(handle.state(), State::Running);
        assert!(handle.is_running());
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        rec.accepted().await;
        let h = handle.clone();
        let shutdown = async move { h.shutdown_within(Duration::from_secs(3600)).await };
        let observe = async {
            rec.next("Draining", |e| {
                matches!(e, Ev::Server(ServerEvent::Draining { .. }))
            })
            .await;
            assert_eq!(handle.state(), State::Draining);
            assert!(handle.is_draining() && !handle.is_running());
            c.close().await.unwrap(); // the held connection ends: shutdown completes
        };
        let (result, ()) = futures_lite::future::zip(shutdown, observe).await;
        assert_eq!(result.unwrap().drained, 1);
        assert_eq!(handle.state(), State::Stopped);
        assert!(!handle.is_running() && !handle.is_draining());
        within(LIMIT, "stopped()", handle.stopped()).await;
    });
}

pub fn tune_hook_runs_after_defaults_and_errors_close<R: Rt>() {
    run::<R>(LIMIT, async {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let rec = Recorder::new();
        let server = rec
            .attach(Builder::new(config()).runtime(R::runtime()))
            .tune(move |socket| {
                // berth's default (TCP_NODELAY on) is already applied; the hook wins.
                let socket = socket2::SockRef::from(socket);
                let nodelay_before = socket.tcp_nodelay()?;
                socket.set_tcp_nodelay(false)?;
                s.lock()
                    .unwrap()
                    .push((nodelay_before, socket.tcp_nodelay()?));
                let peer = socket.peer_addr()?.as_socket().expect("a TCP peer");
                if peer.port() % 2 == 0 {
                    Err(io::Error::other("even ports are rejected by this test"))
                } else {
                    Ok(())
                }
            })
            .bind()
            .unwrap();
        let handle = server.serve(echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut served = 0;
        let mut rejected = 0;
        for _ in 0..6 {
            let mut c = connect(addr).await;
            if c.local_addr().unwrap().port() % 2 == 0 {
                assert!(ends(&mut c).await);
                let error = rec.error().await;
                assert!(error.contains("even ports are rejected"), "{error}");
                rejected += 1;
            } else {
                roundtrip(&mut c, b"tuned").await;
                served += 1;
            }
        }
        assert_eq!(served + rejected, 6);
        assert_eq!(seen.lock().unwrap().len(), 6);
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|&(before, after)| before && !after)
        );
        handle.close().await;
        assert_eq!(handle.open_connections(), 0);
    });
}

pub fn hooks_are_replaceable_and_panics_contained<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut c = connect(addr).await;
        rec.accepted().await;
        // Replace the connection hook while serving with one that panics.
        handle.on_conn_event(|e| {
            if matches!(e, ConnEvent::Accepted { .. }) {
                panic!("hook panic");
            }
        });
        let mut d = connect(addr).await;
        let error = rec.error().await;
        assert!(error.contains("hook panic"), "{error}");
        roundtrip(&mut d, b"served despite the hook").await;
        roundtrip(&mut c, b"and the first one too").await;
        // Replace again: events flow to the new hook.
        let (tx, rx) = async_channel::unbounded();
        handle.on_conn_event(move |e| {
            let _ = tx.try_send(e.clone());
        });
        drop(d);
        let ev = within(LIMIT, "event on the new hook", rx.recv())
            .await
            .unwrap();
        assert!(matches!(ev, ConnEvent::Closed { .. }));
        drop(c);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn stale_conn_handle_cannot_touch_reused_slot<R: Rt>() {
    run::<R>(LIMIT, async {
        let (tx, rx) = async_channel::unbounded();
        let (handle, rec) = start::<R>(config(), move |conn: Conn| {
            let tx = tx.clone();
            async move {
                // Leak a handle out of the handler; it outlives the connection.
                let _ = tx.send(conn.handle()).await;
                echo_split(conn).await;
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut first = connect(addr).await;
        roundtrip(&mut first, b"1").await;
        let stale = rx.recv().await.unwrap();
        assert!(stale.is_connected());
        drop(first);
        rec.closed().await;
        assert!(!stale.is_connected());

        let mut second = connect(addr).await;
        roundtrip(&mut second, b"2").await;
        let fresh = rx.recv().await.unwrap();
        assert_eq!(
            handle.stats().slots_allocated,
            1,
            "the second connection reuses the first one's slot"
        );
        assert_ne!(stale.id(), fresh.id());
        assert!(!stale.close(), "a stale handle closes nothing");
        assert!(fresh.is_connected());
        roundtrip(&mut second, b"unaffected").await;
        assert!(fresh.close());
        assert!(ends(&mut second).await);
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::Aborted);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn conn_context_addresses_extensions_and_eof<R: Rt>() {
    run::<R>(LIMIT, async {
        #[derive(Debug, PartialEq)]
        struct Session(u32);
        let (tx, rx) = async_channel::unbounded();
        let (handle, rec) = start::<R>(config(), move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                conn.extensions_mut().insert(Session(7));
                let mut buf = Vec::new();
                let read = conn.read_to_end(&mut buf).await; // the client half-closes
                let eof_again = conn.read(&mut [0u8; 8]).await;
                let session = conn.extensions_mut().remove::<Session>();
                let _ = tx
                    .send((
                        conn.id(),
                        conn.peer_addr().clone(),
                        conn.local_addr().clone(),
                        read.map(|_| buf),
                        eof_again.ok(),
                        session,
                        conn.is_connected(),
                        conn.is_draining(),
                    ))
                    .await;
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut c = connect(addr).await;
        c.write_all(b"payload").await.unwrap();
        c.close().await.unwrap();
        let (id, peer, local, read, eof_again, session, connected, draining) =
            within(LIMIT, "handler report", rx.recv()).await.unwrap();
        assert_eq!(id, 1);
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(local, addr);
        assert_eq!(read.unwrap(), b"payload");
        assert_eq!(eof_again, Some(0), "EOF is Ok(0), repeatedly");
        assert_eq!(session, Some(Session(7)));
        assert!(connected && !draining);
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::PeerClosed);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn conn_handle_close_aborts_pending_io<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handles_tx, handles_rx) = async_channel::unbounded();
        let (errors_tx, errors_rx) = async_channel::unbounded();
        let (handle, rec) = start::<R>(config(), move |mut conn: Conn| {
            let (handles_tx, errors_tx) = (handles_tx.clone(), errors_tx.clone());
            async move {
                let _ = handles_tx.send(conn.handle()).await;
                let r = conn.read(&mut [0u8; 8]).await;
                let _ = errors_tx.send(r.map_err(|e| e.kind())).await;
            }
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        let h = handles_rx.recv().await.unwrap();
        assert!(h.close());
        assert!(!h.close(), "closing twice reports false");
        let r = within(LIMIT, "the read's error", errors_rx.recv())
            .await
            .unwrap();
        assert_eq!(r, Err(io::ErrorKind::ConnectionAborted));
        assert!(ends(&mut c).await);
        assert_eq!(rec.closed().await.1, CloseReason::Aborted);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn lingering_close_delivers_everything_and_is_bounded<R: Rt>() {
    run::<R>(LIMIT, async {
        let linger = Duration::from_millis(300);
        let cfg = {
            let mut c_config = config();
            c_config.linger_timeout = linger;
            c_config
        };
        // Reads one byte, answers with 1 MiB, and returns while the client keeps sending.
        let (handle, rec) = start::<R>(cfg, |mut conn: Conn| async move {
            let mut one = [0u8; 1];
            if conn.read_exact(&mut one).await.is_ok() {
                let _ = conn.write_all(&pattern(1 << 20, 3)).await;
            }
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        c.write_all(b"?").await.unwrap();
        // More data the handler never reads: without lingering this makes the close a reset.
        c.write_all(&pattern(200_000, 9)).await.unwrap();
        let mut got = Vec::new();
        let read = c.read_to_end(&mut got).await;
        assert!(
            read.is_ok(),
            "the response ends with FIN, not a reset: {read:?}"
        );
        assert!(got == pattern(1 << 20, 3), "all {} bytes arrive", 1 << 20);
        // The client keeps its socket open: the linger timeout bounds the wait.
        let started = Instant::now();
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::HandlerDone);
        assert!(started.elapsed() < linger * 10, "{:?}", started.elapsed());
        assert_eq!(handle.open_connections(), 0);
        drop(c);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

/// A handler as a struct: configuration in fields, `call` borrowing `&self`.
struct Prefixer {
    prefix: Vec<u8>,
    served: AtomicUsize,
}

impl berth::Handler for Prefixer {
    async fn call(&self, mut conn: Conn) {
        self.served.fetch_add(1, Ordering::SeqCst);
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = conn.read(&mut buf).await {
            let mut out = self.prefix.clone();
            out.extend_from_slice(&buf[..n]);
            if conn.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

pub fn struct_handler_serves_with_its_own_state<R: Rt>() {
    run::<R>(LIMIT, async {
        let handler = Prefixer {
            prefix: b"> ".to_vec(),
            served: AtomicUsize::new(0),
        };
        let (handle, rec) = start::<R>(config(), handler);
        for _ in 0..3 {
            let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
            c.write_all(b"hi").await.unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"> hi");
            drop(c);
            rec.closed().await;
        }
        assert_eq!(handle.stats().accepted, 3);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn readable_waits_without_consuming_and_fails_when_closed<R: Rt>() {
    run::<R>(LIMIT, async {
        let (tx, rx) = async_channel::unbounded();
        let cfg = {
            let mut c_config = config();
            c_config.idle_timeout = Some(Duration::from_millis(300));
            c_config
        };
        let (handle, _rec) = start::<R>(cfg, move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                loop {
                    let ready = conn.readable().await;
                    let _ = tx
                        .send(ready.as_ref().map(|_| ()).map_err(|e| e.kind()))
                        .await;
                    if ready.is_err() {
                        return;
                    }
                    // Readiness consumed nothing: the read gets all the data.
                    let mut buf = [0u8; 3];
                    if conn.read_exact(&mut buf).await.is_err()
                        || conn.write_all(&buf).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        c.write_all(b"abc").await.unwrap();
        assert_eq!(within(LIMIT, "readable", rx.recv()).await.unwrap(), Ok(()));
        let mut back = [0u8; 3];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"abc");
        // Idle: readable() waits, then fails when the idle timeout closes the connection.
        assert_eq!(
            within(LIMIT, "readable error", rx.recv()).await.unwrap(),
            Err(io::ErrorKind::TimedOut)
        );
        assert!(ends(&mut c).await);
        handle.close().await;
    });
}

pub fn readable_returns_when_draining_begins<R: Rt>() {
    run::<R>(LIMIT, async {
        let (tx, rx) = async_channel::unbounded();
        let cfg = {
            let mut c_config = config();
            c_config.linger_timeout = Duration::from_secs(3600);
            c_config
        };
        let (handle, rec) = start::<R>(cfg, move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                // Idle in readable(): only the drain can end this wait.
                let ready = conn.readable().await;
                let _ = tx.send((ready.is_ok(), conn.is_draining())).await;
            }
        });
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(connect(handle.local_addr().as_socket_addr().unwrap()).await);
            rec.accepted().await;
        }
        let h = handle.clone();
        let shutdown = async move { h.shutdown_within(Duration::from_secs(3600)).await };
        let clients_close = async {
            for _ in 0..5 {
                assert_eq!(
                    within(LIMIT, "drain wake", rx.recv()).await.unwrap(),
                    (true, true)
                );
            }
            // The server's FIN, not the linger timeout (an hour here), ends each client.
            for c in &mut clients {
                assert!(ends(c).await);
            }
            clients.clear();
        };
        let (report, ()) = futures_lite::future::zip(shutdown, clients_close).await;
        assert_eq!(report.unwrap().drained, 5);
    });
}
