//! The hand-off between the registry and one client's writer: a byte buffer
//! behind a mutex, and a wake-up.
//!
//! The registry appends whole notifications (it never splits one) and wakes
//! the writer only when the buffer goes from empty to non-empty; the writer
//! swaps the whole buffer out and writes it with as few syscalls as the
//! socket allows. Under load many events accumulate between two swaps, so
//! one write carries many of them; under light load the first event wakes the
//! writer at once, so nothing waits for a batch to fill.
//!
//! The lock is held for a swap or a `memcpy`, never across an `.await`.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// Why an outbox stopped taking bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The server is shutting down: the writer sends what is pending, then
    /// closes the socket.
    Drain,
    /// The client fell more than the bound behind; what was pending is
    /// dropped and the connection closed.
    SlowConsumer,
    /// The connection ended on the client's side.
    Gone,
    /// Fault injection (`faultResetEvery`): the writer sends what is
    /// pending, then resets the connection (RST), so the client sees an
    /// error and must resume.
    Reset,
}

/// Why [`Outbox::push`] refused bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The outbox was already closed for this reason.
    Closed(Closed),
    /// These bytes took it past its bound: it is now closed as a slow
    /// consumer.
    Overflow {
        /// What would have been pending.
        pending_bytes: usize,
    },
}

#[derive(Debug, Default)]
struct State {
    /// Bytes waiting for the writer; whole notifications only. Bounded by the
    /// `max_pending` passed to [`Outbox::push`].
    pending: Vec<u8>,
    /// Set once; after that nothing more is accepted.
    closed: Option<Closed>,
    /// When the source read the oldest event in `pending`; `None` when
    /// `pending` is empty.
    oldest_read_at: Option<Instant>,
}

/// What the writer gets from [`Outbox::take`] besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Whether the outbox is closed, and why. After `Drain`, the bytes taken
    /// are the last there will be.
    pub closed: Option<Closed>,
    /// When the oldest of the bytes taken was read from the source.
    pub oldest_read_at: Option<Instant>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Pending bytes and the closed flag, changed together.
    state: Mutex<State>,
    /// Wakes the writer: bytes arrived in an empty buffer, or it was closed.
    /// `Notify` keeps one permit, so a wake sent while the writer is busy is
    /// not lost.
    wake: Notify,
}

impl Outbox {
    /// An empty, open outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in a few lines of
        // swap/extend; the bytes are still consistent, so carry on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves all of `staged` (events read from the source at `read_at`) into
    /// the pending bytes; `staged` is left empty (with some capacity to
    /// reuse). If bytes were already waiting and pending would then exceed
    /// `max_pending`, the outbox closes as a slow consumer and drops what was
    /// pending. One batch into an empty outbox is always accepted: the
    /// writer has taken everything before it, so it is keeping up.
    pub fn push(
        &self,
        staged: &mut Vec<u8>,
        read_at: Instant,
        max_pending: usize,
    ) -> Result<(), PushError> {
        let mut state = self.lock();
        if let Some(reason) = state.closed {
            staged.clear();
            return Err(PushError::Closed(reason));
        }
        let was_empty = state.pending.is_empty();
        if was_empty {
            std::mem::swap(&mut state.pending, staged);
            state.oldest_read_at = Some(read_at);
        } else {
            state.pending.extend_from_slice(staged);
            staged.clear();
        }
        let pending_bytes = state.pending.len();
        // A writer that has taken everything is keeping up, however large
        // this one batch; a client is slow when bytes were still waiting.
        if !was_empty && pending_bytes > max_pending {
            state.closed = Some(Closed::SlowConsumer);
            state.pending = Vec::new();
            state.oldest_read_at = None;
            drop(state);
            self.wake.notify_one();
            return Err(PushError::Overflow { pending_bytes });
        }
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Closes the outbox for `reason` unless it is already closed, and wakes
    /// the writer.
    pub fn close(&self, reason: Closed) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
            if reason == Closed::SlowConsumer {
                state.pending = Vec::new();
                state.oldest_read_at = None;
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Writer side: swaps everything pending into `into`, which must be
    /// empty; see [`Taken`] for the rest.
    pub fn take(&self, into: &mut Vec<u8>) -> Taken {
        debug_assert!(into.is_empty(), "the writer must finish a buffer first");
        let mut state = self.lock();
        std::mem::swap(&mut state.pending, into);
        Taken {
            closed: state.closed,
            oldest_read_at: state.oldest_read_at.take(),
        }
    }

    /// Whether the outbox is closed, and why.
    pub fn closed(&self) -> Option<Closed> {
        self.lock().closed
    }

    /// Waits until bytes arrive in an empty buffer or the outbox closes
    /// (possibly at once, for a wake sent earlier). Cancel safe.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_accumulate_until_taken() {
        let outbox = Outbox::new();
        outbox
            .push(&mut b"1|B\n".to_vec(), Instant::now(), 100)
            .unwrap();
        let mut staged = b"2|B\n".to_vec();
        outbox.push(&mut staged, Instant::now(), 100).unwrap();
        assert!(staged.is_empty());
        let mut taken = Vec::new();
        let info = outbox.take(&mut taken);
        assert_eq!(info.closed, None);
        assert!(info.oldest_read_at.is_some());
        assert_eq!(taken, b"1|B\n2|B\n");
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_pending() {
        let outbox = Outbox::new();
        outbox.push(&mut vec![b'x'; 8], Instant::now(), 10).unwrap();
        assert_eq!(
            outbox.push(&mut vec![b'y'; 8], Instant::now(), 10),
            Err(PushError::Overflow { pending_bytes: 16 })
        );
        assert_eq!(
            outbox.push(&mut vec![b'z'; 1], Instant::now(), 10),
            Err(PushError::Closed(Closed::SlowConsumer))
        );
        let mut taken = Vec::new();
        assert_eq!(outbox.take(&mut taken).closed, Some(Closed::SlowConsumer));
        assert!(taken.is_empty());
    }

    #[test]
    fn one_large_batch_into_an_empty_outbox_is_not_slowness() {
        let outbox = Outbox::new();
        outbox
            .push(&mut vec![b'x'; 50], Instant::now(), 10)
            .expect("the writer took everything before: it is keeping up");
        assert_eq!(
            outbox.push(&mut vec![b'y'; 1], Instant::now(), 10),
            Err(PushError::Overflow { pending_bytes: 51 })
        );
    }

    #[test]
    fn drain_keeps_what_is_pending() {
        let outbox = Outbox::new();
        outbox
            .push(&mut b"9|B\n".to_vec(), Instant::now(), 100)
            .unwrap();
        outbox.close(Closed::Drain);
        outbox.close(Closed::Gone);
        let mut taken = Vec::new();
        assert_eq!(outbox.take(&mut taken).closed, Some(Closed::Drain));
        assert_eq!(taken, b"9|B\n");
    }

    #[tokio::test]
    async fn a_wake_sent_before_waiting_is_kept() {
        let outbox = Outbox::new();
        outbox
            .push(&mut b"1|B\n".to_vec(), Instant::now(), 100)
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.woken())
            .await
            .expect("the permit from push wakes the writer");
    }
}
