//! A gateway's history, for resuming a session that another gateway
//! served: the cluster's JetStream stream is the shared history, so a
//! gateway with no session for a user (its gateway died) can still give it
//! exactly what it missed, derived from the stream. This file is the pure
//! half: what the registry records as it applies batches, what it plans
//! from that, and how the fetched lines are routed for one user. The
//! fetch itself is `cluster::fetcher`'s, what the registry does with each
//! resume is `resume::stream`'s.
//!
//! Three steps, so that the registry never waits on NATS:
//!
//! 1. **Registry, between two batches** ([`History::plan`]): a resumable
//!    handshake names the cluster's stream id, `after` is at most the
//!    position `P`, and no local session can replay from `after`. The
//!    registry opens (or keeps) the user's session *now*, retaining every
//!    line above `P` as routing decides it from here on, and computes the
//!    user's following set as it was at `after`: the current set with the
//!    user's own edge changes above `after` undone, from a bounded log of
//!    the edge changes the router reported ([`EDGE_LOG_ENTRIES`]). It asks
//!    the fetcher for the lines in (`after`, `P`].
//! 2. **Fetcher task**: reads the stream messages holding (`after`, `P`]
//!    (their JetStream sequences come from the registry's index of the
//!    messages it applied) and keeps the lines concerning the user exactly
//!    as routing would have ([`keep`], [`UserRouter`]): a follow of it or a
//!    private message to it, a broadcast, a status update of someone it
//!    followed at that point (the following set replayed forward with the
//!    same edge changes). It sends them back to the registry.
//! 3. **Registry, between two batches**: if the session is still open and
//!    its retained lines reach back to `P`, the client gets `#OK|<stream>|
//!    after`, the fetched lines, then the retained ones above `P`, then
//!    live ones. Otherwise (a fetch failed, the stream no longer holds a
//!    message, the session was purged or the stream changed meanwhile) it
//!    gets the local verdict, a `#GAP`: all or nothing, as always.
//!
//! The invariant: the lines in (`after`, `P`] come from the stream, the
//! lines above `P` from the session opened at `P` in step 1, and `P` is one
//! position between two batches, so nothing is lost or repeated at either
//! boundary. A resume is refused (`#GAP`) when `after` is below the
//! history's *floor*: the last restored snapshot's position, or the
//! sequence of the oldest edge change or message the bounded logs dropped.

use std::collections::VecDeque;

use followermaze_protocol::{EventKind, Seq, UserId};
use hashbrown::{HashMap, HashSet};

use crate::batch::EventRef;
use crate::graph::router::{Audience, EdgeChange, Router};

/// Edge changes remembered (16 bytes each: at most 32 MiB; about 7M events
/// of the classic mix, where 3 events in 10 change an edge). A resume whose
/// `after` lies before the oldest one kept cannot know the following set
/// it had then, and gets `#GAP`.
pub(crate) const EDGE_LOG_ENTRIES: usize = 2 << 20;

/// Stream messages indexed (16 bytes each: 1 MiB; up to 4 GiB of stream in
/// 64 KiB messages).
pub(crate) const MESSAGE_INDEX_ENTRIES: usize = 1 << 16;

/// One edge change the router reported, packed into 16 bytes (twice the
/// reach of plain fields in the same memory). A change that does not fit
/// (a sequence at or above 2^63, a user id above `u32::MAX`) is not kept:
/// the log is cleared and the floor raised to it instead, so a resume from
/// before it gets `#GAP`, never a wrong following set.
#[derive(Debug, Clone, Copy)]
struct Change {
    /// The event that made it, with [`ADDED`] set for a follow (clear for
    /// an unfollow).
    seq_and_added: u64,
    /// The follower.
    from: u32,
    /// The followed user.
    to: u32,
}

/// The bit of [`Change::seq_and_added`] that says the edge was added.
const ADDED: u64 = 1 << 63;

