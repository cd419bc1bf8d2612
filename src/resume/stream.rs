//! What a cluster gateway's registry does with a resume that names the
//! cluster's stream: the pure state machine of a resume from the stream
//! (the steps are in [`crate::resume::history`]).
//!
//! [`StreamResumes::decide`] answers one resumable handshake, between two
//! batches:
//!
//! 1. Another stream id (or none): the **local verdict**.
//! 2. `after` ahead of this gateway (the client was served by a gateway
//!    further along): **wait** until this one gets there, at most
//!    [`AHEAD_WAIT`]; then decide again, or close without a verdict so the
//!    client retries. Any verdict from behind `after` would be wrong.
//! 3. A local session replays from `after`: the **local verdict**.
//! 4. `after` is the position: **attach now**, nothing to fetch (the
//!    session opens here).
//! 5. The last fetch for this user covers `after`: **attach now** from its
//!    parked lines.
//! 6. A fetch for this user from `after` or before is under way: **join**
//!    it.
//! 7. The history plans it: **fetch**; else (below the floor) the local
//!    verdict, a `#GAP`.
//!
//! The connection handle `C` is whatever the registry needs to reach the
//! client again; this file never looks inside it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{Seq, UserId};
use hashbrown::HashMap;

use crate::resume::history::{History, Plan};

/// How long a gateway holds a resume whose `after` is ahead of it (the
/// client was served by a gateway further along the same stream) before it
/// gives up and closes the connection without a verdict, so the client
/// retries (perhaps elsewhere). Gateways lag one another by milliseconds
/// normally, by seconds when one gateway's clients all land on the others
/// at once.
pub(crate) const AHEAD_WAIT: Duration = Duration::from_secs(10);

/// Most fetches kept parked; each is at most `resumeBufferBytes`.
pub(crate) const MAX_PARKED_FETCHES: usize = 64;

/// A resumable handshake, as the registry received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ask {
    /// The user resuming.
    pub(crate) user: UserId,
    /// The stream id it named, if any.
    pub(crate) stream: Option<StreamId>,
    /// What it received up to.
    pub(crate) after: Seq,
}

/// Where the registry stands when it decides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    /// The last sequence applied (0 before any).
    pub(crate) seq: Seq,
    /// The current stream id.
    pub(crate) stream: StreamId,
    /// The time now.
    pub(crate) now: Instant,
}

/// What to do with a resume; see the module doc.
#[derive(Debug)]
pub(crate) enum Decision<C> {
    /// The registry's own sessions answer it (their verdict).
    Local(C),
    /// Kept here: waiting for this gateway to reach `after`, or joined a
    /// fetch under way. It comes back from [`StreamResumes::due`] or
    /// [`StreamResumes::fetched`].
    Held,
    /// Attach now: `lines` are the user's in (`after`, `upto`], and the
    /// session must be open at `upto` (`open` says whether to open it).
    Attach(Attach<C>),
    /// Ask the fetcher with `plan`, then call
    /// [`StreamResumes::fetch_started`] (and open the session at the
    /// position); if it cannot be asked, the local verdict.
    Fetch {
        /// The connection.
        conn: C,
        /// Where to read, and how to route.
        plan: Plan,
    },
}

/// A resume ready to attach, with its lines from the stream.
#[derive(Debug)]
pub(crate) struct Attach<C> {
    /// The connection.
    pub(crate) conn: C,
    /// What it received up to.
    pub(crate) after: Seq,
    /// The position the lines reach: the session's opening position.
    pub(crate) upto: Seq,
    /// The user's lines in (`after`, `upto`], or `None` if they could not
    /// be fetched (the local verdict then).
    pub(crate) lines: Option<Vec<u8>>,
    /// Whether the session must be opened at `upto` first.
    pub(crate) open: bool,
}

/// A resume held until the gateway reaches its `after`.
#[derive(Debug)]
struct Waiting<C> {
    /// When it is closed without a verdict instead.
    deadline: Instant,
    /// The handshake.
    ask: Ask,
    /// Its connection.
    conn: C,
}

