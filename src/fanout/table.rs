//! The registry's connection table: every registered connection (and each
//! session's retainer), who is online, each user's online followers, and
//! the bytes staged for each connection in the current batch.
//!
//! Per batch, each recipient's notifications are first staged in a buffer
//! the table owns, then moved to its outbox in one locked swap and at most
//! one wake-up ([`Table::flush_touched`]); a batch of 3,000 events costs a
//! client one lock, not 3,000.

use std::sync::Arc;
use std::time::{Duration, Instant};

use followermaze_protocol::{Seq, UserId};
use slab::Slab;

use crate::fanout::command::ConnId;
use crate::fanout::outbox::{Closed, Outbox, PushError};
use crate::graph::online::Online;
use crate::graph::reach::Reach;
use crate::graph::router::{Audience, EdgeChange};
use crate::ops::stats::{LogThrottle, Stats};
use crate::resume::session::{Sessions, Tally};

/// Staging buffers larger than this after a flush are freed rather than kept
/// for reuse, so a burst does not leave every client holding its peak.
const STAGING_KEEP_BYTES: usize = 64 * 1024;

/// One registered connection, or a session's retainer.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The id the client announced.
    pub(crate) user: UserId,
    /// Tells this connection apart from a later one that reuses the slab key.
    pub(crate) id: ConnId,
    /// Where its lines go.
    pub(crate) sink: Sink,
    /// This batch's notifications, moved to the outbox at the end of the
    /// batch. Non-empty exactly when the key is in `Table::touched`.
    pub(crate) staged: Vec<u8>,
}

impl Conn {
    /// Whether its writer's outbox is closed, and why (`None` for a
    /// retainer, which has none).
    pub(crate) fn closed(&self) -> Option<Closed> {
        match &self.sink {
            Sink::Plain(outbox) | Sink::Resumable { outbox, .. } => outbox.closed(),
            Sink::Retainer => None,
        }
    }
}

/// Where a [`Conn`]'s lines go.
#[derive(Debug)]
pub(crate) enum Sink {
    /// A classic connection's writer.
    Plain(Arc<Outbox>),
    /// A resumable connection's writer.
    Resumable {
        /// Where its writer picks up bytes.
        outbox: Arc<Outbox>,
        /// Count and CRC of its event lines, for checkpoints and resets.
        tally: Tally,
        /// Fault injection decided to reset it after the lines staged so
        /// far: it is staged nothing more, and reset at the flush.
        resetting: bool,
    },
    /// A session's retainer: its user's lines are recorded in the session's
    /// retention, not written.
    Retainer,
}

impl Sink {
    /// The writer's outbox, for connections that have one.
    pub(crate) fn outbox(&self) -> Option<&Arc<Outbox>> {
        match self {
            Sink::Plain(outbox) | Sink::Resumable { outbox, .. } => Some(outbox),
            Sink::Retainer => None,
        }
    }
}

/// The table; see the module doc.
#[derive(Debug)]
pub(crate) struct Table {
    /// Every registered connection.
    pub(crate) conns: Slab<Conn>,
    /// Slab keys of each connected user's connections (usually one).
    online: Online,
    /// Each user's online followers' connections: the audience of its
    /// status updates in one lookup.
    reach: Reach,
    /// Keys of connections with staged bytes in the current batch.
    touched: Vec<usize>,
    /// Keys whose outbox refused its bytes at the last flush (a slow
    /// consumer, a writer gone, a fault-injected reset): the registry
    /// forgets them. At most one per connection.
    refused: Vec<usize>,
    /// Rate limit for slow-consumer warnings.
    slow_log: LogThrottle,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            conns: Slab::new(),
            online: Online::default(),
            reach: Reach::default(),
            touched: Vec::new(),
            refused: Vec::new(),
            slow_log: LogThrottle::new(Duration::from_secs(5)),
        }
    }
}

