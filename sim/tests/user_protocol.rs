//! Testing *your own* protocol with berth-sim: a complete example.
//!
//! The protocol: a tiny key-value store over lines. `SET key value` answers `OK`, `GET key`
//! answers `VALUE value` or `NONE`; a line longer than `MAX_LINE` answers `ERR too long`
//! and ends the connection; anything else answers `ERR unknown`. The handler serves one
//! request at a time and stops between requests when the server drains.
//!
//! Each seed runs the server on a simulated host with the seed's faults inside berth
//! (`SwarmFaults`: short reads and writes, spurious wake-ups, late tasks, accept errors...),
//! several clients writing keys of their own, one client partitioned from the server in the
//! middle of its session, one whose host crashes, one sending an over-long line, and a
//! shutdown at a random moment with a random deadline. Then it checks what the clients saw
//! against what the server holds:
//! - no acknowledged write is lost: every `SET` a client saw `OK` for is in the store (or
//!   was overwritten by a later write of the same client);
//! - nothing appears that was never sent, and every `GET` answer was a value of that key;
//! - a line over the limit is refused, never stored;
//! - berth's own invariants hold (`Recorder::lives`), the shutdown returns by its deadline.
//!
//! `BERTH_SIM_SEED=N cargo test -p berth-sim --test user_protocol -- --nocapture` replays one
//! seed and prints its event trace.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::{Builder, Config, Conn};
use berth_sim::{Recorder, SwarmFaults};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt, FutureExt};

/// The longest request line the server accepts, newline excluded.
const MAX_LINE: usize = 64;

type Store = Arc<Mutex<BTreeMap<String, String>>>;

/// Reads one line (without its newline) of at most `MAX_LINE` bytes. `Ok(None)` at end of
/// file; an error for a line that is too long. (A codec such as asynchronous-codec's
/// `LinesCodec` does the same in production code.)
async fn read_line(
    conn: &mut (impl AsyncRead + Unpin),
    pending: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
        }
        if pending.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "too long",
            ));
        }
        let mut buf = [0u8; 32];
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// The server's handler: one request at a time; between requests it stops if the server
/// drains (racing the wait for the next line against `draining()`, and checking
/// `is_draining()` after each request, since pipelined requests are always ready).
async fn kv(mut conn: Conn, store: Store) {
    let mut draining = conn.draining();
    let mut pending = Vec::new();
    loop {
        let next = async { Some(read_line(&mut conn, &mut pending).await) };
        let drained = async {
            (&mut draining).await;
            None
        };
        let line = match next.or(drained).await {
            Some(Ok(Some(line))) => line,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = conn.write_all(b"ERR too long\n").await;
                let _ = conn.flush().await;
                return;
            }
            _ => return, // end of file, an error, or the drain
        };
        let mut words = line.splitn(3, ' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("SET"), Some(key), Some(value)) => {
                store
                    .lock()
                    .unwrap()
                    .insert(key.to_owned(), value.to_owned());
                "OK".to_owned()
            }
            (Some("GET"), Some(key), None) => match store.lock().unwrap().get(key) {
                Some(value) => format!("VALUE {value}"),
                None => "NONE".to_owned(),
            },
            _ => "ERR unknown".to_owned(),
        };
        // The store was updated before the reply: an `OK` the client reads is durable.
        if conn
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
            || conn.flush().await.is_err()
        {
            return;
        }
        if conn.is_draining() {
            return;
        }
    }
}

/// What one client saw: the writes acknowledged, and the answers to its reads.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// `(key, value)` of every `SET` answered `OK`, in order.
    acked: Vec<(String, String)>,
    /// `(key, answer)` of every `GET`.
    read: Vec<(String, String)>,
    /// Every value it ever sent, by key.
    sent: BTreeMap<String, Vec<String>>,
    /// How its session ended.
    end: String,
}

