//! The routing core: apply one event to the follower graph and say who must
//! hear of it. A plain state machine with no I/O, no channels and no notion of
//! connections, so the registry actor, unit tests and benchmarks all drive the
//! same code (and anything else that replays the ordered stream can too).
//!
//! Events must be applied in sequence order: the answer for a status update
//! depends on every follow and unfollow before it.
//!
//! # Layout
//!
//! Follows and unfollows are 30% of the classic stream and 45% of the
//! fan-out one, and each touches the graph, so its layout is about cache
//! misses. It was `HashMap<UserId, HashSet<UserId>>`: after the outer probe
//! (a small, hot table: one entry per user) every follow or unfollow loads
//! the inner set's control bytes, then its bucket, each a likely miss on a
//! big graph. On the fan-out profile (3M events, ~100k edges among 1,000
//! users at the end) that was ~17% of server CPU in `perf`
//! (`remove_edge` 9%, three quarters of it stalled on those two loads).
//!
//! Now each user's set is a bitmap in 64-user words (`Followed`): a
//! small hash table from `id / 64` to a 64-bit mask. Ids are usually
//! dense (the verifier's are `1..=users`), so a user following 100 of
//! 1,000 users needs 16 words (a 32-bucket table, ~0.5 KiB) instead of a
//! 128-bucket set (~1.1 KiB), and the whole graph shrinks enough to stay
//! in cache far more often. Sparse ids cost one word per edge: 16 bytes a
//! bucket where a set of ids took 8, the worst case of this layout (still
//! under 40 bytes an edge with the table half full).
//!
//! And an entry whose user stops following anyone is kept for reuse (up
//! to `KEEP_EMPTY` of them, small tables only) instead of freed: the
//! classic stream keeps the graph near-empty (~1,000 edges) while users
//! follow and unfollow three million times, so freeing meant a free and a
//! malloc every few events (two of each with the nested words). Allocator
//! calls over the classic run: 1,065,003 before, 165,000 after.
//!
//! Measured against the nested sets, server CPU, 2-core machine, pairs of
//! alternating runs, median of the pairwise ratios: fan-out (3M events)
//! 0.947, lower in 18 of 24 pairs; classic 0.973, lower in 15 of 24.
//! Neither half alone did it: keeping emptied sets alone 0.999 / 1.011
//! (noise, 12 pairs each); the words freeing emptied entries 0.945 (7 of
//! 12) / 1.034 (4 of 12), and with the reuse classic goes 0.945 (8 of 12)
//! against that. A second series (20 fan-out pairs, 10 classic): 0.981
//! (13 of 20) and 0.980 (6 of 10). Peak RSS (VmHWM medians): fan-out
//! 20.0 -> 19.4 MiB; classic 14.1 -> 14.9 MiB in the first series and
//! 14.2 -> 13.3 MiB in the second, so within the runs' spread
//! (heaptrack's heap peak 7.41 -> 7.56 MiB).
//!
//! Rejected without building into the server, on a replay of the fan-out
//! and classic follow/unfollow streams (ns per op, fan-out / classic, base 55-65 / 60-80): one flat
//! `(from, to)` set plus a per-user `Vec` storing each edge's index, 65-85 /
//! 55-70 (an unfollow's swap-remove must re-index the moved edge: two more
//! misses). hashbrown 0.17 already hashes with foldhash, so a faster u64
//! hasher had nothing to win.

use hashbrown::HashMap;

use followermaze_protocol::{EventKind, EventType, Tagged, UserId};

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
    Added {
        /// The follower.
        from: UserId,
        /// The followed user.
        to: UserId,
    },
    /// `from` no longer follows `to`.
    Removed {
        /// The follower.
        from: UserId,
        /// The user no longer followed.
        to: UserId,
    },
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
    /// no entry, except up to [`KEEP_EMPTY`] emptied small ones kept for
    /// reuse, so the map's size tracks live edges, not users ever seen.
    following: HashMap<UserId, Followed>,
    /// Total edges, the sum of the sets' lengths.
    edges: usize,
    /// Follows beyond this many edges are not recorded (the notification is
    /// still routed); see [`Router::apply`].
    max_edges: usize,
    /// Follows refused because the graph was full.
    refused_follows: u64,
    /// Entries of `following` that follow nobody, kept for reuse; at most
    /// [`KEEP_EMPTY`].
    empty: usize,
}

/// Most emptied entries kept for reuse: each is its map entry (40 bytes)
/// and a table of at most 16 buckets (about 300 bytes with its control
/// bytes), so about 1.4 MiB at most; the classic run keeps one per user
/// who ever followed anyone, about 1,000.
const KEEP_EMPTY: usize = 4096;

/// Only entries whose table holds at most this many words are kept once
/// empty (hashbrown's capacity for 16 buckets); a big one is freed.
const KEEP_CAPACITY: usize = 14;