impl Table {
    /// Adds `sink` for `user` (who follows `following`) to the connections,
    /// the online set and the followers index; returns its key.
    pub(crate) fn insert(
        &mut self,
        user: UserId,
        id: ConnId,
        sink: Sink,
        following: impl Iterator<Item = UserId>,
    ) -> usize {
        let key = self.conns.insert(Conn {
            user,
            id,
            sink,
            staged: Vec::new(),
        });
        self.online.add(user, key);
        self.reach.connected(key, following);
        key
    }

    /// Removes connection `key`, whose user follows `following`.
    pub(crate) fn remove(&mut self, key: usize, following: impl Iterator<Item = UserId>) -> Conn {
        let conn = self.conns.remove(key);
        self.online.remove(conn.user, key);
        self.reach.disconnected(key, following);
        conn
    }

    /// The key of `user`'s connection `id`, if it is registered.
    pub(crate) fn find(&self, user: UserId, id: ConnId) -> Option<usize> {
        let keys = self.online.get(user)?;
        keys.iter().copied().find(|&key| self.conns[key].id == id)
    }

    /// Forgets every follower index entry (a new stream's graph is empty).
    pub(crate) fn clear_reach(&mut self) {
        self.reach.clear();
    }

    /// Rebuilds the followers index for a new graph: each connection's user
    /// follows what `following` says.
    pub(crate) fn rebuild_reach<I: Iterator<Item = UserId>>(
        &mut self,
        following: impl Fn(UserId) -> I,
    ) {
        self.reach.clear();
        for (key, conn) in self.conns.iter() {
            self.reach.connected(key, following(conn.user));
        }
    }

    /// Stages `staged` for connection `key` (its verdict and replay) to be
    /// flushed with the rest.
    pub(crate) fn stage_bytes(&mut self, key: usize, staged: Vec<u8>) {
        self.conns[key].staged = staged;
        self.touched.push(key);
    }

    /// Stages an `#AT` line on every resumable connection whose position
    /// moved since its last one.
    pub(crate) fn stage_checkpoints(
        &mut self,
        stream: &followermaze_protocol::resume::StreamId,
        position: Seq,
    ) {
        for (key, conn) in self.conns.iter_mut() {
            if let Sink::Resumable {
                tally,
                resetting: false,
                ..
            } = &mut conn.sink
            {
                let was_empty = conn.staged.is_empty();
                if tally.checkpoint(&mut conn.staged, stream, position) && was_empty {
                    self.touched.push(key);
                }
            }
        }
    }

    /// Hands line `raw` (event `seq`) to every connection `audience`
    /// names; returns how many notifications that queued for writers.
    #[inline]
    pub(crate) fn stage(
        &mut self,
        audience: Audience,
        seq: Seq,
        raw: &[u8],
        sessions: &mut Sessions,
    ) -> u64 {
        let keys = match audience {
            Audience::Nobody => return 0,
            Audience::Everyone => return self.stage_everyone(seq, raw, sessions),
            Audience::User(user) => self.online.get(user).unwrap_or_default(),
            Audience::Followers(author) => self.reach.of(author),
        };
        let mut queued = 0;
        for &key in keys {
            queued += stage(&mut self.conns, &mut self.touched, sessions, key, seq, raw);
        }
        queued
    }

    /// [`Table::stage`] for a broadcast: every connection.
    #[inline]
    fn stage_everyone(&mut self, seq: Seq, raw: &[u8], sessions: &mut Sessions) -> u64 {
        if sessions.len() > 0 {
            let mut queued = 0;
            for key in 0..self.conns.capacity() {
                if self.conns.contains(key) {
                    queued += stage(&mut self.conns, &mut self.touched, sessions, key, seq, raw);
                }
            }
            return queued;
        }
        // No session, so every entry is a plain connection: the plain loop.
        for (key, conn) in self.conns.iter_mut() {
            if conn.staged.is_empty() {
                self.touched.push(key);
            }
            conn.staged.extend_from_slice(raw);
        }
        self.conns.len() as u64
    }

