//! When and how a resumable client drops its own connection, how long it
//! stays away, and how it backs off when reconnecting fails: pure draws from
//! [`Rng`], no clock.
//!
//! Each client has its own [`DropSchedule`], decided by `randomSeed` and the
//! client's index alone, so the same seed gives every client the same
//! sequence of drops (delays and kinds) on every run. Three independent
//! streams feed it, so that drawing for one purpose never shifts another: a
//! reconnect that needs retries (timing-dependent) does not change which
//! drops come next.
//!
//! - Drops: the time from a connection's start to its drop is exponential
//!   with mean `killswitchMs` (so drops are memoryless: "on average every N
//!   ms"), capped at [`MAX_DELAY_MEANS`] means; the kind is one of
//!   [`DropKind`], uniformly.
//! - Offline: a wait drawn uniformly from `0..=offlineMs`.
//! - Backoff: after the n-th failed reconnect, [`BACKOFF_FIRST`] doubled n-1
//!   times, capped at [`BACKOFF_MAX`], times a jitter factor in [0.5, 1).

use std::time::Duration;

use super::rng::Rng;

/// Sub-streams of the seed for each client's drops; the client's index is
/// added (the generator's own streams are small numbers, far below these).
const DROPS_STREAM: u64 = 1 << 32;
/// See [`DROPS_STREAM`].
const OFFLINE_STREAM: u64 = 2 << 32;
/// See [`DROPS_STREAM`].
const BACKOFF_STREAM: u64 = 3 << 32;

/// A drop comes at most this many means after its connection began.
pub(crate) const MAX_DELAY_MEANS: f64 = 20.0;

/// The wait after the first failed reconnect.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(1);

/// The longest wait between two reconnect attempts.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How a client drops its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropKind {
    /// A clean close (FIN), between two reads.
    Close,
    /// A reset: `SO_LINGER` 0, then close, so the server sees an RST.
    Reset,
    /// A close after reading the first byte of a line, so the line is cut
    /// and must be resent whole.
    MidLine,
}

impl DropKind {
    /// Every kind, in the order of [`DropKind::index`].
    pub const ALL: [DropKind; 3] = [DropKind::Close, DropKind::Reset, DropKind::MidLine];

    /// Its position in [`DropKind::ALL`], for per-kind counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A plural noun for reports.
    pub(crate) fn plural(self) -> &'static str {
        match self {
            DropKind::Close => "clean closes",
            DropKind::Reset => "resets",
            DropKind::MidLine => "mid-line closes",
        }
    }
}

/// One client's drops; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct DropSchedule {
    /// Delays and kinds of drops.
    drops: Rng,
    /// Offline waits.
    offline: Rng,
    /// Backoff jitter.
    backoff: Rng,
    /// Mean time from a connection's start to its drop; zero: never.
    mean: Duration,
    /// Longest offline wait.
    offline_max: Duration,
}

impl DropSchedule {
    /// The schedule of client `client` for `seed`, dropping on average
    /// every `mean` (never if zero) and staying away up to `offline_max`.
    pub(crate) fn new(
        seed: u64,
        client: usize,
        mean: Duration,
        offline_max: Duration,
    ) -> DropSchedule {
        let client = client as u64;
        DropSchedule {
            drops: Rng::for_stream(seed, DROPS_STREAM + client),
            offline: Rng::for_stream(seed, OFFLINE_STREAM + client),
            backoff: Rng::for_stream(seed, BACKOFF_STREAM + client),
            mean,
            offline_max,
        }
    }

