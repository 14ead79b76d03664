//! The state every part of one server shares: where it is in its life, how many connections
//! are open, the registry of per-connection slots, the coarse clock, the shutdown latches,
//! the hooks, the counters, the admission table and the current TLS configuration.
//!
//! [`Core`] keeps its fields private; the accept loop, the connection task, the idle scanner,
//! the shutdown driver and the public handles use it through the narrow methods below. It
//! imports only the vocabulary modules, so every mechanism can depend on it and nothing in
//! it depends on a mechanism.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::addr::Addr;
use crate::admission::{IpKey, Limiter};
use crate::capacity::Capacity;
pub(crate) use crate::capacity::{HandshakePlace, Reservation};
use crate::config::Config;
use crate::error::Error;
use crate::events::{
    CloseReason, ConnEvent, Count, Counters, PressureLevel, ShutdownReport, Stats,
};
use crate::hooks::{Hooks, Report};
use crate::limits::RejectReason;
use crate::pool::{Pool, Slot, SlotState};
use crate::runtime::Runtime;
use crate::sync::{Event, Latch, lock, until};

/// Where a server is in its life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Bound, not serving yet.
    Created = 0,
    /// Accepting and serving connections.
    Running = 1,
    /// Shutting down: the listeners are closed, open connections are finishing.
    Draining = 2,
    /// Stopped: nothing is accepted, no connection is open.
    Stopped = 3,
}

/// Descriptors this process has open, and its soft limit (0 where unknown).
fn descriptors() -> (usize, usize) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(0);
    #[cfg(not(all(unix, any(feature = "async-io", feature = "tokio"))))]
    let limit = 0;
    (used, limit)
}

/// The TLS configuration new connections use, swapped whole by a reload.
#[cfg(feature = "tls")]
pub(crate) type TlsSetting = Option<Arc<rustls::ServerConfig>>;
#[cfg(not(feature = "tls"))]
pub(crate) type TlsSetting = Option<std::convert::Infallible>;

/// The shutdown latches, in the order a shutdown sets them.
#[derive(Debug, Default)]
struct Latches {
    /// Asks the accept loops to stop.
    stop_accepting: Latch,
    /// Every accept loop has dropped its listener.
    accept_stopped: Latch,
    /// Connections were told to drain.
    draining: Latch,

    /// `close()` was called: stop waiting for handlers.
    close_requested: Latch,
    /// The final sweep is under way: connections registering from now on close themselves,
    /// handshakes and lingering closes stop.
    force: Latch,
    /// Everything is done.
    stopped: Latch,
}

