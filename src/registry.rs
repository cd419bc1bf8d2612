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
//!
//! # Resumable sessions
//!
//! A user with a session (see [`crate::session`]) has one more entry among
//! the connections: a *retainer*, which stands in the online set and the
//! followers index like a connection, so routing reaches it exactly as it
//! reaches live ones, but whose lines are recorded in the session's
//! retention instead of written anywhere. A resumable connection registers
//! between two batches: its verdict, then the retained lines it missed, then
//! (from the next batch on) live lines; nothing falls between them. Its
//! tally (count and CRC of the event lines sent on it) feeds its `#AT`
//! checkpoints, written at the housekeeping tick, between batches too.
//! Classic connections pay one predictable branch per notification for
//! all of this; broadcasts keep their plain loop while no session exists.
//!
//! On a cluster gateway ([`Registry::with_history`]), a resume that no
//! local session can replay is served from the shared stream instead (see
//! [`crate::history`]): the session opens at the position between two
//! batches, the lines below it are fetched off the actor, and the
//! connection attaches between two later batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::mpsc;

use crate::batch::OrderedBatch;
use crate::history::{FetchRequest, History};
use crate::online::Online;
use crate::outbox::{Closed, Outbox, PushError};
use crate::reach::Reach;
use crate::router::{Audience, EdgeChange, Routed, Router};
use crate::session::{SessionSettings, Sessions, Tally};
use crate::stats::{LogThrottle, Stats};
use followermaze_protocol::resume::{Hello, StreamId, Verdict};
use followermaze_protocol::{Seq, UserId};
use hashbrown::HashMap;

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
    /// A resume from the shared stream (see [`crate::history`]) has its
    /// lines in (`after`, `upto`], or `None` if they could not be fetched.
    Resumed {
        user: UserId,
        conn: ConnId,
        outbox: Arc<Outbox>,
        /// The stream id the client named.
        stream: StreamId,
        /// What the client received up to.
        after: Seq,
        /// The position the session opened at, which the lines reach.
        upto: Seq,
        /// The user's lines in (`after`, `upto`], in order.
        lines: Option<Vec<u8>>,
    },
    /// A client connection ended.
    Unregister { user: UserId, conn: ConnId },
    /// Replace the follower graph with `graph`, the state after event
    /// `position` of stream `stream` (a cluster gateway loading a
    /// snapshot). Sessions end: their retained lines would have a hole.
    Restore {
        graph: Router,
        position: Seq,
        stream: StreamId,
    },
    /// Deliver nothing more: tell every writer to drain and stop.
    Shutdown,
}

/// How many commands may wait for the registry. Each `Deliver` holds at most
/// [`crate::sequencer::MAX_DELIVER_EVENTS`] events (about one 64 KiB read's
/// worth: ~230 KiB with their lines), so 8 bound the queue to ~1.8 MiB
/// while leaving enough in flight to keep both sides busy; a slow registry
/// pushes back on the sources.
pub const COMMAND_QUEUE: usize = 8;

/// Staging buffers larger than this after a flush are freed rather than kept
/// for reuse, so a burst does not leave every client holding its peak.
const STAGING_KEEP_BYTES: usize = 64 * 1024;

/// How often the registry purges expired sessions and checks whether
/// checkpoints are due: the resolution of `resumeWindowSecs` and
/// `checkpointIntervalMs`. Nothing happens at the tick while no session
/// exists.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(50);

/// How long a gateway holds a resume whose `after` is ahead of it (the
/// client was served by a gateway further along the same stream) before it
/// gives up and closes the connection without a verdict, so the client
/// retries (perhaps elsewhere). Gateways lag one another by milliseconds
/// normally, by seconds when one gateway's clients all land on the others
/// at once. Any verdict from behind `after` would be wrong: `#OK` would
/// repeat lines the client has, `#GAP` would claim lines it has are lost.
const AHEAD_WAIT: Duration = Duration::from_secs(10);

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
    /// Resumable sessions: window, retention bounds, checkpoints.
    pub(crate) sessions: SessionSettings,
}

impl RegistrySettings {
    /// The given bounds, and the default session settings.
    pub fn new(max_client_pending_bytes: usize, max_follow_edges: usize) -> RegistrySettings {
        RegistrySettings {
            max_client_pending_bytes,
            max_follow_edges,
            ..crate::Config::default().registry()
        }
    }
}

/// One registered connection, or a session's retainer.
#[derive(Debug)]
struct Conn {
    /// The id the client announced.
    user: UserId,
    /// Tells this connection apart from a later one that reuses the slab key.
    id: ConnId,
    /// Where its lines go.
    sink: Sink,
    /// This batch's notifications, moved to the outbox at the end of the
    /// batch. Non-empty exactly when the key is in `Registry::touched`.
    staged: Vec<u8>,
}

