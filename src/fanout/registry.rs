//! The registry actor: the one task that owns the follower graph and the set
//! of connected clients, and turns ordered events into bytes in clients'
//! outboxes.
//!
//! Owning both in one task means no locks around the graph and a single,
//! obvious order of effects: events are applied strictly in the order of the
//! [`OrderedBatch`]es it receives (the seam), and a client's registration
//! takes effect between two batches, never inside one. Per batch, each
//! recipient's notifications are staged, then moved to its outbox in one
//! swap (see `fanout::table`).
//!
//! Several connections may announce the same user id: each gets every
//! notification for that user (a user with two devices sees both).
//!
//! # Resumable sessions
//!
//! A user with a session (see [`crate::resume::session`]) has one more
//! entry among the connections: a *retainer*, which stands in the online
//! set and the followers index like a connection, so routing reaches it
//! exactly as it reaches live ones, but whose lines are recorded in the
//! session's retention instead of written anywhere. A resumable connection
//! registers between two batches: its verdict, then the retained lines it
//! missed, then (from the next batch on) live lines; nothing falls between
//! them. Its tally (count and CRC of the event lines sent on it) feeds its
//! `#AT` checkpoints, written at the housekeeping tick, between batches
//! too. Classic connections pay one predictable branch per notification
//! for all of this; broadcasts keep their plain loop while no session
//! exists.
//!
//! On a cluster gateway ([`Registry::with_history`]), a resume that no
//! local session can replay is served from the shared stream instead: what
//! to do with it is [`crate::resume::stream`]'s decision, which the actor
//! applies; the lines are fetched off the actor (`cluster::fetcher`), and
//! the connection attaches between two later batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use followermaze_protocol::resume::Hello;
use followermaze_protocol::{Seq, UserId};
use hashbrown::HashMap;
use tokio::sync::mpsc;

use crate::batch::OrderedBatch;
use crate::fanout::command::{Command, ConnId, FetchRequest, COMMAND_QUEUE};
use crate::fanout::handle::RegistryHandle;
use crate::fanout::outbox::{Closed, Outbox};
use crate::fanout::table::{Sink, Table};
use crate::graph::router::{Routed, Router};
use crate::graph::snapshot::Snapshot;
use crate::ops::stats::Stats;
use crate::resume::outage::Outages;
use crate::resume::session::Sessions;
use crate::resume::stream::{Ask, Position, StreamResumes};
use crate::settings::RegistrySettings;

/// How often the registry purges expired sessions and checks whether
/// checkpoints are due: the resolution of `resumeWindowSecs` and
/// `checkpointIntervalMs`. Nothing happens at the tick while no session
/// exists.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(50);

/// Most events in a batch whose bytes the registry may write through to
/// idle writers' sockets itself (see [`Registry::write_through`]). A paced
/// source's reads are small (about 70 events a read at 100,000 events/s);
/// a saturating one's fill 64 KiB (about 4,000), reach every client, and
/// are better written by the writers, in parallel with the registry and
/// coalesced across batches.
const WRITE_THROUGH_MAX_EVENTS: usize = 512;

/// A client connection as a resume from the stream holds it.
type Client = (ConnId, Arc<Outbox>);

/// A gateway's resumes from the stream: the decisions, and where fetches go.
#[derive(Debug)]
struct Remote {
    /// The state machine, and the history it plans from.
    resumes: StreamResumes<Client>,
    /// The fetcher's queue (bounded: `maxClients`, at least the cluster's
    /// `MIN_FETCH_QUEUE`).
    fetches: mpsc::Sender<FetchRequest>,
}

/// The actor's state; see the module doc.
#[derive(Debug)]
pub struct Registry {
    /// Commands in.
    commands: mpsc::Receiver<Command>,
    /// The follower graph.
    router: Router,
    /// Every registered connection and what is staged for it.
    table: Table,
    /// The last sequence number applied: the server's position, and the
    /// check (in debug builds) that the seam's batches keep increasing.
    last_seq: Option<Seq>,
    /// Resumable sessions and their retained lines.
    sessions: Sessions,
    /// The slab key of each session's retainer.
    retainers: HashMap<UserId, usize>,
    /// When checkpoints were last written.
    last_checkpoint: Instant,
    /// Limits.
    settings: RegistrySettings,
    /// Counters shared with the rest of the server.
    stats: Arc<Stats>,
    /// A gateway's resumes from the shared stream; `None` standalone.
    remote: Option<Remote>,
    /// Fault injection's outages (`faultOfflineMs`).
    outages: Outages,
    /// Whether nothing was queued behind the command being handled (and,
    /// for a batch, it is small: [`WRITE_THROUGH_MAX_EVENTS`]): then its
    /// bytes are written through to idle writers' sockets instead of
    /// waking them (see [`crate::fanout::outbox`]). A paced source leaves
    /// the registry idle after each small read, and waking a writer on the
    /// other worker thread per notification cost a futex wake and a
    /// context switch each; under load commands queue up, batches are
    /// large, and the writers write, as before, in parallel with the
    /// registry.
    write_through: bool,
}