    /// Keeps `reach` in step with an edge the router added or removed: the
    /// follower's connections, if it is online, gain or lose the followed
    /// user's status updates.
    #[inline]
    pub(crate) fn follow_edge(&mut self, edge: EdgeChange) {
        match edge {
            EdgeChange::Added { from, to } => {
                if let Some(keys) = self.online.get(from) {
                    self.reach.edge_added(to, keys);
                }
            }
            EdgeChange::Removed { from, to } => {
                if let Some(keys) = self.online.get(from) {
                    self.reach.edge_removed(to, keys);
                }
            }
        }
    }

    /// Moves every touched connection's staged bytes to its outbox (one
    /// lock, at most one wake each), and empties `touched`. Returns the
    /// keys whose outbox refused them, for the registry to forget (usually
    /// none). With `write_through` (the registry is idle: see
    /// [`crate::fanout::outbox`]), an idle writer's bytes are sent from
    /// here, counted in those stats, instead of waking it.
    pub(crate) fn flush_touched(
        &mut self,
        read_at: Instant,
        max_pending: usize,
        write_through: Option<&Stats>,
    ) -> Vec<usize> {
        let mut touched = std::mem::take(&mut self.touched);
        for &key in &touched {
            self.flush(key, read_at, max_pending, write_through);
        }
        touched.clear();
        self.touched = touched;
        std::mem::take(&mut self.refused)
    }

    /// Moves connection `key`'s staged bytes to its outbox; notes the key
    /// in `refused` if the outbox refuses them (or fault injection resets
    /// the connection).
    fn flush(
        &mut self,
        key: usize,
        read_at: Instant,
        max_pending: usize,
        write_through: Option<&Stats>,
    ) {
        let conn = &mut self.conns[key];
        let (outbox, resetting) = match &mut conn.sink {
            Sink::Plain(outbox) => (&*outbox, false),
            Sink::Resumable {
                outbox,
                resetting,
                tally,
            } => {
                tally.hash_staged(&conn.staged);
                (&*outbox, *resetting)
            }
            Sink::Retainer => {
                debug_assert!(false, "a retainer is never staged");
                return;
            }
        };
        let result = match write_through {
            Some(stats) => outbox.push_or_write(&mut conn.staged, read_at, max_pending, stats),
            None => outbox.push(&mut conn.staged, read_at, max_pending),
        };
        if conn.staged.capacity() > STAGING_KEEP_BYTES {
            conn.staged = Vec::new();
        }
        match result {
            Ok(()) if resetting => {
                // Fault injection: the writer sends what it has, then RSTs.
                outbox.close(Closed::Reset);
                self.refused.push(key);
            }
            Ok(()) => {}
            Err(PushError::Overflow { pending_bytes }) => {
                // The writer counts the disconnect when it sees why.
                if let Some(suppressed) = self.slow_log.allow() {
                    tracing::warn!(
                        user = conn.user,
                        conn = conn.id,
                        pending_bytes,
                        limit = max_pending,
                        suppressed,
                        "disconnecting slow consumer: outbound buffer over its limit"
                    );
                }
                self.refused.push(key);
            }
            // The writer already ended; its Unregister is on the way or
            // was handled. Either way the entry goes now.
            Err(PushError::Closed(_)) => self.refused.push(key),
        }
    }
}

/// Hands line `raw` (event `seq`) to connection `key`: appended to its
/// staging buffer (noting the key in `touched` if this is its first line of
/// the batch), or recorded in its session if it is a retainer. Returns 1 if
/// a writer will get it, else 0.
#[inline]
fn stage(
    conns: &mut Slab<Conn>,
    touched: &mut Vec<usize>,
    sessions: &mut Sessions,
    key: usize,
    seq: Seq,
    raw: &[u8],
) -> u64 {
    let conn = &mut conns[key];
    let was_empty = conn.staged.is_empty();
    match &mut conn.sink {
        Sink::Plain(_) => conn.staged.extend_from_slice(raw),
        Sink::Resumable {
            tally, resetting, ..
        } => {
            if *resetting {
                return 0;
            }
            *resetting = tally.push_line(&mut conn.staged, raw);
        }
        Sink::Retainer => {
            sessions.retention().record(conn.user, seq, raw);
            return 0;
        }
    }
    if was_empty {
        touched.push(key);
    }
    1
}
