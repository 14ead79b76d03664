//! [`Recorder`]: berth's events with simulated timestamps, the invariants every run of a
//! server must show in them ([`Recorder::lives`]), and traces to compare runs by.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::{Addr, Builder, CloseReason, ConnEvent, ServerEvent};

/// One thing a server reported, with the simulated time it happened at.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Simulated time since the simulation started.
    pub at: Duration,
    /// What happened.
    pub event: Event,
}

/// A server's report.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection event.
    Conn(ConnEvent),
    /// A server event.
    Server(ServerEvent),
    /// An error, as its message.
    Error(String),
    /// A note of the test's own ([`Recorder::note`]): what the test did, in the same trace.
    Note(String),
}

/// Captures berth's connection events, server events and errors with simulated timestamps.
/// Clone it into hosts; every clone shares one log.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Record>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, event: Event, at: Option<Duration>) {
        let mut log = lock(&self.log);
        // Inside a host, the simulation's clock. Outside one (a crash drops a host's tasks
        // from the test's own thread, where no clock runs), the time of the last record.
        // (Hosts run one after another within a step, each through the whole step, so
        // records of different hosts may be out of order by up to a step.)
        let at = at
            .or_else(|| {
                tokio::runtime::Handle::try_current()
                    .ok()
                    .and(turmoil::sim_elapsed())
            })
            .unwrap_or_else(|| log.last().map(|r| r.at).unwrap_or_default());
        log.push(Record { at, event });
    }

    /// Wires every hook of `builder` to this recorder.
    pub fn attach(&self, builder: Builder) -> Builder {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        builder
            .on_conn_event(move |e| a.push(Event::Conn(e.clone()), None))
            .on_server_event(move |e| b.push(Event::Server(e.clone()), None))
            .on_error(move |e| c.push(Event::Error(e.to_string()), None))
    }

    /// Adds a note to the log, e.g. what the test is about to do, so a trace tells the whole
    /// story. From a host it is stamped with the simulation's clock; from the test's own
    /// thread (between `Sim::step`s), give the time (`sim.elapsed()`) with
    /// [`note_at`](Self::note_at).
    pub fn note(&self, text: impl Into<String>) {
        self.push(Event::Note(text.into()), None);
    }

    /// Adds a note at simulated time `at`.
    pub fn note_at(&self, at: Duration, text: impl Into<String>) {
        self.push(Event::Note(text.into()), Some(at));
    }

    /// Everything recorded so far, in order.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.log).clone()
    }

    /// The records from the `from`th on (0 is the first): a cheap way to follow the log
    /// while a simulation runs.
    pub fn records_from(&self, from: usize) -> Vec<Record> {
        lock(&self.log)
            .get(from..)
            .map(<[Record]>::to_vec)
            .unwrap_or_default()
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        lock(&self.log).len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The recorded connection events.
    pub fn conn_events(&self) -> Vec<(Duration, ConnEvent)> {
        self.records()
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Conn(e) => Some((r.at, e)),
                _ => None,
            })
            .collect()
    }

    /// The log as text, one record per line: compare two runs to check determinism.
    pub fn trace(&self) -> String {
        self.records()
            .iter()
            .map(|r| format!("{:?} {:?}\n", r.at, r.event))
            .collect()
    }

    /// A hash of [`trace`](Self::trace) (FNV-1a, the same on every platform and build).
    pub fn trace_hash(&self) -> u64 {
        fnv1a(self.trace().as_bytes())
    }

    /// Checks the invariants every server must show in its events, and returns every
    /// server instance's connections (a bounced host starts a new instance at its
    /// `Listening`), each in `Closed` order:
    /// - each `Accepted` is followed by exactly one `Closed` with its id, and no `Closed`
    ///   comes without an `Accepted`, nor before it;
    /// - no connection is left open in an instance that was replaced, nor in the last one
    ///   when `all_closed`;
    /// - when an instance stopped: one `Draining` came first, every connection open at
    ///   `Draining` closed before `Stopped`, nothing is open or closes after `Stopped`, and
    ///   `Stopped` counts (drained + forced) what was open at `Draining`.
    pub fn lives(&self, all_closed: bool) -> Result<Vec<Vec<Life>>, String> {
        lives(&self.records(), all_closed)
    }
}

/// 64-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The first line where two traces differ: its number (from 1) and both versions (empty
/// where one trace has ended). `None` when they are equal.
///
/// ```
/// let d = berth_sim::first_difference("a\nb\nc\n", "a\nx\nc\n").unwrap();
/// assert_eq!(d, (2, "b", "x"));
/// assert_eq!(berth_sim::first_difference("a\n", "a\n"), None);
/// ```
pub fn first_difference<'a>(a: &'a str, b: &'a str) -> Option<(usize, &'a str, &'a str)> {
    let (mut la, mut lb) = (a.lines(), b.lines());
    let mut n = 0;
    loop {
        n += 1;
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x == y => {}
            (x, y) => return Some((n, x.unwrap_or(""), y.unwrap_or(""))),
        }
    }
}