/// A completed fetch: the user's lines in (`after`, `upto`] of `stream`.
/// With the session opened at `upto`, they serve any resume from
/// `after..=upto` without fetching again (a client that dropped before its
/// verdict, or after, and comes back).
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

/// The resumes from the stream a gateway's registry is serving, and the
/// history it plans them from; see the module doc.
#[derive(Debug)]
pub(crate) struct StreamResumes<C> {
    /// What the registry applied: edge changes and stream messages.
    pub(crate) history: History,
    /// Resumes ahead of this gateway's position, waiting for it (until
    /// their deadline, [`AHEAD_WAIT`]). At most one per client connection,
    /// so bounded by `maxClients`.
    waiting: Vec<Waiting<C>>,
    /// Fetches under way, by user and the position each fetches from: the
    /// connections waiting for each (the one that asked, and any of the
    /// same user from that position or later that came while it ran), so a
    /// client that keeps reconnecting while a long fetch runs does not
    /// start one per attempt. Bounded by the fetcher's queue.
    fetching: HashMap<(UserId, Seq), Vec<(Seq, C)>>,
    /// The last fetch's lines for each user whose session it seeded. At
    /// most [`MAX_PARKED_FETCHES`], oldest dropped first.
    parked: HashMap<UserId, Parked>,
    /// Users of `parked`, oldest first (at most one entry each).
    parked_order: VecDeque<UserId>,
}

impl<C> Default for StreamResumes<C> {
    fn default() -> StreamResumes<C> {
        StreamResumes {
            history: History::default(),
            waiting: Vec::new(),
            fetching: HashMap::new(),
            parked: HashMap::new(),
            parked_order: VecDeque::new(),
        }
    }
}

impl<C> StreamResumes<C> {
    /// Decides what to do with `ask` on connection `conn`; see the module
    /// doc. `can_replay` says whether a local session replays from
    /// `ask.after`; `following` is the user's following set now.
    pub(crate) fn decide(
        &mut self,
        ask: Ask,
        conn: C,
        at: Position,
        can_replay: bool,
        following: impl Iterator<Item = UserId>,
    ) -> Decision<C> {
        let Ask { user, after, .. } = ask;
        if ask.stream != Some(at.stream) {
            return Decision::Local(conn);
        }
        if after > at.seq {
            let deadline = at.now + AHEAD_WAIT;
            self.waiting.push(Waiting {
                deadline,
                ask,
                conn,
            });
            return Decision::Held;
        }
        if can_replay {
            return Decision::Local(conn);
        }
        let attach_now = |conn, upto, lines, open| {
            let lines = Some(lines);
            Decision::Attach(Attach {
                conn,
                after,
                upto,
                lines,
                open,
            })
        };
        if after == at.seq {
            // Nothing to fetch: the session opened now replays the rest.
            return attach_now(conn, at.seq, Vec::new(), true);
        }
        if let Some(parked) = self.parked.get(&user) {
            if parked.stream == at.stream && parked.after <= after && after <= parked.upto {
                let lines = lines_after(&parked.lines, after);
                return attach_now(conn, parked.upto, lines, false);
            }
        }
        let under_way = self
            .fetching
            .iter_mut()
            .find(|((fetching_user, from), _)| *fetching_user == user && *from <= after);
        if let Some((_, joiners)) = under_way {
            joiners.push((after, conn));
            return Decision::Held;
        }
        match self.history.plan(user, after, at.seq, following) {
            Some(plan) => Decision::Fetch { conn, plan },
            None => Decision::Local(conn),
        }
    }

    /// The fetch a [`Decision::Fetch`] asked for is under way: `conn`
    /// waits for it.
    pub(crate) fn fetch_started(&mut self, user: UserId, after: Seq, conn: C) {
        self.fetching
            .entry((user, after))
            .or_default()
            .push((after, conn));
    }

