//! The integration suite, generic over the runtime adapter. `instantiate!` turns every test
//! here into a `#[test]` for one adapter (see `smol.rs`, `async_std.rs`).
#![allow(dead_code)]

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::{
    Builder, CloseReason, Config, ConfigError, Conn, ConnEvent, Error, ServeError, ServerEvent,
    State,
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
            handler_panic_before_its_future_is_contained,
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
            readable_after_a_read_that_waited_is_not_stale,
            idle_timeout_fails_a_blocked_write,
            idle_timeout_cancels_a_handler_doing_no_io,
            nodelay_is_configurable_and_set_before_the_tune_hook,
            tls_connections_get_nodelay_and_the_tune_hook,
            peer_reset_closes_with_error,
            split_halves_work_from_two_tasks,
            forced_shutdown_fails_pending_io_with_connection_aborted,
            server_and_error_hooks_are_replaceable_while_running,
            panicking_tune_hook_closes_only_that_connection,
            timers_reset_in_place_and_never_fire_early,
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

/// A shutdown's result as comparable values: the report, or a `ShutdownTimeout`'s fields
/// `(forced, drained, grace)`. Any other error fails the test.
fn outcome(
    result: &Result<berth::ShutdownReport, Error>,
) -> Result<berth::ShutdownReport, (usize, usize, Duration)> {
    match result {
        Ok(report) => Ok(*report),
        Err(Error::ShutdownTimeout {
            forced,
            drained,
            grace,
        }) => Err((*forced, *drained, *grace)),
        Err(other) => panic!("unexpected shutdown error: {other:#?}"),
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
            assert_eq!(reason, CloseReason::Error);
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
        // The panicking handler's connection is closed (not lingering): a clean FIN.
        assert_closed_by_server(&mut bad, 0).await;
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

/// A handler closure that panics before it returns its future (`|conn| { let x =
/// state.get().unwrap(); async move { .. } }`) is contained like a panic inside it.
pub fn handler_panic_before_its_future_is_contained<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), |conn: Conn| {
            if conn.id() == 2 {
                panic!("boom before the future");
            }
            echo_split(conn)
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut good = connect(addr).await;
        roundtrip(&mut good, b"a").await;
        let mut bad = connect(addr).await;
        let error = rec.error().await;
        assert!(error.contains("boom before the future"), "{error}");
        assert_closed_by_server(&mut bad, 0).await;
        roundtrip(&mut good, b"other connections are unaffected").await;
        assert_eq!(handle.stats().closed_by(CloseReason::Panicked), 1);
        drop(good);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(handle.open_connections(), 0);
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
        assert_eq!(ending(&mut c).await, EOF);
        let idle = last_activity.elapsed();
        let (kind, connected) = within(LIMIT, "handler error", rx.recv()).await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(!connected);
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::IdleTimeout);
        assert_eq!(handle.open_connections(), 0);
        // Never early (the small allowance is the OS timer's jitter). How late depends on
        // the machine's load, so there is no upper bound here: the sim crate checks
        // `[timeout, timeout + tick]` on simulated time.
        assert!(
            idle >= timeout - Duration::from_millis(5),
            "reaped after {idle:?}"
        );
        // Closed entirely, not half-closed.
        assert!(writes_refused_within(Duration::from_secs(1), &mut c).await);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

pub fn idle_timeout_spares_active_connections<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_millis(600);
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
        let active_id = rec.accepted().await;
        let active_since = Instant::now();
        // Keep one connection busy (a message every 50 ms, far inside the timeout) until the
        // idle one has been reaped and the busy one has lived at least twice the timeout.
        let reaped_yet = std::cell::Cell::new(false);
        let watch = async {
            let closed = rec.closed().await;
            reaped_yet.set(true);
            closed
        };
        let traffic = async {
            let mut round = 0u32;
            while !reaped_yet.get() || active_since.elapsed() < timeout * 2 {
                roundtrip(&mut active, &round.to_le_bytes()).await;
                round += 1;
                async_io::Timer::after(Duration::from_millis(50)).await;
            }
        };
        let (reaped, ()) = futures_lite::future::zip(watch, traffic).await;
        // The idle one was reaped meanwhile, the active one was not.
        assert_eq!(reaped, (idle_id, CloseReason::IdleTimeout));
        assert_closed_by_server(&mut idle, 0).await;
        assert!(idle_since.elapsed() >= timeout);
        assert_eq!(handle.open_connections(), 1);
        roundtrip(&mut active, b"still alive").await;
        let closed: Vec<u64> = rec
            .log()
            .iter()
            .filter_map(|e| match e {
                Ev::Conn(ConnEvent::Closed { id, .. }) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(closed, [idle_id], "connection {active_id} was never reaped");
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
        // Each handler returned on the drain: a lingering close, so a clean end of file.
        let clients_close = async {
            for c in &mut clients {
                assert_eq!(ending(c).await, EOF);
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
        assert_closed_by_server(&mut a, 0).await;
        assert_closed_by_server(&mut b, 0).await;
        assert_eq!(handle.stats().closed_by(CloseReason::ShutdownForced), 2);
        // Repeating returns the same result, the first call's grace included, whatever the
        // grace passed this time.
        let first = Err(err);
        assert_eq!(outcome(&first), Err((2, 0, Duration::from_millis(200))));
        let again = handle.shutdown_within(Duration::from_secs(1)).await;
        assert_eq!(outcome(&again), outcome(&first));
        assert_eq!(outcome(&handle.shutdown().await), outcome(&first));
    });
}

pub fn new_connects_refused_while_draining<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), hold);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut held = connect(addr).await;
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
            assert_eq!(
                refused.map(drop).map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionRefused),
                "a connect while draining must be refused"
            );
            handle.close().await;
        };
        let (result, ()) = futures_lite::future::zip(shutdown, check).await;
        assert!(
            matches!(
                result,
                Err(Error::ShutdownTimeout {
                    forced: 1,
                    drained: 0,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(handle.state(), State::Stopped);
        assert_closed_by_server(&mut held, 0).await;
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
        // Whichever won (the drain or the close), all agree and the server is stopped with
        // nothing open.
        assert_eq!(r3.drained + r3.forced, 1);
        assert_eq!(r3.still_open, 0);
        let first = outcome(&r1);
        assert_eq!(outcome(&r2), first, "concurrent calls share one result");
        match first {
            Ok(report) => assert_eq!((report, r3.forced), (r3, 0)),
            Err((forced, drained, _)) => assert_eq!((forced, drained), (r3.forced, r3.drained)),
        }
        assert_eq!(handle.state(), State::Stopped);
        assert_eq!(handle.open_connections(), 0);
        // Again, after stop: the same result, whatever grace is passed now.
        let again = handle.shutdown_within(Duration::from_secs(1)).await;
        assert_eq!(outcome(&again), first);
        assert_eq!(outcome(&handle.shutdown().await), first);
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
            assert_eq!(
                async_net::TcpStream::connect(addr)
                    .await
                    .map(drop)
                    .map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionRefused)
            );
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
            assert_closed_by_server(c, 0).await;
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
        // The third was admitted only once the first had closed; the second is still open.
        assert_eq!(handle.open_connections(), 2);
        assert_eq!(rec.closed().await, (1, CloseReason::PeerClosed));
        drop((b, c));
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
                listener: "127.0.0.1:0".into(),
                addr: addr.into(),
                tls: false
            })
        );
        assert!(matches!(
            &log[1],
            Ev::Conn(ConnEvent::Accepted { id: 1, peer_addr, local_addr, listener })
                if *peer_addr == local && *local_addr == addr && &**listener == "127.0.0.1:0"
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
                let peer = socket.peer_addr()?.as_socket().expect("a TCP peer");
                let mut seen = s.lock().unwrap();
                seen.push((peer, nodelay_before, socket.tcp_nodelay()?));
                // The clients connect one at a time: every other one is rejected.
                if seen.len() % 2 == 1 {
                    Err(io::Error::other(
                        "odd connections are rejected by this test",
                    ))
                } else {
                    Ok(())
                }
            })
            .bind()
            .unwrap();
        let handle = server.serve(echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut clients = Vec::new();
        for i in 0..6 {
            let mut c = connect(addr).await;
            if i % 2 == 0 {
                // A failed tune hook closes the connection at once, with an error report.
                assert_closed_by_server(&mut c, 0).await;
                let error = rec.error().await;
                assert!(error.contains("odd connections are rejected"), "{error}");
                let (_, reason) = rec.closed().await;
                assert_eq!(reason, CloseReason::Error);
            } else {
                roundtrip(&mut c, b"tuned").await;
            }
            clients.push(c); // kept open: no other Closed event comes
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|&(peer, ..)| peer).collect::<Vec<_>>(),
            clients
                .iter()
                .map(|c| c.local_addr().unwrap())
                .collect::<Vec<_>>(),
            "the hook ran once per connection, in order"
        );
        assert!(
            seen.iter().all(|&(_, before, after)| before && !after),
            "{seen:?}"
        );
        assert_eq!(handle.stats().closed_by(CloseReason::Error), 3);
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
        assert!(
            error.contains("connection event") && error.contains("hook panic"),
            "{error}"
        );
        roundtrip(&mut d, b"served despite the hook").await;
        roundtrip(&mut c, b"and the first one too").await;
        // Replace again: events flow to the new hook.
        let (tx, rx) = async_channel::unbounded();
        handle.on_conn_event(move |e| {
            tx.try_send(e.clone()).unwrap();
        });
        drop(d);
        let ev = within(LIMIT, "event on the new hook", rx.recv())
            .await
            .unwrap();
        assert!(
            matches!(
                ev,
                ConnEvent::Closed {
                    id: 2,
                    reason: CloseReason::PeerClosed,
                    ..
                }
            ),
            "{ev:?}"
        );
        // The recorder, the first hook, heard nothing after it was replaced.
        let conn_events: Vec<_> = rec
            .log()
            .into_iter()
            .filter(|e| matches!(e, Ev::Conn(_)))
            .collect();
        assert!(
            matches!(
                conn_events.as_slice(),
                [Ev::Conn(ConnEvent::Accepted { id: 1, .. })]
            ),
            "{conn_events:?}"
        );
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
        assert_closed_by_server(&mut second, 0).await;
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
        assert!(
            !connected,
            "after the peer closed, the connection is not connected"
        );
        assert!(!draining);
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
        let step = Duration::from_secs(10);
        let h = within(step, "the handler's ConnHandle", handles_rx.recv())
            .await
            .unwrap();
        assert!(h.close());
        assert!(!h.close(), "closing twice reports false");
        let r = within(step, "the read's error", errors_rx.recv())
            .await
            .unwrap();
        assert_eq!(r, Err(io::ErrorKind::ConnectionAborted));
        within(step, "the client's EOF", assert_closed_by_server(&mut c, 0)).await;
        let closed = within(step, "the Closed event", rec.closed()).await;
        assert_eq!(closed.1, CloseReason::Aborted);
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
        let (tx, returned) = async_channel::unbounded();
        let (handle, rec) = start::<R>(cfg, move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let mut one = [0u8; 1];
                conn.read_exact(&mut one).await.unwrap();
                conn.write_all(&pattern(1 << 20, 3)).await.unwrap();
                tx.try_send(Instant::now()).unwrap();
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
        // The client keeps its socket open: the linger timeout ends the close (the test's
        // bound is the upper bound), and not before it has passed.
        let returned = within(LIMIT, "the handler's return", returned.recv())
            .await
            .unwrap();
        let (_, reason) = rec.closed().await;
        assert_eq!(reason, CloseReason::HandlerDone);
        assert!(
            returned.elapsed() >= linger - Duration::from_millis(5),
            "the lingering close ended after {:?}",
            returned.elapsed()
        );
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
        assert_closed_by_server(&mut c, 0).await;
        handle.close().await;
    });
}

