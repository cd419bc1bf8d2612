//! The routing core: apply one event to the follower graph and say who must
//! hear of it. A plain state machine with no I/O, no channels and no notion of
//! connections, so the registry actor, unit tests and benchmarks all drive the
//! same code (and anything else that replays the ordered stream can too).
//!
//! Events must be applied in sequence order: the answer for a status update
//! depends on every follow and unfollow before it.

use hashbrown::{HashMap, HashSet};

use followermaze_protocol::{EventKind, UserId};

/// What applying one event did: who must hear of it, and which follow edge
/// it added or removed. The two are independent: a follow is routed to the
/// followed user whether or not the edge is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Who must be notified.
    pub audience: Audience,
    /// The edge the event added or removed; `None` when the graph did not
    /// change (not a follow or unfollow, a follow of an existing edge, an
    /// unfollow of a missing one, or a follow refused at the bound).
    pub edge: Option<EdgeChange>,
}

/// Who must be notified of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Nobody (an unfollow).
    Nobody,
    /// Exactly this user (follow, private message).
    User(UserId),
    /// Every connected client (broadcast).
    Everyone,
    /// The followers of this user (a status update's author) as they are
    /// after every earlier event, possibly none. The registry keeps its
    /// own index of them (online ones only); [`Router::followers`] lists
    /// them too, by a walk over the graph, for checks and models.
    Followers(UserId),
}

/// A follow edge that an event added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeChange {
    /// `from` now follows `to`.
    Added { from: UserId, to: UserId },
    /// `from` no longer follows `to`.
    Removed { from: UserId, to: UserId },
}

/// The follower graph; see the module doc.
///
/// Kept one way only, `following[u]`: everyone `u` follows. That is what
/// a user coming online needs (whose status updates it should get) and
/// all a follow or unfollow must touch. The other way, who follows `u`, is
/// what a status update needs, but the registry keeps its own index of
/// *online* followers for that, so a second map here would cost each
/// follow and unfollow a second hash-set update (a cache miss or two on a
/// big graph: about a tenth of the server's CPU on the fan-out profile)
/// for no reader on the hot path.
#[derive(Debug)]
pub struct Router {
    /// `following[u]` is everyone `u` follows. A user who follows nobody has
    /// no entry, so the map's size tracks live edges, not users ever seen.
    following: HashMap<UserId, HashSet<UserId>>,
    /// Total edges, the sum of the sets' lengths.
    edges: usize,
    /// Follows beyond this many edges are not recorded (the notification is
    /// still routed); see [`Router::apply`].
    max_edges: usize,
    /// Follows refused because the graph was full.
    refused_follows: u64,
}

impl Router {
    /// An empty graph that holds at most `max_edges` follow edges.
    pub fn new(max_edges: usize) -> Self {
        Router {
            following: HashMap::new(),
            edges: 0,
            max_edges,
            refused_follows: 0,
        }
    }

    /// Applies `kind` to the graph and returns who must be notified and
    /// which edge, if any, changed.
    ///
    /// The graph changes whether or not the users involved are connected. A
    /// follow that would take the graph past its bound is routed (the followed
    /// user still hears of it) but not recorded, and counted in
    /// [`Router::refused_follows`]; this is the one place the graph departs
    /// from the stream, and it only happens when something floods it with
    /// distinct pairs.
    #[inline]
    pub fn apply(&mut self, kind: EventKind) -> Routed {
        let (audience, edge) = match kind {
            EventKind::Follow { from, to } => (Audience::User(to), self.follow(from, to)),
            EventKind::Unfollow { from, to } => (Audience::Nobody, self.unfollow(from, to)),
            EventKind::Broadcast => (Audience::Everyone, None),
            EventKind::Private { to, .. } => (Audience::User(to), None),
            EventKind::Status { from } => (Audience::Followers(from), None),
        };
        Routed { audience, edge }
    }

    /// Records `from -> to` unless it exists or the graph is full.
    #[inline]
    fn follow(&mut self, from: UserId, to: UserId) -> Option<EdgeChange> {
        if self.edges >= self.max_edges {
            if !self.follows(from, to) {
                self.refused_follows += 1;
            }
            return None;
        }
        if !self.following.entry(from).or_default().insert(to) {
            return None;
        }
        self.edges += 1;
        Some(EdgeChange::Added { from, to })
    }

    /// Forgets `from -> to` if it exists.
    #[inline]
    fn unfollow(&mut self, from: UserId, to: UserId) -> Option<EdgeChange> {
        if !remove_edge(&mut self.following, from, to) {
            return None;
        }
        self.edges -= 1;
        Some(EdgeChange::Removed { from, to })
    }