    /// The fetch for `user` from `after` is back with the lines in
    /// (`after`, `upto`] of `stream` (`None`: it failed): every connection
    /// that waited for it, each with the lines above its own position (or
    /// `asker` alone, if none waited). The lines are parked for the next
    /// resume of the same user.
    pub(crate) fn fetched(
        &mut self,
        user: UserId,
        (after, upto): (Seq, Seq),
        stream: StreamId,
        lines: Option<Vec<u8>>,
        asker: C,
    ) -> Vec<Attach<C>> {
        let mut joiners = self.fetching.remove(&(user, after)).unwrap_or_default();
        if joiners.is_empty() {
            joiners.push((after, asker));
        }
        let attach = |(from, conn): (Seq, C)| Attach {
            conn,
            after: from,
            upto,
            lines: lines.as_deref().map(|lines| lines_after(lines, from)),
            open: false,
        };
        let attaches = joiners.into_iter().map(attach).collect();
        if let Some(lines) = lines {
            self.park(
                user,
                Parked {
                    stream,
                    after,
                    upto,
                    lines,
                },
            );
        }
        attaches
    }

    /// Keeps `parked` as the last fetch of `user`, within
    /// [`MAX_PARKED_FETCHES`].
    fn park(&mut self, user: UserId, parked: Parked) {
        if self.parked.insert(user, parked).is_none() {
            self.parked_order.push_back(user);
        }
        while self.parked_order.len() > MAX_PARKED_FETCHES {
            if let Some(oldest) = self.parked_order.pop_front() {
                self.parked.remove(&oldest);
            }
        }
    }

