//! Fault injection's outages (`faultOfflineMs`): after a connection is
//! reset by `faultResetEvery`, its user's reconnects are refused for a
//! while, as if the server were down for them, so a client's backoff is
//! exercised and its resume after the outage must still be exact. Pure:
//! the registry says when resets happen and asks before attaching.

use std::time::{Duration, Instant};

use followermaze_protocol::UserId;
use hashbrown::HashMap;

/// Above this many outages, starting one first forgets the ended ones, so
/// the map holds about as many entries as users reset within one outage's
/// length (a few thousand at most in any drill), never one per user ever
/// reset.
const FORGET_ABOVE: usize = 1024;

/// Each user's outage, while it lasts.
#[derive(Debug)]
pub(crate) struct Outages {
    /// How long an outage lasts; zero turns them off.
    length: Duration,
    /// When each user's outage ends.
    until: HashMap<UserId, Instant>,
}

impl Outages {
    /// Outages of `length` (zero: none).
    pub(crate) fn new(length: Duration) -> Outages {
        Outages {
            length,
            until: HashMap::new(),
        }
    }

    /// `user`'s connection was reset by fault injection at `now`: its
    /// outage starts.
    pub(crate) fn reset(&mut self, user: UserId, now: Instant) {
        if self.length.is_zero() {
            return;
        }
        if self.until.len() >= FORGET_ABOVE {
            self.until.retain(|_, until| *until > now);
        }
        self.until.insert(user, now + self.length);
    }

    /// Whether `user`'s reconnect at `now` is refused (its outage lasts).
    pub(crate) fn refuses(&mut self, user: UserId, now: Instant) -> bool {
        match self.until.get(&user) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.until.remove(&user);
                false
            }
            None => false,
        }
    }

    /// Outages remembered now (ended ones included until forgotten).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_refuses_that_user_until_the_outage_ends() {
        let mut outages = Outages::new(Duration::from_millis(300));
        let start = Instant::now();
        outages.reset(7, start);
        assert!(outages.refuses(7, start));
        assert!(outages.refuses(7, start + Duration::from_millis(299)));
        assert!(!outages.refuses(8, start), "only the reset user");
        assert!(!outages.refuses(7, start + Duration::from_millis(300)));
        assert_eq!(outages.len(), 0, "an ended outage is forgotten");
        // A new reset starts a new outage.
        outages.reset(7, start + Duration::from_secs(1));
        assert!(outages.refuses(7, start + Duration::from_secs(1)));
    }

    #[test]
    fn off_refuses_no_one_and_the_map_stays_bounded() {
        let mut off = Outages::new(Duration::ZERO);
        let now = Instant::now();
        off.reset(1, now);
        assert!(!off.refuses(1, now));
        let mut outages = Outages::new(Duration::from_millis(10));
        for user in 0..10 * FORGET_ABOVE as u64 {
            // Each outage has ended by the next reset but three.
            let at = now + Duration::from_millis(user * 5);
            outages.reset(user, at);
        }
        assert!(outages.len() <= FORGET_ABOVE + 1, "{}", outages.len());
    }
}
