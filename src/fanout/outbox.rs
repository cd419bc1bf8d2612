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
//!
//! # Writing through
//!
//! A TCP client's outbox also holds its socket (`Outbox::for_socket`),
//! so that while the pipeline is idle (a paced source: a few notifications
//! a read) the registry can skip the hand-off: `Outbox::push_or_write`
//! writes the staged bytes to the socket itself, without waking the
//! writer, when nothing is pending and the writer holds no bytes of its
//! own (it has written everything it took). Whatever the socket does not
//! take at once becomes pending and wakes the writer, as a push would.
//! What must hold, and why it does:
//! - **Order**: bytes reach the socket in push order. The registry is the
//!   only producer; it writes through only when no earlier byte is pending
//!   or in the writer's hands, and under the lock, which the writer needs
//!   to take more; the rest of what it staged is pending before the lock
//!   is let go.
//! - **Bounds and backpressure**: unchanged. A write-through is one
//!   non-blocking `send` of at most one batch's bytes; a full socket
//!   buffer leaves them pending, under `max_pending` as before.
//! - **Ends**: a closed outbox drops its socket handle and is never
//!   written through, so the writer's own handle is the last one and the
//!   socket closes when the writer ends, as before.
//! - **Counters**: a write-through counts its write, its bytes and, when
//!   it sent everything, its latency, exactly as the writer does.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::ops::stats::Stats;

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
    /// Whether the writer's last [`Outbox::take`] gave it bytes: until it
    /// takes again (and finds nothing), bytes of it may be unwritten, so
    /// nobody else writes to the socket.
    writing: bool,
    /// The client's socket, for writing through; `None` for a writer
    /// without one (web sessions) and once closed.
    socket: Option<Arc<TcpStream>>,
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

    /// An empty, open outbox whose pushes may be written through to
    /// `socket` (see the module doc); its writer writes to the same socket.
    pub(crate) fn for_socket(socket: Arc<TcpStream>) -> Self {
        let outbox = Self::default();
        outbox.lock().socket = Some(socket);
        outbox
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
        let state = self.lock();
        self.push_locked(state, staged, read_at, max_pending)
    }

    /// [`Outbox::push`], writing through to the socket first when nothing
    /// is pending and the writer is idle (see the module doc): what the
    /// socket takes at once is sent from the caller's task, counted in
    /// `stats`, and only the rest is pushed (and wakes the writer).
    pub(crate) fn push_or_write(
        &self,
        staged: &mut Vec<u8>,
        read_at: Instant,
        max_pending: usize,
        stats: &Stats,
    ) -> Result<(), PushError> {
        let state = self.lock();
        let idle = state.closed.is_none() && state.pending.is_empty() && !state.writing;
        if let (true, Some(socket)) = (idle, &state.socket) {
            let written = write_now(socket, staged, stats);
            if written == staged.len() {
                staged.clear();
                stats.latency.record(read_at.elapsed());
                return Ok(());
            }
            // Rare (a full socket buffer): the writer sends the rest.
            staged.drain(..written);
        }
        self.push_locked(state, staged, read_at, max_pending)
    }

    fn push_locked(
        &self,
        mut state: std::sync::MutexGuard<'_, State>,
        staged: &mut Vec<u8>,
        read_at: Instant,
        max_pending: usize,
    ) -> Result<(), PushError> {
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
            state.socket = None;
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
            state.socket = None;
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
        state.writing = !into.is_empty();
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

/// Sends as much of `bytes` as `socket` takes without waiting, counting
/// each write in `stats`; returns how many bytes it took. An error other
/// than a full buffer stops it too: the writer, sending the rest, meets
/// the error again and ends the connection.
fn write_now(socket: &TcpStream, bytes: &[u8], stats: &Stats) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        match socket.try_write(&bytes[written..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                written += n;
                Stats::add(&stats.client_writes, 1);
                Stats::add(&stats.bytes_written, n as u64);
            }
        }
    }
    written
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

    /// A connected pair: the server's side (an outbox's socket) and the
    /// client's.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; len];
        let read = client.read_exact(&mut got);
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the bytes arrive")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn an_idle_writers_bytes_are_written_through_and_counted() {
        let (socket, mut client) = socket_pair().await;
        let (outbox, stats) = (Outbox::for_socket(socket), Stats::default());
        let mut staged = b"1|B\n2|B\n".to_vec();
        outbox
            .push_or_write(&mut staged, Instant::now(), 100, &stats)
            .unwrap();
        assert!(staged.is_empty());
        let mut taken = Vec::new();
        assert_eq!(outbox.take(&mut taken).oldest_read_at, None);
        assert!(taken.is_empty(), "nothing was left for the writer");
        assert_eq!(read_exactly(&mut client, 8).await, b"1|B\n2|B\n");
        assert_eq!(
            stats
                .bytes_written
                .load(std::sync::atomic::Ordering::Relaxed),
            8
        );
    }

    #[tokio::test]
    async fn bytes_behind_the_writers_own_are_pushed_not_written_through() {
        let (socket, _client) = socket_pair().await;
        let (outbox, stats) = (Outbox::for_socket(socket), Stats::default());
        outbox
            .push(&mut b"1|B\n".to_vec(), Instant::now(), 100)
            .unwrap();
        let mut writing = Vec::new();
        outbox.take(&mut writing);
        // The writer holds "1|B" unwritten: "2|B" must wait behind it.
        outbox
            .push_or_write(&mut b"2|B\n".to_vec(), Instant::now(), 100, &stats)
            .unwrap();
        let mut taken = Vec::new();
        outbox.take(&mut taken);
        assert_eq!(taken, b"2|B\n");
        assert_eq!(
            stats
                .bytes_written
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // Nor while bytes are pending: the writer took them and has not
        // taken again since.
        outbox
            .push_or_write(&mut b"3|B\n".to_vec(), Instant::now(), 100, &stats)
            .unwrap();
        assert_eq!(
            stats
                .bytes_written
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn a_closed_outbox_is_never_written_through() {
        let (socket, _client) = socket_pair().await;
        let (outbox, stats) = (Outbox::for_socket(Arc::clone(&socket)), Stats::default());
        outbox.close(Closed::Drain);
        assert_eq!(
            Arc::strong_count(&socket),
            1,
            "closing drops the outbox's handle"
        );
        let pushed = outbox.push_or_write(&mut b"1|B\n".to_vec(), Instant::now(), 100, &stats);
        assert_eq!(pushed, Err(PushError::Closed(Closed::Drain)));
        assert_eq!(
            stats
                .client_writes
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
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
