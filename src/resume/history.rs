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

use followermaze_protocol::{Event, EventKind, Seq, UserId};
use hashbrown::HashSet;

use crate::graph::router::EdgeChange;

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
}

/// What step 1 decided: where to read, and the user's graph to route with.
#[derive(Debug)]
pub(crate) struct Plan {
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
    /// following set at `after` given `following`, its set now; `None` if
    /// `after` is below the floor or nothing was applied since it.
    pub(crate) fn plan(
        &self,
        user: UserId,
        after: Seq,
        position: Seq,
        following: impl Iterator<Item = UserId>,
    ) -> Option<Plan> {
        if after < self.floor || after >= position {
            return None;
        }
        let &(_, last_message) = self.messages.back()?;
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
        Some(Plan {
            first_message,
            last_message,
            following,
            changes,
        })
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
    events: &[Event],
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
            lines.extend_from_slice(&event.raw);
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
    pub(crate) fn new(user: UserId, plan: &Plan) -> UserRouter {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::router::Router;

    /// The user's lines from replaying `kinds` through a real router,
    /// against [`History::plan`] + [`UserRouter`] started at every `after`.
    #[test]
    fn planned_routing_matches_the_router_from_any_point() {
        let mut state: u64 = 7;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds: Vec<EventKind> = (0..400)
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
            .collect();
        let mut router = Router::new(1000);
        let mut history = History::default();
        // Per user, the seqs routed to it.
        let mut routed: Vec<Vec<Seq>> = vec![Vec::new(); 7];
        for (index, &kind) in kinds.iter().enumerate() {
            let seq = index as Seq + 1;
            history.message(seq, seq); // one message per event
            let outcome = router.apply(kind);
            for user in 1..=6u64 {
                let to_user = match outcome.audience {
                    crate::graph::router::Audience::Nobody => false,
                    crate::graph::router::Audience::User(to) => to == user,
                    crate::graph::router::Audience::Everyone => true,
                    crate::graph::router::Audience::Followers(author) => {
                        router.follows(user, author)
                    }
                };
                if to_user {
                    routed[user as usize].push(seq);
                }
            }
            if let Some(edge) = outcome.edge {
                history.edge(seq, edge);
            }
        }
        let position = kinds.len() as Seq;
        for user in 1..=6u64 {
            for after in 0..position {
                let plan = history
                    .plan(user, after, position, router.following(user))
                    .expect("covered");
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
        // The change at 3 is lost, so no resume from before it is planned.
        assert!(history.plan(1, 2, 5, std::iter::empty()).is_none());
        let plan = history.plan(1, 3, 5, std::iter::empty()).unwrap();
        assert_eq!(plan.changes, [(4, 2, false)]);
        assert_eq!(plan.following, HashSet::from_iter([2]));
    }

    #[test]
    fn a_resume_below_the_floor_is_not_planned() {
        let mut history = History::default();
        history.reset(100);
        history.message(101, 7);
        assert!(history.plan(1, 99, 101, std::iter::empty()).is_none());
        let plan = history.plan(1, 100, 101, std::iter::empty()).unwrap();
        assert_eq!((plan.first_message, plan.last_message), (7, 7));
        assert!(history.plan(1, 101, 101, std::iter::empty()).is_none());
    }
}