impl Registry {
    /// Creates the actor and its handle; run it with `Registry::run`.
    pub fn new(settings: RegistrySettings, stats: Arc<Stats>) -> (Registry, RegistryHandle) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let registry = Registry {
            commands: rx,
            router: Router::new(settings.max_follow_edges),
            table: Table::default(),
            last_seq: None,
            sessions: Sessions::new(settings.sessions),
            outages: Outages::new(settings.sessions.fault_offline),
            retainers: HashMap::new(),
            last_checkpoint: Instant::now(),
            settings,
            stats,
            remote: None,
            write_through: false,
        };
        (registry, RegistryHandle::new(tx))
    }

    /// This registry, a cluster gateway's: a resumable client without a
    /// local session resumes from the shared stream, fetched by the task
    /// reading `fetches`.
    pub(crate) fn with_history(mut self, fetches: mpsc::Sender<FetchRequest>) -> Registry {
        let resumes = StreamResumes::default();
        self.remote = Some(Remote { resumes, fetches });
        self
    }

    /// Processes commands until `Shutdown` or until every handle is dropped,
    /// then tells every writer to drain.
    pub(crate) async fn run(mut self) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let command = tokio::select! {
                command = self.commands.recv() => command,
                now = housekeeping.tick() => {
                    self.housekeeping(now.into_std());
                    continue;
                }
            };
            self.write_through = self.commands.is_empty();
            match command {
                None | Some(Command::Shutdown) => break,
                Some(Command::Deliver(batch)) => {
                    self.write_through &= batch.len() <= WRITE_THROUGH_MAX_EVENTS;
                    self.deliver(&batch);
                }
                Some(Command::Register {
                    hello,
                    conn,
                    outbox,
                }) => self.register(hello, conn, outbox),
                Some(Command::Resumed(resumed)) => {
                    self.fetched(resumed);
                    self.publish_connected();
                }
                Some(Command::Unregister { user, conn }) => self.unregister(user, conn),
                Some(Command::Restore(snapshot)) => self.restore(snapshot),
            }
        }
        self.drain();
    }

    /// Tells every writer to drain, those whose registration was still
    /// queued too (or their writers would wait out the drain timeout).
    fn drain(&mut self) {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Register { outbox, .. } => outbox.close(Closed::Drain),
                Command::Resumed(resumed) => resumed.resume.outbox.close(Closed::Drain),
                _ => {}
            }
        }
        for (_, conn) in self.table.conns.iter() {
            if let Some(outbox) = conn.sink.outbox() {
                outbox.close(Closed::Drain);
            }
        }
        let waiting = self
            .remote
            .iter()
            .flat_map(|remote| remote.resumes.waiting());
        for (_, outbox) in waiting {
            outbox.close(Closed::Drain);
        }
        tracing::debug!(clients = self.connected(), "registry stopped");
    }

    /// Adds a connection that sent `hello`. Normally reached through
    /// `Command::Register`; public so benchmarks can drive the actor's
    /// state without its channel.
    pub fn register(&mut self, hello: Hello, id: ConnId, outbox: Arc<Outbox>) {
        match hello {
            Hello::Classic(user) => {
                self.insert(user, id, Sink::Plain(outbox));
            }
            Hello::Resumable { user, .. } if self.outages.refuses(user, Instant::now()) => {
                // An outage after a fault-injected reset: closed at once,
                // no verdict; the client backs off and tries again.
                outbox.close(Closed::Reset);
                Stats::add(&self.stats.fault_refused_reconnects, 1);
            }
            Hello::Resumable {
                user,
                stream,
                after,
            } => self.attach(
                Ask {
                    user,
                    stream,
                    after,
                },
                (id, outbox),
            ),
        }
        self.publish_connected();
    }

    /// Registered client connections (retainers are not connections).
    fn connected(&self) -> usize {
        self.table.conns.len() - self.retainers.len()
    }

    /// Publishes the number of client connections.
    fn publish_connected(&self) {
        Stats::set(&self.stats.clients_connected, self.connected() as u64);
    }

    /// The last sequence number applied (0 before any).
    fn position(&self) -> Seq {
        self.last_seq.unwrap_or(0)
    }

    /// Adds `sink` for `user`; returns its key.
    fn insert(&mut self, user: UserId, id: ConnId, sink: Sink) -> usize {
        let following = self.router.following(user);
        self.table.insert(user, id, sink, following)
    }

    /// Forgets `user`'s connection `id`, if it is still registered.
    pub(crate) fn unregister(&mut self, user: UserId, id: ConnId) {
        if let Some(key) = self.table.find(user, id) {
            self.remove(key);
        }
    }

    /// Forgets connection `key`; its writer is told through the outbox. A
    /// resumable connection's session starts its window if it was the last.
    fn remove(&mut self, key: usize) {
        let user = self.table.conns[key].user;
        let conn = self.table.remove(key, self.router.following(user));
        match conn.sink {
            Sink::Resumable { .. } => self.sessions.detach(user, Instant::now()),
            Sink::Retainer => {
                self.retainers.remove(&user);
            }
            Sink::Plain(_) => {}
        }
        self.publish_connected();
    }

    /// Keeps the number of sessions within what `resumeTotalBytes` can hold
    /// ([`Sessions::is_full`]) by purging the longest-idle ones; sessions
    /// with a connection open are never purged (their number is bounded by
    /// `maxClients`).
    fn make_room_for_a_session(&mut self) {
        while self.sessions.is_full() {
            let Some(user) = self.sessions.purge_oldest_idle() else {
                return;
            };
            self.purged(user, "to make room for a new one (resumeTotalBytes)");
        }
    }

    /// Forgets the retainer of `user`, whose session just ended, and says so.
    fn purged(&mut self, user: UserId, why: &str) {
        if let Some(key) = self.retainers.get(&user).copied() {
            self.remove(key);
        }
        if let Some(remote) = &mut self.remote {
            remote.resumes.session_ended(user);
        }
        Stats::add(&self.stats.sessions_purged, 1);
        tracing::info!(user, why, "resumable session purged");
    }

    /// Retries waiting resumes, purges expired sessions and writes due
    /// checkpoints; see [`HOUSEKEEPING_EVERY`].
    fn housekeeping(&mut self, now: Instant) {
        self.retry_waiting(now);
        if self.sessions.len() == 0 {
            return;
        }
        for user in self.sessions.purge_expired(now) {
            self.purged(user, "no connection within resumeWindowSecs");
        }
        let interval = self.sessions.settings().checkpoint_interval;
        if !interval.is_zero() && now.saturating_duration_since(self.last_checkpoint) >= interval {
            self.last_checkpoint = now;
            let (stream, position) = (self.sessions.stream(), self.position());
            self.table.stage_checkpoints(&stream, position);
            self.flush_touched(now);
        }
        self.publish_session_gauges();
    }

    /// Publishes the session gauges (once per tick or attach, not per
    /// event).
    fn publish_session_gauges(&self) {
        Stats::set(&self.stats.sessions_open, self.sessions.len() as u64);
        let retained = self.sessions.retained_bytes() as u64;
        Stats::set(&self.stats.retained_bytes, retained);
        Stats::set(&self.stats.evicted_entries, self.sessions.evicted());
    }

    /// `ended` sessions ended (a new stream, another stream id, a restored
    /// snapshot): nothing fetched serves them any more, and resumable
    /// connections and retainers are closed after what they were sent, so
    /// their clients resume, with a `#GAP`, into the new sequence space.
    fn sessions_ended(&mut self, ended: usize) {
        if let Some(remote) = &mut self.remote {
            remote.resumes.sessions_ended();
        }
        if ended == 0 {
            return;
        }
        let keys: Vec<usize> = (self.table.conns.iter())
            .filter(|(_, conn)| !matches!(conn.sink, Sink::Plain(_)))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            if let Some(outbox) = self.table.conns[key].sink.outbox() {
                outbox.close(Closed::Drain);
            }
            self.remove(key);
        }
        let sessions = ended;
        tracing::info!(
            sessions,
            "new stream: resumable sessions ended; their clients resume with #GAP"
        );
        self.publish_session_gauges();
    }

    /// Replaces the graph with a snapshot's; see [`Command::Restore`].
    fn restore(&mut self, snapshot: Snapshot) {
        let Snapshot {
            graph,
            position,
            stream,
            stream_seq,
        } = snapshot;
        let ended = self.sessions.new_stream().len();
        self.sessions.adopt_stream(stream);
        self.sessions_ended(ended);
        if let Some(remote) = &mut self.remote {
            remote.resumes.history.restored(position, stream_seq);
        }
        self.router = graph;
        let router = &self.router;
        self.table.rebuild_reach(|user| router.following(user));
        self.last_seq = (position > 0).then_some(position);
        let edges = self.router.edges();
        let stream = stream.as_str();
        tracing::info!(
            position,
            edges,
            stream,
            "follower graph restored from a snapshot"
        );
    }

    /// What a batch says of the sequence space, before its events: a new
    /// stream forgets the graph and ends every session (its positions
    /// belong to the old space, and a new id is made even with no session
    /// open, so a client of a purged one cannot find its id still current);
    /// a producer's stream id other than ours ends them too (see
    /// [`OrderedBatch::stream`]).
    fn enter_stream(&mut self, batch: &OrderedBatch) {
        let current = self.sessions.stream();
        if let Some(remote) = &mut self.remote {
            // Positions before a new stream, or of another one, are
            // nothing to resume from.
            let history = &mut remote.resumes.history;
            if batch.starts_new_stream() {
                history.reset(0);
            } else if batch.stream().is_some_and(|id| id != current) {
                history.reset(self.last_seq.unwrap_or(0));
            }
            if let Some(message) = batch.message() {
                history.message(batch.first_seq(), message);
            }
        }
        if batch.starts_new_stream() {
            self.router.clear();
            self.table.clear_reach();
            let ended = self.sessions.new_stream().len();
            self.sessions_ended(ended);
        }
        if let Some(stream) = batch.stream() {
            let ended = self.sessions.adopt_stream(stream).len();
            if ended > 0 {
                self.sessions_ended(ended);
            }
        }
    }

    /// Applies `batch` in order (a new stream or another stream id first, see
    /// `enter_stream`), stages each notification, then moves each touched
    /// client's staged bytes to its outbox. Normally reached through
    /// `Command::Deliver`; public so benchmarks can measure dispatch alone.
    ///
    /// Adds no allocation per event: each connection's staging buffer and
    /// the touched list keep their capacity from batch to batch; only the
    /// graph and the online-followers index allocate, as they grow.
    pub fn deliver(&mut self, batch: &OrderedBatch) {
        debug_assert!(
            batch.follows(self.last_seq),
            "batch {}..={} after {:?}: the seam's batches must keep increasing",
            batch.first_seq(),
            batch.last_seq(),
            self.last_seq
        );
        self.enter_stream(batch);
        let mut notifications: u64 = 0;
        for event in batch.tagged_events() {
            let Routed { audience, edge } = self.router.apply_tagged(event.tagged);
            let raw = event.raw;
            notifications += (self.table).stage(audience, event.seq, raw, &mut self.sessions);
            if let Some(edge) = edge {
                self.table.follow_edge(edge);
                if let Some(remote) = &mut self.remote {
                    remote.resumes.history.edge(event.seq, edge);
                }
            }
        }
        self.last_seq = Some(batch.last_seq());
        Stats::add(&self.stats.events_delivered, batch.len() as u64);
        Stats::add(&self.stats.notifications, notifications);
        Stats::set(&self.stats.refused_follows, self.router.refused_follows());
        self.flush_touched(batch.read_at());
        if self.has_waiting() {
            self.retry_waiting(Instant::now());
        }
    }

    /// Whether resumes from ahead of this gateway wait for it to move on.
    fn has_waiting(&self) -> bool {
        self.remote
            .as_ref()
            .is_some_and(|remote| remote.resumes.has_waiting())
    }

    /// Attaches the waiting resumes this gateway has now reached, and closes
    /// those past their deadline without a verdict (see
    /// [`crate::resume::stream::AHEAD_WAIT`]).
    fn retry_waiting(&mut self, now: Instant) {
        let Some(remote) = self.remote.as_mut().filter(|r| r.resumes.has_waiting()) else {
            return; // Nothing waits: the usual case, one branch a batch.
        };
        let position = self.last_seq.unwrap_or(0);
        let stream = self.sessions.stream();
        for due in remote.resumes.due(Position {
            seq: position,
            stream,
            now,
        }) {
            match due {
                Ok((ask, client)) => self.attach(ask, client),
                Err((ask, (conn, outbox))) => {
                    let (user, after) = (ask.user, ask.after);
                    tracing::info!(
                        user,
                        conn,
                        after,
                        position,
                        "closing a resume from ahead of this gateway, still ahead after the \
                         wait: the client retries"
                    );
                    outbox.close(Closed::Drain);
                }
            }
        }
        self.publish_connected();
    }

    /// Moves every touched connection's staged bytes to its outbox, and
    /// forgets the connections whose outbox refused them.
    fn flush_touched(&mut self, read_at: Instant) {
        let max = self.settings.max_client_pending_bytes;
        let through = self.write_through.then_some(&*self.stats);
        for key in self.table.flush_touched(read_at, max, through) {
            if self.table.conns[key].closed() == Some(Closed::Reset) {
                self.outages
                    .reset(self.table.conns[key].user, Instant::now());
            }
            // Each key is refused at most once per flush, and removing one
            // connection removes no other.
            self.remove(key);
        }
    }
}

mod attach;
#[cfg(test)]
mod tests;