    /// The next drop: how long after its connection began, and how. `None`
    /// when the client never drops on its own.
    pub(crate) fn next_drop(&mut self) -> Option<(Duration, DropKind)> {
        if self.mean.is_zero() {
            return None;
        }
        // 53 random bits as a float in [0, 1); 1 - u is in (0, 1], whose
        // logarithm is finite.
        let unit = (self.drops.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let means = (-(1.0 - unit).ln()).min(MAX_DELAY_MEANS);
        let delay = self.mean.mul_f64(means);
        let kind = DropKind::ALL[self.drops.below(DropKind::ALL.len() as u64) as usize];
        Some((delay, kind))
    }

    /// How long to stay away after a drop.
    pub(crate) fn offline(&mut self) -> Duration {
        let max_us = self.offline_max.as_micros() as u64;
        Duration::from_micros(self.offline.below(max_us + 1))
    }

    /// How long to wait after the `failures`-th failed reconnect in a row
    /// (1 for the first).
    pub(crate) fn backoff(&mut self, failures: u32) -> Duration {
        let doubled = BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(20));
        let base = doubled.min(BACKOFF_MAX);
        let jitter = 0.5 + 0.5 * (self.backoff.below(1 << 20) as f64 / (1 << 20) as f64);
        base.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(schedule: &mut DropSchedule, n: usize) -> Vec<(Duration, DropKind)> {
        (0..n).map(|_| schedule.next_drop().unwrap()).collect()
    }

    #[test]
    fn the_same_seed_and_client_give_the_same_drops() {
        let mean = Duration::from_millis(200);
        let a = first(&mut DropSchedule::new(666, 3, mean, Duration::ZERO), 100);
        let b = first(&mut DropSchedule::new(666, 3, mean, Duration::ZERO), 100);
        assert_eq!(a, b);
        let other_client = first(&mut DropSchedule::new(666, 4, mean, Duration::ZERO), 100);
        let other_seed = first(&mut DropSchedule::new(667, 3, mean, Duration::ZERO), 100);
        assert_ne!(a, other_client);
        assert_ne!(a, other_seed);
    }

    #[test]
    fn offline_waits_and_backoff_do_not_shift_the_drops() {
        let mean = Duration::from_millis(50);
        let offline = Duration::from_millis(10);
        let mut plain = DropSchedule::new(9, 0, mean, offline);
        let mut busy = DropSchedule::new(9, 0, mean, offline);
        for _ in 0..50 {
            let drop = plain.next_drop();
            for failures in 1..5 {
                busy.backoff(failures);
            }
            busy.offline();
            assert_eq!(drop, busy.next_drop());
        }
    }

    #[test]
    fn drops_average_the_mean_and_use_every_kind() {
        let mean = Duration::from_millis(200);
        let mut schedule = DropSchedule::new(1, 0, mean, Duration::ZERO);
        let drops = first(&mut schedule, 20_000);
        let total: Duration = drops.iter().map(|(delay, _)| *delay).sum();
        let average = total / drops.len() as u32;
        assert!(
            average > Duration::from_millis(190) && average < Duration::from_millis(210),
            "{average:?}"
        );
        assert!(drops
            .iter()
            .all(|(delay, _)| *delay <= mean.mul_f64(MAX_DELAY_MEANS)));
        for kind in DropKind::ALL {
            let share = drops.iter().filter(|(_, k)| *k == kind).count();
            assert!(share > 6_000 && share < 7_400, "{kind:?}: {share}");
        }
    }

    #[test]
    fn no_killswitch_means_no_drops() {
        let mut schedule = DropSchedule::new(1, 0, Duration::ZERO, Duration::from_millis(5));
        assert_eq!(schedule.next_drop(), None);
    }

    #[test]
    fn offline_waits_stay_in_range() {
        let max = Duration::from_millis(30);
        let mut schedule = DropSchedule::new(5, 2, Duration::ZERO, max);
        let waits: Vec<Duration> = (0..2_000).map(|_| schedule.offline()).collect();
        assert!(waits.iter().all(|wait| *wait <= max));
        assert!(waits.iter().any(|wait| *wait < Duration::from_millis(3)));
        assert!(waits.iter().any(|wait| *wait > Duration::from_millis(27)));
        let mut none = DropSchedule::new(5, 2, Duration::ZERO, Duration::ZERO);
        assert_eq!(none.offline(), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut schedule = DropSchedule::new(5, 2, Duration::ZERO, Duration::ZERO);
        for failures in 1..40 {
            let wait = schedule.backoff(failures);
            let base = BACKOFF_FIRST
                .saturating_mul(1 << (failures - 1).min(20))
                .min(BACKOFF_MAX);
            assert!(wait >= base / 2 && wait < base, "{failures}: {wait:?}");
        }
    }
}