/// A read that waited for its data leaves the reactor's readiness behind (async-io keeps
/// the event that woke it; tokio caches it): `readable()` after it must not return for the
/// bytes that read already took, or an idle handler waits in a read, deaf to the drain.
pub fn readable_after_a_read_that_waited_is_not_stale<R: Rt>() {
    run::<R>(LIMIT, async {
        let mut cfg = config();
        cfg.linger_timeout = Duration::from_secs(3600);
        let (handle, _rec) = start::<R>(cfg, |mut conn: Conn| async move {
            // "ready" goes out before the read is polled, and the client sends only once it
            // has it: the read finds nothing and waits for the reactor.
            conn.write_all(b"ready").await.unwrap();
            conn.flush().await.unwrap();
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
            conn.write_all(&byte).await.unwrap();
            conn.flush().await.unwrap();
            // Nothing more comes: only the drain ends this wait.
            let ready = conn.readable().await;
            let seen = if ready.is_ok() && conn.is_draining() {
                b'D'
            } else {
                b'S'
            };
            let _ = conn.write_all(&[seen]).await;
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        let mut ready = [0u8; 5];
        within(LIMIT, "ready", c.read_exact(&mut ready))
            .await
            .unwrap();
        c.write_all(b"x").await.unwrap();
        let mut echo = [0u8; 1];
        within(LIMIT, "the echo", c.read_exact(&mut echo))
            .await
            .unwrap();
        assert_eq!(&echo, b"x");
        let h = handle.clone();
        let shutdown = async move { h.shutdown_within(Duration::from_secs(3600)).await };
        let client = async {
            let mut rest = Vec::new();
            within(LIMIT, "the handler's verdict", c.read_to_end(&mut rest))
                .await
                .unwrap();
            drop(c);
            rest
        };
        let (report, rest) = futures_lite::future::zip(shutdown, client).await;
        assert_eq!(
            rest, b"D",
            "S: readable() returned before the drain, for stale data"
        );
        assert_eq!(report.unwrap().drained, 1);
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
            // The server's FIN, not the linger timeout (an hour here), ends each client. The
            // handlers returned, so the server only half-closed: it still takes (and
            // discards) what the client sends until the client closes.
            for c in &mut clients {
                assert_eq!(ending(c).await, EOF);
                assert!(!writes_refused_within(Duration::from_millis(50), c).await);
            }
            clients.clear();
        };
        let (report, ()) = futures_lite::future::zip(shutdown, clients_close).await;
        assert_eq!(
            report.unwrap(),
            berth::ShutdownReport {
                drained: 5,
                forced: 0,
                still_open: 0
            }
        );
        assert_eq!(handle.stats().closed_by(CloseReason::HandlerDone), 5);
    });
}

/// Sends on its channel when dropped: tells a test that a handler's future was dropped.
struct DropSignal(async_channel::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.try_send(()).unwrap();
    }
}