    /// Everyone following `user` now. A walk over every user who follows
    /// anyone: for checks and models, not for routing (see [`Router`]).
    pub fn followers(&self, user: UserId) -> impl Iterator<Item = UserId> + '_ {
        self.following
            .iter()
            .filter(move |(_, set)| set.contains(&user))
            .map(|(&from, _)| from)
    }

    /// Everyone `user` follows now.
    pub fn following(&self, user: UserId) -> impl Iterator<Item = UserId> + '_ {
        self.following.get(&user).into_iter().flatten().copied()
    }

    /// Whether `from` currently follows `to`.
    pub fn follows(&self, from: UserId, to: UserId) -> bool {
        self.following
            .get(&from)
            .is_some_and(|set| set.contains(&to))
    }

    /// The number of follow edges.
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// Follows not recorded because the graph was at its bound.
    pub fn refused_follows(&self) -> u64 {
        self.refused_follows
    }

    /// Every edge, as `(from, to)`, in no particular order (for a cluster
    /// snapshot; [`Router::apply`] of a follow for each rebuilds the graph).
    pub fn edge_list(&self) -> impl Iterator<Item = (UserId, UserId)> + '_ {
        self.following
            .iter()
            .flat_map(|(&from, set)| set.iter().map(move |&to| (from, to)))
    }

    /// Forgets every edge (a new stream starts).
    pub fn clear(&mut self) {
        self.following = HashMap::new();
        self.edges = 0;
    }
}

/// Removes `member` from `map[key]`, dropping the set when it empties;
/// returns whether it was there.
fn remove_edge(map: &mut HashMap<UserId, HashSet<UserId>>, key: UserId, member: UserId) -> bool {
    let Some(set) = map.get_mut(&key) else {
        return false;
    };
    let removed = set.remove(&member);
    if set.is_empty() {
        map.remove(&key);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audience of `kind`, checking it changed no edge.
    fn audience(router: &mut Router, kind: EventKind) -> Audience {
        let routed = router.apply(kind);
        assert_eq!(routed.edge, None, "{kind:?}");
        routed.audience
    }

    /// The followers a status update of `of` reaches, sorted.
    fn followers(router: &mut Router, of: UserId) -> Vec<UserId> {
        assert_eq!(
            audience(router, EventKind::Status { from: of }),
            Audience::Followers(of)
        );
        let mut users: Vec<_> = router.followers(of).collect();
        users.sort_unstable();
        users
    }

    #[test]
    fn routes_each_event_type() {
        let mut router = Router::new(100);
        assert_eq!(
            router.apply(EventKind::Follow { from: 1, to: 2 }).audience,
            Audience::User(2)
        );
        assert_eq!(
            audience(&mut router, EventKind::Private { from: 7, to: 9 }),
            Audience::User(9)
        );
        assert_eq!(
            audience(&mut router, EventKind::Broadcast),
            Audience::Everyone
        );
        assert_eq!(followers(&mut router, 2), vec![1]);
        assert_eq!(
            router
                .apply(EventKind::Unfollow { from: 1, to: 2 })
                .audience,
            Audience::Nobody
        );
        assert_eq!(followers(&mut router, 2), Vec::<UserId>::new());
    }

    #[test]
    fn the_graph_counts_edges_and_forgets_empty_sets() {
        let mut router = Router::new(100);
        router.apply(EventKind::Follow { from: 1, to: 5 });
        router.apply(EventKind::Follow { from: 1, to: 5 });
        router.apply(EventKind::Follow { from: 2, to: 5 });
        router.apply(EventKind::Unfollow { from: 3, to: 5 });
        assert_eq!(router.edges(), 2);
        assert_eq!(followers(&mut router, 5), vec![1, 2]);
        router.apply(EventKind::Unfollow { from: 1, to: 5 });
        router.apply(EventKind::Unfollow { from: 2, to: 5 });
        assert_eq!(router.edges(), 0);
        assert!(router.following.is_empty());
    }

    #[test]
    fn reports_edge_changes_and_keeps_both_directions() {
        let mut router = Router::new(100);
        let edge = |router: &mut Router, kind| router.apply(kind).edge;
        assert_eq!(
            edge(&mut router, EventKind::Follow { from: 1, to: 5 }),
            Some(EdgeChange::Added { from: 1, to: 5 })
        );
        assert_eq!(
            edge(&mut router, EventKind::Follow { from: 1, to: 5 }),
            None,
            "already there"
        );
        router.apply(EventKind::Follow { from: 1, to: 6 });
        let mut following: Vec<_> = router.following(1).collect();
        following.sort_unstable();
        assert_eq!(following, vec![5, 6]);
        assert_eq!(
            edge(&mut router, EventKind::Unfollow { from: 1, to: 5 }),
            Some(EdgeChange::Removed { from: 1, to: 5 })
        );
        assert_eq!(
            edge(&mut router, EventKind::Unfollow { from: 1, to: 5 }),
            None,
            "already gone"
        );
        assert_eq!(router.following(1).collect::<Vec<_>>(), vec![6]);
        assert_eq!(router.followers(6).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_full_graph_refuses_new_edges_but_still_routes() {
        let mut router = Router::new(1);
        router.apply(EventKind::Follow { from: 1, to: 5 });
        assert_eq!(
            audience(&mut router, EventKind::Follow { from: 2, to: 5 }),
            Audience::User(5),
            "routed, but no edge"
        );
        // Repeating an edge that exists is not a refusal.
        router.apply(EventKind::Follow { from: 1, to: 5 });
        assert_eq!(router.refused_follows(), 1);
        assert_eq!(followers(&mut router, 5), vec![1]);
    }
}