/// Where a [`Conn`]'s lines go.
#[derive(Debug)]
enum Sink {
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
    fn outbox(&self) -> Option<&Arc<Outbox>> {
        match self {
            Sink::Plain(outbox) | Sink::Resumable { outbox, .. } => Some(outbox),
            Sink::Retainer => None,
        }
    }
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
    /// Rate limit for slow-consumer warnings.
    slow_log: LogThrottle,
    /// A gateway's record of edge changes and stream messages, for resumes
    /// from the shared stream; `None` standalone.
    history: Option<History>,
    /// Where such resumes are fetched (a gateway's fetcher task).
    fetches: Option<mpsc::Sender<FetchRequest>>,
    /// Resumes ahead of this gateway's position, waiting for it to catch
    /// up (until their deadline, [`AHEAD_WAIT`]). At most one per client
    /// connection, so bounded by `maxClients`.
    waiting: Vec<Waiting>,
    /// Stream fetches under way, by user and the position each fetches
    /// from: the connections waiting for each (the one that asked, and any
    /// of the same user from that position or later that came while it
    /// ran), so a client that keeps reconnecting while a long fetch runs
    /// does not start one per attempt. Bounded by the fetcher's queue.
    fetching: HashMap<(UserId, Seq), Vec<Joiner>>,
    /// The last fetch's lines for each user whose session it seeded, kept so
    /// a client that dropped before its verdict (or after) resumes from
    /// them without fetching again; see [`Parked`]. At most
    /// [`MAX_PARKED_FETCHES`], oldest dropped first.
    parked: HashMap<UserId, Parked>,
    /// Users of `parked`, oldest first (at most one entry each).
    parked_order: std::collections::VecDeque<UserId>,
}

/// A resumable connection's first bytes being staged: its verdict, then the
/// lines replayed to it, counted into its tally; fault injection may stop
/// the replay early (the connection is then reset after what was staged).
struct Replay {
    /// The verdict line, then the replayed lines.
    staged: Vec<u8>,
    /// Count and CRC of the replayed lines.
    tally: Tally,
    /// Lines replayed.
    lines: u64,
    /// Fault injection asked for a reset: nothing more is staged.
    resetting: bool,
}

impl Replay {
    /// A replay after the verdict already in `staged`, whose `<seq>` is
    /// `verdict_seq`.
    fn new(staged: Vec<u8>, verdict_seq: Seq, fault_reset_every: u64) -> Replay {
        Replay {
            staged,
            tally: Tally::new(verdict_seq, fault_reset_every),
            lines: 0,
            resetting: false,
        }
    }

    /// Stages one replayed line, unless a reset is due.
    fn line(&mut self, line: &[u8]) {
        if !self.resetting {
            self.staged.extend_from_slice(line);
            self.resetting = self.tally.line(line);
            self.lines += 1;
        }
    }
}

/// A connection waiting for a stream fetch: its position, id and outbox.
type Joiner = (Seq, ConnId, Arc<Outbox>);

/// A completed fetch: the user's lines in (`after`, `upto`] of `stream`.
/// With the session opened at `upto`, they serve any resume from
/// `after..=upto`.
#[derive(Debug)]
struct Parked {
    /// The stream they belong to.
    stream: StreamId,
    /// The position they start after.
    after: Seq,
    /// The position they reach (the session's opening position).
    upto: Seq,
    /// The lines, in order.
    lines: Vec<u8>,
}

/// Most fetches kept in [`Registry::parked`]; each is at most
/// `resumeBufferBytes`.
const MAX_PARKED_FETCHES: usize = 64;

/// The lines of `lines` (whole lines, in order) whose sequence is above
/// `after`.
fn lines_after(lines: &[u8], after: Seq) -> Vec<u8> {
    let mut kept = Vec::new();
    for line in lines.split_inclusive(|&byte| byte == b'\n') {
        let bar = line
            .iter()
            .position(|&byte| byte == b'|')
            .unwrap_or(line.len());
        let seq = followermaze_protocol::parse_decimal(&line[..bar]).unwrap_or(0);
        if seq > after {
            kept.extend_from_slice(line);
        }
    }
    kept
}