pub fn idle_timeout_fails_a_blocked_write<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_millis(200);
        let cfg = {
            let mut c_config = config();
            c_config.idle_timeout = Some(timeout);
            c_config
        };
        let (tx, rx) = async_channel::unbounded();
        // Writes until a write fails; the client never reads, so the buffers fill and the
        // handler's write stays pending with no progress.
        let (handle, rec) = start::<R>(cfg, move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let chunk = pattern(64 * 1024, 11);
                let mut written = 0usize;
                let error = loop {
                    match conn.write(&chunk).await {
                        Ok(n) => written += n,
                        Err(e) => break e,
                    }
                };
                tx.try_send((error.kind(), written, conn.is_connected()))
                    .unwrap();
            }
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        let (kind, written, connected) =
            within(LIMIT, "the write's error", rx.recv()).await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(!connected);
        assert!(written > 0);
        assert_eq!(rec.closed().await.1, CloseReason::IdleTimeout);
        assert_eq!(handle.open_connections(), 0);
        // Everything the handler wrote still arrives, then a clean end of file.
        assert_closed_by_server(&mut c, written).await;
        handle.close().await;
    });
}

pub fn idle_timeout_cancels_a_handler_doing_no_io<R: Rt>() {
    run::<R>(LIMIT, async {
        let timeout = Duration::from_millis(200);
        let cfg = {
            let mut c_config = config();
            c_config.idle_timeout = Some(timeout);
            c_config
        };
        let (dropped_tx, dropped) = async_channel::unbounded();
        let (handle, rec) = start::<R>(cfg, move |conn: Conn| {
            let signal = DropSignal(dropped_tx.clone());
            async move {
                let _signal = signal;
                let _held = conn;
                // Holds the connection and waits for something that never happens.
                std::future::pending::<()>().await;
            }
        });
        let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
        let since = Instant::now();
        rec.accepted().await;
        within(LIMIT, "the handler's cancellation", dropped.recv())
            .await
            .unwrap();
        assert!(
            since.elapsed() >= timeout - Duration::from_millis(5),
            "cancelled after {:?}",
            since.elapsed()
        );
        assert_eq!(rec.closed().await.1, CloseReason::IdleTimeout);
        assert_eq!(handle.open_connections(), 0);
        assert_closed_by_server(&mut c, 0).await;
        assert!(
            !rec.log().iter().any(|e| matches!(e, Ev::Error(_))),
            "a cancellation is not an error: {:?}",
            rec.log()
        );
        handle.close().await;
    });
}

