//! State shared by the source thread, the client readers and the
//! coordinator: the first failure, the stream's plan once the opening is
//! over, counters for progress, and the source's wake-up.
//!
//! Counters are relaxed atomics updated once per write or per read, never
//! per event.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::failure::Failure;
use super::latency::{Latencies, SendClock};
use followermaze_protocol::Seq;

/// The stream's numbering, fixed when the opening broadcasts end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The last opening broadcast (0 when there was no opening: no clients).
    pub(crate) opening_end: Seq,
    /// The last sequence number; a broadcast every client must receive.
    pub(crate) final_seq: Seq,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Chunk send times, for latency and for timeouts.
    pub(crate) clock: SendClock,
    /// The first failure; later ones are consequences and are dropped.
    failure: Mutex<Option<Failure>>,
    /// Cancelled on the first failure (and when the run ends), so every
    /// task stops waiting at once.
    pub(crate) cancel: CancellationToken,
    /// Set exactly when `failure` is, readable without the lock.
    aborted: AtomicBool,
    /// Set once, before any entry of the main stream is queued.
    plan: OnceLock<Plan>,
    /// Clients that have received an opening broadcast.
    registered: AtomicUsize,
    /// Which ones, by client index.
    registered_clients: Box<[AtomicBool]>,
    /// Events written to the server so far.
    pub(crate) events_sent: AtomicU64,
    /// Every sequence number up to this has been handed to the event
    /// socket: stored (release) before each write, so a server can never be
    /// at a later position (read with acquire).
    pub(crate) events_handed: AtomicU64,
    /// Notifications received so far, all clients.
    pub(crate) notifications: AtomicU64,
    /// Notification bytes received so far, all clients.
    pub(crate) bytes_received: AtomicU64,
    /// The source thread, to wake it.
    source: OnceLock<Thread>,
    /// True while the source is parked waiting for a reader.
    source_parked: AtomicBool,
    /// Reconnect-to-verdict times of every resume, all clients: one
    /// histogram behind a lock rather than one per client, since a resume
    /// is rare next to a line and a histogram is 30 KiB.
    resume_latency: Mutex<Latencies>,
}

impl Shared {
    /// State for a run with `clients` client connections.
    pub(crate) fn new(clients: usize) -> Shared {
        Shared {
            registered_clients: (0..clients).map(|_| AtomicBool::new(false)).collect(),
            ..Shared::default()
        }
    }

    /// Records that client `index` received its first opening broadcast,
    /// and wakes the source, which waits for everyone.
    pub(crate) fn mark_registered(&self, index: usize) {
        if let Some(flag) = self.registered_clients.get(index) {
            if !flag.swap(true, Ordering::SeqCst) {
                self.registered.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.wake_source();
    }

    /// Records one resume's reconnect-to-verdict time.
    pub(crate) fn record_resume(&self, latency: Duration) {
        self.resume_latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(latency.as_micros() as u64);
    }

    /// Every resume's reconnect-to-verdict time so far.
    pub(crate) fn resume_latency(&self) -> Latencies {
        self.resume_latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How many clients have received an opening broadcast.
    pub(crate) fn registered(&self) -> usize {
        self.registered.load(Ordering::SeqCst)
    }

    /// The first client that has not received an opening broadcast.
    pub(crate) fn first_unregistered(&self) -> Option<usize> {
        self.registered_clients
            .iter()
            .position(|flag| !flag.load(Ordering::SeqCst))
    }

    /// Records `failure` if it is the first, and stops everything.
    pub(crate) fn fail(&self, failure: Failure) {
        {
            let mut slot = self
                .failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                *slot = Some(failure);
            }
        }
        self.aborted.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        if let Some(source) = self.source.get() {
            source.unpark();
        }
    }

    /// Whether a failure has been recorded.
    #[inline]
    pub(crate) fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }

    /// The first failure, if any.
    pub(crate) fn failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fixes the plan; the source calls this once, before queueing any
    /// entry of the main stream.
    pub(crate) fn set_plan(&self, plan: Plan) {
        let fresh = self.plan.set(plan).is_ok();
        debug_assert!(fresh, "the plan is set once");
    }

    /// The plan, once the opening is over.
    #[inline]
    pub(crate) fn plan(&self) -> Option<Plan> {
        self.plan.get().copied()
    }

    /// Registers the calling thread as the source (to be woken).
    pub(crate) fn register_source_thread(&self) {
        let _ = self.source.set(std::thread::current());
    }

    /// Source side: parks until `ready()` holds, a failure, or `max` passes;
    /// returns `ready()`. Spurious and timed-out wake-ups are harmless: the
    /// caller loops.
    pub(crate) fn park_source(&self, ready: impl Fn() -> bool, max: Duration) -> bool {
        self.source_parked.store(true, Ordering::SeqCst);
        // Pairs with the fence in `wake_source`: either the reader sees
        // `source_parked` and unparks, or we see what it freed.
        fence(Ordering::SeqCst);
        if !ready() && !self.aborted() {
            std::thread::park_timeout(max);
        }
        self.source_parked.store(false, Ordering::Relaxed);
        ready()
    }

    /// Reader side: wakes the source if it is parked (after freeing queue
    /// room or registering).
    #[inline]
    pub(crate) fn wake_source(&self) {
        fence(Ordering::SeqCst);
        if self.source_parked.load(Ordering::Relaxed) {
            if let Some(source) = self.source.get() {
                source.unpark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_wins_and_cancels() {
        let shared = Shared::default();
        assert!(!shared.aborted());
        shared.fail(Failure::Internal("first".into()));
        shared.fail(Failure::Internal("second".into()));
        assert!(shared.aborted());
        assert!(shared.cancel.is_cancelled());
        assert_eq!(shared.failure(), Some(Failure::Internal("first".into())));
    }

    #[test]
    fn park_returns_when_ready_or_woken() {
        let shared = std::sync::Arc::new(Shared::default());
        shared.register_source_thread();
        assert!(shared.park_source(|| true, Duration::from_secs(60)));
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let waker = {
            let (shared, flag) = (shared.clone(), flag.clone());
            std::thread::spawn(move || {
                flag.store(true, Ordering::SeqCst);
                shared.wake_source();
            })
        };
        // Loops until the flag is seen; each park is bounded.
        while !shared.park_source(|| flag.load(Ordering::SeqCst), Duration::from_millis(50)) {}
        waker.join().unwrap();
    }
}
