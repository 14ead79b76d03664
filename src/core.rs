//! The core every part of one server shares: its settings, runtime and hooks, and the owned
//! parts it is made of (the clock, the capacity, the stop with its readiness, the pressure,
//! admission, the slot pool, the counters) and the listeners (their endpoints, kept sockets
//! and TLS choice).
//!
//! Each part is a type in its own file that knows nothing of the core or of the other
//! parts; [`Core`] holds them and does what spans several of them (counting a connection
//! closed: capacity, counters and hooks; registering a slot against the final sweep: pool
//! and stop). Mechanisms use a part directly where that is all they need (`core.stop()`,
//! `core.pressure()`, `core.handovers()`). It imports only the vocabulary modules and the
//! parts, so every mechanism can depend on it and nothing in it depends on a mechanism.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::addr::Addr;
use crate::admission::{IpKey, Limiter};
use crate::capacity::Capacity;
pub(crate) use crate::capacity::{HandshakePlace, Reservation};
use crate::clock::{Clock, Periods};
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::error::ServeError;
use crate::events::{CloseReason, ConnEvent, Count, Counters, Stats};
use crate::hooks::{Hooks, Report};
use crate::limits::RejectReason;
use crate::listeners::Listeners;
use crate::pool::{Pool, Slot, SlotState};
use crate::pressure::Pressure;
use crate::runtime::Runtime;
use crate::stop::{State, Stop};
use crate::sync::until;

/// One server's shared state. See the module docs.
pub(crate) struct Core {
    runtime: Arc<dyn Runtime>,
    config: Config,
    /// The state, the shutdown latches and result, and the readiness.
    stop: Stop,
    /// The open count, the `max_connections` reservations, the `Closed` reports under way
    /// and the `max_handshakes` places.
    capacity: Capacity,
    pool: Pool,
    clock: Clock,
    hooks: Hooks,
    /// The statistics and the connection ids.
    counters: Counters,
    limiter: Limiter,
    pressure: Pressure,
    /// The endpoints, the sockets kept for an upgrade and the TLS choice.
    listeners: Listeners,
    /// Fault points, under simulation.
    #[cfg(feature = "fault")]
    faults: Option<crate::fault::Injector>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
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
            pressure: Pressure::new(config.max_connections, &config.overload),
            runtime,
            config,
            stop: Stop::default(),
            capacity: Capacity::default(),
            pool: Pool::default(),
            hooks,
            counters: Counters::default(),
            listeners: Listeners::new(endpoints),
            #[cfg(feature = "fault")]
            faults: None,
        }
    }

    /// Chooses each TLS connection's configuration from its ClientHello with `select`.
    #[cfg(feature = "tls")]
    pub(crate) fn with_tls_select(mut self, select: Option<crate::tls::Select>) -> Self {
        self.listeners = self.listeners.with_select(select);
        self
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls_select(&self) -> Option<&crate::tls::Select> {
        self.listeners.select()
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

    // --- the parts ------------------------------------------------------------------------

    /// The state, the shutdown latches and the shutdown's result.
    pub(crate) fn stop(&self) -> &Stop {
        &self.stop
    }

    /// The pressure's sources and level.
    pub(crate) fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    /// The sockets kept for an upgrade.
    #[cfg(unix)]
    pub(crate) fn handovers(&self) -> &crate::handovers::Handovers {
        self.listeners.handovers()
    }

    /// Lame duck, hand-over and the user's readiness conditions (held by the stop).
    pub(crate) fn readiness(&self) -> &crate::readiness::Readiness {
        self.stop.readiness()
    }

    pub(crate) fn state(&self) -> State {
        self.stop.state()
    }

    // --- accept loops ---------------------------------------------------------------------

    /// Tells the accept loops to stop and waits until every one has dropped its listener.
    pub(crate) async fn stop_accepting(&self) {
        // The latch first, then the sockets kept for an upgrade (see
        // `Handovers::handed_over_unless`).
        self.stop.request_stop_accepting();
        #[cfg(unix)]
        self.listeners.handovers().close_all();
        self.stop.accept_loops_ended().await;
    }

    // --- the open count -------------------------------------------------------------------

    /// Connections open now: counted from accept until their socket is closed.
    pub(crate) fn open_connections(&self) -> usize {
        self.capacity.open()
    }

    /// Connections open plus places reserved (a relaxed estimate, for the pressure).
    pub(crate) fn in_use(&self) -> usize {
        self.capacity.in_use()
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
            self.stop.accepting_stopped().await;
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
            self.stop.accepting_stopped().await;
            None
        };
        stop.or(reserve).await
    }

    pub(crate) fn try_reserve(&self, max: usize) -> Option<Reservation<'_>> {
        self.capacity.try_reserve(max)
    }

    /// Whether no connection is open and every `Closed` event has fired.
    pub(crate) fn all_closed(&self) -> bool {
        self.capacity.all_closed()
    }

    /// Waits until [`all_closed`](Self::all_closed).
    pub(crate) async fn wait_all_closed(&self) {
        until(self.capacity.closed(), || self.all_closed().then_some(())).await
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.counters.next_id()
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
        self.capacity.report_begun();
        self.count_down();
        self.hooks.conn(ConnEvent::Closed {
            id,
            peer_addr,
            reason,
            duration: self.runtime.now().saturating_duration_since(opened_at),
        });
        self.capacity.report_done();
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
    pub(crate) fn accept_error(&self, error: Option<ServeError>) {
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
        // Pairs with the fence in `Stop::force`: either the final sweep sees this slot
        // open, or this sees the force latch (a store then a load on each side).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.stop.is_forced() {
            slot.close(generation, SlotState::ShutdownForced);
        }
        (slot, generation)
    }

    /// Ends a registration; returns the connection's final state as it saw it.
    pub(crate) fn unregister(&self, slot: &Arc<Slot>, generation: u64) -> SlotState {
        let state = self.pool.release(slot, generation);
        // Ended on its own during the final sweep, before the sweep reached it: the sweep
        // will not see it, and shutdown's report must not count it as forced.
        if state == SlotState::Open && self.stop.is_forced() {
            self.stop.note_ended_unforced();
        }
        state
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

    /// A tick of the drain: connections that have sent nothing yet look again whether their
    /// first request's grace is over (see `Conn::is_draining`).
    pub(crate) fn drain_tick(&self) {
        self.pool.for_each_open(|slot, _| {
            if slot.flags() & crate::pool::SAW_DATA == 0 {
                slot.read_waker.wake();
            }
        });
        self.stop.drain_ticked().notify(usize::MAX);
    }

    pub(crate) fn start_draining(&self) {
        self.stop.start_draining();
        // Wake handlers waiting in `Conn::readable`, which returns once draining has begun.
        self.pool.for_each_open(|slot, _| slot.read_waker.wake());
    }

    // --- eviction ---------------------------------------------------------------------------

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

    // --- listeners and TLS ----------------------------------------------------------------

    /// The listeners, in the order they were configured.
    pub(crate) fn endpoints(&self) -> &[Arc<Endpoint>] {
        self.listeners.endpoints()
    }

    /// Whether any listener serves TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.listeners.is_tls()
    }

    /// Replaces the TLS configuration of every TLS listener; false when none serves TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self, config: Arc<rustls::ServerConfig>) -> bool {
        self.listeners.set_tls(config)
    }
}