pub fn nodelay_is_configurable_and_set_before_the_tune_hook<R: Rt>() {
    run::<R>(LIMIT, async {
        for (nodelay, expected) in [(None, true), (Some(false), false), (Some(true), true)] {
            let mut cfg = config();
            if let Some(nodelay) = nodelay {
                cfg.nodelay = nodelay;
            }
            let (tx, rx) = async_channel::unbounded();
            let handle = Builder::new(cfg)
                .runtime(R::runtime())
                .tune(move |socket| {
                    tx.try_send(socket2::SockRef::from(socket).tcp_nodelay()?)
                        .unwrap();
                    Ok(())
                })
                .bind()
                .unwrap()
                .serve(echo_split);
            let mut c = connect(handle.local_addr().as_socket_addr().unwrap()).await;
            roundtrip(&mut c, b"x").await;
            assert_eq!(rx.try_recv(), Ok(expected), "nodelay {nodelay:?}");
            assert!(rx.try_recv().is_err(), "the hook ran once");
            drop(c);
            handle.close().await;
        }
    });
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn self_signed() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// A TLS client of a server whose certificate is `cert`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cert: rustls::pki_types::CertificateDer<'static>,
) -> futures_rustls::client::TlsStream<async_net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = connect(addr).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    within(
        LIMIT,
        "TLS handshake",
        futures_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp),
    )
    .await
    .unwrap()
}

