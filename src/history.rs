//! Resuming a session on another gateway: the cluster's JetStream stream is
//! the shared history, so a gateway that has no session for a user (the
//! user was served by a gateway that died) can still give it exactly what
//! it missed, derived from the stream.
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
//!    the edge changes the router reported ([`EDGE_LOG_ENTRIES`]). It hands
//!    a [`FetchRequest`] for the lines in (`after`, `P`] to the fetcher.
//! 2. **Fetcher task** ([`serve`]): reads the stream messages holding
//!    (`after`, `P`] (their JetStream sequences come from the registry's
//!    index of the messages it applied) and keeps the lines concerning the
//!    user exactly as routing would have: a follow of it or a private
//!    message to it, a broadcast, a status update of someone it followed at
//!    that point (the following set replayed forward with the same edge
//!    changes). It sends them back in [`crate::registry::Command::Resumed`].
//!    Requests queued together share one read of the stream (a *sweep*),
//!    on the fetcher's own NATS connection.
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
use std::sync::Arc;
use std::time::Duration;

use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{EventKind, Seq, UserId};
use futures_util::StreamExt;
use hashbrown::HashSet;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::jetstream::{self, Log, REQUEST_TIMEOUT};
use crate::outbox::{Closed, Outbox};
use crate::registry::{Command, ConnId, RegistryHandle};
use crate::router::EdgeChange;

/// Edge changes remembered (16 bytes each: at most 32 MiB; about 7M events
/// of the classic mix, where 3 events in 10 change an edge). A resume whose
/// `after` lies before the oldest one kept cannot know the following set
/// it had then, and gets `#GAP`.
pub(crate) const EDGE_LOG_ENTRIES: usize = 2 << 20;

/// Stream messages indexed (16 bytes each: 1 MiB; up to 4 GiB of stream in
/// 64 KiB messages).
pub(crate) const MESSAGE_INDEX_ENTRIES: usize = 1 << 16;

/// Fetch requests that may wait for the fetcher; beyond, the resume gets
/// its local verdict (`#GAP`) at once rather than wait.
pub(crate) const FETCH_QUEUE: usize = 64;

/// Sweeps of the stream running at once, each through its own consumer.
/// Every request that queued while they were busy joins the next sweep.
const CONCURRENT_SWEEPS: usize = 4;

/// Longest one sweep may take, all its messages included; the requests it
/// has not answered by then get `#GAP`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Step 2's work order; see the module doc.
#[derive(Debug)]
pub(crate) struct FetchRequest {
    /// The resuming client.
    pub user: UserId,
    /// Its connection.
    pub conn: ConnId,
    /// Its writer's outbox, handed back with the lines.
    pub outbox: Arc<Outbox>,
    /// The stream id it named (the cluster's, then).
    pub stream: StreamId,
    /// What it received up to.
    pub after: Seq,
    /// The registry's position when it planned: the lines above it are the
    /// session's.
    pub upto: Seq,
    /// Where to read, and how to route.
    pub plan: Plan,
    /// The most line bytes to fetch (`resumeBufferBytes`): a resume owed
    /// more than a session could retain gets `#GAP`, as locally.
    pub max_bytes: usize,
}

/// The fetcher task: serves requests until the registry drops its sender,
/// answering each with `Command::Resumed`. Requests are served in
/// *sweeps*: one read of the stream, from the earliest message any of them
/// needs to the latest, shared by every request that was queued when the
/// sweep began (a burst of resumes after a gateway's death reads the
/// stream once, not once per client). At most [`CONCURRENT_SWEEPS`] run at
/// once.
pub(crate) async fn serve(
    log: Log,
    mut requests: mpsc::Receiver<FetchRequest>,
    registry: RegistryHandle,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_SWEEPS));
    let mut sweeps = JoinSet::new();
    while let Some(first) = requests.recv().await {
        while sweeps.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break; // Never closed; nothing to serve with.
        };
        // What queued meanwhile joins: at most the queue's bound.
        let mut group = vec![first];
        while let Ok(request) = requests.try_recv() {
            group.push(request);
        }
        let (log, registry) = (log.clone(), registry.clone());
        sweeps.spawn(async move {
            sweep(&log, group, &registry).await;
            drop(slot);
        });
    }
    // Each is bounded by FETCH_TIMEOUT, and answers or closes its clients.
    while sweeps.join_next().await.is_some() {}
}