impl Change {
    fn pack(seq: Seq, from: UserId, to: UserId, added: bool) -> Option<Change> {
        if seq & ADDED != 0 {
            return None;
        }
        Some(Change {
            seq_and_added: seq | if added { ADDED } else { 0 },
            from: u32::try_from(from).ok()?,
            to: u32::try_from(to).ok()?,
        })
    }

    fn seq(&self) -> Seq {
        self.seq_and_added & !ADDED
    }

    fn added(&self) -> bool {
        self.seq_and_added & ADDED != 0
    }
}

/// A gateway registry's record of what it applied, for [`History::plan`];
/// see the module doc.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Resumes need `after` at or above this.
    floor: Seq,
    /// The most recent edge changes, oldest first.
    changes: VecDeque<Change>,
    /// `(first event seq, stream sequence)` of each stream message applied,
    /// oldest first.
    messages: VecDeque<(Seq, u64)>,
    /// The stream sequence of the snapshot restored last, if no new stream
    /// began since: the message holding the floor.
    restored: Option<u64>,
}

/// What step 1 decided: how to learn whom the user followed at `after`,
/// and where to read.
#[derive(Debug)]
pub(crate) enum Plan {
    /// From the edge log, which reaches back to `after`.
    Log(LogPlan),
    /// From the newest snapshot at or before `after` (the fetcher loads
    /// it), replaying the whole graph from there: `after` is below what the
    /// edge log and the message index reach.
    Snapshot {
        /// The stream sequence of the last message to read (the one
        /// holding the position).
        last_message: u64,
    },
}

impl Plan {
    /// The stream sequence of the last message to read.
    pub(crate) fn last_message(&self) -> u64 {
        match self {
            Plan::Log(plan) => plan.last_message,
            Plan::Snapshot { last_message } => *last_message,
        }
    }
}

/// A [`Plan::Log`]: where to read, and the user's graph to route with.
#[derive(Debug)]
pub(crate) struct LogPlan {
    /// The stream sequence of the first message to read.
    pub first_message: u64,
    /// ... and of the last (the one holding the position).
    pub last_message: u64,
    /// Whom the user followed just after event `after`.
    pub following: HashSet<UserId>,
    /// The user's own edge changes above `after`, in order: `(seq, to,
    /// added)`.
    pub changes: Vec<(Seq, UserId, bool)>,
}

impl History {
    /// Forgets everything: the graph was replaced (a snapshot at
    /// `position`) or a new stream began (`position` 0).
    pub(crate) fn reset(&mut self, position: Seq) {
        self.floor = position;
        self.changes.clear();
        self.messages.clear();
        self.restored = None;
    }

    /// Forgets everything: the graph was replaced by a snapshot of the
    /// state after event `position`, stream message `stream_seq`.
    pub(crate) fn restored(&mut self, position: Seq, stream_seq: u64) {
        self.reset(position);
        self.restored = Some(stream_seq);
    }

    /// Event `first_seq` (and those after it in its batch) came from stream
    /// message `stream_seq`.
    #[inline]
    pub(crate) fn message(&mut self, first_seq: Seq, stream_seq: u64) {
        if self
            .messages
            .back()
            .is_some_and(|&(_, last)| last == stream_seq)
        {
            return; // The rest of a message split into several batches.
        }
        if self.messages.len() == MESSAGE_INDEX_ENTRIES {
            self.messages.pop_front();
            if let Some(&(first, _)) = self.messages.front() {
                self.floor = self.floor.max(first.saturating_sub(1));
            }
        }
        self.messages.push_back((first_seq, stream_seq));
    }

    /// Event `seq` changed an edge.
    #[inline]
    pub(crate) fn edge(&mut self, seq: Seq, edge: EdgeChange) {
        let (from, to, added) = match edge {
            EdgeChange::Added { from, to } => (from, to, true),
            EdgeChange::Removed { from, to } => (from, to, false),
        };
        let Some(change) = Change::pack(seq, from, to, added) else {
            self.changes.clear();
            self.floor = self.floor.max(seq);
            return;
        };
        if self.changes.len() == EDGE_LOG_ENTRIES {
            if let Some(oldest) = self.changes.pop_front() {
                self.floor = self.floor.max(oldest.seq());
            }
        }
        self.changes.push_back(change);
    }

