//! The registry actor: the one task that owns the follower graph and the set
//! of connected clients, and turns ordered events into bytes in clients'
//! outboxes.
//!
//! Owning both in one task means no locks around the graph and a single,
//! obvious order of effects: events are applied strictly in the order of the
//! [`OrderedBatch`]es it receives (the seam: the sequencer produces them
//! today), and a client's registration takes effect between two batches,
//! never inside one.
//!
//! Per batch, each recipient's notifications are first staged in a buffer
//! the actor owns, then moved to its outbox in one locked swap and at most one
//! wake-up; a batch of 3,000 events costs a client one lock, not 3,000.
//!
//! Several connections may announce the same user id: each gets every
//! notification for that user (a user with two devices sees both).

use std::sync::Arc;
use std::time::Instant;

use slab::Slab;
use tokio::sync::mpsc;

use crate::batch::OrderedBatch;
use crate::online::Online;
use crate::outbox::{Closed, Outbox, PushError};
use crate::reach::Reach;
use crate::router::{Audience, EdgeChange, Routed, Router};
use crate::stats::{LogThrottle, Stats};
use followermaze_protocol::resume::Hello;
use followermaze_protocol::{Seq, UserId};

/// Identifies one client connection for the life of the process.
pub type ConnId = u64;

/// Commands the registry accepts, in the order they are sent.
#[derive(Debug)]
pub enum Command {
    /// Apply this batch (forgetting the graph first if it starts a new
    /// stream) and notify.
    Deliver(OrderedBatch),
    /// A client finished its handshake.
    Register {
        /// What it sent: its user id, and whether (and whence) it resumes.
        hello: Hello,
        conn: ConnId,
        outbox: Arc<Outbox>,
    },
    /// A client connection ended.
    Unregister { user: UserId, conn: ConnId },
    /// Deliver nothing more: tell every writer to drain and stop.
    Shutdown,
}

/// How many commands may wait for the registry. Each `Deliver` holds at most
/// [`crate::sequencer::MAX_DELIVER_EVENTS`] events (about one 64 KiB read's
/// worth: ~320 KiB with their headers), so 8 bound the queue to ~2.5 MiB
/// while leaving
/// enough in flight to keep both sides busy; a slow registry pushes back on
/// the sources.
pub const COMMAND_QUEUE: usize = 8;

/// Staging buffers larger than this after a flush are freed rather than kept
/// for reuse, so a burst does not leave every client holding its peak.
const STAGING_KEEP_BYTES: usize = 64 * 1024;

/// The cloneable way to talk to the registry.
#[derive(Debug, Clone)]
pub struct RegistryHandle {
    commands: mpsc::Sender<Command>,
}

/// The registry has stopped (the server is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryGone;

impl RegistryHandle {
    /// Sends a command, waiting for queue space.
    pub(crate) async fn send(&self, command: Command) -> Result<(), RegistryGone> {
        self.commands.send(command).await.map_err(|_| RegistryGone)
    }
}

/// Settings the registry needs.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// A client with more than this many bytes pending is disconnected.
    pub max_client_pending_bytes: usize,
    /// Follow edges the graph may hold.
    pub max_follow_edges: usize,
}

/// One registered connection.
#[derive(Debug)]
struct Conn {
    /// The id the client announced.
    user: UserId,
    /// Tells this connection apart from a later one that reuses the slab key.
    id: ConnId,
    /// Where its writer picks up bytes.
    outbox: Arc<Outbox>,
    /// This batch's notifications, moved to the outbox at the end of the
    /// batch. Non-empty exactly when the key is in `Registry::touched`.
    staged: Vec<u8>,
}

/// The actor's state; see the module doc.
#[derive(Debug)]
pub struct Registry {
    /// Commands in.
    commands: mpsc::Receiver<Command>,
    /// The follower graph.
    router: Router,
    /// Every registered connection.
    conns: Slab<Conn>,
    /// Slab keys of each connected user's connections (usually one).
    online: Online,
    /// Each user's online followers' connections: the audience of its
    /// status updates in one lookup.
    reach: Reach,
    /// Keys of connections with staged bytes in the current batch.
    touched: Vec<usize>,
    /// The last sequence number applied from the channel, so the seam's
    /// promise that batches keep increasing is checked in debug builds.
    last_seq: Option<Seq>,
    /// Limits.
    settings: RegistrySettings,
    /// Counters shared with the rest of the server.
    stats: Arc<Stats>,
    /// Rate limit for slow-consumer warnings.
    slow_log: LogThrottle,
}