/// One server's shared state. See the module docs.
pub(crate) struct Core {
    runtime: Arc<dyn Runtime>,
    config: Config,
    state: AtomicU8,
    /// The open count, the `max_connections` reservations and the `max_handshakes`
    /// places; its `closed` event is also notified when a `Closed` report finished.
    capacity: Capacity,
    /// `Closed` events being reported (shutdown waits for them too).
    reports_in_flight: AtomicUsize,
    /// A drain tick (see `drain_tick`).
    drain_ticked: Event,
    accept_loops: AtomicUsize,
    latches: Latches,
    /// Claimed by the one call that drives a shutdown; the others wait for its result.
    stop_claimed: AtomicBool,
    stop_result: Mutex<Option<(ShutdownReport, Duration)>>,
    pool: Pool,
    clock: Clock,
    hooks: Hooks,
    counters: Counters,
    next_id: AtomicU64,
    limiter: Limiter,
    /// The listeners, in the order they were configured.
    endpoints: Vec<Arc<Endpoint>>,
    /// Each listener's socket, to hand to a new process at an upgrade; closed when
    /// accepting stops (so clients are refused after a shutdown, not left in a backlog).
    #[cfg(unix)]
    handovers: Mutex<Vec<(Arc<str>, crate::listener::Handover)>>,
    /// Chooses a connection's TLS configuration from its ClientHello.
    #[cfg(feature = "tls")]
    tls_select: Option<crate::tls::Select>,
    /// Fault points, under simulation.
    #[cfg(feature = "fault")]
    faults: Option<crate::fault::Injector>,
    /// Descriptors in use before serving, and the soft limit (0: unknown).
    fd_baseline: AtomicUsize,
    fd_limit: AtomicUsize,
    /// The last accept failed for want of descriptors.
    out_of_descriptors: AtomicBool,
    /// The last reported `PressureLevel`.
    pressure_level: AtomicU8,
    /// An upgrade is under way.
    #[cfg_attr(
        not(all(unix, any(feature = "async-io", feature = "tokio"))),
        allow(dead_code)
    )]
    upgrading: AtomicBool,
    /// Lame duck, hand-over and the user's conditions (see `ServerHandle::is_ready`).
    readiness: crate::readiness::Readiness,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state())
            .field("open_connections", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(
        runtime: Arc<dyn Runtime>,
        config: Config,
        hooks: Hooks,
        endpoints: Vec<Arc<Endpoint>>,
    ) -> Self {
        Core {
            clock: Clock::new(runtime.now()),
            limiter: Limiter::new(config.limits.clone()),
            runtime,
            config,
            state: AtomicU8::new(State::Created as u8),
            capacity: Capacity::default(),
            reports_in_flight: AtomicUsize::new(0),
            drain_ticked: Event::new(),
            accept_loops: AtomicUsize::new(0),
            latches: Latches::default(),
            stop_claimed: AtomicBool::new(false),
            stop_result: Mutex::new(None),
            pool: Pool::default(),
            hooks,
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            endpoints,
            #[cfg(unix)]
            handovers: Mutex::new(Vec::new()),
            upgrading: AtomicBool::new(false),
            readiness: Default::default(),
            fd_baseline: AtomicUsize::new(0),
            fd_limit: AtomicUsize::new(0),
            out_of_descriptors: AtomicBool::new(false),
            pressure_level: AtomicU8::new(0),
            #[cfg(feature = "tls")]
            tls_select: None,
            #[cfg(feature = "fault")]
            faults: None,
        }
    }

    /// Chooses each TLS connection's configuration from its ClientHello with `select`.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls_select(mut self, select: Option<crate::tls::Select>) -> Self {
        self.tls_select = select;
        self
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls_select(&self) -> Option<&crate::tls::Select> {
        self.tls_select.as_ref()
    }

    /// Waits for a place among the `max_handshakes` TLS handshakes that may run at once
    /// (at once when there is no limit); the handshake holds it until it ends.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) async fn handshake_place(&self) -> HandshakePlace<'_> {
        let Some(max) = self.config.max_handshakes else {
            return HandshakePlace::unlimited();
        };
        self.capacity.handshake_place(max).await
    }

    /// Injects faults at berth's fault points (simulation).
    #[cfg(feature = "fault")]
    pub(crate) fn with_faults(mut self, faults: Option<crate::fault::Injector>) -> Self {
        self.faults = faults;
        self
    }

    /// The fault injector, if any.
    #[cfg(feature = "fault")]
    pub(crate) fn faults(&self) -> Option<&crate::fault::Injector> {
        self.faults.as_ref()
    }

    /// Whether fault `point` fires now.
    #[cfg(feature = "fault")]
    pub(crate) fn fault(&self, point: crate::fault::Point) -> bool {
        self.faults.as_ref().is_some_and(|f| f.fire(point))
    }

    /// How long a delaying fault `point` waits, when it fires now.
    #[cfg(feature = "fault")]
    pub(crate) fn fault_delay(&self, point: crate::fault::Point) -> Option<Duration> {
        let faults = self.faults.as_ref()?;
        faults.fire(point).then(|| faults.delay(point))
    }

    pub(crate) fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    // --- life cycle -----------------------------------------------------------------------

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Created,
            1 => State::Running,
            2 => State::Draining,
            _ => State::Stopped,
        }
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Release);
    }

    // --- accept loops ---------------------------------------------------------------------

    /// An accept loop starts (before it is spawned, so a shutdown waits for it).
    pub(crate) fn accept_loop_started(&self) {
        self.accept_loops.fetch_add(1, Ordering::AcqRel);
    }

    /// An accept loop has dropped its listener.
    pub(crate) fn accept_loop_ended(&self) {
        if self.accept_loops.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.latches.accept_stopped.set();
        }
    }

    /// Whether accept loops should stop.
    pub(crate) fn stop_accepting_requested(&self) -> bool {
        self.latches.stop_accepting.is_set()
    }

    /// Completes when accept loops should stop.
    pub(crate) async fn accepting_stopped(&self) {
        self.latches.stop_accepting.wait().await;
    }

    /// Tells the accept loops to stop and waits until every one has dropped its listener.
    pub(crate) async fn stop_accepting(&self) {
        // The latch first, then the sockets kept for an upgrade (see `hand_over_unless_stopping`).
        self.latches.stop_accepting.set();
        #[cfg(unix)]
        lock(&self.handovers).clear();
        if self.accept_loops.load(Ordering::Acquire) == 0 {
            return;
        }
        self.latches.accept_stopped.wait().await;
    }

    // --- the open count -------------------------------------------------------------------

    /// Connections open now: counted from accept until their socket is closed.
    pub(crate) fn open_connections(&self) -> usize {
        self.capacity.open()
    }

    /// Counts a connection as open. Every call is matched by one [`report_closed`] or
    /// [`report_rejected`], from the connection's lifecycle value.
    ///
    /// [`report_closed`]: Self::report_closed
    /// [`report_rejected`]: Self::report_rejected
    pub(crate) fn count_open(&self) {
        self.capacity.count_open();
    }

    fn count_down(&self) {
        self.capacity.count_down();
    }

    /// Waits until fewer than `max` connections are open. Returns false if the accept loops
    /// were told to stop meanwhile.
    pub(crate) async fn below(&self, max: usize) -> bool {
        use futures_lite::FutureExt as _;
        // The usual case, on every accept: room, and no listener to register.
        if self.open_connections() < max {
            return true;
        }
        let below = async {
            self.capacity.below(max).await;
            true
        };
        let stop = async {
            self.accepting_stopped().await;
            false
        };
        stop.or(below).await
    }

    /// Waits for a place under `max` for a connection just accepted and holds it until the
    /// connection is counted, so that several accept loops (one per listener) never serve
    /// more than `max` between them. `None` if the accept loops were told to stop meanwhile.
    pub(crate) async fn reserve(&self, max: usize) -> Option<Reservation<'_>> {
        use futures_lite::FutureExt as _;
        let reserve = async { Some(self.capacity.reserve(max).await) };
        let stop = async {
            self.accepting_stopped().await;
            None
        };
        stop.or(reserve).await
    }

    pub(crate) fn try_reserve(&self, max: usize) -> Option<Reservation<'_>> {
        self.capacity.try_reserve(max)
    }

    /// Whether no connection is open and every `Closed` event has fired.
    pub(crate) fn all_closed(&self) -> bool {
        self.open_connections() == 0 && self.reports_in_flight.load(Ordering::Acquire) == 0
    }

    /// Waits until [`all_closed`](Self::all_closed).
    pub(crate) async fn wait_all_closed(&self) {
        until(self.capacity.closed(), || self.all_closed().then_some(())).await
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    // --- the end of a connection ----------------------------------------------------------

    /// The end of a served connection, once its socket is closed: stats, the count, the
    /// `Closed` event. The count drops before the event (a hook that sees `Closed` sees the
    /// new count); the report stays "in flight" until the event is out, and shutdown waits
    /// for in-flight reports too (after it returns, every `Closed` event has fired).
    pub(crate) fn report_closed(
        &self,
        id: u64,
        peer_addr: Addr,
        reason: CloseReason,
        opened_at: Instant,
    ) {
        self.counters.closed(reason);
        self.reports_in_flight.fetch_add(1, Ordering::AcqRel);
        self.count_down();
        self.hooks.conn(ConnEvent::Closed {
            id,
            peer_addr,
            reason,
            duration: self.runtime.now().saturating_duration_since(opened_at),
        });
        self.reports_in_flight.fetch_sub(1, Ordering::AcqRel);
        self.capacity.closed().notify(usize::MAX);
    }

    /// The end of a connection refused after it was counted (a bad PROXY header, admission
    /// on the client's original address): it never counted as served.
    pub(crate) fn report_rejected(&self, peer_addr: Addr, reason: RejectReason) {
        self.counters.add(Count::Rejected);
        self.count_down();
        self.hooks.conn(ConnEvent::Rejected { peer_addr, reason });
    }

    /// A counted connection that ends unannounced (its task was dropped before `Accepted`).
    pub(crate) fn report_abandoned(&self) {
        self.count_down();
    }

    /// A connection refused on the accept loop, before it was counted: counted now, the
    /// event reported off the loop.
    pub(crate) fn reject_on_loop(&self, peer_addr: Addr, reason: RejectReason) {
        self.counters.add(Count::Rejected);
        self.hooks
            .defer(Report::Conn(ConnEvent::Rejected { peer_addr, reason }));
    }

    /// An accept error, counted now and reported off the loop.
    pub(crate) fn accept_error(&self, error: Option<Error>) {
        self.counters.add(Count::AcceptError);
        #[cfg(feature = "metrics")]
        crate::metrics::accept_error();
        if let Some(error) = error {
            self.hooks.defer(Report::Error(error));
        }
    }

    pub(crate) fn count(&self, what: Count) {
        self.counters.add(what);
    }

    pub(crate) fn stats(&self) -> Stats {
        self.counters
            .snapshot(self.open_connections(), self.hooks.dropped())
    }

    // --- slots ----------------------------------------------------------------------------

    /// Registers a connection for the idle scanner and server-side closes. A connection
    /// that registers after shutdown's final sweep is closed at once, so none escapes it.
    pub(crate) fn register(&self, id: u64) -> (Arc<Slot>, u64) {
        let (slot, generation) = self.pool.open(self.clock.stamp(), || {
            self.counters.add(Count::SlotAllocated)
        });
        slot.id.store(id, Ordering::Relaxed);
        // Pairs with the fence in `start_forcing`: either the final sweep sees this slot
        // open, or this sees the force latch (a store then a load on each side).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.latches.force.is_set() {
            slot.close(generation, SlotState::ShutdownForced);
        }
        (slot, generation)
    }

    /// Ends a registration; returns the connection's final state as it saw it.
    pub(crate) fn unregister(&self, slot: &Arc<Slot>, generation: u64) -> SlotState {
        self.pool.release(slot, generation)
    }

    /// Runs `f` on every open slot with its generation.
    pub(crate) fn for_each_open(&self, f: impl FnMut(&Slot, u64)) {
        self.pool.for_each_open(f);
    }

    /// Runs `f` on every registered slot with its generation and state (see `Pool`).
    pub(crate) fn for_each_registered(&self, f: impl FnMut(&Slot, u64, SlotState)) {
        self.pool.for_each_registered(f);
    }

    // --- the coarse clock -----------------------------------------------------------------

    /// The activity stamp for now (see `idle`).
    pub(crate) fn stamp(&self) -> u64 {
        self.clock.stamp()
    }

    /// Nanoseconds since the server started, on the runtime's clock.
    pub(crate) fn now_ns(&self) -> u64 {
        self.clock.since_origin(self.runtime.now())
    }

    /// Retires the current activity period now (see `Clock`), keeping `keep` periods.
    pub(crate) fn advance_clock(&self, now_ns: u64, keep: usize) -> Periods {
        self.clock.advance(now_ns, keep)
    }

    // --- admission ------------------------------------------------------------------------

    pub(crate) fn admission_active(&self) -> bool {
        self.limiter.is_active()
    }

    /// Admits a client by IP (`None`: a Unix peer) under the limits.
    pub(crate) fn admit(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Option<IpKey>, RejectReason> {
        self.limiter.admit(ip, self.now_ns())
    }

    /// Gives back what [`admit`](Self::admit) took.
    pub(crate) fn release_admission(&self, key: IpKey) {
        self.limiter.release(key, self.now_ns());
    }

    // --- shutdown -------------------------------------------------------------------------

    /// Whether the server has started a graceful shutdown.
    pub(crate) fn is_draining(&self) -> bool {
        self.latches.draining.is_set()
    }

    /// The drain latch, for futures that wait on it without borrowing the core.
    pub(crate) fn draining(&self) -> &Latch {
        &self.latches.draining
    }

    /// A tick of the drain: connections that have sent nothing yet look again whether their
    /// first request's grace is over (see `Conn::is_draining`).
    pub(crate) fn drain_tick(&self) {
        self.pool.for_each_open(|slot, _| {
            if slot.flags() & crate::pool::SAW_DATA == 0 {
                slot.read_waker.wake();
            }
        });
        self.drain_ticked.notify(usize::MAX);
    }

    /// Notified at each drain tick.
    pub(crate) fn drain_ticked(&self) -> &Event {
        &self.drain_ticked
    }

    pub(crate) fn start_draining(&self) {
        self.set_state(State::Draining);
        self.latches.draining.set();
        // Wake handlers waiting in `Conn::readable`, which returns once draining has begun.
        self.pool.for_each_open(|slot, _| slot.read_waker.wake());
    }

    /// Whether shutdown's final sweep has begun: everything still open is force-closed.
    pub(crate) fn is_forced(&self) -> bool {
        self.latches.force.is_set()
    }

    pub(crate) async fn forced(&self) {
        self.latches.force.wait().await;
    }

    pub(crate) fn start_forcing(&self) {
        self.latches.force.set();
        // Pairs with the fence in `register` (see there).
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    pub(crate) fn request_close(&self) {
        self.latches.close_requested.set();
    }

    pub(crate) async fn close_requested(&self) {
        self.latches.close_requested.wait().await;
    }

    pub(crate) async fn stopped(&self) {
        self.latches.stopped.wait().await;
    }

    pub(crate) fn stopped_latch(&self) -> &Latch {
        &self.latches.stopped
    }

    /// Claims the shutdown; false if another call already drives it.
    pub(crate) fn claim_stop(&self) -> bool {
        !self.stop_claimed.swap(true, Ordering::AcqRel)
    }

    /// Records the shutdown's outcome and marks the server stopped.
    pub(crate) fn finish_stop(&self, report: ShutdownReport, grace: Duration) {
        *lock(&self.stop_result) = Some((report, grace));
        self.set_state(State::Stopped);
        self.latches.stopped.set();
    }

    /// The shutdown's outcome, as every caller of `shutdown` sees it.
    pub(crate) fn stop_result(&self) -> Result<ShutdownReport, Error> {
        let (report, grace) = lock(&self.stop_result).unwrap_or_default();
        if report.forced > 0 {
            Err(Error::ShutdownTimeout {
                forced: report.forced,
                drained: report.drained,
                grace,
            })
        } else {
            Ok(report)
        }
    }

    /// The shutdown's report (default before one finished).
    pub(crate) fn stop_report(&self) -> ShutdownReport {
        lock(&self.stop_result)
            .map(|(report, _)| report)
            .unwrap_or_default()
    }

    // --- pressure ---------------------------------------------------------------------------

    /// Notes the descriptor limit and the descriptors in use before serving, so that the
    /// descriptors in use can be estimated as those plus the open connections.
    pub(crate) fn measure_descriptors(&self) {
        let (used, limit) = descriptors();
        self.fd_baseline.store(used, Ordering::Relaxed);
        self.fd_limit.store(limit, Ordering::Relaxed);
    }

    /// `accept` ran out of descriptors (true) or succeeded again (false).
    pub(crate) fn set_out_of_descriptors(&self, out: bool) {
        self.out_of_descriptors.store(out, Ordering::Relaxed);
    }

    /// The pressure now, given the event loop's `lag`: the highest of descriptors in use
    /// against the limit, open connections against `max_connections`, and lag against
    /// `overload.max_lag`. 1.0 is at a limit.
    pub(crate) fn pressure(&self, lag: Duration) -> f64 {
        if self.out_of_descriptors.load(Ordering::Relaxed) {
            return 1.0;
        }
        let open = self.capacity.in_use();
        let mut pressure: f64 = 0.0;
        let limit = self.fd_limit.load(Ordering::Relaxed);
        if limit > 0 {
            let used = self.fd_baseline.load(Ordering::Relaxed) + open;
            pressure = pressure.max(used as f64 / limit as f64);
        }
        if let Some(max) = self.config.max_connections {
            pressure = pressure.max(open as f64 / max as f64);
        }
        if let Some(max_lag) = self.config.overload.max_lag {
            pressure = pressure.max(lag.as_secs_f64() / max_lag.as_secs_f64());
        }
        pressure
    }

    /// Records the pressure level; the previous one.
    pub(crate) fn swap_pressure_level(&self, level: PressureLevel) -> PressureLevel {
        match self.pressure_level.swap(level as u8, Ordering::AcqRel) {
            2 => PressureLevel::Critical,
            1 => PressureLevel::High,
            _ => PressureLevel::Normal,
        }
    }

    /// Closes the connection idle the longest, if it has been idle at least `min` (to make
    /// room for a new client): its id and how long it was idle.
    pub(crate) fn evict_idlest(&self, min: Duration) -> Option<(u64, Duration)> {
        let now = self.now_ns();
        let min = u64::try_from(min.as_nanos()).unwrap_or(u64::MAX);
        let periods = self.clock.periods();
        let (slot, generation) = self.pool.idlest(periods.newest_older_than(now, min)?)?;
        let last = periods.latest(slot.last_active.load(Ordering::Relaxed));
        let idle = now.saturating_sub(last.unwrap_or(now));
        slot.close(generation, SlotState::Evicted)
            .then(|| (slot.id.load(Ordering::Relaxed), Duration::from_nanos(idle)))
    }

    /// Completes when a connection closes (after this call).
    pub(crate) fn closed_listener(&self) -> crate::sync::EventListener {
        self.capacity.closed().listen()
    }

    // --- upgrades -------------------------------------------------------------------------

    /// Keeps the listeners' sockets for an upgrade.
    #[cfg(unix)]
    pub(crate) fn keep_handovers(&self, handovers: Vec<(Arc<str>, crate::listener::Handover)>) {
        lock(&self.handovers).extend(handovers);
    }

    /// Keeps one more socket for an upgrade (replacing one of the same name).
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn add_handover(&self, name: Arc<str>, handover: crate::listener::Handover) {
        let mut handovers = lock(&self.handovers);
        handovers.retain(|(n, _)| *n != name);
        handovers.push((name, handover));
    }

    /// Duplicates of the listeners' sockets, by name, for a new process.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn handover_sockets(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        lock(&self.handovers)
            .iter()
            .map(|(name, handover)| Ok((name.to_string(), handover.fd.try_clone()?)))
            .collect()
    }

    /// The sockets were handed over: the old listeners leave Unix socket files in place.
    /// False, and nothing done, when a shutdown began first (its listeners may already be
    /// gone, files and all): the new process must not serve then.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn handed_over_unless_stopping(&self) -> bool {
        let handovers = lock(&self.handovers);
        if self.stop_accepting_requested() {
            return false;
        }
        for (_, handover) in handovers.iter() {
            if let Some(keep) = &handover.keep_file {
                keep.store(true, Ordering::Release);
            }
        }
        true
    }

    /// Every Unix socket file is its listener's again (after an adopting server said it is
    /// ready: until then a failure must not remove the file the old process serves).
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn own_socket_files(&self) {
        for (_, handover) in lock(&self.handovers).iter() {
            if let Some(keep) = &handover.keep_file {
                keep.store(false, Ordering::Release);
            }
        }
    }

    /// Lame duck, hand-over and the user's readiness conditions.
    pub(crate) fn readiness(&self) -> &crate::readiness::Readiness {
        &self.readiness
    }

    /// Claims the one upgrade that may run at a time; false if one is under way.
    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn start_upgrade(&self) -> bool {
        !self.upgrading.swap(true, Ordering::AcqRel)
    }

    #[cfg(all(unix, any(feature = "async-io", feature = "tokio")))]
    pub(crate) fn end_upgrade(&self) {
        self.upgrading.store(false, Ordering::Release);
    }

    // --- listeners and TLS ----------------------------------------------------------------

    /// The listeners, in the order they were configured.
    pub(crate) fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Whether any listener serves TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_tls())
    }

    /// Replaces the TLS configuration of every TLS listener; false when none serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self, config: Arc<rustls::ServerConfig>) -> bool {
        let mut any = false;
        for endpoint in &self.endpoints {
            any |= endpoint.set_tls(config.clone());
        }
        any
    }
}

