//! berth's real server under turmoil: latency, idle timeouts, partitions, held links, client
//! crashes, drain, server bounce, TLS, determinism, and two regressions found by the
//! randomized campaign (`campaign.rs`). Every sim is seeded and bounded by
//! `simulation_duration`; no assertion looks at wall-clock time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::{Builder, CloseReason, Config, Conn, ConnEvent, Error, ServerEvent, ServerHandle};
use berth_sim::{Event, Life, Recorder};
use futures_lite::io::BufReader;
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, FutureExt};

type Shared<T> = Arc<Mutex<T>>;

fn sim(seed: u64, limit: Duration) -> turmoil::Builder {
    let mut b = turmoil::Builder::new();
    b.rng_seed(seed)
        .simulation_duration(limit)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1));
    b
}

/// Echo that stops between chunks when the server drains.
async fn echo(mut conn: Conn) {
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
        if conn.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Starts a recorded echo server on "server":7000 and stores its handle for the test.
fn echo_server(
    sim: &mut turmoil::Sim<'_>,
    config: Config,
    rec: &Recorder,
    handle: &Shared<Option<ServerHandle>>,
) {
    serve_on_server(sim, config, rec, handle, echo);
}

/// Starts a recorded server running `handler` on "server":7000 (a host: it can be crashed
/// and bounced) and stores its handle for the test.
fn serve_on_server<H: berth::Handler + Clone>(
    sim: &mut turmoil::Sim<'_>,
    config: Config,
    rec: &Recorder,
    handle: &Shared<Option<ServerHandle>>,
    handler: H,
) {
    let (rec, handle) = (rec.clone(), handle.clone());
    sim.host("server", move || {
        let (rec, handle, config) = (rec.clone(), handle.clone(), config.clone());
        let handler = handler.clone();
        async move {
            let h = berth_sim::serve(7000, rec.attach(Builder::new(config)), handler).await?;
            *handle.lock().unwrap() = Some(h.clone());
            h.stopped().await;
            Ok(())
        }
    });
}

fn server(handle: &Shared<Option<ServerHandle>>) -> ServerHandle {
    handle.lock().unwrap().clone().expect("server started")
}

async fn roundtrip(
    s: &mut (impl futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin),
    msg: &[u8],
) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    assert_eq!(back, msg, "echo must be byte-exact");
    Ok(())
}

