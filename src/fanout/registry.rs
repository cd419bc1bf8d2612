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

use followermaze_protocol::resume::{Hello, StreamId, Verdict};
use followermaze_protocol::{Seq, UserId};
use hashbrown::HashMap;
use tokio::sync::mpsc;

use crate::batch::OrderedBatch;
use crate::fanout::command::{Command, ConnId, FetchRequest, Resume, Resumed, COMMAND_QUEUE};
use crate::fanout::handle::RegistryHandle;
use crate::fanout::outbox::{Closed, Outbox};
use crate::fanout::table::{Sink, Table};
use crate::graph::router::{Routed, Router};
use crate::ops::stats::Stats;
use crate::resume::replay::Replay;
use crate::resume::session::Sessions;
use crate::resume::stream::{Ask, Attach, Decision, Position, StreamResumes};
use crate::settings::RegistrySettings;

/// How often the registry purges expired sessions and checks whether
/// checkpoints are due: the resolution of `resumeWindowSecs` and
/// `checkpointIntervalMs`. Nothing happens at the tick while no session
/// exists.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(50);

/// A client connection as a resume from the stream holds it.
type Client = (ConnId, Arc<Outbox>);

/// A gateway's resumes from the stream: the decisions, and where fetches go.
#[derive(Debug)]
struct Remote {
    /// The state machine, and the history it plans from.
    resumes: StreamResumes<Client>,
    /// The fetcher's queue (bounded: [`crate::cluster`]'s `FETCH_QUEUE`).
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
            retainers: HashMap::new(),
            last_checkpoint: Instant::now(),
            settings,
            stats,
            remote: None,
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
            match command {
                None | Some(Command::Shutdown) => break,
                Some(Command::Deliver(batch)) => self.deliver(&batch),
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
                Some(Command::Restore {
                    graph,
                    position,
                    stream,
                }) => self.restore(graph, position, stream),
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

    /// Registers a resumable connection, as the stream-resume state machine
    /// decides on a gateway, from local sessions otherwise.
    fn attach(&mut self, ask: Ask, client: Client) {
        let Some(remote) = &mut self.remote else {
            return self.attach_local(ask, client);
        };
        let at = Position {
            seq: self.last_seq.unwrap_or(0),
            stream: self.sessions.stream(),
            now: Instant::now(),
        };
        let can_replay = self.sessions.can_replay(ask.user, ask.after);
        let following = self.router.following(ask.user);
        match remote
            .resumes
            .decide(ask, client, at, can_replay, following)
        {
            Decision::Local(client) => self.attach_local(ask, client),
            Decision::Held => {}
            Decision::Attach(attach) => self.attach_fetched(ask.user, at.stream, attach),
            Decision::Fetch { conn, plan } => {
                let Ok(permit) = remote.fetches.try_reserve() else {
                    // Busy or gone: the local verdict, at once.
                    return self.attach_local(ask, conn);
                };
                let (id, outbox) = conn;
                remote
                    .resumes
                    .fetch_started(ask.user, ask.after, (id, outbox.clone()));
                let max_bytes = self.sessions.settings().limits.per_session_bytes;
                let (user, after, upto) = (ask.user, ask.after, at.seq);
                let resume = Resume {
                    user,
                    conn: id,
                    outbox,
                    stream: at.stream,
                    after,
                    upto,
                };
                permit.send(FetchRequest {
                    resume,
                    plan,
                    max_bytes,
                });
                self.reserve_session(user, upto);
                tracing::debug!(user, conn = id, after, upto, "resuming from the stream");
            }
        }
    }

    /// Opens `user`'s session at `position` if it is not open, with its
    /// retainer.
    fn reserve_session(&mut self, user: UserId, position: Seq) {
        if !self.retainers.contains_key(&user) {
            self.make_room_for_a_session();
        }
        if self.sessions.reserve(user, position, Instant::now()) {
            let key = self.insert(user, 0, Sink::Retainer);
            self.retainers.insert(user, key);
        }
        self.publish_session_gauges();
    }

    /// A fetch is back: every connection that waited for it and is still
    /// open is attached, each from its own position.
    fn fetched(&mut self, Resumed { resume, lines }: Resumed) {
        let Some(remote) = &mut self.remote else {
            return;
        };
        let Resume {
            user,
            conn,
            outbox,
            stream,
            after,
            upto,
        } = resume;
        let attaches = remote
            .resumes
            .fetched(user, (after, upto), stream, lines, (conn, outbox));
        for attach in attaches {
            // A connection that ended while it waited has nobody to tell.
            if attach.conn.1.closed().is_none() {
                self.attach_fetched(user, stream, attach);
            }
        }
    }

    /// Step 3 of a resume from the stream: `lines` are the user's in
    /// (`after`, `upto`]. If the session still holds everything above
    /// `upto`, the client gets `#OK` at `after`, `lines`, the retained lines
    /// above `upto`, then live ones; otherwise its local verdict.
    fn attach_fetched(&mut self, user: UserId, stream: StreamId, attach: Attach<Client>) {
        let Attach {
            conn: (id, outbox),
            after,
            upto,
            lines,
            open,
        } = attach;
        if open {
            self.reserve_session(user, upto);
        }
        let mut staged = Vec::new();
        let attached = lines.is_some()
            && (self.sessions).attach_fetched(user, stream, after, upto, &mut staged);
        let Some(lines) = lines.filter(|_| attached) else {
            let ask = Ask {
                user,
                stream: Some(stream),
                after,
            };
            return self.attach_local(ask, (id, outbox));
        };
        let fault_reset_every = self.sessions.settings().fault_reset_every;
        let mut replay = Replay::new(staged, after, fault_reset_every);
        for line in lines.split_inclusive(|&byte| byte == b'\n') {
            replay.line(line);
        }
        self.sessions.replay(user, upto, |line| replay.line(line));
        let replayed = replay.lines;
        Stats::add(&self.stats.resumes_ok, 1);
        Stats::add(&self.stats.stream_resumes, 1);
        Stats::add(&self.stats.replayed_lines, replayed);
        tracing::debug!(
            user,
            conn = id,
            after,
            upto,
            replayed,
            "resumable client attached from the stream"
        );
        self.go_live(user, id, outbox, replay);
    }

    /// Registers a resumable connection from this process's own sessions:
    /// the verdict and the lines it missed are staged and flushed now,
    /// between two batches, so live lines from the next batch on follow
    /// them exactly.
    fn attach_local(&mut self, ask: Ask, (id, outbox): Client) {
        let Ask {
            user,
            stream,
            after,
        } = ask;
        if !self.retainers.contains_key(&user) {
            self.make_room_for_a_session();
        }
        let position = self.position();
        let mut staged = Vec::new();
        let attached = (self.sessions).attach(user, stream, after, position, &mut staged);
        if attached.opened {
            let key = self.insert(user, 0, Sink::Retainer);
            self.retainers.insert(user, key);
        }
        let fault_reset_every = self.sessions.settings().fault_reset_every;
        let mut replay = Replay::new(staged, attached.seq, fault_reset_every);
        (self.sessions).replay(user, attached.seq, |line| replay.line(line));
        let replayed = replay.lines;
        if stream.is_some() {
            let counter = match attached.verdict {
                Verdict::Ok => &self.stats.resumes_ok,
                Verdict::Gap => &self.stats.resumes_gap,
            };
            Stats::add(counter, 1);
            Stats::add(&self.stats.replayed_lines, replayed);
        }
        let (verdict, seq) = (attached.verdict, attached.seq);
        tracing::debug!(
            user,
            conn = id,
            after,
            ?verdict,
            seq,
            replayed,
            "resumable client attached"
        );
        self.go_live(user, id, outbox, replay);
    }

    /// Adds a resumable connection whose verdict and replay are `replay`,
    /// and flushes them now, between two batches: live lines from the next
    /// batch on follow them exactly.
    fn go_live(&mut self, user: UserId, id: ConnId, outbox: Arc<Outbox>, replay: Replay) {
        let Replay {
            staged,
            tally,
            resetting,
            ..
        } = replay;
        let sink = Sink::Resumable {
            outbox,
            tally,
            resetting,
        };
        let key = self.insert(user, id, sink);
        self.table.stage_bytes(key, staged);
        self.flush_touched(Instant::now());
        self.publish_session_gauges();
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
    fn restore(&mut self, graph: Router, position: Seq, stream: StreamId) {
        let ended = self.sessions.new_stream().len();
        self.sessions.adopt_stream(stream);
        self.sessions_ended(ended);
        if let Some(remote) = &mut self.remote {
            remote.resumes.history.reset(position);
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

    /// Applies `batch` in order (see [`Registry::enter_stream`] for what
    /// comes first), stages each notification, then moves each touched
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
        for event in batch.events() {
            let Routed { audience, edge } = self.router.apply(event.kind);
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
        self.retry_waiting(Instant::now());
    }

    /// Attaches the waiting resumes this gateway has now reached, and closes
    /// those past their deadline without a verdict (see
    /// [`crate::resume::stream::AHEAD_WAIT`]).
    fn retry_waiting(&mut self, now: Instant) {
        let Some(remote) = self.remote.as_mut().filter(|r| r.resumes.has_waiting()) else {
            return;
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
        for key in self.table.flush_touched(read_at, max) {
            // Each key is refused at most once per flush, and removing one
            // connection removes no other.
            self.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