/// One listener of a server, as its connections see it: its name, its address, and the TLS
/// configuration new connections on it use (swapped whole by a reload).
#[derive(Debug)]
pub(crate) struct Endpoint {
    name: Arc<str>,
    addr: Addr,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: std::sync::RwLock<TlsSetting>,
    /// The settings its TLS configuration was loaded from, when they are to be watched.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    watched: Option<crate::tls::TlsConfig>,
    /// Its ticket keys and session cache, kept across reloads (and handed to the next
    /// process at an upgrade); `None` for plain listeners and ready-made rustls configs.
    #[cfg(feature = "tls")]
    resumption: Option<crate::tls::Resumption>,
}

impl Endpoint {
    pub(crate) fn new(name: Arc<str>, addr: Addr, tls: TlsSetting) -> Self {
        Endpoint {
            name,
            addr,
            tls: std::sync::RwLock::new(tls),
            watched: None,
            #[cfg(feature = "tls")]
            resumption: None,
        }
    }

    /// With `resumption` as its ticket keys and session cache.
    #[cfg(feature = "tls")]
    pub(crate) fn with_resumption(mut self, resumption: Option<crate::tls::Resumption>) -> Self {
        self.resumption = resumption;
        self
    }

    /// Its ticket keys and session cache, if berth made them.
    #[cfg(feature = "tls")]
    pub(crate) fn resumption(&self) -> Option<&crate::tls::Resumption> {
        self.resumption.as_ref()
    }

