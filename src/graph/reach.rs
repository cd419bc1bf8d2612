//! Each user's online followers: for every user, the connection keys of
//! the connected clients that follow it, which is exactly the audience of
//! its status updates.
//!
//! Status updates are over half the classic stream, and most of an author's
//! followers are usually offline. The follower graph alone would make each
//! update walk every follower and ask [`crate::graph::online::Online`] about each;
//! this index is kept up to date as edges change and clients come and go,
//! so an update costs one lookup however many followers are offline.
//!
//! Invariant: for every user `u`, `of(u)` holds exactly the keys of the
//! connections whose user follows `u`, each once. The owner keeps it true
//! by calling [`Reach::edge_added`] / [`Reach::edge_removed`] with the
//! follower's connection keys when an edge changes, and [`Reach::connected`]
//! / [`Reach::disconnected`] with everyone the user follows when a
//! connection comes or goes. A user whose list would be empty has no entry,
//! so the map's size tracks users with an online follower, not users ever
//! seen.

use hashbrown::HashMap;

use followermaze_protocol::UserId;

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    /// `lists[u]`: the connection keys of `u`'s online followers, in no
    /// particular order; never empty.
    lists: HashMap<UserId, Vec<usize>>,
}

impl Reach {
    /// The connections that must receive `author`'s status updates (empty
    /// when none of its followers is online).
    #[inline]
    pub(crate) fn of(&self, author: UserId) -> &[usize] {
        self.lists.get(&author).map_or(&[], Vec::as_slice)
    }

    /// The follower whose connections are `keys` now follows `followed`.
    /// The edge must be new (the router says so), or keys would repeat.
    pub(crate) fn edge_added(&mut self, followed: UserId, keys: &[usize]) {
        if !keys.is_empty() {
            self.lists
                .entry(followed)
                .or_default()
                .extend_from_slice(keys);
        }
    }

    /// The follower whose connections are `keys` no longer follows
    /// `followed`.
    pub(crate) fn edge_removed(&mut self, followed: UserId, keys: &[usize]) {
        self.drop_keys(followed, keys);
    }

    /// Connection `key` came online for a user who follows each of
    /// `following`.
    pub(crate) fn connected(&mut self, key: usize, following: impl Iterator<Item = UserId>) {
        for followed in following {
            self.lists.entry(followed).or_default().push(key);
        }
    }

    /// Connection `key` went away from a user who follows each of
    /// `following`.
    pub(crate) fn disconnected(&mut self, key: usize, following: impl Iterator<Item = UserId>) {
        for followed in following {
            self.drop_keys(followed, &[key]);
        }
    }

    /// Forgets everything (the follower graph was cleared: a new stream).
    pub(crate) fn clear(&mut self) {
        self.lists.clear();
    }

    /// Removes `keys` from `lists[user]`, dropping the entry when it
    /// empties.
    fn drop_keys(&mut self, user: UserId, keys: &[usize]) {
        if let Some(list) = self.lists.get_mut(&user) {
            list.retain(|key| !keys.contains(key));
            if list.is_empty() {
                self.lists.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(keys: &[usize]) -> Vec<usize> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn edges_add_and_remove_a_followers_connections() {
        let mut reach = Reach::default();
        assert!(reach.of(1).is_empty());
        // User 7 (connections 3 and 4) follows 1; user 8 (connection 5) too.
        reach.edge_added(1, &[3, 4]);
        reach.edge_added(1, &[5]);
        assert_eq!(sorted(reach.of(1)), vec![3, 4, 5]);
        reach.edge_removed(1, &[3, 4]);
        assert_eq!(reach.of(1), &[5]);
        reach.edge_removed(1, &[5]);
        assert!(reach.of(1).is_empty());
        assert!(reach.lists.is_empty(), "no empty entries");
    }

    #[test]
    fn an_offline_follower_adds_nothing() {
        let mut reach = Reach::default();
        reach.edge_added(1, &[]);
        reach.edge_removed(2, &[]);
        reach.edge_removed(3, &[9]);
        assert!(reach.lists.is_empty());
    }

    #[test]
    fn connections_come_and_go_under_everyone_their_user_follows() {
        let mut reach = Reach::default();
        reach.connected(3, [1, 2].into_iter());
        reach.connected(4, [1].into_iter());
        assert_eq!(sorted(reach.of(1)), vec![3, 4]);
        assert_eq!(reach.of(2), &[3]);
        reach.disconnected(3, [1, 2].into_iter());
        assert_eq!(reach.of(1), &[4]);
        assert!(reach.of(2).is_empty());
        assert_eq!(reach.lists.len(), 1, "no empty entries");
    }

    #[test]
    fn clear_forgets_every_list() {
        let mut reach = Reach::default();
        reach.connected(3, [1, 2].into_iter());
        reach.clear();
        assert!(reach.of(1).is_empty() && reach.of(2).is_empty());
    }
}