pub fn tls_connections_get_nodelay_and_the_tune_hook<R: Rt>() {
    run::<R>(LIMIT, async {
        let (cert_pem, key_pem, der) = self_signed();
        for nodelay in [true, false] {
            let mut cfg = config();
            cfg.tls = Some(berth::tls::TlsConfig::from_pem(
                cert_pem.clone(),
                key_pem.clone(),
            ));
            cfg.nodelay = nodelay;
            let (tx, rx) = async_channel::unbounded();
            let rec = Recorder::new();
            let handle = rec
                .attach(Builder::new(cfg).runtime(R::runtime()))
                .tune(move |socket| {
                    let socket = socket2::SockRef::from(socket);
                    let peer = socket.peer_addr()?.as_socket().unwrap();
                    tx.try_send((peer, socket.tcp_nodelay()?)).unwrap();
                    Ok(())
                })
                .bind()
                .unwrap()
                .serve(echo_split);
            let mut s =
                tls_connect(handle.local_addr().as_socket_addr().unwrap(), der.clone()).await;
            s.write_all(b"over tls").await.unwrap();
            s.flush().await.unwrap();
            let mut back = [0u8; 8];
            within(LIMIT, "echo", s.read_exact(&mut back))
                .await
                .unwrap();
            assert_eq!(&back, b"over tls");
            let client = s.get_ref().0.local_addr().unwrap();
            assert_eq!(rx.try_recv(), Ok((client, nodelay)));
            assert!(rx.try_recv().is_err(), "the hook ran once");
            assert_eq!(handle.stats().tls_handshakes, 1);
            s.close().await.unwrap();
            assert_eq!(rec.closed().await.1, CloseReason::PeerClosed);
            handle.close().await;
        }
    });
}

