//! The verifier's own model of the follower graph, and of which users have
//! connections: enough to say, for every event, which client connections a
//! correct server must notify.
//!
//! Shaped for the generator's hot loop rather than for generality: users
//! are dense ids `1..=users`, so per-user data lives in vectors, and the
//! only per-user list kept is of *connected* followers (a status update
//! walks only those). All edges are also kept in a vector so that an
//! unfollow can pick an existing edge uniformly in O(1), and in a set to
//! tell a new follow from a repeated one (a repeat changes nothing, exactly
//! as in the server's set semantics).
//!
//! Memory is O(users + clients + edges); edges are bounded by the event mix
//! (unfollows remove as often as follows add), never by the number of events.

use hashbrown::HashSet;

use super::rng::Rng;

/// No client: ends a user's list of connections.
const NO_CLIENT: u32 = u32::MAX;

/// Bits the follow edges may take as a bitmap (2 MiB): up to 4,095 users
/// the edge set is a bit per (from, to) pair, beyond that a hash set.
const EDGE_BITMAP_MAX_BITS: u64 = 1 << 24;

/// Which follow edges exist. A bitmap, when `users` is small enough: a
/// follow or an unfollow is then one bit, where a hash set churning through
/// millions of inserts and removes keeps rehashing away its tombstones.
#[derive(Debug)]
enum EdgeSet {
    /// Bit `from * stride + to`.
    Bits {
        /// One bit per pair.
        words: Vec<u64>,
        /// `users + 1`: ids are `1..=users`.
        stride: u64,
    },
    /// Keyed `from << 32 | to`.
    Hashed(HashSet<u64>),
}

impl EdgeSet {
    /// An empty set over users `1..=users`, a bitmap if it takes at most
    /// `max_bits`.
    fn new(users: u32, max_bits: u64) -> EdgeSet {
        let stride = u64::from(users) + 1;
        match stride.checked_mul(stride) {
            Some(bits) if bits <= max_bits => EdgeSet::Bits {
                words: vec![0; bits.div_ceil(64) as usize],
                stride,
            },
            _ => EdgeSet::Hashed(HashSet::new()),
        }
    }

    /// Adds `from -> to`; false if it was there.
    #[inline]
    fn insert(&mut self, from: u32, to: u32) -> bool {
        match self {
            EdgeSet::Bits { words, stride } => {
                let (word, bit) = bit_of(*stride, from, to);
                let was = words[word] & bit != 0;
                words[word] |= bit;
                !was
            }
            EdgeSet::Hashed(set) => set.insert(edge_key(from, to)),
        }
    }

    /// Removes `from -> to`; false if it was not there.
    #[inline]
    fn remove(&mut self, from: u32, to: u32) -> bool {
        match self {
            EdgeSet::Bits { words, stride } => {
                let (word, bit) = bit_of(*stride, from, to);
                let was = words[word] & bit != 0;
                words[word] &= !bit;
                was
            }
            EdgeSet::Hashed(set) => set.remove(&edge_key(from, to)),
        }
    }

    /// Whether `from -> to` is there.
    #[cfg(test)]
    fn contains(&self, from: u32, to: u32) -> bool {
        match self {
            EdgeSet::Bits { words, stride } => {
                let (word, bit) = bit_of(*stride, from, to);
                words[word] & bit != 0
            }
            EdgeSet::Hashed(set) => set.contains(&edge_key(from, to)),
        }
    }
}