impl Registry {
    /// Creates the actor and its handle; run it with `Registry::run`.
    pub fn new(settings: RegistrySettings, stats: Arc<Stats>) -> (Registry, RegistryHandle) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let registry = Registry {
            commands: rx,
            router: Router::new(settings.max_follow_edges),
            conns: Slab::new(),
            online: Online::default(),
            reach: Reach::default(),
            touched: Vec::new(),
            last_seq: None,
            settings,
            stats,
            slow_log: LogThrottle::new(std::time::Duration::from_secs(5)),
        };
        (registry, RegistryHandle { commands: tx })
    }

    /// Processes commands until `Shutdown` or until every handle is dropped,
    /// then tells every writer to drain.
    pub(crate) async fn run(mut self) {
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Deliver(batch) => {
                    debug_assert!(
                        batch.follows(self.last_seq),
                        "batch {}..={} after {:?}: the seam's batches must keep increasing",
                        batch.first_seq(),
                        batch.last_seq(),
                        self.last_seq
                    );
                    self.last_seq = Some(batch.last_seq());
                    self.deliver(&batch);
                }
                Command::Register {
                    hello,
                    conn,
                    outbox,
                } => self.register(hello.user(), conn, outbox),
                Command::Unregister { user, conn } => self.unregister(user, conn),
                Command::Shutdown => break,
            }
        }
        // Clients whose registration was still queued must hear of the
        // shutdown too, or their writers would wait out the drain timeout.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Register { outbox, .. } = command {
                outbox.close(Closed::Drain);
            }
        }
        for (_, conn) in self.conns.iter() {
            conn.outbox.close(Closed::Drain);
        }
        tracing::debug!(clients = self.conns.len(), "registry stopped");
    }

    /// Adds a connection for `user`. Normally reached through
    /// `Command::Register`; public so benchmarks can drive the actor's
    /// state without its channel.
    pub fn register(&mut self, user: UserId, id: ConnId, outbox: Arc<Outbox>) {
        let key = self.conns.insert(Conn {
            user,
            id,
            outbox,
            staged: Vec::new(),
        });
        self.online.add(user, key);
        self.reach.connected(key, self.router.following(user));
        Stats::set(&self.stats.clients_connected, self.conns.len() as u64);
    }

    fn unregister(&mut self, user: UserId, id: ConnId) {
        let Some(keys) = self.online.get(user) else {
            return;
        };
        let found = keys.iter().copied().find(|&key| self.conns[key].id == id);
        if let Some(key) = found {
            self.remove(key);
        }
    }

    /// Forgets connection `key`; its writer is told through the outbox.
    fn remove(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        self.online.remove(conn.user, key);
        self.reach
            .disconnected(key, self.router.following(conn.user));
        Stats::set(&self.stats.clients_connected, self.conns.len() as u64);
    }

    /// Applies `batch` in order (forgetting the graph first if it starts a
    /// new stream), stages each notification, then moves each touched
    /// client's staged bytes to its outbox. Normally reached through
    /// `Command::Deliver`; public so benchmarks can measure dispatch alone.
    ///
    /// Adds no allocation per event: each connection's staging buffer (up
    /// to `STAGING_KEEP_BYTES`) and `touched` keep their capacity from
    /// batch to batch; only the graph and the online-followers index
    /// allocate, as they grow.
    pub fn deliver(&mut self, batch: &OrderedBatch) {
        if batch.starts_new_stream() {
            self.forget_graph();
        }
        let mut notifications: u64 = 0;
        for event in batch.events() {
            let Routed { audience, edge } = self.router.apply(event.kind);
            notifications += self.stage(audience, &event.raw);
            if let Some(edge) = edge {
                self.follow_edge(edge);
            }
        }
        self.count(batch.events().len(), notifications);
        self.flush_touched(batch.read_at());
    }

    /// A new stream: its events owe nothing to the old follower graph.
    fn forget_graph(&mut self) {
        self.router.clear();
        self.reach.clear();
    }

    /// Appends `raw` to the staging buffer of every connection `audience`
    /// names; returns how many that is.
    #[inline]
    fn stage(&mut self, audience: Audience, raw: &[u8]) -> u64 {
        let keys = match audience {
            Audience::Nobody => return 0,
            Audience::Everyone => return self.stage_everyone(raw),
            Audience::User(user) => self.online.get(user).unwrap_or_default(),
            Audience::Followers(author) => self.reach.of(author),
        };
        for &key in keys {
            stage(&mut self.conns, &mut self.touched, key, raw);
        }
        keys.len() as u64
    }

    /// [`Registry::stage`] for a broadcast: every connection.
    #[inline]
    fn stage_everyone(&mut self, raw: &[u8]) -> u64 {
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
    fn follow_edge(&mut self, edge: EdgeChange) {
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

    /// Publishes one batch's counts: once per batch, not per event.
    fn count(&self, events: usize, notifications: u64) {
        Stats::add(&self.stats.events_delivered, events as u64);
        Stats::add(&self.stats.notifications, notifications);
        Stats::set(&self.stats.refused_follows, self.router.refused_follows());
    }

    /// Moves every touched connection's staged bytes to its outbox (one
    /// lock, at most one wake each), and empties `touched`.
    fn flush_touched(&mut self, read_at: Instant) {
        let mut touched = std::mem::take(&mut self.touched);
        for &key in &touched {
            self.flush(key, read_at);
        }
        touched.clear();
        self.touched = touched;
    }

    /// Moves connection `key`'s staged bytes to its outbox; forgets the
    /// connection if the outbox refuses them.
    fn flush(&mut self, key: usize, read_at: Instant) {
        let max = self.settings.max_client_pending_bytes;
        let conn = &mut self.conns[key];
        let result = conn.outbox.push(&mut conn.staged, read_at, max);
        if conn.staged.capacity() > STAGING_KEEP_BYTES {
            conn.staged = Vec::new();
        }
        match result {
            Ok(()) => {}
            Err(PushError::Overflow { pending_bytes }) => {
                let (user, id) = (conn.user, conn.id);
                // The writer counts the disconnect when it sees why.
                if let Some(suppressed) = self.slow_log.allow() {
                    tracing::warn!(
                        user,
                        conn = id,
                        pending_bytes,
                        limit = max,
                        suppressed,
                        "disconnecting slow consumer: outbound buffer over its limit"
                    );
                }
                self.remove(key);
            }
            // The writer already ended; its Unregister is on the way or
            // was handled. Either way the entry goes now.
            Err(PushError::Closed(_)) => {
                if self.conns.contains(key) {
                    self.remove(key);
                }
            }
        }
    }
}

/// Appends `raw` to connection `key`'s staging buffer, noting the key in
/// `touched` if this is its first notification of the batch.
#[inline]
fn stage(conns: &mut Slab<Conn>, touched: &mut Vec<usize>, key: usize, raw: &[u8]) {
    let conn = &mut conns[key];
    if conn.staged.is_empty() {
        touched.push(key);
    }
    conn.staged.extend_from_slice(raw);
}

#[cfg(test)]
mod tests {
    use super::*;
    use followermaze_protocol::{Event, EventKind};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Event(EventKind),
        Connect(UserId),
        Disconnect(usize),
    }

    fn any_op() -> impl Strategy<Value = Op> {
        let user = 1u64..6;
        prop_oneof![
            (user.clone(), user.clone())
                .prop_map(|(from, to)| Op::Event(EventKind::Follow { from, to })),
            (user.clone(), user.clone())
                .prop_map(|(from, to)| Op::Event(EventKind::Unfollow { from, to })),
            user.clone()
                .prop_map(|from| Op::Event(EventKind::Status { from })),
            user.clone()
                .prop_map(|from| Op::Event(EventKind::Status { from })),
            (user.clone(), user.clone())
                .prop_map(|(from, to)| Op::Event(EventKind::Private { from, to })),
            Just(Op::Event(EventKind::Broadcast)),
            user.prop_map(Op::Connect),
            (0usize..8).prop_map(Op::Disconnect),
        ]
    }

    /// A model connection: its user, its outbox, the bytes it is owed, and
    /// whether it is still connected.
    type ModelConn = (UserId, Arc<Outbox>, Vec<u8>, bool);

    proptest! {
        /// The registry's incremental bookkeeping (online filter, the
        /// online-followers index) against a model that recomputes every
        /// audience from scratch.
        #[test]
        fn prop_delivery_matches_a_naive_model(ops in prop::collection::vec(any_op(), 0..200)) {
            let (mut registry, _handle) = registry();
            let mut edges: std::collections::HashSet<(UserId, UserId)> = Default::default();
            let mut conns: Vec<ModelConn> = Vec::new();
            let mut seq = 0u64;
            for op in ops {
                match op {
                    Op::Connect(user) => {
                        let outbox = Arc::new(Outbox::new());
                        registry.register(user, conns.len() as ConnId, outbox.clone());
                        conns.push((user, outbox, Vec::new(), true));
                    }
                    Op::Disconnect(index) => {
                        if let Some(conn) = conns.get_mut(index) {
                            if conn.3 {
                                registry.unregister(conn.0, index as ConnId);
                                conn.3 = false;
                            }
                        }
                    }
                    Op::Event(kind) => {
                        seq += 1;
                        let raw = format!("{seq}|{kind:?}\n");
                        let to_user = |user: UserId| move |c: &ModelConn| c.0 == user;
                        let wants: Box<dyn Fn(&ModelConn) -> bool> = match kind {
                            EventKind::Follow { from, to } => {
                                edges.insert((from, to));
                                Box::new(to_user(to))
                            }
                            EventKind::Unfollow { from, to } => {
                                edges.remove(&(from, to));
                                Box::new(|_| false)
                            }
                            EventKind::Broadcast => Box::new(|_| true),
                            EventKind::Private { to, .. } => Box::new(to_user(to)),
                            EventKind::Status { from } => {
                                let edges = edges.clone();
                                Box::new(move |c| edges.contains(&(c.0, from)))
                            }
                        };
                        for conn in conns.iter_mut() {
                            if conn.3 && wants(conn) {
                                conn.2.extend_from_slice(raw.as_bytes());
                            }
                        }
                        let event = Event { seq, kind, raw: bytes::Bytes::from(raw) };
                        registry.deliver(&OrderedBatch::new(vec![event], Instant::now()));
                    }
                }
            }
            for (index, (_, outbox, expected, _)) in conns.iter().enumerate() {
                let mut got = Vec::new();
                outbox.take(&mut got);
                prop_assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(expected),
                    "connection {}", index
                );
            }
        }
    }

    fn registry() -> (Registry, RegistryHandle) {
        let settings = RegistrySettings {
            max_client_pending_bytes: 1 << 20,
            max_follow_edges: 1000,
        };
        Registry::new(settings, Arc::new(Stats::default()))
    }

    #[tokio::test]
    async fn a_registration_queued_behind_shutdown_is_told_to_drain() {
        let (registry, handle) = registry();
        let outbox = Arc::new(Outbox::new());
        handle.send(Command::Shutdown).await.unwrap();
        handle
            .send(Command::Register {
                hello: Hello::Classic(1),
                conn: 1,
                outbox: outbox.clone(),
            })
            .await
            .unwrap();
        registry.run().await;
        assert_eq!(outbox.closed(), Some(Closed::Drain));
    }

    #[test]
    fn a_large_release_does_not_cut_off_an_idle_client() {
        let (mut registry, _handle) = registry();
        let outbox = Arc::new(Outbox::new());
        registry.register(1, 1, outbox.clone());
        // 2 MiB for one client in one batch, over its 1 MiB bound.
        let events: Vec<Event> = (1..=200_000u64)
            .map(|seq| Event {
                seq,
                kind: followermaze_protocol::EventKind::Broadcast,
                raw: bytes::Bytes::from(format!("{seq:07}|B\r\n")),
            })
            .collect();
        registry.deliver(&OrderedBatch::new(events, Instant::now()));
        assert_eq!(outbox.closed(), None);
    }
}