#[cfg(all(test, feature = "smol"))]
mod tests {
    use super::*;

    fn core() -> Core {
        let addr: Addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into();
        let endpoint = Arc::new(Endpoint::new("test".into(), addr, None));
        Core::new(
            Arc::new(crate::runtime::Smol::global()),
            Config::default(),
            Hooks::default(),
            vec![endpoint],
        )
    }

    /// Shutdown's report counts as forced what was open at its snapshot, less what was not
    /// forced; a handler that ends on its own after the force latch, before the final sweep
    /// reaches its slot, is one of those (the sweep never sees it), and one the sweep cut is
    /// not.
    #[test]
    fn only_connections_ending_on_their_own_after_the_force_are_noted_unforced() {
        let core = core();
        let (before, before_gen) = core.register(1);
        assert_eq!(core.unregister(&before, before_gen), SlotState::Open);
        assert_eq!(core.stop().ended_unforced(), 0, "ended before the force");

        let (natural, natural_gen) = core.register(2);
        let (cut, cut_gen) = core.register(3);
        core.stop().force();
        assert!(
            cut.close(cut_gen, SlotState::ShutdownForced),
            "the sweep cuts it"
        );
        assert_eq!(core.unregister(&cut, cut_gen), SlotState::ShutdownForced);
        assert_eq!(core.unregister(&natural, natural_gen), SlotState::Open);
        assert_eq!(
            core.stop().ended_unforced(),
            1,
            "only the one that ended on its own"
        );

        // Registered after the force: closed at once as forced, never noted.
        let (late, late_gen) = core.register(4);
        assert_eq!(core.unregister(&late, late_gen), SlotState::ShutdownForced);
        assert_eq!(core.stop().ended_unforced(), 1);
    }
}