    /// Whether resumes wait for this gateway to move on.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The waiting resumes that are due at `at`: those this gateway has
    /// now reached (`Ok`: decide them again) and those past their deadline
    /// (`Err`: close them without a verdict, the client retries).
    pub(crate) fn due(&mut self, at: Position) -> Vec<Result<(Ask, C), (Ask, C)>> {
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|waiting| waiting.ask.after <= at.seq || waiting.deadline <= at.now);
        self.waiting = kept;
        due.into_iter()
            .map(|Waiting { ask, conn, .. }| {
                if ask.after <= at.seq {
                    Ok((ask, conn))
                } else {
                    Err((ask, conn))
                }
            })
            .collect()
    }

    /// Every connection still waiting, for shutdown.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = &C> {
        self.waiting.iter().map(|waiting| &waiting.conn)
    }

    /// `user`'s session ended: its parked lines serve nobody.
    pub(crate) fn session_ended(&mut self, user: UserId) {
        if self.parked.remove(&user).is_some() {
            self.parked_order.retain(|parked| *parked != user);
        }
    }

    /// Every session ended (a new stream, another stream id, a restored
    /// snapshot): no parked lines serve anyone.
    pub(crate) fn sessions_ended(&mut self) {
        self.parked.clear();
        self.parked_order.clear();
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::EventRef;
    use crate::graph::router::{Audience, Router};
    use crate::resume::history::{keep, UserRouter};
    use followermaze_protocol::{Event, EventKind};
    use proptest::prelude::*;
    use std::collections::HashMap as Map;

    #[derive(Debug, Clone)]
    enum Op {
        Event(EventKind),
        /// A client of this user resumes from this many events back.
        Resume(UserId, u64),
        /// ... or from this many events ahead of the gateway.
        Ahead(UserId, u64),
        /// The oldest pending fetch is answered.
        Serve,
        /// This many seconds pass.
        Tick(u64),
    }

    fn any_op() -> impl Strategy<Value = Op> {
        let user = 1u64..5;
        let kind = prop_oneof![
            (user.clone(), user.clone()).prop_map(|(from, to)| EventKind::Follow { from, to }),
            (user.clone(), user.clone()).prop_map(|(from, to)| EventKind::Unfollow { from, to }),
            (user.clone(), user.clone()).prop_map(|(from, to)| EventKind::Private { from, to }),
            user.clone().prop_map(|from| EventKind::Status { from }),
            Just(EventKind::Broadcast),
        ];
        prop_oneof![
            8 => kind.prop_map(Op::Event),
            2 => (user.clone(), 0u64..30).prop_map(|(user, back)| Op::Resume(user, back)),
            1 => (user, 1u64..4).prop_map(|(user, ahead)| Op::Ahead(user, ahead)),
            2 => Just(Op::Serve),
            1 => (1u64..8).prop_map(Op::Tick),
        ]
    }

    /// What became of a connection.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// The registry's own session answered.
        Local,
        /// Attached with the right lines from the stream.
        Attached,
        /// Closed without a verdict: still ahead after [`AHEAD_WAIT`].
        Closed,
    }

    /// The model: every event with the users it concerns, the sessions
    /// the registry would have opened (user -> opening position), and each
    /// connection's handshake and outcome.
    struct Model {
        router: Router,
        log: Vec<(Event, Vec<UserId>)>,
        sessions: Map<UserId, Seq>,
        asks: Vec<Ask>,
        outcomes: Map<usize, Outcome>,
        /// Fetches asked for: the handshake, its connection, the plan,
        /// and the position it was planned at.
        pending: VecDeque<(Ask, usize, Plan, Seq)>,
        now: Instant,
        stream: StreamId,
    }

    impl Model {
        fn position(&self) -> Position {
            let seq = self.log.len() as Seq;
            Position {
                seq,
                stream: self.stream,
                now: self.now,
            }
        }

        /// The lines of `user` in (`after`, `upto`], from the model's log.
        fn owed(&self, user: UserId, after: Seq, upto: Seq) -> Vec<u8> {
            let mut owed = Vec::new();
            for (event, concerned) in &self.log {
                if event.seq > after && event.seq <= upto && concerned.contains(&user) {
                    owed.extend_from_slice(&event.raw);
                }
            }
            owed
        }

        /// Applies `decision` for connection `conn`, as the registry would,
        /// checking what it can.
        fn apply(
            &mut self,
            resumes: &mut StreamResumes<usize>,
            conn: usize,
            decision: Decision<usize>,
        ) {
            let ask = self.asks[conn];
            match decision {
                Decision::Local(id) => {
                    assert_eq!(id, conn);
                    let replayable = self
                        .sessions
                        .get(&ask.user)
                        .is_some_and(|&s| s <= ask.after);
                    assert!(
                        replayable,
                        "local verdict for {ask:?} with no session to replay it"
                    );
                    self.outcomes.insert(conn, Outcome::Local);
                }
                Decision::Held => {}
                Decision::Attach(attach) => self.attached(attach),
                Decision::Fetch { conn: id, plan } => {
                    assert_eq!(id, conn);
                    resumes.fetch_started(ask.user, ask.after, conn);
                    let position = self.position().seq;
                    self.sessions.entry(ask.user).or_insert(position);
                    self.pending.push_back((ask, conn, plan, position));
                }
            }
        }

        fn attached(&mut self, attach: Attach<usize>) {
            let ask = self.asks[attach.conn];
            assert_eq!(attach.after, ask.after, "connection {}", attach.conn);
            if attach.open {
                self.sessions.entry(ask.user).or_insert(attach.upto);
            }
            let lines = attach.lines.expect("every fetch succeeds here");
            assert_eq!(
                String::from_utf8_lossy(&lines),
                String::from_utf8_lossy(&self.owed(ask.user, attach.after, attach.upto)),
                "connection {} of {ask:?} up to {}",
                attach.conn,
                attach.upto
            );
            assert!(self
                .sessions
                .get(&ask.user)
                .is_some_and(|&s| s <= attach.upto));
            let previous = self.outcomes.insert(attach.conn, Outcome::Attached);
            assert_eq!(previous, None, "connection {} attached twice", attach.conn);
        }

        /// Answers the oldest pending fetch from the log, as the fetcher does.
        fn serve(&mut self, resumes: &mut StreamResumes<usize>) {
            let Some((ask, conn, plan, upto)) = self.pending.pop_front() else {
                return;
            };
            let Plan::Log(plan) = plan else {
                panic!("the model's history never drops its edge log");
            };
            let mut router = UserRouter::new(ask.user, &plan);
            let mut lines = Vec::new();
            for message in plan.first_message..=plan.last_message {
                let event = &self.log[message as usize - 1].0;
                let event = EventRef {
                    seq: event.seq,
                    kind: event.kind,
                    raw: &event.raw,
                };
                keep(
                    &mut router,
                    &[event],
                    (ask.after, upto),
                    usize::MAX,
                    &mut lines,
                )
                .expect("no bound");
            }
            for attach in
                resumes.fetched(ask.user, (ask.after, upto), self.stream, Some(lines), conn)
            {
                self.attached(attach);
            }
        }
    }

    proptest! {
        /// Every resume from the stream ends exactly once: the local
        /// verdict only when a session replays it, else attached with
        /// exactly its user's lines in (`after`, `upto`] (fetched, joined,
        /// parked or none), or closed when still ahead after the wait.
        #[test]
        fn prop_resumes_match_a_model(ops in prop::collection::vec(any_op(), 0..200)) {
            let mut resumes: StreamResumes<usize> = StreamResumes::default();
            let mut model = Model {
                router: Router::new(1000),
                log: Vec::new(),
                sessions: Map::new(),
                asks: Vec::new(),
                outcomes: Map::new(),
                pending: VecDeque::new(),
                now: Instant::now(),
                stream: StreamId::parse(b"model").expect("an id"),
            };
            for op in ops {
                match op {
                    Op::Event(kind) => {
                        let seq = model.log.len() as Seq + 1;
                        let routed = model.router.apply(kind);
                        if let Some(edge) = routed.edge {
                            resumes.history.edge(seq, edge);
                        }
                        resumes.history.message(seq, seq);
                        let concerned = (1..5).filter(|&user| match routed.audience {
                            Audience::Nobody => false,
                            Audience::User(to) => to == user,
                            Audience::Everyone => true,
                            Audience::Followers(author) => model.router.follows(user, author),
                        }).collect();
                        let raw = bytes::Bytes::from(format!("{seq}|{kind:?}\n"));
                        model.log.push((Event { seq, kind, raw }, concerned));
                    }
                    Op::Resume(user, back) | Op::Ahead(user, back) => {
                        let position = model.position();
                        let after = match op {
                            Op::Resume(..) => position.seq.saturating_sub(back),
                            _ => position.seq + back,
                        };
                        let ask = Ask { user, stream: Some(model.stream), after };
                        let conn = model.asks.len();
                        model.asks.push(ask);
                        let can_replay = model.sessions.get(&user).is_some_and(|&s| s <= after);
                        let following: Vec<UserId> = model.router.following(user).collect();
                        let decision = resumes.decide(ask, conn, position, can_replay, following.into_iter());
                        model.apply(&mut resumes, conn, decision);
                    }
                    Op::Serve => model.serve(&mut resumes),
                    Op::Tick(secs) => model.now += Duration::from_secs(secs),
                }
                let position = model.position();
                for due in resumes.due(position) {
                    match due {
                        Ok((ask, conn)) => {
                            let can_replay = model.sessions.get(&ask.user).is_some_and(|&s| s <= ask.after);
                            let following: Vec<UserId> = model.router.following(ask.user).collect();
                            let decision = resumes.decide(ask, conn, position, can_replay, following.into_iter());
                            model.apply(&mut resumes, conn, decision);
                        }
                        Err((ask, conn)) => {
                            prop_assert!(ask.after > position.seq);
                            model.outcomes.insert(conn, Outcome::Closed);
                        }
                    }
                }
            }
            while !model.pending.is_empty() {
                model.serve(&mut resumes);
            }
            let waiting: Vec<usize> = resumes.waiting().copied().collect();
            for conn in 0..model.asks.len() {
                prop_assert!(
                    model.outcomes.contains_key(&conn) || waiting.contains(&conn),
                    "connection {} ({:?}) was lost", conn, model.asks[conn]
                );
            }
        }
    }

    #[test]
    fn another_stream_id_gets_the_local_verdict() {
        let mut resumes: StreamResumes<u8> = StreamResumes::default();
        let at = Position {
            seq: 10,
            stream: StreamId::parse(b"ours").expect("an id"),
            now: Instant::now(),
        };
        let ask = Ask {
            user: 1,
            stream: Some(StreamId::parse(b"theirs").expect("an id")),
            after: 5,
        };
        let decision = resumes.decide(ask, 7, at, false, std::iter::empty());
        assert!(matches!(decision, Decision::Local(7)), "{decision:?}");
    }
}