/// The word and the mask of pair `(from, to)`'s bit.
#[inline]
fn bit_of(stride: u64, from: u32, to: u32) -> (usize, u64) {
    let index = u64::from(from) * stride + u64::from(to);
    ((index / 64) as usize, 1 << (index % 64))
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Graph {
    /// Every follow edge as `(from, to)`, in no particular order.
    edges: Vec<(u32, u32)>,
    /// The same edges, for membership.
    edge_set: EdgeSet,
    /// `connected_followers[u]`: the followers of `u` that have at least one
    /// connection, each once.
    connected_followers: Vec<Vec<u32>>,
    /// `first_client[u]`: one client connection of user `u`, or
    /// [`NO_CLIENT`]; the rest follow through `next_client`.
    first_client: Vec<u32>,
    /// `next_client[c]`: the next connection of the same user as client `c`.
    next_client: Vec<u32>,
}

#[inline]
fn edge_key(from: u32, to: u32) -> u64 {
    (u64::from(from) << 32) | u64::from(to)
}

impl Graph {
    /// An empty graph over users `1..=users`, where client connection `c`
    /// belongs to user `client_users[c]` (a user may have several).
    pub(crate) fn new(users: u32, client_users: &[u32]) -> Graph {
        Graph::with_edge_bits(users, client_users, EDGE_BITMAP_MAX_BITS)
    }

    /// [`Graph::new`], with the edges a bitmap if it takes at most
    /// `max_bits` (the tests try both kinds of set).
    fn with_edge_bits(users: u32, client_users: &[u32], max_bits: u64) -> Graph {
        let slots = users as usize + 1;
        let mut first_client = vec![NO_CLIENT; slots];
        let mut next_client = vec![NO_CLIENT; client_users.len()];
        // Walk backwards so each user's list ends up in client order.
        for (client, &user) in client_users.iter().enumerate().rev() {
            assert!(
                user >= 1 && user <= users,
                "client user {user} outside 1..={users}"
            );
            next_client[client] = first_client[user as usize];
            first_client[user as usize] = client as u32;
        }
        Graph {
            edges: Vec::new(),
            edge_set: EdgeSet::new(users, max_bits),
            connected_followers: vec![Vec::new(); slots],
            first_client,
            next_client,
        }
    }

    /// Whether `user` has a connection.
    #[inline]
    pub(crate) fn is_connected(&self, user: u32) -> bool {
        self.first_client[user as usize] != NO_CLIENT
    }

    /// Calls `notify` with every client connection of `user`.
    #[inline]
    pub(crate) fn for_each_client(&self, user: u32, mut notify: impl FnMut(u32)) {
        let mut client = self.first_client[user as usize];
        while client != NO_CLIENT {
            notify(client);
            client = self.next_client[client as usize];
        }
    }

    /// Calls `notify` with every client connection of every follower of
    /// `user`: the audience of `user`'s status update.
    #[inline]
    pub(crate) fn for_each_follower_client(&self, user: u32, mut notify: impl FnMut(u32)) {
        for &follower in &self.connected_followers[user as usize] {
            self.for_each_client(follower, &mut notify);
        }
    }

    /// Records that `from` follows `to`; false if it already did.
    pub(crate) fn follow(&mut self, from: u32, to: u32) -> bool {
        if !self.edge_set.insert(from, to) {
            return false;
        }
        self.edges.push((from, to));
        if self.is_connected(from) {
            self.connected_followers[to as usize].push(from);
        }
        true
    }

    /// Removes an existing edge chosen uniformly with `rng` and returns it,
    /// or `None` (drawing nothing) when there are no edges.
    pub(crate) fn unfollow_any(&mut self, rng: &mut Rng) -> Option<(u32, u32)> {
        if self.edges.is_empty() {
            return None;
        }
        let index = rng.below(self.edges.len() as u64) as usize;
        let (from, to) = self.edges.swap_remove(index);
        let removed = self.edge_set.remove(from, to);
        debug_assert!(removed, "edges and edge_set hold the same edges");
        if self.is_connected(from) {
            let followers = &mut self.connected_followers[to as usize];
            if let Some(at) = followers.iter().position(|&f| f == from) {
                followers.swap_remove(at);
            }
        }
        Some((from, to))
    }

    /// Whether `from` follows `to` (for tests: the generator never asks).
    #[cfg(test)]
    pub(crate) fn follows(&self, from: u32, to: u32) -> bool {
        self.edge_set.contains(from, to)
    }

    /// The number of follow edges.
    pub(crate) fn edges(&self) -> usize {
        self.edges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn clients_of_followers(graph: &Graph, user: u32) -> Vec<u32> {
        let mut clients = Vec::new();
        graph.for_each_follower_client(user, |c| clients.push(c));
        clients.sort_unstable();
        clients
    }

    #[test]
    fn status_audience_is_the_connections_of_connected_followers() {
        // Users 1..=5; clients 0 and 2 are user 2, client 1 is user 4.
        let mut graph = Graph::new(5, &[2, 4, 2]);
        assert!(graph.follow(2, 1));
        assert!(graph.follow(3, 1));
        assert!(graph.follow(4, 1));
        assert!(!graph.follow(4, 1), "a repeated follow adds nothing");
        assert_eq!(clients_of_followers(&graph, 1), vec![0, 1, 2]);
        assert_eq!(graph.edges(), 3);
        let mut clients = Vec::new();
        graph.for_each_client(2, |c| clients.push(c));
        assert_eq!(clients, vec![0, 2]);
    }

    #[test]
    fn matches_a_naive_model_under_random_operations() {
        for max_bits in [EDGE_BITMAP_MAX_BITS, 0] {
            matches_a_naive_model(max_bits);
        }
    }

    #[test]
    fn the_edges_are_a_bitmap_for_few_users_only() {
        let bits = |users| EdgeSet::new(users, EDGE_BITMAP_MAX_BITS);
        assert!(matches!(bits(4095), EdgeSet::Bits { .. }));
        assert!(matches!(bits(4096), EdgeSet::Hashed(_)));
        assert!(matches!(bits(u32::MAX), EdgeSet::Hashed(_)));
        assert!(matches!(
            Graph::new(10, &[1]).edge_set,
            EdgeSet::Bits { .. }
        ));
        let mut edges = EdgeSet::new(4095, EDGE_BITMAP_MAX_BITS);
        for (from, to) in [(1, 1), (1, 4095), (4095, 1), (4095, 4095), (2, 3)] {
            assert!(!edges.contains(from, to));
            assert!(edges.insert(from, to));
            assert!(!edges.insert(from, to));
            assert!(edges.contains(from, to));
        }
        assert!(edges.remove(4095, 4095));
        assert!(!edges.remove(4095, 4095));
        assert!(!edges.contains(4095, 4095) && edges.contains(4095, 1));
    }

    /// Random follows and unfollows, the edges kept as a bitmap up to
    /// `max_bits`, against a plain set.
    fn matches_a_naive_model(max_bits: u64) {
        let client_users = [1, 3, 3, 7, 9];
        let mut graph = Graph::with_edge_bits(10, &client_users, max_bits);
        let mut naive: BTreeSet<(u32, u32)> = BTreeSet::new();
        let mut rng = Rng::new(42);
        for _ in 0..5_000 {
            if rng.below(2) == 0 {
                let (from, to) = (1 + rng.below(10) as u32, 1 + rng.below(10) as u32);
                assert_eq!(graph.follow(from, to), naive.insert((from, to)));
            } else if let Some(edge) = graph.unfollow_any(&mut rng) {
                assert!(naive.remove(&edge));
            } else {
                assert!(naive.is_empty());
            }
            assert_eq!(graph.edges(), naive.len());
        }
        for user in 1..=10 {
            let mut expected: Vec<u32> = naive
                .iter()
                .filter(|&&(_, to)| to == user)
                .flat_map(|&(from, _)| {
                    client_users
                        .iter()
                        .enumerate()
                        .filter(move |&(_, &u)| u == from)
                        .map(|(c, _)| c as u32)
                })
                .collect();
            expected.sort_unstable();
            assert_eq!(clients_of_followers(&graph, user), expected, "user {user}");
            for from in 1..=10 {
                assert_eq!(graph.follows(from, user), naive.contains(&(from, user)));
            }
        }
    }
}