/// A resume held until the gateway reaches its `after`.
#[derive(Debug)]
struct Waiting {
    /// When it gets its local verdict (`#GAP`) instead.
    deadline: Instant,
    /// The user resuming.
    user: UserId,
    /// The stream it named (the current one when it was held).
    stream: StreamId,
    /// The position it received up to, ahead of ours.
    after: Seq,
    /// Its connection.
    conn: ConnId,
    /// Its writer's outbox, closed at shutdown if still held.
    outbox: Arc<Outbox>,
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
            sessions: Sessions::new(settings.sessions),
            retainers: HashMap::new(),
            last_checkpoint: Instant::now(),
            settings,
            stats,
            slow_log: LogThrottle::new(std::time::Duration::from_secs(5)),
            history: None,
            fetches: None,
            waiting: Vec::new(),
            fetching: HashMap::new(),
            parked: HashMap::new(),
            parked_order: std::collections::VecDeque::new(),
        };
        (registry, RegistryHandle { commands: tx })
    }

    /// This registry, a cluster gateway's: a resumable client without a
    /// local session resumes from the shared stream, fetched by the task
    /// reading `fetches` (see [`crate::history`]).
    pub(crate) fn with_history(mut self, fetches: mpsc::Sender<FetchRequest>) -> Registry {
        self.history = Some(History::default());
        self.fetches = Some(fetches);
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
            let Some(command) = command else { break };
            match command {
                Command::Deliver(batch) => self.deliver(&batch),
                Command::Register {
                    hello,
                    conn,
                    outbox,
                } => self.register(hello, conn, outbox),
                Command::Resumed {
                    user,
                    conn,
                    outbox,
                    stream,
                    after,
                    upto,
                    lines,
                } => {
                    self.fetched(user, (conn, outbox), stream, (after, upto), lines);
                    Stats::set(&self.stats.clients_connected, self.connected() as u64);
                }
                Command::Unregister { user, conn } => self.unregister(user, conn),
                Command::Restore {
                    graph,
                    position,
                    stream,
                } => self.restore(graph, position, stream),
                Command::Shutdown => break,
            }
        }
        // Clients whose registration was still queued must hear of the
        // shutdown too, or their writers would wait out the drain timeout.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Register { outbox, .. } | Command::Resumed { outbox, .. } = command {
                outbox.close(Closed::Drain);
            }
        }
        for (_, conn) in self.conns.iter() {
            if let Some(outbox) = conn.sink.outbox() {
                outbox.close(Closed::Drain);
            }
        }
        for waiting in &self.waiting {
            waiting.outbox.close(Closed::Drain);
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
            } => self.attach(user, stream, after, id, outbox),
        }
        Stats::set(&self.stats.clients_connected, self.connected() as u64);
    }

    /// Registered client connections (retainers are not connections).
    fn connected(&self) -> usize {
        self.conns.len() - self.retainers.len()
    }

    /// The last sequence number applied (0 before any).
    fn position(&self) -> Seq {
        self.last_seq.unwrap_or(0)
    }

    /// Adds `sink` for `user` to the connections, the online set and the
    /// followers index; returns its key.
    fn insert(&mut self, user: UserId, id: ConnId, sink: Sink) -> usize {
        let key = self.conns.insert(Conn {
            user,
            id,
            sink,
            staged: Vec::new(),
        });
        self.online.add(user, key);
        self.reach.connected(key, self.router.following(user));
        key
    }

    /// Registers a resumable connection: from the shared stream if this
    /// gateway cannot replay it locally ([`Registry::resume_from_stream`]), else
    /// now ([`Registry::attach_local`]).
    fn attach(
        &mut self,
        user: UserId,
        stream: Option<StreamId>,
        after: Seq,
        id: ConnId,
        outbox: Arc<Outbox>,
    ) {
        match self.resume_from_stream(user, stream, after, (id, outbox)) {
            Ok(()) => {}
            Err((id, outbox)) => self.attach_local(user, stream, after, id, outbox),
        }
    }

    /// Step 1 of a resume from the shared stream (see [`crate::history`]):
    /// a gateway's client names the current stream, `after` is not ahead,
    /// and no local session replays from it. Opens the session at the
    /// position now and asks the fetcher for the lines up to it. Hands the
    /// connection back if this is not such a resume, or it cannot be
    /// planned (below the history's floor) or queued.
    fn resume_from_stream(
        &mut self,
        user: UserId,
        stream: Option<StreamId>,
        after: Seq,
        (id, outbox): (ConnId, Arc<Outbox>),
    ) -> Result<(), (ConnId, Arc<Outbox>)> {
        let position = self.position();
        let current = self.sessions.stream();
        let (Some(history), Some(fetches)) = (&self.history, &self.fetches) else {
            return Err((id, outbox));
        };
        if stream != Some(current) {
            return Err((id, outbox));
        }
        if after > position {
            self.waiting.push(Waiting {
                deadline: Instant::now() + AHEAD_WAIT,
                user,
                stream: current,
                after,
                conn: id,
                outbox,
            });
            return Ok(());
        }
        if self.sessions.can_replay(user, after) {
            return Err((id, outbox));
        }
        if after == position {
            // Nothing to fetch: the session opened now replays the rest.
            self.reserve_session(user, position);
            self.resumed(
                user,
                (id, outbox),
                current,
                (after, position),
                Some(Vec::new()),
            );
            return Ok(());
        }
        if let Some(parked) = self.parked.get(&user) {
            if parked.stream == current && parked.after <= after && after <= parked.upto {
                let (upto, lines) = (parked.upto, lines_after(&parked.lines, after));
                self.resumed(user, (id, outbox), current, (after, upto), Some(lines));
                return Ok(());
            }
        }
        let under_way = self
            .fetching
            .iter_mut()
            .find(|((fetching_user, from), _)| *fetching_user == user && *from <= after);
        if let Some((_, joiners)) = under_way {
            joiners.push((after, id, outbox));
            return Ok(());
        }
        let Some(plan) = history.plan(user, after, position, self.router.following(user)) else {
            return Err((id, outbox));
        };
        let permit = match fetches.try_reserve() {
            Ok(permit) => permit,
            // Busy or gone: the local verdict, at once.
            Err(_) => return Err((id, outbox)),
        };
        self.fetching
            .entry((user, after))
            .or_default()
            .push((after, id, outbox.clone()));
        permit.send(FetchRequest {
            user,
            conn: id,
            outbox,
            stream: current,
            after,
            upto: position,
            plan,
            max_bytes: self.sessions.settings().limits.per_session_bytes,
        });
        self.reserve_session(user, position);
        tracing::debug!(user, conn = id, after, position, "resuming from the stream");
        Ok(())
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

    /// Drops every parked fetch (their sessions ended).
    fn forget_parked(&mut self) {
        self.parked.clear();
        self.parked_order.clear();
    }

    /// A fetch is back: every connection that waited for it and is still
    /// open is attached (each from its own position); the lines are parked
    /// for the next resume of the same user.
    fn fetched(
        &mut self,
        user: UserId,
        (id, outbox): (ConnId, Arc<Outbox>),
        stream: StreamId,
        (after, upto): (Seq, Seq),
        lines: Option<Vec<u8>>,
    ) {
        let mut joiners = self.fetching.remove(&(user, after)).unwrap_or_default();
        if joiners.is_empty() {
            joiners.push((after, id, outbox));
        }
        if let Some(lines) = &lines {
            if self
                .parked
                .insert(
                    user,
                    Parked {
                        stream,
                        after,
                        upto,
                        lines: lines.clone(),
                    },
                )
                .is_none()
            {
                self.parked_order.push_back(user);
            }
            while self.parked_order.len() > MAX_PARKED_FETCHES {
                if let Some(oldest) = self.parked_order.pop_front() {
                    self.parked.remove(&oldest);
                }
            }
        }
        for (from, conn, outbox) in joiners {
            // A connection that ended while it waited has nobody to tell.
            if outbox.closed().is_some() {
                continue;
            }
            let owed = lines.as_deref().map(|lines| lines_after(lines, from));
            self.resumed(user, (conn, outbox), stream, (from, upto), owed);
        }
    }

    /// Step 3 of a resume from the shared stream: `lines` are the user's in
    /// (`after`, `upto`]. If the session still holds everything above
    /// `upto`, the client gets `#OK` at `after`, `lines`, the retained lines
    /// above `upto`, then live ones; otherwise its local verdict.
    fn resumed(
        &mut self,
        user: UserId,
        (id, outbox): (ConnId, Arc<Outbox>),
        stream: StreamId,
        (after, upto): (Seq, Seq),
        lines: Option<Vec<u8>>,
    ) {
        let mut staged = Vec::new();
        let attached = lines.is_some()
            && self
                .sessions
                .attach_fetched(user, stream, after, upto, &mut staged);
        let Some(lines) = lines.filter(|_| attached) else {
            self.attach_local(user, Some(stream), after, id, outbox);
            return;
        };
        let mut replay = Replay::new(staged, after, self.sessions.settings().fault_reset_every);
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

    /// Registers a resumable connection from this gateway's own sessions:
    /// the verdict and the lines it missed are staged and flushed now,
    /// between two batches, so live lines from the next batch on follow
    /// them exactly.
    fn attach_local(
        &mut self,
        user: UserId,
        stream: Option<StreamId>,
        after: Seq,
        id: ConnId,
        outbox: Arc<Outbox>,
    ) {
        if !self.retainers.contains_key(&user) {
            self.make_room_for_a_session();
        }
        let position = self.position();
        let mut staged = Vec::new();
        let attached = self
            .sessions
            .attach(user, stream, after, position, &mut staged);
        if attached.opened {
            let key = self.insert(user, 0, Sink::Retainer);
            self.retainers.insert(user, key);
        }
        let mut replay = Replay::new(
            staged,
            attached.seq,
            self.sessions.settings().fault_reset_every,
        );
        self.sessions
            .replay(user, attached.seq, |line| replay.line(line));
        let replayed = replay.lines;
        if stream.is_some() {
            let counter = match attached.verdict {
                Verdict::Ok => &self.stats.resumes_ok,
                Verdict::Gap => &self.stats.resumes_gap,
            };
            Stats::add(counter, 1);
            Stats::add(&self.stats.replayed_lines, replayed);
        }
        tracing::debug!(
            user,
            conn = id,
            after,
            verdict = ?attached.verdict,
            seq = attached.seq,
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
        self.conns[key].staged = staged;
        self.touched.push(key);
        self.flush_touched(Instant::now());
        self.publish_session_gauges();
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

    /// Forgets connection `key`; its writer is told through the outbox. A
    /// resumable connection's session starts its window if it was the last.
    fn remove(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        self.online.remove(conn.user, key);
        self.reach
            .disconnected(key, self.router.following(conn.user));
        match conn.sink {
            Sink::Resumable { .. } => self.sessions.detach(conn.user, Instant::now()),
            Sink::Retainer => {
                self.retainers.remove(&conn.user);
            }
            Sink::Plain(_) => {}
        }
        Stats::set(&self.stats.clients_connected, self.connected() as u64);
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
        if self.parked.remove(&user).is_some() {
            self.parked_order.retain(|parked| *parked != user);
        }
        Stats::add(&self.stats.sessions_purged, 1);
        tracing::info!(user, why, "resumable session purged");
    }

    /// Purges expired sessions and writes due checkpoints; see
    /// [`HOUSEKEEPING_EVERY`].
    fn housekeeping(&mut self, now: Instant) {
        if !self.waiting.is_empty() {
            self.retry_waiting(now);
        }
        if self.sessions.len() == 0 {
            return;
        }
        for user in self.sessions.purge_expired(now) {
            self.purged(user, "no connection within resumeWindowSecs");
        }
        let interval = self.sessions.settings().checkpoint_interval;
        if !interval.is_zero() && now.saturating_duration_since(self.last_checkpoint) >= interval {
            self.last_checkpoint = now;
            self.checkpoint(now);
        }
        self.publish_session_gauges();
    }

    /// Stages an `#AT` line on every resumable connection whose position
    /// moved since its last one, and flushes.
    fn checkpoint(&mut self, now: Instant) {
        let (stream, position) = (self.sessions.stream(), self.position());
        for (key, conn) in self.conns.iter_mut() {
            if let Sink::Resumable {
                tally,
                resetting: false,
                ..
            } = &mut conn.sink
            {
                let was_empty = conn.staged.is_empty();
                if tally.checkpoint(&mut conn.staged, &stream, position) && was_empty {
                    self.touched.push(key);
                }
            }
        }
        self.flush_touched(now);
    }

    /// Publishes the session gauges (once per tick or attach, not per
    /// event).
    fn publish_session_gauges(&self) {
        Stats::set(&self.stats.sessions_open, self.sessions.len() as u64);
        Stats::set(
            &self.stats.retained_bytes,
            self.sessions.retained_bytes() as u64,
        );
        Stats::set(&self.stats.evicted_entries, self.sessions.evicted());
    }

    /// A new stream: every session ends (its positions belong to the old
    /// sequence space), and resumable connections are closed after what
    /// they were sent, so they resume, with a `#GAP`, into the new one.
    fn end_sessions(&mut self) {
        // Always a new id, sessions or not: a client of a session purged
        // before the new stream must not find its old id still current.
        let ended = self.sessions.new_stream().len();
        self.forget_parked();
        if ended > 0 {
            self.close_resumable(ended);
        }
    }

    /// The producer names the sequence space `stream` (see
    /// [`OrderedBatch::stream`]): a different id than the current one ends
    /// every session, as a new stream does.
    fn adopt_stream(&mut self, stream: StreamId) {
        let ended = self.sessions.adopt_stream(stream).len();
        if ended > 0 {
            self.forget_parked();
        }
        if ended > 0 {
            self.close_resumable(ended);
        }
    }

    /// Replaces the graph with a snapshot's; see [`Command::Restore`].
    fn restore(&mut self, graph: Router, position: Seq, stream: StreamId) {
        let ended = self.sessions.new_stream().len();
        self.forget_parked();
        self.sessions.adopt_stream(stream);
        if ended > 0 {
            self.close_resumable(ended);
        }
        if let Some(history) = &mut self.history {
            history.reset(position);
        }
        self.router = graph;
        self.reach.clear();
        for (key, conn) in self.conns.iter() {
            self.reach.connected(key, self.router.following(conn.user));
        }
        self.last_seq = (position > 0).then_some(position);
        tracing::info!(
            position,
            edges = self.router.edges(),
            stream = stream.as_str(),
            "follower graph restored from a snapshot"
        );
    }

    /// Closes every resumable connection and retainer after `ended`
    /// sessions ended, so their clients resume with `#GAP`.
    fn close_resumable(&mut self, ended: usize) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| !matches!(conn.sink, Sink::Plain(_)))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            if let Some(outbox) = self.conns[key].sink.outbox() {
                outbox.close(Closed::Drain);
            }
            self.remove(key);
        }
        tracing::info!(
            sessions = ended,
            "new stream: resumable sessions ended; their clients resume with #GAP"
        );
        self.publish_session_gauges();
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
        debug_assert!(
            batch.follows(self.last_seq),
            "batch {}..={} after {:?}: the seam's batches must keep increasing",
            batch.first_seq(),
            batch.last_seq(),
            self.last_seq
        );
        if let Some(history) = &mut self.history {
            // Positions before a new stream, or of another one, are
            // nothing to resume from.
            if batch.starts_new_stream() {
                history.reset(0);
            } else if batch
                .stream()
                .is_some_and(|id| id != self.sessions.stream())
            {
                history.reset(self.last_seq.unwrap_or(0));
            }
        }
        if batch.starts_new_stream() {
            self.forget_graph();
            self.end_sessions();
        }
        if let Some(stream) = batch.stream() {
            self.adopt_stream(stream);
        }
        if let (Some(history), Some(message)) = (&mut self.history, batch.message()) {
            history.message(batch.first_seq(), message);
        }
        let mut notifications: u64 = 0;
        for event in batch.events() {
            let Routed { audience, edge } = self.router.apply(event.kind);
            notifications += self.stage(audience, event.seq, event.raw);
            if let Some(edge) = edge {
                self.follow_edge(edge);
                if let Some(history) = &mut self.history {
                    history.edge(event.seq, edge);
                }
            }
        }
        self.last_seq = Some(batch.last_seq());
        self.count(batch.len(), notifications);
        self.flush_touched(batch.read_at());
        if !self.waiting.is_empty() {
            self.retry_waiting(Instant::now());
        }
    }

    /// Attaches the waiting resumes this gateway has now reached, and closes
    /// those past their deadline without a verdict (see [`AHEAD_WAIT`]).
    fn retry_waiting(&mut self, now: Instant) {
        let position = self.position();
        let (due, kept): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|waiting| waiting.after <= position || waiting.deadline <= now);
        self.waiting = kept;
        for waiting in due {
            let Waiting {
                user,
                stream,
                after,
                conn,
                outbox,
                ..
            } = waiting;
            if after <= position {
                self.attach(user, Some(stream), after, conn, outbox);
            } else {
                tracing::info!(
                    user,
                    conn,
                    after,
                    position,
                    "closing a resume from ahead of this gateway, still ahead after the wait: \
                     the client retries"
                );
                outbox.close(Closed::Drain);
            }
        }
        Stats::set(&self.stats.clients_connected, self.connected() as u64);
    }

    /// A new stream: its events owe nothing to the old follower graph.
    fn forget_graph(&mut self) {
        self.router.clear();
        self.reach.clear();
    }

    /// Hands line `raw` (event `seq`) to every connection `audience`
    /// names; returns how many notifications that queued for writers.
    #[inline]
    fn stage(&mut self, audience: Audience, seq: Seq, raw: &[u8]) -> u64 {
        let keys = match audience {
            Audience::Nobody => return 0,
            Audience::Everyone => return self.stage_everyone(seq, raw),
            Audience::User(user) => self.online.get(user).unwrap_or_default(),
            Audience::Followers(author) => self.reach.of(author),
        };
        let mut queued = 0;
        for &key in keys {
            queued += stage(
                &mut self.conns,
                &mut self.touched,
                &mut self.sessions,
                key,
                seq,
                raw,
            );
        }
        queued
    }

    /// [`Registry::stage`] for a broadcast: every connection.
    #[inline]
    fn stage_everyone(&mut self, seq: Seq, raw: &[u8]) -> u64 {
        if self.sessions.len() > 0 {
            let mut queued = 0;
            for key in 0..self.conns.capacity() {
                if self.conns.contains(key) {
                    queued += stage(
                        &mut self.conns,
                        &mut self.touched,
                        &mut self.sessions,
                        key,
                        seq,
                        raw,
                    );
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
        let (outbox, resetting) = match &conn.sink {
            Sink::Plain(outbox) => (outbox, false),
            Sink::Resumable {
                outbox, resetting, ..
            } => (outbox, *resetting),
            Sink::Retainer => {
                debug_assert!(false, "a retainer is never staged");
                return;
            }
        };
        let result = outbox.push(&mut conn.staged, read_at, max);
        if conn.staged.capacity() > STAGING_KEEP_BYTES {
            conn.staged = Vec::new();
        }
        match result {
            Ok(()) if resetting => {
                // Fault injection: the writer sends what it has, then RSTs.
                outbox.close(Closed::Reset);
                self.remove(key);
            }
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
    match &mut conn.sink {
        Sink::Plain(_) => {}
        Sink::Resumable {
            tally, resetting, ..
        } => {
            if *resetting {
                return 0;
            }
            *resetting = tally.line(raw);
        }
        Sink::Retainer => {
            sessions.retention().record(conn.user, seq, raw);
            return 0;
        }
    }
    if conn.staged.is_empty() {
        touched.push(key);
    }
    conn.staged.extend_from_slice(raw);
    1
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
                        registry.register(Hello::Classic(user), conns.len() as ConnId, outbox.clone());
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

    #[derive(Debug, Clone)]
    enum SessionOp {
        Event(EventKind),
        /// A new resumable client of this user (first connection).
        Join(UserId),
        /// Client `n` (mod the number joined) drops its connection.
        Drop(usize),
        /// Client `n` reconnects and resumes from what it received.
        Resume(usize),
    }

    fn any_session_op() -> impl Strategy<Value = SessionOp> {
        let user = 1u64..5;
        prop_oneof![
            4 => any_op().prop_filter_map("events only", |op| match op {
                Op::Event(kind) => Some(SessionOp::Event(kind)),
                _ => None,
            }),
            1 => user.prop_map(SessionOp::Join),
            1 => (0usize..6).prop_map(SessionOp::Drop),
            1 => (0usize..6).prop_map(SessionOp::Resume),
        ]
    }

    /// Whether `kind` concerns `user`, given the graph `edges` after it.
    fn concerns(
        kind: EventKind,
        user: UserId,
        edges: &std::collections::HashSet<(UserId, UserId)>,
    ) -> bool {
        match kind {
            EventKind::Follow { to, .. } | EventKind::Private { to, .. } => to == user,
            EventKind::Unfollow { .. } => false,
            EventKind::Broadcast => true,
            EventKind::Status { from } => edges.contains(&(user, from)),
        }
    }

    /// One resumable client of the model.
    struct ModelClient {
        user: UserId,
        /// The highest position it received.
        after: Seq,
        /// Its current connection: id, outbox, bytes owed on it.
        conn: Option<(ConnId, Arc<Outbox>, Vec<u8>)>,
    }

    proptest! {
        /// Sessions against a model that keeps, per session, every line
        /// that concerned its user since it opened: a resume gets `#OK` at
        /// its own position and exactly the lines above it, and live lines
        /// follow without loss or repetition.
        #[test]
        fn prop_sessions_match_a_model(ops in prop::collection::vec(any_session_op(), 0..150)) {
            let (mut registry, _handle) = registry();
            let stream = registry.sessions.stream();
            let mut edges: std::collections::HashSet<(UserId, UserId)> = Default::default();
            let mut retained: std::collections::HashMap<UserId, Vec<(Seq, Vec<u8>)>> = Default::default();
            let mut clients: Vec<ModelClient> = Vec::new();
            let mut finished: Vec<(Arc<Outbox>, Vec<u8>)> = Vec::new();
            let (mut seq, mut next_id) = (0u64, 0u64);
            let verdict = |stream: &StreamId, at: Seq| {
                let mut line = Vec::new();
                followermaze_protocol::resume::write_verdict(&mut line, Verdict::Ok, stream, at);
                line
            };
            for op in ops {
                match op {
                    SessionOp::Join(user) => {
                        next_id += 1;
                        let outbox = Arc::new(Outbox::new());
                        let hello = Hello::Resumable { user, stream: None, after: 0 };
                        registry.register(hello, next_id, outbox.clone());
                        retained.entry(user).or_default();
                        clients.push(ModelClient {
                            user,
                            after: seq,
                            conn: Some((next_id, outbox, verdict(&stream, seq))),
                        });
                    }
                    SessionOp::Drop(n) if !clients.is_empty() => {
                        let count = clients.len();
                        let client = &mut clients[n % count];
                        if let Some((id, outbox, owed)) = client.conn.take() {
                            registry.unregister(client.user, id);
                            finished.push((outbox, owed));
                        }
                    }
                    SessionOp::Resume(n) if !clients.is_empty() => {
                        let count = clients.len();
                        let client = &mut clients[n % count];
                        if client.conn.is_none() {
                            next_id += 1;
                            let outbox = Arc::new(Outbox::new());
                            let hello = Hello::Resumable {
                                user: client.user,
                                stream: Some(stream),
                                after: client.after,
                            };
                            registry.register(hello, next_id, outbox.clone());
                            let mut owed = verdict(&stream, client.after);
                            for (line_seq, line) in &retained[&client.user] {
                                if *line_seq > client.after {
                                    owed.extend_from_slice(line);
                                    client.after = *line_seq;
                                }
                            }
                            client.conn = Some((next_id, outbox, owed));
                        }
                    }
                    SessionOp::Drop(_) | SessionOp::Resume(_) => {}
                    SessionOp::Event(kind) => {
                        seq += 1;
                        match kind {
                            EventKind::Follow { from, to } => {
                                edges.insert((from, to));
                            }
                            EventKind::Unfollow { from, to } => {
                                edges.remove(&(from, to));
                            }
                            _ => {}
                        }
                        let raw = format!("{seq}|{kind:?}\n").into_bytes();
                        for (&user, lines) in retained.iter_mut() {
                            if concerns(kind, user, &edges) {
                                lines.push((seq, raw.clone()));
                            }
                        }
                        for client in clients.iter_mut() {
                            if let Some((_, _, owed)) = client.conn.as_mut() {
                                if concerns(kind, client.user, &edges) {
                                    owed.extend_from_slice(&raw);
                                    client.after = seq;
                                }
                            }
                        }
                        let event = Event { seq, kind, raw: bytes::Bytes::from(raw) };
                        registry.deliver(&OrderedBatch::new(vec![event], Instant::now()));
                    }
                }
            }
            let open = clients.into_iter().filter_map(|client| client.conn).map(|(_, o, b)| (o, b));
            for (index, (outbox, owed)) in finished.into_iter().chain(open).enumerate() {
                let mut got = Vec::new();
                outbox.take(&mut got);
                prop_assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&owed),
                    "connection {}", index
                );
            }
        }
    }

    #[derive(Debug, Clone)]
    enum StreamOp {
        Event(EventKind),
        /// A client of this user resumes from this many events back.
        Resume(UserId, u64),
        /// The oldest pending fetch is answered.
        Serve,
    }

    fn any_stream_op() -> impl Strategy<Value = StreamOp> {
        prop_oneof![
            6 => any_op().prop_filter_map("events only", |op| match op {
                Op::Event(kind) => Some(StreamOp::Event(kind)),
                _ => None,
            }),
            1 => (1u64..5, 0u64..30).prop_map(|(user, back)| StreamOp::Resume(user, back)),
            1 => Just(StreamOp::Serve),
        ]
    }

    proptest! {
        /// Resumes on a gateway that never served the session: whether
        /// the lines come from the (in-memory) stream or, for a later
        /// connection of the same user, from the session opened by an
        /// earlier one, every connection gets `#OK` at its own `after` and
        /// every line concerning its user above it, however many events
        /// the registry applied while its fetch was under way.
        #[test]
        fn prop_resumes_from_the_stream_match_a_model(
            ops in prop::collection::vec(any_stream_op(), 0..150),
        ) {
            let (registry, _handle) = registry();
            let (fetches, mut requests) = mpsc::channel(64);
            let mut registry = registry.with_history(fetches);
            let stream = registry.sessions.stream();
            let mut edges: std::collections::HashSet<(UserId, UserId)> = Default::default();
            // Every event, and the users (1..5) it concerns.
            let mut log: Vec<(Event, Vec<UserId>)> = Vec::new();
            let mut clients: Vec<(UserId, Seq, Arc<Outbox>)> = Vec::new();
            let mut pending: std::collections::VecDeque<FetchRequest> = Default::default();
            let mut next_id = 0;
            let serve = |registry: &mut Registry, log: &[(Event, Vec<UserId>)], request: FetchRequest| {
                let mut router = crate::history::UserRouter::new(request.user, &request.plan);
                let mut lines = Vec::new();
                for stream_seq in request.plan.first_message..=request.plan.last_message {
                    let event = &log[stream_seq as usize - 1].0;
                    crate::history::keep(&mut router, std::slice::from_ref(event), &request, &mut lines)
                        .expect("within the bound");
                }
                let FetchRequest { user, conn, outbox, stream, after, upto, .. } = request;
                registry.fetched(user, (conn, outbox), stream, (after, upto), Some(lines));
            };
            for op in ops {
                match op {
                    StreamOp::Event(kind) => {
                        let seq = log.len() as Seq + 1;
                        match kind {
                            EventKind::Follow { from, to } => { edges.insert((from, to)); }
                            EventKind::Unfollow { from, to } => { edges.remove(&(from, to)); }
                            _ => {}
                        }
                        let concerned = (1..5).filter(|&user| concerns(kind, user, &edges)).collect();
                        let event = Event { seq, kind, raw: bytes::Bytes::from(format!("{seq}|{kind:?}\n")) };
                        let batch = OrderedBatch::new(vec![event.clone()], Instant::now()).in_message(seq);
                        registry.deliver(&batch);
                        log.push((event, concerned));
                    }
                    StreamOp::Resume(user, back) => {
                        let after = (log.len() as Seq).saturating_sub(back);
                        next_id += 1;
                        let outbox = Arc::new(Outbox::new());
                        let hello = Hello::Resumable { user, stream: Some(stream), after };
                        registry.register(hello, next_id, outbox.clone());
                        while let Ok(request) = requests.try_recv() {
                            pending.push_back(request);
                        }
                        clients.push((user, after, outbox));
                    }
                    StreamOp::Serve => {
                        if let Some(request) = pending.pop_front() {
                            serve(&mut registry, &log, request);
                        }
                    }
                }
            }
            while let Some(request) = pending.pop_front() {
                serve(&mut registry, &log, request);
            }
            for (index, (user, after, outbox)) in clients.iter().enumerate() {
                let mut owed = Vec::new();
                followermaze_protocol::resume::write_verdict(&mut owed, Verdict::Ok, &stream, *after);
                for (event, concerned) in &log {
                    if event.seq > *after && concerned.contains(user) {
                        owed.extend_from_slice(&event.raw);
                    }
                }
                let mut got = Vec::new();
                outbox.take(&mut got);
                prop_assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&owed),
                    "connection {} of user {} after {}", index, user, after
                );
            }
        }
    }

    fn registry() -> (Registry, RegistryHandle) {
        Registry::new(
            RegistrySettings::new(1 << 20, 1000),
            Arc::new(Stats::default()),
        )
    }

    #[test]
    fn a_gateway_holds_a_resume_from_ahead_of_it_until_it_gets_there() {
        let (registry, _handle) = registry();
        let (fetches, _requests) = mpsc::channel(4);
        let mut registry = registry.with_history(fetches);
        let stream = registry.sessions.stream();
        let outbox = Arc::new(Outbox::new());
        let hello = Hello::Resumable {
            user: 1,
            stream: Some(stream),
            after: 2,
        };
        registry.register(hello, 1, outbox.clone());
        let mut got = Vec::new();
        outbox.take(&mut got);
        assert!(got.is_empty(), "nothing before the gateway reaches 2");
        let broadcast = |seq: Seq| Event {
            seq,
            kind: EventKind::Broadcast,
            raw: bytes::Bytes::from(format!("{seq}|B\n")),
        };
        registry.deliver(&OrderedBatch::new(vec![broadcast(1)], Instant::now()));
        registry.deliver(&OrderedBatch::new(vec![broadcast(2)], Instant::now()));
        registry.deliver(&OrderedBatch::new(vec![broadcast(3)], Instant::now()));
        outbox.take(&mut got);
        let mut expected = Vec::new();
        followermaze_protocol::resume::write_verdict(&mut expected, Verdict::Ok, &stream, 2);
        expected.extend_from_slice(b"3|B\n");
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
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
    fn a_new_stream_changes_the_stream_id_even_with_no_session_open() {
        let (mut registry, _handle) = registry();
        let before = registry.sessions.stream();
        let event = |seq| Event {
            seq,
            kind: EventKind::Broadcast,
            raw: bytes::Bytes::from(format!("{seq}|B\n")),
        };
        registry.deliver(&OrderedBatch::new(vec![event(20)], Instant::now()));
        registry.deliver(&OrderedBatch::new(vec![event(1)], Instant::now()).starting_new_stream());
        let after = registry.sessions.stream();
        assert_ne!(before, after, "the old id must not stay current");
        // A client of the old stream resumes with a gap, not a false #OK.
        let outbox = Arc::new(Outbox::new());
        let hello = Hello::Resumable {
            user: 7,
            stream: Some(before),
            after: 1,
        };
        registry.register(hello, 1, outbox.clone());
        let mut got = Vec::new();
        outbox.take(&mut got);
        assert!(
            got.starts_with(b"#GAP|"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }

    #[test]
    fn a_large_release_does_not_cut_off_an_idle_client() {
        let (mut registry, _handle) = registry();
        let outbox = Arc::new(Outbox::new());
        registry.register(Hello::Classic(1), 1, outbox.clone());
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