    /// Where to read the lines of `user` in (`after`, `position`], and its
    /// following set at `after` given `following`, its set now: from the
    /// edge log if it reaches `after`, else from a snapshot. `None` if
    /// nothing was applied since `after`.
    pub(crate) fn plan(
        &self,
        user: UserId,
        after: Seq,
        position: Seq,
        following: impl Iterator<Item = UserId>,
    ) -> Option<Plan> {
        if after >= position {
            return None;
        }
        let last_message = match self.messages.back() {
            Some(&(_, last)) => last,
            None => self.restored?,
        };
        if after < self.floor {
            return Some(Plan::Snapshot { last_message });
        }
        let holding = self
            .messages
            .partition_point(|&(first, _)| first <= after.saturating_add(1));
        let (_, first_message) = self.messages[holding.saturating_sub(1)];
        let start = self.changes.partition_point(|change| change.seq() <= after);
        // A user id that does not fit is in no change kept (see `Change`).
        let from = u32::try_from(user).ok();
        let changes: Vec<(Seq, UserId, bool)> = self
            .changes
            .range(start..)
            .filter(|change| Some(change.from) == from)
            .map(|change| (change.seq(), UserId::from(change.to), change.added()))
            .collect();
        let mut following: HashSet<UserId> = following.collect();
        for &(_, to, added) in changes.iter().rev() {
            if added {
                following.remove(&to);
            } else {
                following.insert(to);
            }
        }
        Some(Plan::Log(LogPlan {
            first_message,
            last_message,
            following,
            changes,
        }))
    }
}

/// A fetch would owe a client more than a session may retain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {max_bytes} bytes owed (resumeBufferBytes)")]
pub(crate) struct OverBound {
    /// The bound (`resumeBufferBytes`).
    pub(crate) max_bytes: usize,
}