/// One connection's life, as a server's events tell it.
#[derive(Debug, Clone, PartialEq)]
pub struct Life {
    /// Its id (unique within its server instance).
    pub id: u64,
    /// The client's address, as `Accepted` gave it.
    pub peer: Addr,
    /// When it was accepted.
    pub accepted: Duration,
    /// When it closed.
    pub closed: Duration,
    /// Why it closed.
    pub reason: CloseReason,
}

fn lives(records: &[Record], all_closed: bool) -> Result<Vec<Vec<Life>>, String> {
    let mut instances: Vec<&[Record]> = Vec::new();
    let mut start = 0;
    for (i, r) in records.iter().enumerate() {
        if matches!(r.event, Event::Server(ServerEvent::Listening { .. })) && i > start {
            // Several listeners of one server announce themselves together: a new
            // instance starts only after something else happened.
            let only_listening = records[start..i]
                .iter()
                .all(|r| matches!(r.event, Event::Server(ServerEvent::Listening { .. })));
            if !only_listening {
                instances.push(&records[start..i]);
                start = i;
            }
        }
    }
    instances.push(&records[start..]);
    let last = instances.len() - 1;
    instances
        .into_iter()
        .enumerate()
        .map(|(n, records)| instance(n, records, all_closed || n < last))
        .collect()
}

fn instance(n: usize, records: &[Record], all_closed: bool) -> Result<Vec<Life>, String> {
    let mut open: BTreeMap<u64, (Addr, Duration)> = BTreeMap::new();
    let mut lives: Vec<Life> = Vec::new();
    let mut last_closed = None;
    let mut draining = None;
    let mut stopped: Option<(usize, usize, usize)> = None;
    for (i, r) in records.iter().enumerate() {
        match &r.event {
            Event::Conn(ConnEvent::Accepted { id, peer_addr, .. }) => {
                if open.contains_key(id) || lives.iter().any(|l| l.id == *id) {
                    return Err(format!("instance {n}: connection {id} accepted twice"));
                }
                if let Some((at, ..)) = stopped {
                    return Err(format!(
                        "instance {n}: connection {id} accepted after Stopped (record {at})"
                    ));
                }
                open.insert(*id, (peer_addr.clone(), r.at));
            }
            Event::Conn(ConnEvent::Closed { id, reason, .. }) => {
                let Some((peer, accepted)) = open.remove(id) else {
                    return Err(format!(
                        "instance {n}: Closed for connection {id}, which is not open \
                         (closed twice, or never accepted)"
                    ));
                };
                if accepted > r.at {
                    return Err(format!(
                        "instance {n}: connection {id} closed before it was accepted"
                    ));
                }
                lives.push(Life {
                    id: *id,
                    peer,
                    accepted,
                    closed: r.at,
                    reason: *reason,
                });
                last_closed = Some(i);
            }
            Event::Server(ServerEvent::Draining { open_connections }) => {
                if draining.is_some() {
                    return Err(format!("instance {n}: Draining twice"));
                }
                draining = Some((i, *open_connections));
            }
            Event::Server(ServerEvent::Stopped { drained, forced }) => {
                if stopped.is_some() {
                    return Err(format!("instance {n}: Stopped twice"));
                }
                stopped = Some((i, *drained, *forced));
            }
            _ => {}
        }
    }
    if all_closed && !open.is_empty() {
        return Err(format!("instance {n}: accepted, never closed: {open:?}"));
    }
    if let Some((at, drained, forced)) = stopped {
        let Some((drain_at, open_at_drain)) = draining else {
            return Err(format!("instance {n}: Stopped without Draining"));
        };
        if !open.is_empty() {
            return Err(format!("instance {n}: still open after Stopped: {open:?}"));
        }
        if last_closed.is_some_and(|c| c > at) {
            return Err(format!("instance {n}: a Closed came after Stopped"));
        }
        if drained + forced != open_at_drain {
            return Err(format!(
                "instance {n}: Stopped says {drained} drained + {forced} forced, but \
                 {open_at_drain} were open at Draining"
            ));
        }
        // A connection counted at Draining may still have been reading its PROXY header:
        // it ends `Rejected` (or is `Accepted` late and ends `Closed`).
        let closed_while_draining = records[drain_at..at]
            .iter()
            .filter(|r| {
                matches!(
                    r.event,
                    Event::Conn(ConnEvent::Closed { .. } | ConnEvent::Rejected { .. })
                )
            })
            .count();
        if closed_while_draining != open_at_drain {
            return Err(format!(
                "instance {n}: {open_at_drain} open at Draining, {closed_while_draining} \
                 closed before Stopped"
            ));
        }
    }
    Ok(lives)
}