    /// Watch `tls`'s files for this endpoint (see `reload`).
    pub(crate) fn watching(mut self, tls: Option<crate::tls::TlsConfig>) -> Self {
        self.watched = tls.filter(|tls| tls.watch.is_some());
        self
    }

    /// The settings to watch, if any.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn watched(&self) -> Option<&crate::tls::TlsConfig> {
        self.watched.as_ref()
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn addr(&self) -> &Addr {
        &self.addr
    }

    /// The TLS configuration new connections use, if this listener serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        crate::sync::read(&self.tls).clone()
    }

    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls().is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Replaces the TLS configuration of a TLS listener; false for a plain one.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self, config: Arc<rustls::ServerConfig>) -> bool {
        let mut current = crate::sync::write(&self.tls);
        if current.is_none() {
            return false;
        }
        *current = Some(config);
        true
    }
}

/// The coarse clock. Activity is stamped with the number of the current sweep period (one
/// relaxed load and store on the read/write path, no syscall); each sweep of the idle
/// scanner retires that number, noting when, and starts the next. So a stamp says the
/// activity happened before its period was retired: comparing the retirement time (not a
/// planned time) with the timeout never reaps early, even when a sweep runs late.
#[derive(Debug)]
pub(crate) struct Clock {
    origin: Instant,
    /// The current period's number.
    current: AtomicU64,
    /// The most recent retired periods: `(number, nanoseconds since origin)`, oldest first,
    /// consecutive numbers.
    retired: Mutex<std::collections::VecDeque<(u64, u64)>>,
}