/// A client: `ops` requests, alternating writes of its own keys and reads; `partition_at`
/// cuts it off from the server before that request.
async fn client(
    me: String,
    ops: u32,
    think: Duration,
    partition_at: Option<u32>,
    seen: Arc<Mutex<Seen>>,
) -> std::io::Result<()> {
    // After the shutdown the server refuses connects.
    let mut conn = match berth_sim::connect("server:7000").await {
        Ok(conn) => conn,
        Err(e) => {
            seen.lock().unwrap().end = format!("connect: {e}");
            return Ok(());
        }
    };
    let mut pending = Vec::new();
    for n in 0..ops {
        if partition_at == Some(n) {
            turmoil::partition(me.as_str(), "server");
        }
        let key = format!("{me}-{}", n % 3);
        let request = if n % 4 == 3 {
            format!("GET {key}")
        } else {
            let value = format!("v{n}");
            let mut s = seen.lock().unwrap();
            s.sent.entry(key.clone()).or_default().push(value.clone());
            format!("SET {key} {value}")
        };
        let answer = async {
            conn.write_all(format!("{request}\n").as_bytes()).await?;
            read_line(&mut conn, &mut pending).await
        };
        // A partitioned request is lost (turmoil has no retransmission): give up on it.
        let answer = match tokio::time::timeout(Duration::from_secs(3), answer).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => {
                seen.lock().unwrap().end = format!("end of file before request {n}");
                return Ok(());
            }
            Ok(Err(e)) => {
                seen.lock().unwrap().end = format!("{e} at request {n}");
                return Ok(());
            }
            Err(_) => {
                turmoil::repair(me.as_str(), "server");
                seen.lock().unwrap().end = format!("partitioned at request {n}");
                return Ok(());
            }
        };
        {
            let mut s = seen.lock().unwrap();
            match request.split(' ').collect::<Vec<_>>()[..] {
                ["SET", key, value] => {
                    assert_eq!(answer, "OK", "{me}: {request}");
                    s.acked.push((key.to_owned(), value.to_owned()));
                }
                ["GET", key] => s.read.push((key.to_owned(), answer)),
                _ => unreachable!(),
            }
        }
        tokio::time::sleep(think).await;
    }
    seen.lock().unwrap().end = "done".to_owned();
    Ok(())
}