fn closes(rec: &Recorder) -> Vec<(Duration, CloseReason)> {
    rec.conn_events()
        .into_iter()
        .filter_map(|(at, e)| match e {
            ConnEvent::Closed { reason, .. } => Some((at, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn echo_across_hosts_with_latency_counts_match_turmoil() {
    let mut sim = sim(1, Duration::from_secs(60))
        .max_message_latency(Duration::from_millis(30))
        .tcp_capacity(256)
        .build();
    let rec = Recorder::new();
    let handle = Shared::default();
    echo_server(&mut sim, Config::default(), &rec, &handle);
    let done = Arc::new(AtomicUsize::new(0));
    const CLIENTS: usize = 30;
    for i in 0..CLIENTS {
        let done = done.clone();
        sim.client(format!("client{i}"), async move {
            let mut c = berth_sim::connect("server:7000").await?;
            for round in 0..20u32 {
                let len = 1 + ((i as u32 * 7919 + round * 104_729) % 3000) as usize;
                let msg: Vec<u8> = (0..len).map(|j| (j as u32 ^ round) as u8).collect();
                roundtrip(&mut c, &msg).await?;
            }
            c.close().await?;
            drop(c);
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    }
    // A monitor compares berth's count with turmoil's own view of the server, throughout.
    let h = handle.clone();
    let d = done.clone();
    let checks = Arc::new(AtomicUsize::new(0));
    let c2 = checks.clone();
    sim.client("monitor", async move {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let Some(server) = h.lock().unwrap().clone() else {
                continue;
            };
            let turmoil_count = turmoil::established_tcp_stream_count_on("server");
            assert_eq!(
                server.open_connections(),
                turmoil_count,
                "berth's count vs turmoil's at {:?}",
                turmoil::elapsed()
            );
            c2.fetch_add(1, Ordering::SeqCst);
            if d.load(Ordering::SeqCst) == CLIENTS && turmoil_count == 0 {
                return Ok(());
            }
        }
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    assert!(
        checks.load(Ordering::SeqCst) > 50,
        "the monitor sampled throughout"
    );
    let s = server(&handle);
    assert_eq!(s.open_connections(), 0);
    assert_eq!(s.stats().accepted, CLIENTS as u64);
    assert_eq!(s.stats().closed_by(CloseReason::PeerClosed), CLIENTS as u64);
    let lives = check_lives(&rec, true).concat();
    assert_eq!(lives.len(), CLIENTS);
}

#[test]
fn five_minute_idle_timeout_is_reaped_on_time() {
    let timeout = Duration::from_secs(300);
    let mut sim = sim(2, Duration::from_secs(600))
        .tick_duration(Duration::from_millis(10))
        .build();
    let rec = Recorder::new();
    let handle = Shared::default();
    let config = {
        let mut c_config = Config::default();
        c_config.idle_timeout = Some(timeout);
        c_config
    };
    echo_server(&mut sim, config, &rec, &handle);
    let measured = Shared::default();
    let m = measured.clone();
    sim.client("client", async move {
        let mut c = berth_sim::connect("server:7000").await?;
        roundtrip(&mut c, b"last words").await?;
        let last = turmoil::elapsed();
        let mut buf = [0u8; 8];
        let n = c.read(&mut buf).await?; // blocks until the server reaps us
        *m.lock().unwrap() = Some((n, turmoil::elapsed() - last));
        Ok(())
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    let (n, idle) = measured.lock().unwrap().unwrap();
    assert_eq!(n, 0, "the server closes with FIN");
    // The tick for 300 s is 1 s; one more millisecond is the link latency of the FIN.
    assert!(idle >= timeout, "reaped early: {idle:?}");
    assert!(
        idle <= timeout + Duration::from_secs(1) + Duration::from_millis(2),
        "reaped late: {idle:?}"
    );
    assert_eq!(
        closes(&rec).iter().map(|c| c.1).collect::<Vec<_>>(),
        [CloseReason::IdleTimeout]
    );
    assert_eq!(server(&handle).open_connections(), 0);
    check_lives(&rec, true);
}

#[test]
fn partition_mid_session_is_freed_by_the_idle_timeout() {
    let mut sim = sim(3, Duration::from_secs(300)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    let config = {
        let mut c_config = Config::default();
        c_config.idle_timeout = Some(Duration::from_secs(30));
        c_config
    };
    echo_server(&mut sim, config, &rec, &handle);
    let h = handle.clone();
    let r = rec.clone();
    let last_echo = Shared::default();
    let l = last_echo.clone();
    sim.client("client", async move {
        let mut c = berth_sim::connect("server:7000").await?;
        roundtrip(&mut c, b"before").await?;
        *l.lock().unwrap() = Some(sim_now());
        turmoil::partition("client", "server");
        c.write_all(b"lost in the partition").await?;
        // The server's read hangs: nothing arrives, and nothing ever will (no retransmission).
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(h.lock().unwrap().clone().unwrap().open_connections(), 1);
        tokio::time::sleep(Duration::from_secs(15)).await;
        // The idle timeout freed it.
        assert_eq!(h.lock().unwrap().clone().unwrap().open_connections(), 0);
        assert_eq!(closes(&r).len(), 1);
        turmoil::repair("client", "server");
        Ok(())
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    let closed = closes(&rec);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1, CloseReason::IdleTimeout);
    // Reaped 30 s after the server's last progress (its echo, one 1 ms hop before the
    // client's last echo), at most one tick (1 s for 30 s) later.
    let last_echo = last_echo.lock().unwrap().expect("echoed once");
    let reaped = closed[0].0;
    assert!(
        reaped + Duration::from_millis(1) >= last_echo + Duration::from_secs(30)
            && reaped <= last_echo + Duration::from_secs(31),
        "last echo {last_echo:?}, reaped at {reaped:?}"
    );
    check_lives(&rec, true);
}

#[test]
fn hold_and_release_shorter_than_the_idle_timeout_keeps_the_session() {
    let mut sim = sim(4, Duration::from_secs(300)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    let config = {
        let mut c_config = Config::default();
        c_config.idle_timeout = Some(Duration::from_secs(30));
        c_config
    };
    echo_server(&mut sim, config, &rec, &handle);
    sim.client("client", async move {
        let mut c = berth_sim::connect("server:7000").await?;
        roundtrip(&mut c, b"before").await?;
        turmoil::hold("client", "server");
        let sent = turmoil::elapsed();
        c.write_all(b"delayed").await?;
        let mut back = [0u8; 7];
        let late = async {
            c.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(turmoil::elapsed())
        };
        let release = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            turmoil::release("client", "server");
            std::future::pending::<std::io::Result<Duration>>().await
        };
        let arrived = late.or(release).await?;
        assert_eq!(&back, b"delayed");
        assert!(
            arrived - sent >= Duration::from_secs(10),
            "data arrived late, not lost"
        );
        roundtrip(&mut c, b"and the session goes on").await?;
        // Close, and wait for the server's close: its Closed event has fired by then.
        c.close().await?;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        Ok(())
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    assert_eq!(
        closes(&rec).iter().map(|c| c.1).collect::<Vec<_>>(),
        [CloseReason::PeerClosed],
        "no idle reaping: the session ended when the client closed it"
    );
    check_lives(&rec, true);
}

#[test]
fn client_crash_is_seen_and_counted() {
    let mut sim = sim(5, Duration::from_secs(60)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    echo_server(&mut sim, Config::default(), &rec, &handle);
    sim.host("doomed", || async {
        let mut c = berth_sim::connect("server:7000").await?;
        roundtrip(&mut c, b"alive").await?;
        std::future::pending::<()>().await;
        Ok(())
    });
    // Run until the doomed client is connected and served, then crash it.
    while !rec
        .conn_events()
        .iter()
        .any(|(_, e)| matches!(e, ConnEvent::Accepted { .. }))
    {
        sim.step().unwrap();
    }
    for _ in 0..20 {
        sim.step().unwrap();
    }
    assert_eq!(server(&handle).open_connections(), 1);
    sim.crash("doomed");
    for _ in 0..100 {
        sim.step().unwrap();
        if !closes(&rec).is_empty() {
            break;
        }
    }
    let closed = closes(&rec);
    assert_eq!(closed.len(), 1, "the server saw the crash");
    assert!(matches!(
        closed[0].1,
        CloseReason::PeerClosed | CloseReason::Error
    ));
    assert_eq!(server(&handle).open_connections(), 0);
    check_lives(&rec, true);
}

/// Line protocol: "ack N" for each request line; stops between requests when draining.
async fn acker(conn: Conn, processed: Arc<AtomicUsize>) {
    let mut draining = conn.draining();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        let read = async { Some(reader.read_line(&mut line).await) };
        let drained = async {
            (&mut draining).await;
            None
        };
        let Some(Ok(1..)) = read.or(drained).await else {
            return;
        };
        // Some work per request, so requests are in flight when shutdown starts.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let ack = format!("ack {}", line.trim_end());
        if reader.get_mut().write_all(ack.as_bytes()).await.is_err()
            || reader.get_mut().write_all(b"\n").await.is_err()
        {
            return;
        }
        processed.fetch_add(1, Ordering::SeqCst);
        // Requests already buffered are always ready, so the race above alone would never
        // see the drain: check after each unit of work too.
        if reader.get_ref().is_draining() {
            return;
        }
    }
}

#[test]
fn drain_completes_acknowledged_requests_and_refuses_new_connects() {
    let mut sim = sim(6, Duration::from_secs(120)).build();
    let rec = Recorder::new();
    let processed = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let shutdown_result = Shared::default();
    let go = Arc::new(tokio::sync::Notify::new());
    {
        let (rec, processed, result, go) = (
            rec.clone(),
            processed.clone(),
            shutdown_result.clone(),
            go.clone(),
        );
        // A turmoil "client": the simulation runs until its shutdown has returned.
        sim.client("server", {
            async move {
                let p = processed.clone();
                let handle = berth_sim::serve(
                    7000,
                    rec.attach(Builder::new(Config::default())),
                    move |conn: Conn| acker(conn, p.clone()),
                )
                .await?;
                go.notified().await;
                let r = handle.shutdown_within(Duration::from_secs(60)).await;
                *result.lock().unwrap() = Some((r.map_err(|e| e.to_string()), turmoil::elapsed()));
                Ok(())
            }
        });
    }
    const CLIENTS: usize = 5;
    for i in 0..CLIENTS {
        let (acked, go) = (acked.clone(), go.clone());
        sim.client(format!("client{i}"), async move {
            let c = berth_sim::connect("server:7000").await?;
            let (r, mut w) = futures_lite::io::split(c);
            let mut lines = BufReader::new(r).lines();
            // Pipeline 100 requests; the server answers one per 5 ms.
            let mut batch = String::new();
            for n in 0..100 {
                batch.push_str(&format!("{n}\n"));
            }
            w.write_all(batch.as_bytes()).await?;
            let mut n = 0;
            use futures_lite::StreamExt;
            while let Some(Ok(line)) = lines.next().await {
                assert_eq!(line, format!("ack {n}"), "acks in order, none lost");
                n += 1;
                if i == 0 && n == 10 {
                    go.notify_one(); // start the shutdown with requests in flight
                }
            }
            acked.fetch_add(n, Ordering::SeqCst);
            Ok(())
        });
    }
    let r = rec.clone();
    sim.client("latecomer", async move {
        // Waits for the drain to begin, then tries to connect: refused.
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if r.records()
                .iter()
                .any(|x| matches!(x.event, Event::Server(ServerEvent::Draining { .. })))
            {
                break;
            }
        }
        assert!(
            berth_sim::connect("server:7000").await.is_err(),
            "refused while draining"
        );
        Ok(())
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    let (result, _at) = shutdown_result
        .lock()
        .unwrap()
        .clone()
        .expect("shutdown ran");
    let report = result.unwrap();
    assert_eq!((report.drained, report.forced), (CLIENTS, 0));
    let acked = acked.load(Ordering::SeqCst);
    assert_eq!(
        acked,
        processed.load(Ordering::SeqCst),
        "every processed request was acked"
    );
    assert!(
        acked < CLIENTS * 100,
        "shutdown cut the pipelines short ({acked})"
    );
    // Shutdown returned right when the last handler ended: Stopped follows the last Closed.
    let records = rec.records();
    let last_closed = records
        .iter()
        .filter(|r| matches!(r.event, Event::Conn(ConnEvent::Closed { .. })))
        .map(|r| r.at)
        .max()
        .unwrap();
    let stopped = records
        .iter()
        .find(|r| matches!(r.event, Event::Server(ServerEvent::Stopped { .. })))
        .unwrap()
        .at;
    assert!(stopped >= last_closed && stopped - last_closed < Duration::from_millis(10));
    let lives = check_lives(&rec, true).concat();
    assert_eq!(lives.len(), CLIENTS, "the latecomer was never accepted");
}

#[test]
fn drain_deadline_force_closes_a_stuck_handler() {
    let mut sim = sim(7, Duration::from_secs(120)).build();
    let rec = Recorder::new();
    let result = Shared::default();
    {
        let (rec, result) = (rec.clone(), result.clone());
        sim.host("server", move || {
            let (rec, result) = (rec.clone(), result.clone());
            async move {
                let handle = berth_sim::serve(
                    7000,
                    rec.attach(Builder::new(Config::default())),
                    |conn: Conn| async move {
                        let _hold = conn;
                        std::future::pending::<()>().await; // ignores draining
                    },
                )
                .await?;
                while handle.open_connections() == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let started = turmoil::elapsed();
                let r = handle.shutdown_within(Duration::from_secs(5)).await;
                *result.lock().unwrap() = Some((
                    match r {
                        Err(Error::ShutdownTimeout { forced, .. }) => Some(forced),
                        _ => None,
                    },
                    turmoil::elapsed() - started,
                    handle.open_connections(),
                ));
                Ok(())
            }
        });
    }
    sim.client("client", async {
        let mut c = berth_sim::connect("server:7000").await?;
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf).await.unwrap_or(0); // the forced close ends it
        assert_eq!(n, 0);
        Ok(())
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    let (forced, took, open) = result.lock().unwrap().unwrap();
    assert_eq!(forced, Some(1), "one stuck handler forced");
    assert_eq!(open, 0);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(closes(&rec)[0].1, CloseReason::ShutdownForced);
    check_lives(&rec, true);
}

#[test]
fn server_bounce_while_clients_retry() {
    let mut sim = sim(8, Duration::from_secs(120)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    echo_server(&mut sim, Config::default(), &rec, &handle);
    let served = Arc::new(AtomicUsize::new(0));
    // Every attempt: (client, started, ended, error or None).
    type Attempt = (usize, Duration, Duration, Option<String>);
    let attempts: Shared<Vec<Attempt>> = Shared::default();
    for i in 0..3 {
        let (served, attempts) = (served.clone(), attempts.clone());
        sim.client(format!("client{i}"), async move {
            // Keep trying until two full sessions work: connects to a crashed host hang, so
            // each attempt is bounded.
            let mut sessions = 0;
            while sessions < 2 {
                let started = sim_now();
                let attempt = async {
                    let mut c = berth_sim::connect("server:7000").await?;
                    for _ in 0..5 {
                        roundtrip(&mut c, b"are you there?").await?;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok::<_, std::io::Error>(())
                };
                let error = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("timed out".to_owned()),
                };
                let failed = error.is_some();
                attempts
                    .lock()
                    .unwrap()
                    .push((i, started, sim_now(), error));
                if failed {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                } else {
                    sessions += 1;
                }
            }
            served.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    }
    // Let the first instance serve a little, crash it, then restart it from its factory.
    for _ in 0..300 {
        sim.step().unwrap();
    }
    let first = server(&handle);
    assert_eq!(first.open_connections(), 3, "every client is in a session");
    let crashed_at = sim.elapsed();
    sim.crash("server");
    for _ in 0..1500 {
        sim.step().unwrap();
    }
    let bounced_at = sim.elapsed();
    sim.bounce("server");
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    assert_eq!(
        served.load(Ordering::SeqCst),
        3,
        "every client was served after the bounce"
    );
    // No attempt failed silently: each failure overlapped the server's downtime.
    let attempts = attempts.lock().unwrap().clone();
    for (i, started, ended, error) in &attempts {
        if let Some(error) = error {
            assert!(
                *ended >= crashed_at && *started < bounced_at,
                "client{i}'s attempt {started:?}..{ended:?} failed ({error}) outside the downtime {crashed_at:?}..{bounced_at:?}"
            );
        }
    }
    for i in 0..3 {
        assert!(
            attempts.iter().any(|(c, s, e, err)| *c == i
                && err.is_some()
                && *s < crashed_at
                && *e >= crashed_at),
            "client{i}'s session was cut by the crash: {attempts:?}"
        );
    }
    let second = server(&handle);
    assert!(
        second.stats().accepted >= 3,
        "the new instance served the retries"
    );
    // Both instances listened on all of the host's addresses, port 7000, and accepted on
    // the server's own address.
    let listening = std::net::SocketAddr::from(([0, 0, 0, 0], 7000));
    assert_eq!(first.local_addr().as_socket_addr(), Some(listening));
    assert_eq!(second.local_addr().as_socket_addr(), Some(listening));
    let server_ip = sim.lookup("server");
    let accepted_on: Vec<_> = rec
        .conn_events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            ConnEvent::Accepted { local_addr, .. } => local_addr.as_socket_addr(),
            _ => None,
        })
        .collect();
    assert!(accepted_on.len() >= 3, "{accepted_on:?}");
    assert!(
        accepted_on
            .iter()
            .all(|a| *a == std::net::SocketAddr::new(server_ip, 7000)),
        "{accepted_on:?}"
    );
    // The crash ended every connection of the first instance (its tasks were dropped with
    // its runtime): one Closed per Accepted there; the second may still hold some.
    let lives = check_lives(&rec, false);
    assert_eq!(lives.len(), 2, "two instances");
}

#[test]
fn determinism_same_seed_same_trace() {
    let run = |seed: u64| {
        let mut b = turmoil::Builder::new();
        b.rng_seed(seed)
            .simulation_duration(Duration::from_secs(60))
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(25));
        let mut sim = b.build();
        let rec = Recorder::new();
        let handle = Shared::default();
        let config = {
            let mut c_config = Config::default();
            c_config.idle_timeout = Some(Duration::from_millis(400));
            c_config
        };
        echo_server(&mut sim, config, &rec, &handle);
        for i in 0..8u32 {
            sim.client(format!("c{i}"), async move {
                let mut c = berth_sim::connect("server:7000").await?;
                for r in 0..(i + 2) {
                    roundtrip(&mut c, format!("{i}:{r}").as_bytes()).await?;
                }
                if i % 2 == 0 {
                    let mut buf = [0u8; 1];
                    let _ = c.read(&mut buf).await; // idle until reaped
                }
                Ok(())
            });
        }
        sim.run().unwrap();
        eprintln!("simulated {:?}", sim.elapsed());
        rec.trace()
    };
    let a = run(42);
    let b = run(42);
    assert!(a.lines().count() >= 16, "{a}");
    assert_eq!(a, b, "same seed, same trace");
    assert_ne!(a, run(43), "another seed, another timing");
}

#[test]
fn tls_echo_and_a_held_client_hello_under_simulation() {
    let mut sim = sim(9, Duration::from_secs(60)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    let (tls, client) = common::tls_pair();
    let config = {
        let mut c_config = Config::default();
        c_config.tls = Some(tls);
        c_config.handshake_timeout = Duration::from_secs(2);
        c_config
    };
    echo_server(&mut sim, config, &rec, &handle);
    let c1 = client.clone();
    sim.client("good", async move {
        let tcp = berth_sim::connect("server:7000").await?;
        let name = rustls::pki_types::ServerName::try_from("server").unwrap();
        let mut s = futures_rustls::TlsConnector::from(c1)
            .connect(name, tcp)
            .await?;
        for msg in [&b"over tls"[..], &[7u8; 20_000][..]] {
            s.write_all(msg).await?;
            s.flush().await?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await?;
            assert_eq!(back, msg);
        }
        s.close().await?;
        Ok(())
    });
    sim.client("slow", async move {
        let tcp = berth_sim::connect("server:7000").await?;
        // Hold the link: the ClientHello sits on it past the server's handshake timeout.
        turmoil::hold("slow", "server");
        let name = rustls::pki_types::ServerName::try_from("server").unwrap();
        let handshake = futures_rustls::TlsConnector::from(client).connect(name, tcp);
        let release = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            turmoil::release("slow", "server");
            std::future::pending().await
        };
        assert!(
            handshake.or(release).await.is_err(),
            "the server dropped us"
        );
        Ok(())
    });
    sim.run().unwrap();
    eprintln!("simulated {:?}", sim.elapsed());
    let events = rec.conn_events();
    let failed: Vec<_> = events
        .iter()
        .filter_map(|(at, e)| match e {
            ConnEvent::TlsFailed { reason, .. } => Some((*at, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].1, berth::tls::TlsFailure::Timeout);
    assert!(failed[0].0 >= Duration::from_secs(2) && failed[0].0 < Duration::from_secs(3));
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, ConnEvent::TlsEstablished { .. }))
    );
    assert_eq!(server(&handle).stats().tls_handshakes, 1);
    assert_eq!(server(&handle).open_connections(), 0);
    let lives = check_lives(&rec, true).concat();
    let mut reasons: Vec<_> = lives.iter().map(|l| l.reason.label()).collect();
    reasons.sort();
    assert_eq!(reasons, ["peer_closed", "tls_failed"]);
}

/// Regression (found by the campaign, fixed): the idle timeout did not close a connection
/// in its lingering close.
///
/// A handler that returns while its peer is still connected leaves the socket in a
/// lingering close (half-close, then discard input until the peer closes, for up to
/// `linger_timeout`, 2 s by default). The idle scanner marks such a slot `IdleTimeout` once
/// it has been idle for the timeout, but the lingering close (`Open::linger` in src/conn.rs)
/// waits only for the peer, its own timeout and a forced shutdown, not for the slot being
/// closed: the socket stayed open until the linger ended, and `Closed` then said
/// `IdleTimeout` at `linger_timeout`, well past the idle bound `[timeout, timeout + tick]`.
/// Now a server-side close ends the lingering close.
#[test]
fn an_idle_timeout_during_a_lingering_close_is_kept() {
    let idle = Duration::from_millis(500);
    let tick = Duration::from_micros(62_500); // 500 ms / 8
    let mut sim = sim(12, Duration::from_secs(60)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    let mut config = Config::default();
    config.idle_timeout = Some(idle);
    // One echo, then return while the client is still connected: a lingering close.
    serve_on_server(
        &mut sim,
        config,
        &rec,
        &handle,
        |mut conn: Conn| async move {
            let mut buf = [0u8; 64];
            if let Ok(n @ 1..) = conn.read(&mut buf).await {
                let _ = conn.write_all(&buf[..n]).await;
            }
        },
    );
    let last_echo = Shared::default();
    let l = last_echo.clone();
    sim.client("client", async move {
        let mut c = berth_sim::connect("server:7000").await?;
        roundtrip(&mut c, b"one").await?;
        *l.lock().unwrap() = Some(sim_now());
        // Keep the connection open, idle, past the idle timeout and the linger timeout.
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(c);
        Ok(())
    });
    sim.run().unwrap();
    let last_echo = last_echo.lock().unwrap().expect("echoed");
    let closed = closes(&rec);
    assert_eq!(closed.len(), 1, "{closed:?}");
    let (at, reason) = closed[0];
    match reason {
        // The idle timeout closed it: within the idle bound of its last progress.
        CloseReason::IdleTimeout => assert!(
            at <= last_echo + idle + tick + Duration::from_millis(5),
            "closed for the idle timeout at {at:?}, but the idle bound after the last echo \
             ({last_echo:?}) was {:?}",
            last_echo + idle + tick
        ),
        // Or the lingering close is not subject to the idle timeout.
        CloseReason::HandlerDone => {}
        other => panic!("closed for {other:?}"),
    }
    check_lives(&rec, true);
}

/// Fires one fault point every time, with a fixed delay.
#[derive(Debug)]
struct Always(berth::fault::Point, Duration);

impl berth::fault::Faults for Always {
    fn fire(&self, point: berth::fault::Point) -> bool {
        point == self.0
    }
    fn delay(&self, _: berth::fault::Point) -> Duration {
        self.1
    }
}

/// Regression (found by the campaign, fixed): an idle sweep that runs late (timer jitter;
/// the `LateIdleTick` fault point) made the idle timeout reap early.
///
/// The scanner stamped activity with the time of the *next planned* sweep (`now + tick`).
/// When that sweep ran late, activity between the planned time and the late sweep got a
/// stamp earlier than itself, and the connection was reaped up to the lateness before its
/// timeout. Now a stamp is dated by when its sweep period actually ended. Here (timeout 500 ms, tick 62.5 ms, every sweep 50 ms
/// late) the echo at ~200 ms is stamped 175 ms and the connection is reaped at ~675 ms,
/// ~475 ms after its last activity.
#[test]
fn a_late_idle_tick_never_reaps_early() {
    let idle = Duration::from_millis(500);
    let mut sim = sim(13, Duration::from_secs(60)).build();
    let rec = Recorder::new();
    let handle = Shared::default();
    {
        let (rec, handle) = (rec.clone(), handle.clone());
        sim.host("server", move || {
            let (rec, handle) = (rec.clone(), handle.clone());
            async move {
                let mut config = Config::default();
                config.idle_timeout = Some(idle);
                let builder = rec.attach(Builder::new(config)).faults(Always(
                    berth::fault::Point::LateIdleTick,
                    Duration::from_millis(50),
                ));
                let h = berth_sim::serve(7000, builder, echo).await?;
                *handle.lock().unwrap() = Some(h.clone());
                h.stopped().await;
                Ok(())
            }
        });
    }
    let times = Shared::default();
    let t = times.clone();
    sim.client("client", async move {
        let mut c = berth_sim::connect("server:7000").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        roundtrip(&mut c, b"x").await?;
        let echoed = sim_now();
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).await?, 0, "closed by the idle timeout");
        *t.lock().unwrap() = Some(echoed);
        Ok(())
    });
    sim.run().unwrap();
    let echoed = times.lock().unwrap().expect("echoed");
    let closed = closes(&rec);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].1, CloseReason::IdleTimeout);
    // The server's last activity (its echo) was at most one 1 ms hop before `echoed`.
    let idle_for = closed[0].0 + Duration::from_millis(1) - echoed;
    assert!(
        idle_for >= idle,
        "reaped after {idle_for:?} of idleness, before the {idle:?} timeout"
    );
    check_lives(&rec, true);
}

/// The invariants every server instance must show in its events (see `Recorder::lives`);
/// on a violation, panics with it and the trace.
fn check_lives(rec: &Recorder, all_closed: bool) -> Vec<Vec<Life>> {
    rec.lives(all_closed)
        .unwrap_or_else(|e| panic!("{e}\ntrace:\n{}", rec.trace()))
}

fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A connection that has sent nothing yet is due to drain once it has been served for
/// `first_request_grace`, and is told so within a quarter of that grace (berth looks again
/// at such connections on ticks while draining). Found by the campaign (`campaign.rs`, e.g.
/// its seed 96): `Conn::draining()` completed only when the grace of the *whole drain*
/// ended, `drain + grace`, though `Conn::is_draining()` said yes from `opened + grace` on,
/// so a connection accepted long before the drain was told up to a whole grace late.
#[test]
fn a_new_connections_drain_is_due_when_its_grace_ends() {
    let grace = Duration::from_secs(1);
    let mut sim = sim(14, Duration::from_secs(60)).build();
    let told: Shared<Option<(Duration, Duration)>> = Shared::default();
    {
        let told = told.clone();
        sim.client("server", async move {
            let mut config = Config::default();
            config.first_request_grace = grace;
            let handle = berth_sim::serve(7000, Builder::new(config), move |conn: Conn| {
                let told = told.clone();
                async move {
                    let accepted = sim_now();
                    conn.draining().await;
                    *told.lock().unwrap() = Some((accepted, sim_now()));
                }
            })
            .await?;
            while handle.open_connections() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // The drain starts 800 ms into the connection's life: it is due 200 ms later.
            tokio::time::sleep(Duration::from_millis(800)).await;
            handle.shutdown_within(Duration::from_secs(5)).await?;
            Ok(())
        });
    }
    sim.client("client", async {
        let mut c = berth_sim::connect("server:7000").await?;
        let mut buf = [0u8; 1];
        let _ = c.read(&mut buf).await; // silent until the server closes
        Ok(())
    });
    sim.run().unwrap();
    let (accepted, told) = told.lock().unwrap().expect("told to drain");
    // Due at `accepted + grace`; looked at every quarter grace (at most 250 ms); one step
    // (1 ms) for the wake-up.
    assert!(
        told >= accepted + grace && told <= accepted + grace + grace / 4 + Duration::from_millis(2),
        "accepted at {accepted:?}, due to drain at {:?}, told at {told:?}",
        accepted + grace
    );
}

/// Session resumption under simulated time: a ticket sealed with berth's keys resumes; a key
/// rotated out still opens its tickets for the ticket lifetime, counted from when it was due
/// to rotate, and then they get a full handshake. The keys age on the runtime's clock, so
/// half an hour passes in a moment.
#[test]
fn resumed_sessions_and_ticket_rotation_under_time_travel() {
    use rustls::HandshakeKind::{Full, Resumed};
    const MINUTE: Duration = Duration::from_secs(60);
    let mut sim = sim(15, 60 * MINUTE)
        .tick_duration(Duration::from_millis(100))
        .build();
    let rec = Recorder::new();
    let handle = Shared::default();
    let (mut tls, client) = common::tls_pair();
    tls.ticket_rotation = 10 * MINUTE;
    tls.ticket_lifetime = 20 * MINUTE;
    let config = {
        let mut c_config = Config::default();
        c_config.tls = Some(tls);
        c_config.handshake_timeout = MINUTE;
        c_config
    };
    echo_server(&mut sim, config, &rec, &handle);
    let kinds: Arc<Mutex<Vec<(&str, rustls::HandshakeKind)>>> = Arc::default();
    let seen = kinds.clone();
    sim.client("clients", async move {
        // Two clients, each with a session cache of its own.
        let fresh = || {
            let mut c = (*client).clone();
            c.resumption = rustls::client::Resumption::in_memory_sessions(16);
            Arc::new(c)
        };
        let (a, b) = (fresh(), fresh());
        let once = |what: &'static str, config: Arc<rustls::ClientConfig>| {
            let seen = seen.clone();
            async move {
                let tcp = berth_sim::connect("server:7000").await?;
                let name = rustls::pki_types::ServerName::try_from("server").unwrap();
                let mut s = futures_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                s.write_all(b"ping").await?;
                s.flush().await?;
                let mut back = [0u8; 4];
                s.read_exact(&mut back).await?; // the tickets came before the reply
                let kind = s.get_ref().1.handshake_kind().unwrap();
                seen.lock().unwrap().push((what, kind));
                s.close().await?;
                Ok::<_, std::io::Error>(())
            }
        };
        once("a at 0", a.clone()).await?;
        once("b at 0", b.clone()).await?;
        once("a again", a.clone()).await?;
        // Key 1 was due to rotate at 10 min: its tickets open until 30 min.
        tokio::time::sleep(15 * MINUTE).await;
        once("a at 15 min (key 1, rotated out)", a.clone()).await?;
        tokio::time::sleep(16 * MINUTE).await;
        once("b at 31 min (key 1, expired)", b).await?;
        once("a at 31 min (key 2, rotated out at 25)", a).await?;
        Ok(())
    });
    sim.run().unwrap();
    let kinds = kinds.lock().unwrap().clone();
    assert_eq!(
        kinds,
        [
            ("a at 0", Full),
            ("b at 0", Full),
            ("a again", Resumed),
            ("a at 15 min (key 1, rotated out)", Resumed),
            ("b at 31 min (key 1, expired)", Full),
            ("a at 31 min (key 2, rotated out at 25)", Resumed),
        ]
    );
    let stats = server(&handle).stats();
    assert_eq!(
        (stats.tls_handshakes, stats.tls_resumed),
        (6, 3),
        "{stats:?}"
    );
}

/// `Runtime::timer` on the simulated clock: a reset moves the deadline either way (also
/// after the timer completed), a timer never completes before its deadline, and `sleep`
/// counts from its call.
#[test]
fn timers_reset_in_place_on_the_simulated_clock() {
    use berth::runtime::Runtime as _;
    let mut sim = sim(1, Duration::from_secs(7200)).build();
    sim.client("timers", async {
        let rt = berth_sim::Sim;
        let start = rt.now();
        let mut timer = rt.timer(start + Duration::from_secs(3600));
        timer.as_mut().reset(start + Duration::from_secs(5));
        timer.as_mut().await;
        assert_eq!(rt.now() - start, Duration::from_secs(5), "moved earlier");
        let again = rt.now() + Duration::from_secs(7);
        timer.as_mut().reset(again);
        timer.as_mut().await;
        assert_eq!(rt.now(), again, "reset after it completed");
        let soon = rt.now() + Duration::from_secs(1);
        timer.as_mut().reset(soon);
        timer.as_mut().reset(soon + Duration::from_secs(60));
        let early = async {
            timer.as_mut().await;
            true
        }
        .or(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            false
        })
        .await;
        assert!(!early, "a timer moved later completed at its old deadline");
        let made = rt.now();
        let short = rt.sleep(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(3)).await;
        short.await;
        assert_eq!(
            rt.now() - made,
            Duration::from_secs(3),
            "sleep counts from its call"
        );
        Ok(())
    });
    sim.run().expect("simulation");
}