/// One request of a sweep, with what it has kept so far.
struct Fetch {
    request: FetchRequest,
    router: UserRouter,
    lines: Vec<u8>,
}

/// Reads the union of the group's ranges once and answers each request as
/// soon as its last message is read, or as soon as it fails; whatever is
/// left when [`FETCH_TIMEOUT`] passes gets `#GAP`.
async fn sweep(log: &Log, group: Vec<FetchRequest>, registry: &RegistryHandle) {
    let mut fetches: Vec<Fetch> = group
        .into_iter()
        .map(|request| Fetch {
            router: UserRouter::new(request.user, &request.plan),
            request,
            lines: Vec::new(),
        })
        .collect();
    let read = tokio::time::timeout(FETCH_TIMEOUT, read(log, &mut fetches, registry)).await;
    let error = match read {
        Ok(Ok(())) => return, // Every request answered.
        Ok(Err(error)) => error,
        Err(_) => "timed out".to_owned(),
    };
    for fetch in fetches {
        fail(registry, fetch.request, &error).await;
    }
}

/// How many times one sweep may start its read again after a lost batch
/// or a failed pull before it gives up (and its clients get `#GAP`).
const MAX_READ_RESTARTS: u32 = 8;

/// The sweep's read: answers and removes each request of `fetches` as it
/// completes or fails; `Err` fails the rest.
async fn read(
    log: &Log,
    fetches: &mut Vec<Fetch>,
    registry: &RegistryHandle,
) -> Result<(), String> {
    let (Some(mut expected), Some(last)) = (
        fetches.iter().map(|f| f.request.plan.first_message).min(),
        fetches.iter().map(|f| f.request.plan.last_message).max(),
    ) else {
        return Ok(());
    };
    let mut messages = log.read_from(expected).await?;
    let mut restarts = 0;
    while expected <= last && !fetches.is_empty() {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            // A pull that failed or came back short (a busy server, a lost
            // batch): read again from where we are, a bounded number of
            // times.
            Ok(Some(Err(_))) | Ok(None) | Err(_) if restarts < MAX_READ_RESTARTS => {
                restarts += 1;
                messages = log.read_from(expected).await?;
                continue;
            }
            Ok(Some(Err(error))) => return Err(format!("consumer: {error}")),
            Ok(None) => return Err("the consumer ended".into()),
            Err(_) => return Err(format!("no message {expected} in time")),
        };
        let stream_seq = message
            .info()
            .map_err(|error| format!("no JetStream metadata: {error}"))?
            .stream_sequence;
        if stream_seq < expected {
            // A redelivery of something already read: skip it.
            continue;
        }
        if stream_seq > expected {
            // Retention dropped `expected`, or a batch on its way was lost
            // (the consumer does not ask for acks): the stream tells which.
            let (first, _) = log.sequences().await?;
            if first <= expected && restarts < MAX_READ_RESTARTS {
                restarts += 1;
                messages = log.read_from(expected).await?;
                continue;
            }
            // Gone for good: whoever needed one of them cannot be served.
            let error = format!(
                "the stream no longer holds message {expected} (the next is {stream_seq}): \
                 retention dropped it"
            );
            for fetch in extract(fetches, |f| f.request.plan.first_message < stream_seq) {
                fail(registry, fetch.request, &error).await;
            }
            expected = stream_seq;
        }
        expected += 1;
        let entry = jetstream::decode(message.headers.as_ref(), &message.payload)?;
        let mut failed = Vec::new();
        for (index, fetch) in fetches.iter_mut().enumerate() {
            let plan = &fetch.request.plan;
            if stream_seq < plan.first_message || stream_seq > plan.last_message {
                continue;
            }
            let kept = if entry.stream != fetch.request.stream {
                Err(format!("message {stream_seq} is of another stream"))
            } else {
                keep(
                    &mut fetch.router,
                    &entry.events,
                    &fetch.request,
                    &mut fetch.lines,
                )
            };
            if let Err(error) = kept {
                failed.push((index, error));
            }
        }
        for (index, error) in failed.into_iter().rev() {
            fail(registry, fetches.swap_remove(index).request, &error).await;
        }
        for fetch in extract(fetches, |f| f.request.plan.last_message <= stream_seq) {
            answer(registry, fetch.request, Some(fetch.lines)).await;
        }
    }
    Ok(())
}

