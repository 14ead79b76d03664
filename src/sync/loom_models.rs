use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use loom::thread;

use super::*;

/// Runs `future` to completion on this model thread, parking it while it waits (loom
/// reports a thread parked forever as a deadlock). loom's own `block_on` cannot report
/// one: its waker's loom `Arc` panics again while the first panic unwinds, and the test
/// process aborts.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        thread::park();
    }
}

/// Checks `model` over every execution loom finds, twice: with atomic loads read as
/// read-modify-writes (every interleaving, each load seeing the latest value; see
/// `model::atomic`), then as loads (weak memory: a load may see an older value), with
/// at most `preemptions` preemptions per execution when given (`LOOM_MAX_PREEMPTIONS`
/// overrides it). Prints how many executions each way explored.
pub fn explore(name: &str, preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let model = Arc::new(model);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = builder.preemption_bound.or(preemptions);
    let bound = builder
        .preemption_bound
        .map_or_else(|| "none".to_owned(), |b| b.to_string());
    for (loads, as_rmw) in [("loads as RMW", true), ("loads", false)] {
        let runs = Arc::new(AtomicUsize::new(0));
        let (counted, model) = (runs.clone(), model.clone());
        let started = std::time::Instant::now();
        atomic::loads_as_rmw(as_rmw);
        builder.check(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            model();
        });
        eprintln!(
            "loom model {name} ({loads}): {} executions, preemption bound {bound}, {:.2?}",
            runs.load(Ordering::Relaxed),
            started.elapsed()
        );
    }
    atomic::loads_as_rmw(false);
}

pub fn event_stand_in_keeps_event_listeners_contract() {
    explore("event stand-in contract", None, check_event_contract);
}

/// A latch set on one thread, awaited on two others: with `wait`, and as
/// `Conn::draining` does it by hand (check, listen, check again, sleep).
pub fn latch_waiters_never_miss_the_set() {
    explore("latch: set vs wait and listen", None, || {
        let latch = Arc::new(Latch::default());
        let setter = {
            let latch = latch.clone();
            thread::spawn(move || latch.set())
        };
        let by_hand = {
            let latch = latch.clone();
            thread::spawn(move || {
                if !latch.is_set() {
                    let listener = latch.listen();
                    if !latch.is_set() {
                        block_on(listener);
                    }
                }
                assert!(latch.is_set());
            })
        };
        block_on(latch.wait());
        assert!(latch.is_set());
        setter.join().unwrap();
        by_hand.join().unwrap();
    });
}

/// `until` on a condition two other threads complete, each notifying after its step:
/// a notify between its two checks is never lost, and what it returns was true.
pub fn until_never_misses_a_notify_between_its_checks() {
    explore("until: two steps vs check-listen-check", None, || {
        let shared = Arc::new((atomic::AtomicUsize::new(0), Event::new()));
        let steps: Vec<_> = (0..2)
            .map(|_| {
                let shared = shared.clone();
                thread::spawn(move || {
                    shared.0.fetch_add(1, Ordering::Release);
                    shared.1.notify(usize::MAX);
                })
            })
            .collect();
        let seen = block_on(until(&shared.1, || {
            let n = shared.0.load(Ordering::Acquire);
            (n == 2).then_some(n)
        }));
        assert_eq!(seen, 2);
        for step in steps {
            step.join().unwrap();
        }
    });
}

/// A value sent on one thread while another waits for it (or not yet).
pub fn oneshot_recv_gets_what_send_sent() {
    explore("oneshot: send vs recv", None, || {
        let done = Oneshot::new();
        let sender = done.clone();
        let sending = thread::spawn(move || sender.send(7));
        assert_eq!(block_on(done.recv()), 7);
        sending.join().unwrap();
    });
}

/// The control: a wait that listens without checking again is caught (a set between the
/// check and `listen` is lost, and loom reports the waiter stuck), so the models above
/// pass because the protocol is right, not because the stand-in's notifications stick.
/// Panics (loom reports a deadlock): the runner expects it to.
pub fn a_wait_without_the_second_check_is_caught() {
    explore("control: check, listen, sleep", None, || {
        let latch = Arc::new(Latch::default());
        let setter = {
            let latch = latch.clone();
            thread::spawn(move || latch.set())
        };
        if !latch.is_set() {
            block_on(latch.listen());
        }
        setter.join().unwrap();
    });
}
