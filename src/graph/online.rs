//! Who is connected: each user's connection keys, plus a counting filter
//! that answers "certainly not connected" without a hash-map lookup.
//!
//! Private messages and follows name one user, who is usually offline (100
//! of 1,000 users online in the classic run). Each offline user would cost
//! a full hash-map miss; the filter turns most of those into one multiply,
//! one shift and one load. It counts, so users
//! can leave; it never says "offline" for an online user, and with many
//! users online it degrades to always asking the map, never to a wrong
//! answer.

use hashbrown::HashMap;

use followermaze_protocol::UserId;

/// Filter slots: 2^16 counters of 4 bytes, 256 KiB. With 100 users online
/// about 0.15% of offline lookups pass the filter and ask the map.
const FILTER_BITS: u32 = 16;

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Online {
    /// Slab keys of each connected user's connections (usually one).
    keys: HashMap<UserId, Vec<usize>>,
    /// `filter[slot(u)]` counts connections of users hashing to that slot.
    filter: Box<[u32]>,
}

impl Default for Online {
    fn default() -> Self {
        Online {
            keys: HashMap::new(),
            filter: vec![0; 1 << FILTER_BITS].into_boxed_slice(),
        }
    }
}

/// Fibonacci hashing: spreads consecutive ids over the filter.
#[inline]
fn slot(user: UserId) -> usize {
    (user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS)) as usize
}

impl Online {
    /// Records connection `key` of `user`.
    pub(crate) fn add(&mut self, user: UserId, key: usize) {
        self.keys.entry(user).or_default().push(key);
        self.filter[slot(user)] += 1;
    }

    /// Forgets connection `key` of `user`; returns whether it was there.
    pub(crate) fn remove(&mut self, user: UserId, key: usize) -> bool {
        let Some(keys) = self.keys.get_mut(&user) else {
            return false;
        };
        let before = keys.len();
        keys.retain(|&k| k != key);
        if keys.len() == before {
            return false;
        }
        if keys.is_empty() {
            self.keys.remove(&user);
        }
        self.filter[slot(user)] -= 1;
        true
    }

    /// The connection keys of `user`, if it is connected.
    #[inline]
    pub(crate) fn get(&self, user: UserId) -> Option<&[usize]> {
        if self.filter[slot(user)] == 0 {
            return None;
        }
        self.keys.get(&user).map(Vec::as_slice)
    }

    /// How many distinct users are connected.
    #[cfg(test)]
    pub(crate) fn users(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_connections_per_user() {
        let mut online = Online::default();
        online.add(7, 1);
        online.add(7, 2);
        online.add(9, 3);
        assert_eq!(online.get(7), Some(&[1, 2][..]));
        assert_eq!(online.users(), 2);
        assert!(online.remove(7, 1));
        assert!(!online.remove(7, 1));
        assert_eq!(online.get(7), Some(&[2][..]));
        assert!(online.remove(7, 2));
        assert_eq!(online.get(7), None);
        assert_eq!(online.users(), 1);
    }

    #[test]
    fn the_filter_never_hides_an_online_user() {
        let mut online = Online::default();
        for user in 0..100_000u64 {
            online.add(user * 7919, user as usize);
        }
        for user in 0..100_000u64 {
            assert_eq!(online.get(user * 7919), Some(&[user as usize][..]));
        }
        for user in 0..100_000u64 {
            assert!(online.remove(user * 7919, user as usize));
        }
        assert!(online.filter.iter().all(|&count| count == 0));
    }
}