/// Appends to `lines` those of `events` (one stream message's, in order)
/// in (`after`, `upto`] that concern the router's user. Fails past
/// `max_bytes`: a resume owed more than a session could retain gets
/// `#GAP`, as locally.
pub(crate) fn keep(
    router: &mut UserRouter,
    events: &[EventRef<'_>],
    (after, upto): (Seq, Seq),
    max_bytes: usize,
    lines: &mut Vec<u8>,
) -> Result<(), OverBound> {
    for event in events {
        if event.seq <= after {
            continue;
        }
        if event.seq > upto {
            break;
        }
        if router.concerns(event.seq, event.kind) {
            lines.extend_from_slice(event.raw);
            if lines.len() > max_bytes {
                return Err(OverBound { max_bytes });
            }
        }
    }
    Ok(())
}

/// Routing for one user: whether each event concerns it, with its
/// following set kept in step by its own edge changes.
pub(crate) struct UserRouter {
    /// The user.
    user: UserId,
    /// Whom it follows at the current point.
    following: HashSet<UserId>,
    /// Its edge changes above `after`, in order ...
    changes: Vec<(Seq, UserId, bool)>,
    /// ... of which those before this index are applied.
    applied: usize,
}

impl UserRouter {
    /// Routing for `user` from the point `plan` was made for.
    pub(crate) fn new(user: UserId, plan: &LogPlan) -> UserRouter {
        UserRouter {
            user,
            following: plan.following.clone(),
            changes: plan.changes.clone(),
            applied: 0,
        }
    }

    /// Whether event `seq` of `kind` is routed to the user, as
    /// [`crate::graph::router::Router::apply`] and the registry route it: a follow
    /// notifies `to`, an unfollow nobody, a broadcast everyone, a private
    /// message `to`, a status update every follower of `from` after every
    /// earlier event.
    pub(crate) fn concerns(&mut self, seq: Seq, kind: EventKind) -> bool {
        while let Some(&(at, to, added)) = self.changes.get(self.applied) {
            if at > seq {
                break;
            }
            if added {
                self.following.insert(to);
            } else {
                self.following.remove(&to);
            }
            self.applied += 1;
        }
        match kind {
            EventKind::Follow { to, .. } | EventKind::Private { to, .. } => to == self.user,
            EventKind::Unfollow { .. } => false,
            EventKind::Broadcast => true,
            EventKind::Status { from } => self.following.contains(&from),
        }
    }
}

/// One deep resume of a [`GraphReplay`]: whose lines, which, and those
/// kept so far.
#[derive(Debug)]
struct Target {
    after: Seq,
    upto: Seq,
    max_bytes: usize,
    lines: Vec<u8>,
    /// Set when the lines passed `max_bytes` (then emptied).
    over: bool,
}

/// Routing for the deep resumes of one sweep ([`Plan::Snapshot`]): the
/// whole follower graph from a snapshot, replayed through the same
/// [`Router`] the registry uses, so a follow refused at `maxFollowEdges`
/// is refused here too and every status update goes where it went live.
///
/// Each event is routed once for every target: a follow or private
/// message by its user, a broadcast to all, a status update through an
/// index of which targets follow its author, kept in step with their edge
/// changes, so a storm of resumes costs each event a lookup, not a
/// check per resume.
#[derive(Debug)]
pub(crate) struct GraphReplay {
    /// The graph after `position`.
    router: Router,
    /// The last event applied.
    position: Seq,
    /// The resumes, by index (stable: none is removed).
    targets: Vec<Target>,
    /// Target indices by user.
    by_user: HashMap<UserId, Vec<usize>>,
    /// Target indices by a user their user follows now.
    watching: HashMap<UserId, Vec<usize>>,
}

impl GraphReplay {
    /// A replay from `graph`, the graph after event `position`, with no
    /// targets yet.
    pub(crate) fn new(graph: Router, position: Seq) -> GraphReplay {
        GraphReplay {
            router: graph,
            position,
            targets: Vec::new(),
            by_user: HashMap::new(),
            watching: HashMap::new(),
        }
    }

    /// The last event applied.
    #[cfg(test)]
    fn position(&self) -> Seq {
        self.position
    }

    /// Adds a resume of `user` owed its lines in (`after`, `upto`], at most
    /// `max_bytes` of them; returns its index. `after` must be at or above
    /// the replay's position (nothing of it is applied yet).
    pub(crate) fn add(
        &mut self,
        user: UserId,
        (after, upto): (Seq, Seq),
        max_bytes: usize,
    ) -> usize {
        debug_assert!(after >= self.position);
        let index = self.targets.len();
        self.targets.push(Target {
            after,
            upto,
            max_bytes,
            lines: Vec::new(),
            over: false,
        });
        self.by_user.entry(user).or_default().push(index);
        for followed in self.router.following(user) {
            self.watching.entry(followed).or_default().push(index);
        }
        index
    }

    /// Applies `events` (one stream message's, in order), keeping each
    /// target's lines; events at or below the position are skipped.
    pub(crate) fn apply(&mut self, events: &[EventRef<'_>]) {
        for event in events {
            if event.seq <= self.position {
                continue;
            }
            self.position = event.seq;
            let routed = self.router.apply(event.kind);
            if let Some(edge) = routed.edge {
                self.edge_changed(edge);
            }
            match routed.audience {
                Audience::Nobody => {}
                Audience::User(to) => {
                    if let Some(indices) = self.by_user.get(&to) {
                        offer(&mut self.targets, indices, event);
                    }
                }
                Audience::Everyone => {
                    for target in &mut self.targets {
                        target.offer(event);
                    }
                }
                Audience::Followers(author) => {
                    if let Some(indices) = self.watching.get(&author) {
                        offer(&mut self.targets, indices, event);
                    }
                }
            }
        }
    }

    /// Keeps the index of followed users in step with a target's edges.
    fn edge_changed(&mut self, edge: EdgeChange) {
        let (from, to, added) = match edge {
            EdgeChange::Added { from, to } => (from, to, true),
            EdgeChange::Removed { from, to } => (from, to, false),
        };
        let Some(indices) = self.by_user.get(&from) else {
            return;
        };
        let watchers = self.watching.entry(to).or_default();
        if added {
            watchers.extend_from_slice(indices);
        } else {
            watchers.retain(|index| !indices.contains(index));
        }
    }

    /// The lines target `index` kept; `Err` if they passed its bound.
    pub(crate) fn take(&mut self, index: usize) -> Result<Vec<u8>, OverBound> {
        let target = &mut self.targets[index];
        if target.over {
            return Err(OverBound {
                max_bytes: target.max_bytes,
            });
        }
        Ok(std::mem::take(&mut target.lines))
    }
}

impl Target {
    /// Keeps `event`'s line if it is in the target's range.
    #[inline]
    fn offer(&mut self, event: &EventRef<'_>) {
        if self.over || event.seq <= self.after || event.seq > self.upto {
            return;
        }
        self.lines.extend_from_slice(event.raw);
        if self.lines.len() > self.max_bytes {
            self.over = true;
            self.lines = Vec::new();
        }
    }
}

/// Offers `event` to the targets at `indices`.
fn offer(targets: &mut [Target], indices: &[usize], event: &EventRef<'_>) {
    for &index in indices {
        targets[index].offer(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::router::Router;

    /// `count` random events among users 1 to 6.
    fn random_kinds(count: usize, seed: u64) -> Vec<EventKind> {
        let mut state: u64 = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let (a, b) = (next() % 6 + 1, next() % 6 + 1);
                match next() % 6 {
                    0 | 1 => EventKind::Follow { from: a, to: b },
                    2 => EventKind::Unfollow { from: a, to: b },
                    3 => EventKind::Private { from: a, to: b },
                    4 => EventKind::Broadcast,
                    _ => EventKind::Status { from: a },
                }
            })
            .collect()
    }

    /// `kinds` (event `i + 1` is `kinds[i]`) through a real router of
    /// `max_edges`: per user, the seqs routed to it, and the router's
    /// history (one message per event).
    fn route_all(kinds: &[EventKind], max_edges: usize) -> (Vec<Vec<Seq>>, History, Router) {
        let mut router = Router::new(max_edges);
        let mut history = History::default();
        let mut routed: Vec<Vec<Seq>> = vec![Vec::new(); 7];
        for (index, &kind) in kinds.iter().enumerate() {
            let seq = index as Seq + 1;
            history.message(seq, seq);
            let outcome = router.apply(kind);
            for user in 1..=6u64 {
                let to_user = match outcome.audience {
                    Audience::Nobody => false,
                    Audience::User(to) => to == user,
                    Audience::Everyone => true,
                    Audience::Followers(author) => router.follows(user, author),
                };
                if to_user {
                    routed[user as usize].push(seq);
                }
            }
            if let Some(edge) = outcome.edge {
                history.edge(seq, edge);
            }
        }
        (routed, history, router)
    }

    /// The user's lines from replaying `kinds` through a real router,
    /// against [`History::plan`] + [`UserRouter`] started at every `after`.
    #[test]
    fn planned_routing_matches_the_router_from_any_point() {
        let kinds = random_kinds(400, 7);
        let (routed, history, router) = route_all(&kinds, 1000);
        let position = kinds.len() as Seq;
        for user in 1..=6u64 {
            for after in 0..position {
                let Some(Plan::Log(plan)) =
                    history.plan(user, after, position, router.following(user))
                else {
                    panic!("covered by the log");
                };
                assert_eq!(plan.first_message, after + 1);
                let mut replay = UserRouter::new(user, &plan);
                let got: Vec<Seq> = (after + 1..=position)
                    .filter(|&seq| replay.concerns(seq, kinds[seq as usize - 1]))
                    .collect();
                let want: Vec<Seq> = routed[user as usize]
                    .iter()
                    .copied()
                    .filter(|&seq| seq > after)
                    .collect();
                assert_eq!(got, want, "user {user} after {after}");
            }
        }
    }

    #[test]
    fn a_change_that_does_not_pack_raises_the_floor_instead() {
        let mut history = History::default();
        history.message(1, 1);
        history.edge(2, EdgeChange::Added { from: 1, to: 2 });
        history.edge(
            3,
            EdgeChange::Added {
                from: 1,
                to: 1 << 40,
            },
        );
        history.edge(4, EdgeChange::Removed { from: 1, to: 2 });
        // The change at 3 is lost, so a resume from before it is planned
        // from a snapshot.
        assert!(matches!(
            history.plan(1, 2, 5, std::iter::empty()),
            Some(Plan::Snapshot { last_message: 1 })
        ));
        let Some(Plan::Log(plan)) = history.plan(1, 3, 5, std::iter::empty()) else {
            panic!("covered by the log");
        };
        assert_eq!(plan.changes, [(4, 2, false)]);
        assert_eq!(plan.following, HashSet::from_iter([2]));
    }

    #[test]
    fn a_resume_below_the_floor_is_planned_from_a_snapshot() {
        let mut history = History::default();
        history.restored(100, 6);
        // Nothing applied since the snapshot: its message holds the position.
        assert!(matches!(
            history.plan(1, 99, 100, std::iter::empty()),
            Some(Plan::Snapshot { last_message: 6 })
        ));
        history.reset(100);
        history.message(101, 7);
        assert!(matches!(
            history.plan(1, 99, 101, std::iter::empty()),
            Some(Plan::Snapshot { last_message: 7 })
        ));
        let Some(Plan::Log(plan)) = history.plan(1, 100, 101, std::iter::empty()) else {
            panic!("covered by the log");
        };
        assert_eq!((plan.first_message, plan.last_message), (7, 7));
        assert!(history.plan(1, 101, 101, std::iter::empty()).is_none());
    }

    /// The user's lines from a [`GraphReplay`] started at a snapshot after
    /// every event `snapshot`, for every `after` at or above it, against a
    /// real router's routing; with a follow bound small enough to refuse
    /// some follows.
    #[test]
    fn a_replay_from_any_snapshot_routes_as_the_router_did() {
        let kinds = random_kinds(300, 11);
        let (routed, _, _) = route_all(&kinds, 12);
        let position = kinds.len() as Seq;
        for snapshot in (0..position).step_by(7) {
            let mut graph = Router::new(12);
            for &kind in &kinds[..snapshot as usize] {
                graph.apply(kind);
            }
            let mut replay = GraphReplay::new(graph, snapshot);
            let mut asked = Vec::new();
            for user in 1..=6u64 {
                for after in (snapshot..position).step_by(5) {
                    let upto = position - (after % 3);
                    let index = replay.add(user, (after, upto), usize::MAX);
                    asked.push((index, user, after, upto));
                }
            }
            for (index, &kind) in kinds.iter().enumerate() {
                let seq = index as Seq + 1;
                let raw = format!("{seq}\n");
                replay.apply(&[EventRef {
                    seq,
                    kind,
                    raw: raw.as_bytes(),
                }]);
            }
            assert_eq!(replay.position(), position);
            for (index, user, after, upto) in asked {
                let want: String = routed[user as usize]
                    .iter()
                    .filter(|&&seq| seq > after && seq <= upto)
                    .map(|seq| format!("{seq}\n"))
                    .collect();
                let got = replay.take(index).expect("no bound");
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    want,
                    "user {user} in ({after}, {upto}] from {snapshot}"
                );
            }
        }
    }

    #[test]
    fn a_replay_past_its_bound_fails_that_target_alone() {
        let mut replay = GraphReplay::new(Router::new(10), 0);
        let small = replay.add(1, (0, 10), 5);
        let large = replay.add(2, (0, 10), 100);
        for seq in 1..=3 {
            let raw = format!("{seq}|B\n");
            replay.apply(&[EventRef {
                seq,
                kind: EventKind::Broadcast,
                raw: raw.as_bytes(),
            }]);
        }
        assert_eq!(replay.take(small), Err(OverBound { max_bytes: 5 }));
        assert_eq!(replay.take(large).unwrap(), b"1|B\n2|B\n3|B\n");
    }
}