/// One seed: the run, then the checks. Panics with the seed's replay command.
fn run_seed(seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .tick_duration(Duration::from_millis(2))
        .max_message_latency(Duration::from_millis(rng.random_range(1..20)))
        .build();
    let rec = Recorder::new();
    let faults = SwarmFaults::new(seed);
    let store: Store = Arc::default();
    let shutdown_at = Duration::from_millis(rng.random_range(100..2500));
    let grace = Duration::from_millis(rng.random_range(100..2000));
    let shutdown: Arc<Mutex<Option<(Duration, Duration, usize)>>> = Arc::default();
    {
        let (rec, faults, store, shutdown) =
            (rec.clone(), faults.clone(), store.clone(), shutdown.clone());
        // The server runs as a turmoil "client" so the simulation waits for its shutdown.
        sim.client("server", async move {
            let mut config = Config::default();
            config.idle_timeout = Some(Duration::from_secs(2));
            let builder = rec.attach(Builder::new(config)).faults(faults);
            let handle =
                berth_sim::serve(7000, builder, move |conn: Conn| kv(conn, store.clone())).await?;
            tokio::time::sleep(shutdown_at).await;
            let called = turmoil::sim_elapsed().unwrap_or_default();
            let forced = match handle.shutdown_within(grace).await {
                Ok(_) => 0,
                Err(berth::Error::ShutdownTimeout { forced, .. }) => forced,
                Err(e) => return Err(e.into()),
            };
            let returned = turmoil::sim_elapsed().unwrap_or_default();
            *shutdown.lock().unwrap() = Some((called, returned, forced));
            assert_eq!(handle.open_connections(), 0);
            Ok(())
        });
    }
    let clients = rng.random_range(2..6);
    let partitioned = rng.random_range(0..clients);
    let crashed = rng.random_range(0..clients);
    let mut seen = Vec::new();
    for i in 0..clients {
        let me = format!("client{i}");
        let s = Arc::new(Mutex::new(Seen::default()));
        seen.push((me.clone(), s.clone()));
        let ops = rng.random_range(4..40);
        let think = Duration::from_millis(rng.random_range(0..100));
        let start = Duration::from_millis(rng.random_range(0..500));
        let partition_at = (i == partitioned).then(|| rng.random_range(0..ops));
        let body = std::cell::Cell::new(Some(async move {
            tokio::time::sleep(start).await;
            client(me, ops, think, partition_at, s).await
        }));
        // Hosts, so one of them can be crashed (a host's software is a factory: this one
        // runs its session once).
        sim.host(format!("client{i}"), move || {
            let body = body.take();
            async move {
                if let Some(body) = body {
                    body.await?;
                }
                std::future::pending().await
            }
        });
    }
    // A client that sends a line over the limit: refused, and nothing stored.
    let refused = Arc::new(Mutex::new(String::new()));
    {
        let refused = refused.clone();
        sim.client("too-long", async move {
            let Ok(mut conn) = berth_sim::connect("server:7000").await else {
                return Ok(()); // refused: the server had shut down
            };
            let line = format!("SET big {}\n", "x".repeat(MAX_LINE * 2));
            conn.write_all(line.as_bytes()).await?;
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer).await;
            *refused.lock().unwrap() = answer;
            Ok(())
        });
    }
    // Crash one client's host in the middle of its session.
    let crash_at = Duration::from_millis(rng.random_range(50..1500));
    while sim.elapsed() < crash_at {
        sim.step().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    sim.crash(format!("client{crashed}"));
    rec.note_at(sim.elapsed(), format!("crash client{crashed}"));
    let replay = format!(
        "replay: BERTH_SIM_SEED={seed} cargo test -p berth-sim --test user_protocol -- --nocapture"
    );
    if let Err(e) = sim.run() {
        panic!("seed {seed}: {e}\n{replay}\ntrace:\n{}", rec.trace());
    }

    let fail = |why: String| -> ! {
        panic!(
            "seed {seed}: {why}\n{replay}\nfaults fired: {:?}\ntrace:\n{}",
            faults.counts(),
            rec.trace()
        )
    };
    let store = store.lock().unwrap().clone();
    for (me, s) in &seen {
        let s = s.lock().unwrap().clone();
        // No acknowledged write is lost: the store holds, for each key, the last value the
        // client sent (an acknowledged one, or a later one whose OK it never saw).
        for (key, value) in &s.acked {
            let sent = &s.sent[key];
            let position = |v: &str| sent.iter().position(|x| x == v);
            match store.get(key) {
                Some(stored) if position(stored) >= position(value) => {}
                other => fail(format!(
                    "{me}: SET {key} {value} was acknowledged, the store has {other:?}"
                )),
            }
        }
        for (key, answer) in &s.read {
            let ok = answer == "NONE"
                || answer.strip_prefix("VALUE ").is_some_and(|v| {
                    s.sent
                        .get(key)
                        .is_some_and(|sent| sent.iter().any(|x| x == v))
                });
            if !ok {
                fail(format!("{me}: GET {key} answered {answer:?}"));
            }
        }
    }
    for (key, value) in &store {
        let sent = seen.iter().any(|(_, s)| {
            s.lock()
                .unwrap()
                .sent
                .get(key)
                .is_some_and(|sent| sent.contains(value))
        });
        if !sent {
            fail(format!("the store has {key} = {value}, which nobody sent"));
        }
    }
    let refused = refused.lock().unwrap().clone();
    if !(refused == "ERR too long\n" || refused.is_empty()) || store.contains_key("big") {
        fail(format!("an over-long line was answered {refused:?}"));
    }
    // berth's own invariants, and the shutdown's deadline.
    if let Err(e) = rec.lives(true) {
        fail(e);
    }
    let (called, returned, _forced) = shutdown.lock().unwrap().expect("the shutdown ran");
    if returned > called + grace + Duration::from_millis(60) {
        fail(format!(
            "shutdown called at {called:?} with a {grace:?} grace returned at {returned:?}"
        ));
    }
}

/// 60 seeds (or `BERTH_SIM_SEED=N`).
#[test]
fn no_acknowledged_write_is_lost() {
    match std::env::var("BERTH_SIM_SEED") {
        Ok(seed) => run_seed(seed.parse().expect("BERTH_SIM_SEED is a number")),
        Err(_) => (0..60).for_each(run_seed),
    }
}