impl Clock {
    pub(crate) fn new(origin: Instant) -> Self {
        Clock {
            origin,
            current: AtomicU64::new(0),
            retired: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The stamp for activity happening now.
    pub(crate) fn stamp(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    pub(crate) fn since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Retires the current period at `now_ns` and starts the next; keeps the last `keep`
    /// retired periods. Returns them.
    pub(crate) fn advance(&self, now_ns: u64, keep: usize) -> Periods {
        let mut retired = lock(&self.retired);
        let current = self.current.load(Ordering::Relaxed);
        retired.push_back((current, now_ns));
        while retired.len() > keep.max(1) {
            retired.pop_front();
        }
        self.current.store(current + 1, Ordering::Relaxed);
        Periods {
            next: current + 1,
            retired: retired.iter().map(|&(_, at)| at).collect(),
            first: retired.front().map_or(current, |&(n, _)| n),
        }
    }

    /// The retired periods as they are now.
    pub(crate) fn periods(&self) -> Periods {
        let retired = lock(&self.retired);
        let current = self.current.load(Ordering::Relaxed);
        Periods {
            next: current,
            retired: retired.iter().map(|&(_, at)| at).collect(),
            first: retired.front().map_or(current, |&(n, _)| n),
        }
    }
}

/// A copy of the clock's recent periods, to judge stamps against.
#[derive(Debug)]
pub(crate) struct Periods {
    /// The current (not retired) period.
    next: u64,
    /// When each retired period ended, from `first` on.
    retired: Vec<u64>,
    first: u64,
}

impl Periods {
    /// When the activity stamped `stamp` happened at the latest (nanoseconds since origin),
    /// or `None` if its period is still current. Periods older than those kept are taken as
    /// long past (0).
    pub(crate) fn latest(&self, stamp: u64) -> Option<u64> {
        if stamp >= self.next {
            return None;
        }
        match stamp.checked_sub(self.first) {
            Some(i) => self.retired.get(i as usize).copied(),
            None => Some(0),
        }
    }

    /// The newest stamp whose activity is at least `min` old at `now` (nanoseconds), if any.
    pub(crate) fn newest_older_than(&self, now: u64, min: u64) -> Option<u64> {
        let cutoff = now.checked_sub(min)?;
        let newest = self
            .retired
            .iter()
            .rposition(|&at| at <= cutoff)
            .map(|i| self.first + i as u64);
        match newest {
            Some(stamp) => Some(stamp),
            // Periods older than those kept ended before the oldest one kept.
            None if self.first > 0 => Some(self.first - 1),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_dates_activity_by_when_its_period_ended_even_when_a_sweep_is_late() {
        let clock = Clock::new(Instant::now());
        let early = clock.stamp();
        // Sweeps planned every 100 ns; the second runs 150 ns late.
        clock.advance(100, 10);
        let during_the_late_tick = clock.stamp();
        let periods = clock.advance(350, 10);
        assert_eq!(periods.latest(early), Some(100));
        assert_eq!(
            periods.latest(during_the_late_tick),
            Some(350),
            "activity stamped before the late sweep may have happened up to it"
        );
        assert_eq!(periods.latest(clock.stamp()), None, "still current");
        // At 500, what is at least 200 old ended at 300 or before: the first period only.
        assert_eq!(periods.newest_older_than(500, 200), Some(early));
        assert_eq!(periods.newest_older_than(500, 450), None);
        // Periods older than those kept count as long past.
        let clock = Clock::new(Instant::now());
        let ancient = clock.stamp();
        for at in 1..=5 {
            clock.advance(at * 100, 2);
        }
        let periods = clock.periods();
        assert_eq!(periods.latest(ancient), Some(0));
        assert_eq!(periods.newest_older_than(500, 50), Some(3));
    }
}