pub fn peer_reset_closes_with_error<R: Rt>() {
    run::<R>(LIMIT, async {
        let (tx, rx) = async_channel::unbounded();
        let (handle, rec) = start::<R>(config(), move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let mut buf = [0u8; 1024];
                let end = loop {
                    match conn.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => conn.write_all(&buf[..n]).await.unwrap(),
                        Err(e) => break Err(e.kind()),
                    }
                };
                tx.try_send(end).unwrap();
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut c = connect(addr).await;
        // The handler has read everything and waits in its next read when the reset comes.
        roundtrip(&mut c, b"hello").await;
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c); // SO_LINGER 0: the close is a reset
        let end = within(LIMIT, "the handler's read", rx.recv())
            .await
            .unwrap();
        assert_eq!(end, Err(io::ErrorKind::ConnectionReset));
        assert_eq!(rec.closed().await.1, CloseReason::Error);
        assert_eq!(handle.stats().closed_by(CloseReason::Error), 1);
        assert_eq!(handle.open_connections(), 0);
        handle.close().await;
    });
}

pub fn split_halves_work_from_two_tasks<R: Rt>() {
    run::<R>(Duration::from_secs(60), async {
        let rt = R::runtime();
        // The read half moves into a task of its own and feeds the write half, used by the
        // handler's task, through a small channel: both halves are in use at once.
        let (handle, rec) = start::<R>(config(), move |conn: Conn| {
            let rt = rt.clone();
            async move {
                let (mut reader, mut writer) = conn.split();
                let (tx, rx) = async_channel::bounded::<Vec<u8>>(4);
                berth::runtime::Runtime::spawn(
                    &rt,
                    Box::pin(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = reader.read(&mut buf).await {
                            if tx.send(buf[..n].to_vec()).await.is_err() {
                                return;
                            }
                        }
                    }),
                );
                while let Ok(chunk) = rx.recv().await {
                    writer.write_all(&chunk).await.unwrap();
                }
                writer.close().await.unwrap(); // FIN after everything
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        for (i, len) in [1usize, 70_001, 8 << 20].into_iter().enumerate() {
            let data = pattern(len, 100 + i as u64);
            let stream = connect(addr).await;
            let (mut r, mut w) = (stream.clone(), stream);
            let send = async {
                w.write_all(&data).await.unwrap();
                w.close().await.unwrap();
            };
            let recv = async {
                let mut back = Vec::with_capacity(len);
                r.read_to_end(&mut back).await.unwrap();
                back
            };
            let ((), back) = futures_lite::future::zip(send, recv).await;
            assert_eq!(back.len(), len);
            assert!(back == data, "content for {len} bytes");
            assert_eq!(rec.closed().await.1, CloseReason::PeerClosed);
        }
        assert_eq!(handle.open_connections(), 0);
        handle.close().await;
    });
}

pub fn forced_shutdown_fails_pending_io_with_connection_aborted<R: Rt>() {
    run::<R>(LIMIT, async {
        let (tx, rx) = async_channel::unbounded();
        // The first byte says what to do: 'r' waits in a read, 'w' writes until it fails
        // (its client never reads). Neither stops for the drain.
        let (handle, rec) = start::<R>(config(), move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let mut what = [0u8; 1];
                conn.read_exact(&mut what).await.unwrap();
                let chunk = pattern(64 * 1024, 5);
                let mut written = 0;
                let error = loop {
                    let result = if what[0] == b'r' {
                        conn.read(&mut [0u8; 64]).await
                    } else {
                        conn.write(&chunk).await
                    };
                    match result {
                        Ok(0) if what[0] == b'r' => panic!("unexpected end of file"),
                        Ok(n) => written += if what[0] == b'w' { n } else { 0 },
                        Err(e) => break e.kind(),
                    }
                };
                tx.try_send((what[0], error, written, conn.is_connected()))
                    .unwrap();
            }
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut reader = connect(addr).await;
        reader.write_all(b"r").await.unwrap();
        let mut writer = connect(addr).await;
        writer.write_all(b"w").await.unwrap();
        rec.accepted().await;
        rec.accepted().await;
        let result = handle.shutdown_within(Duration::from_millis(100)).await;
        assert_eq!(outcome(&result), Err((2, 0, Duration::from_millis(100))));
        let mut reports = vec![
            within(LIMIT, "a handler's error", rx.recv()).await.unwrap(),
            within(LIMIT, "a handler's error", rx.recv()).await.unwrap(),
        ];
        reports.sort_by_key(|r| r.0);
        let [
            (b'r', read_error, 0, false),
            (b'w', write_error, written, false),
        ] = reports[..]
        else {
            panic!("{reports:?}");
        };
        assert_eq!(read_error, io::ErrorKind::ConnectionAborted);
        assert_eq!(write_error, io::ErrorKind::ConnectionAborted);
        assert_eq!(handle.stats().closed_by(CloseReason::ShutdownForced), 2);
        assert_closed_by_server(&mut reader, 0).await;
        // What the writer wrote before the force still arrives, then a clean end of file.
        assert_eq!(ending(&mut writer).await, End::Eof { data: written });
    });
}

pub fn server_and_error_hooks_are_replaceable_while_running<R: Rt>() {
    run::<R>(LIMIT, async {
        let (handle, rec) = start::<R>(config(), |mut conn: Conn| async move {
            let mut first = [0u8; 1];
            conn.read_exact(&mut first).await.unwrap();
            panic!("handler panic {}", first[0] as char);
        });
        let addr = handle.local_addr().as_socket_addr().unwrap();
        // Before the replacement: the recorder hears the error.
        let mut c = connect(addr).await;
        c.write_all(b"1").await.unwrap();
        let error = rec.error().await;
        assert!(error.contains("handler panic 1"), "{error}");
        assert_closed_by_server(&mut c, 0).await;

        let (errors_tx, errors) = async_channel::unbounded();
        handle.on_error(move |e| {
            let described = match e {
                ServeError::HandlerPanicked { conn_id, message } => (*conn_id, message.clone()),
                other => panic!("unexpected error {other}"),
            };
            errors_tx.try_send(described).unwrap();
        });
        let (server_tx, server_events) = async_channel::unbounded();
        handle.on_server_event(move |e| server_tx.try_send(e.clone()).unwrap());

        let mut d = connect(addr).await;
        d.write_all(b"2").await.unwrap();
        let (conn_id, message) = within(LIMIT, "the new error hook", errors.recv())
            .await
            .unwrap();
        assert_eq!((conn_id, message.as_str()), (2, "handler panic 2"));
        assert_closed_by_server(&mut d, 0).await;
        assert_eq!(rec.closed().await, (2, CloseReason::Panicked));
        assert_eq!(handle.stats().closed_by(CloseReason::Panicked), 2);
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            server_events.try_recv(),
            Ok(ServerEvent::Draining {
                open_connections: 0
            })
        );
        assert_eq!(
            server_events.try_recv(),
            Ok(ServerEvent::Stopped {
                drained: 0,
                forced: 0
            })
        );
        assert!(server_events.try_recv().is_err());
        // The recorder (the old hooks) heard one error and one server event (Listening),
        // both before the replacement; its connection hook was not replaced and still hears.
        let log = rec.log();
        let errors: Vec<_> = log.iter().filter(|e| matches!(e, Ev::Error(_))).collect();
        assert_eq!(errors.len(), 1, "{log:#?}");
        let server: Vec<_> = log.iter().filter(|e| matches!(e, Ev::Server(_))).collect();
        assert!(
            matches!(server[..], [Ev::Server(ServerEvent::Listening { .. })]),
            "{log:#?}"
        );
    });
}

pub fn panicking_tune_hook_closes_only_that_connection<R: Rt>() {
    run::<R>(LIMIT, async {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let (errors_tx, errors) = async_channel::unbounded();
        let rec = Recorder::new();
        let handle = rec
            .attach(Builder::new(config()).runtime(R::runtime()))
            .on_error(move |e| {
                let described = match e {
                    ServeError::HookPanicked { hook, message } => (*hook, message.clone()),
                    other => panic!("unexpected error {other}"),
                };
                errors_tx.try_send(described).unwrap();
            })
            .tune(move |_| {
                if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("tune boom");
                }
                Ok(())
            })
            .bind()
            .unwrap()
            .serve(echo_split);
        let addr = handle.local_addr().as_socket_addr().unwrap();
        let mut first = connect(addr).await;
        let (hook, message) = within(LIMIT, "the tune hook's panic", errors.recv())
            .await
            .unwrap();
        assert_eq!((hook, message.as_str()), ("tune", "tune boom"));
        assert_closed_by_server(&mut first, 0).await;
        assert_eq!(rec.closed().await, (1, CloseReason::Error));
        // The server keeps serving.
        let mut second = connect(addr).await;
        roundtrip(&mut second, b"next client").await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(handle.open_connections(), 1);
        assert!(errors.try_recv().is_err());
        drop(second);
        assert_eq!(rec.closed().await, (2, CloseReason::PeerClosed));
        handle
            .shutdown_within(Duration::from_secs(5))
            .await
            .unwrap();
    });
}