/// Everyone one user follows, as a bitmap in 64-user words: bit `id % 64`
/// of `words[id / 64]` is set when `id` is followed. A word that empties is
/// removed, so the table holds at most one word per edge.
#[derive(Debug, Default)]
struct Followed {
    words: HashMap<u64, u64>,
}

impl Followed {
    /// The word `user` is in, and its bit there.
    #[inline]
    fn word(user: UserId) -> (u64, u64) {
        (user >> 6, 1 << (user & 63))
    }

    /// Adds `user`; returns whether it was new.
    #[inline]
    fn insert(&mut self, user: UserId) -> bool {
        let (key, bit) = Followed::word(user);
        let word = self.words.entry(key).or_insert(0);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    /// Removes `user`; returns whether it was there.
    #[inline]
    fn remove(&mut self, user: UserId) -> bool {
        let (key, bit) = Followed::word(user);
        let Some(word) = self.words.get_mut(&key) else {
            return false;
        };
        if *word & bit == 0 {
            return false;
        }
        *word &= !bit;
        if *word == 0 {
            self.words.remove(&key);
        }
        true
    }

    #[inline]
    fn contains(&self, user: UserId) -> bool {
        let (key, bit) = Followed::word(user);
        self.words.get(&key).is_some_and(|word| word & bit != 0)
    }

    fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = UserId> + '_ {
        self.words.iter().flat_map(|(&key, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let low = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                Some(key << 6 | low)
            })
        })
    }
}

impl Router {
    /// An empty graph that holds at most `max_edges` follow edges.
    pub fn new(max_edges: usize) -> Self {
        Router {
            following: HashMap::new(),
            edges: 0,
            max_edges,
            refused_follows: 0,
            empty: 0,
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
        self.apply_tagged(kind.into())
    }

    /// [`Router::apply`], the kind as [`Tagged`] (the registry's form).
    #[inline]
    pub fn apply_tagged(&mut self, kind: Tagged) -> Routed {
        let Tagged { tag, from, to } = kind;
        let (audience, edge) = match tag {
            EventType::Follow => (Audience::User(to), self.follow(from, to)),
            EventType::Unfollow => (Audience::Nobody, self.unfollow(from, to)),
            EventType::Broadcast => (Audience::Everyone, None),
            EventType::Private => (Audience::User(to), None),
            EventType::Status => (Audience::Followers(from), None),
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
        let followed = self.following.entry(from).or_default();
        let kept = followed.is_empty() && followed.words.capacity() > 0;
        if !followed.insert(to) {
            return None;
        }
        if kept {
            self.empty -= 1;
        }
        self.edges += 1;
        Some(EdgeChange::Added { from, to })
    }

    /// Forgets `from -> to` if it exists.
    #[inline]
    fn unfollow(&mut self, from: UserId, to: UserId) -> Option<EdgeChange> {
        let followed = self.following.get_mut(&from)?;
        if !followed.remove(to) {
            return None;
        }
        if followed.is_empty() {
            if self.empty < KEEP_EMPTY && followed.words.capacity() <= KEEP_CAPACITY {
                self.empty += 1;
            } else {
                self.following.remove(&from);
            }
        }
        self.edges -= 1;
        Some(EdgeChange::Removed { from, to })
    }

    /// Everyone following `user` now. A walk over every user who follows
    /// anyone: for checks and models, not for routing (see [`Router`]).
    pub fn followers(&self, user: UserId) -> impl Iterator<Item = UserId> + '_ {
        self.following
            .iter()
            .filter(move |(_, followed)| followed.contains(user))
            .map(|(&from, _)| from)
    }

    /// Everyone `user` follows now.
    pub fn following(&self, user: UserId) -> impl Iterator<Item = UserId> + '_ {
        self.following
            .get(&user)
            .into_iter()
            .flat_map(Followed::iter)
    }

    /// Whether `from` currently follows `to`.
    pub fn follows(&self, from: UserId, to: UserId) -> bool {
        self.following
            .get(&from)
            .is_some_and(|followed| followed.contains(to))
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
            .flat_map(|(&from, followed)| followed.iter().map(move |to| (from, to)))
    }

    /// Forgets every edge (a new stream starts).
    pub fn clear(&mut self) {
        self.following = HashMap::new();
        self.edges = 0;
        self.empty = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert!(router.following.values().all(Followed::is_empty));
        assert_eq!(router.empty, router.following.len(), "kept for reuse");
        check(&router);
        router.apply(EventKind::Follow { from: 1, to: 6 });
        assert_eq!(router.empty, 1, "reused");
        check(&router);
    }