/// Removes and returns the fetches `done` picks.
fn extract(fetches: &mut Vec<Fetch>, done: impl Fn(&Fetch) -> bool) -> Vec<Fetch> {
    let (picked, kept): (Vec<Fetch>, Vec<Fetch>) =
        std::mem::take(fetches).into_iter().partition(done);
    *fetches = kept;
    picked
}

/// Answers `request` with `#GAP`, saying why in the log.
async fn fail(registry: &RegistryHandle, request: FetchRequest, error: &str) {
    tracing::warn!(
        user = request.user,
        after = request.after,
        upto = request.upto,
        %error,
        "cannot resume from the stream: the client gets #GAP"
    );
    answer(registry, request, None).await;
}

/// Hands the fetched lines (`None`: the fetch failed) back to the
/// registry. If the registry is gone (shutdown), the client's outbox is
/// closed instead, so its writer ends at once.
async fn answer(registry: &RegistryHandle, request: FetchRequest, lines: Option<Vec<u8>>) {
    let FetchRequest {
        user,
        conn,
        outbox,
        stream,
        after,
        upto,
        ..
    } = request;
    let writer = Arc::clone(&outbox);
    let resumed = Command::Resumed {
        user,
        conn,
        outbox,
        stream,
        after,
        upto,
        lines,
    };
    if registry.send(resumed).await.is_err() {
        writer.close(Closed::Drain);
    }
}

/// Appends to `lines` those of `events` (one stream message's, in order)
/// in (`after`, `upto`] that concern the request's user. Fails past
/// `max_bytes`.
pub(crate) fn keep(
    router: &mut UserRouter,
    events: &[followermaze_protocol::Event],
    request: &FetchRequest,
    lines: &mut Vec<u8>,
) -> Result<(), String> {
    for event in events {
        if event.seq <= request.after {
            continue;
        }
        if event.seq > request.upto {
            break;
        }
        if router.concerns(event.seq, event.kind) {
            lines.extend_from_slice(&event.raw);
            if lines.len() > request.max_bytes {
                return Err(format!(
                    "more than {} bytes owed (resumeBufferBytes)",
                    request.max_bytes
                ));
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
    pub(crate) fn new(user: UserId, plan: &Plan) -> UserRouter {
        UserRouter {
            user,
            following: plan.following.clone(),
            changes: plan.changes.clone(),
            applied: 0,
        }
    }

    /// Whether event `seq` of `kind` is routed to the user, as
    /// [`crate::router::Router::apply`] and the registry route it: a follow
    /// notifies `to`, an unfollow nobody, a broadcast everyone, a private
    /// message `to`, a status update every follower of `from` after every
    /// earlier event.
    fn concerns(&mut self, seq: Seq, kind: EventKind) -> bool {
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
    use crate::router::Router;

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
                    crate::router::Audience::Nobody => false,
                    crate::router::Audience::User(to) => to == user,
                    crate::router::Audience::Everyone => true,
                    crate::router::Audience::Followers(author) => router.follows(user, author),
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