/// The `Runtime::timer` contract every adapter keeps: a timer completes at its deadline,
/// never before it (on the runtime's own clock), and `reset` moves the deadline either way,
/// also after the timer completed.
pub fn timers_reset_in_place_and_never_fire_early<R: Rt>() {
    use berth::runtime::Runtime as _;
    run::<R>(LIMIT, async {
        let rt = R::runtime();
        let step = Duration::from_millis(40);
        // Moved earlier: a timer set an hour ahead completes at the new, near deadline.
        let start = rt.now();
        let mut timer = rt.timer(start + Duration::from_secs(3600));
        timer.as_mut().reset(start + step);
        within(
            Duration::from_secs(10),
            "a timer moved earlier",
            timer.as_mut(),
        )
        .await;
        assert!(
            rt.now() >= start + step,
            "[{}] completed before its deadline",
            R::NAME
        );
        // Reset after it completed: it completes again, at the new deadline.
        let again = rt.now() + step;
        timer.as_mut().reset(again);
        within(
            Duration::from_secs(10),
            "a completed timer reset",
            timer.as_mut(),
        )
        .await;
        assert!(
            rt.now() >= again,
            "[{}] a reset timer completed early",
            R::NAME
        );
        // Moved later: it does not complete at the old deadline.
        let soon = rt.now() + step;
        timer.as_mut().reset(soon);
        timer.as_mut().reset(soon + Duration::from_secs(3600));
        let early = completes_within(step * 3, timer.as_mut()).await;
        assert!(
            early.is_none(),
            "[{}] a timer moved later completed at its old deadline",
            R::NAME
        );
        // sleep counts from the call: a duration that does not fit an Instant waits, no panic.
        let long = rt.sleep(Duration::MAX);
        assert!(completes_within(step, long).await.is_none());
        // ...from the call, not from its first poll: made, then left alone past its
        // deadline, it is due at once.
        let made = rt.now();
        let short = rt.sleep(step);
        rt.timer(made + step * 2).await;
        assert!(
            completes_within(step / 2, short).await.is_some(),
            "[{}] a sleep counted from its first poll, not from its call",
            R::NAME
        );
    });
}