    #[test]
    fn ids_at_word_edges_and_extremes() {
        let mut router = Router::new(100);
        let ids = [
            0,
            1,
            63,
            64,
            127,
            128,
            u64::MAX - 64,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &to in &ids {
            assert!(router
                .apply(EventKind::Follow { from: 9, to })
                .edge
                .is_some());
        }
        assert_eq!(router.edges(), ids.len());
        let mut following: Vec<_> = router.following(9).collect();
        following.sort_unstable();
        assert_eq!(following, ids);
        assert!(!router.follows(9, 62) && !router.follows(9, 65));
        for &to in &ids {
            assert!(router.follows(9, to));
            assert_eq!(router.followers(to).collect::<Vec<_>>(), vec![9]);
        }
        check(&router);
        for &to in &ids {
            assert!(router
                .apply(EventKind::Unfollow { from: 9, to })
                .edge
                .is_some());
            assert!(!router.follows(9, to));
            check(&router);
        }
        assert_eq!(router.following(9).count(), 0);
    }

    #[test]
    fn keeps_a_bounded_number_of_small_emptied_entries() {
        let mut router = Router::new(usize::MAX);
        // A big table is freed once empty.
        for to in 0..64 * 64 {
            router.apply(EventKind::Follow {
                from: 1,
                to: to * 64,
            });
        }
        for to in 0..64 * 64 {
            router.apply(EventKind::Unfollow {
                from: 1,
                to: to * 64,
            });
        }
        assert!(router.following.is_empty());
        // Small ones are kept, up to the bound.
        let users = KEEP_EMPTY as u64 + 10;
        for from in 0..users {
            router.apply(EventKind::Follow { from, to: 1 });
        }
        for from in 0..users {
            router.apply(EventKind::Unfollow { from, to: 1 });
        }
        assert_eq!(router.edges(), 0);
        assert_eq!(router.empty, KEEP_EMPTY);
        assert_eq!(router.following.len(), KEEP_EMPTY);
        check(&router);
        router.clear();
        assert_eq!((router.empty, router.following.len()), (0, 0));
    }

    /// The graph's bookkeeping agrees with its words: `edges` is the number
    /// of set bits, no word is zero, `empty` counts exactly the entries that
    /// follow nobody, and it and their tables stay within their bounds.
    fn check(router: &Router) {
        let mut bits = 0;
        let mut empty = 0;
        for followed in router.following.values() {
            assert!(followed.words.values().all(|&word| word != 0));
            bits += followed
                .words
                .values()
                .map(|word| word.count_ones() as usize)
                .sum::<usize>();
            if followed.is_empty() {
                empty += 1;
                assert!(followed.words.capacity() <= KEEP_CAPACITY);
            }
        }
        assert_eq!(bits, router.edges);
        assert_eq!(empty, router.empty);
        assert!(router.empty <= KEEP_EMPTY);
        assert!(router.edges <= router.max_edges);
    }

    /// Users for the model test: a few dense ones, some across a word
    /// boundary and the extremes.
    fn any_user() -> impl Strategy<Value = UserId> {
        prop_oneof![
            0u64..6,
            60u64..68,
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(1 << 40),
        ]
    }

    proptest! {
        /// Every answer the router gives against a plain set of pairs.
        #[test]
        fn agrees_with_a_set_of_pairs(
            max_edges in 0usize..40,
            ops in proptest::collection::vec((any::<bool>(), any_user(), any_user()), 0..300),
        ) {
            let mut router = Router::new(max_edges);
            let mut model: std::collections::BTreeSet<(UserId, UserId)> = Default::default();
            let mut refused = 0;
            for (follow, from, to) in ops {
                let routed = if follow {
                    router.apply(EventKind::Follow { from, to })
                } else {
                    router.apply(EventKind::Unfollow { from, to })
                };
                let expected = if follow {
                    if model.contains(&(from, to)) {
                        None
                    } else if model.len() >= max_edges {
                        refused += 1;
                        None
                    } else {
                        model.insert((from, to));
                        Some(EdgeChange::Added { from, to })
                    }
                } else {
                    model.remove(&(from, to)).then_some(EdgeChange::Removed { from, to })
                };
                prop_assert_eq!(routed.edge, expected);
                prop_assert_eq!(router.follows(from, to), model.contains(&(from, to)));
                prop_assert_eq!(router.edges(), model.len());
                prop_assert_eq!(router.refused_follows(), refused);
                check(&router);
            }
            let mut edges: Vec<_> = router.edge_list().collect();
            edges.sort_unstable();
            prop_assert_eq!(&edges, &model.iter().copied().collect::<Vec<_>>());
            let users: std::collections::BTreeSet<UserId> =
                model.iter().flat_map(|&(from, to)| [from, to]).collect();
            for &user in &users {
                let mut following: Vec<_> = router.following(user).collect();
                following.sort_unstable();
                let expected: Vec<_> =
                    model.iter().filter(|e| e.0 == user).map(|e| e.1).collect();
                prop_assert_eq!(following, expected);
                let mut followers: Vec<_> = router.followers(user).collect();
                followers.sort_unstable();
                let expected: Vec<_> =
                    model.iter().filter(|e| e.1 == user).map(|e| e.0).collect();
                prop_assert_eq!(followers, expected);
            }
        }
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
