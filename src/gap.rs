//! When to give up on a missing event: the gap-skip deadline.
//!
//! The protocol has no acknowledgement and no retransmission, so a lost event
//! would stall every client forever. When the next expected sequence is
//! missing while later ones wait behind it, we wait for it at most
//!
//! ```text
//! clamp(SAFETY_FACTOR * missing / arrival_rate, floor, ceiling)
//! ```
//!
//! where `missing` counts the sequences between the next expected one and the
//! highest seen that have not arrived, and `arrival_rate` is a smoothed count
//! of events per second. At a fast rate a shuffled batch fills its holes in
//! microseconds, so the floor applies; at a slow, paced rate the same holes
//! take longer to fill and the deadline stretches with them, up to the
//! ceiling. No rate measured yet means the ceiling; so does no source
//! connected (the sequencer's rule: a dropped source may come back and
//! resend).
//!
//! Pure arithmetic over [`Instant`]s the caller passes in: no clock reads, no
//! timers, so tests drive it with made-up times.

use std::time::{Duration, Instant};

/// How many times the expected fill time we wait before calling an event
/// lost. Generous, because skipping is irreversible and waiting is not.
const SAFETY_FACTOR: f64 = 4.0;

/// The arrival rate is measured over buckets at least this long.
const RATE_BUCKET: Duration = Duration::from_millis(100);

/// Weight of the newest bucket in the smoothed rate.
const RATE_SMOOTHING: f64 = 0.3;

/// Decides how long a gap may last; see the module doc.
#[derive(Debug, Clone)]
pub struct GapPolicy {
    /// Never skip sooner than this after a gap opens.
    floor: Duration,
    /// Always skip once a gap is this old.
    ceiling: Duration,
    /// Smoothed arrival rate, events per second; 0 until the first bucket
    /// closes.
    events_per_sec: f64,
    /// Start of the bucket being counted.
    bucket_start: Option<Instant>,
    /// Events counted in that bucket so far.
    bucket_events: u64,
}

impl GapPolicy {
    /// A policy whose deadlines lie between `floor` and `ceiling`.
    pub fn new(floor: Duration, ceiling: Duration) -> Self {
        GapPolicy {
            floor,
            ceiling: ceiling.max(floor),
            events_per_sec: 0.0,
            bucket_start: None,
            bucket_events: 0,
        }
    }

    /// Records that `events` events arrived at `now`.
    pub fn observe(&mut self, events: usize, now: Instant) {
        let start = *self.bucket_start.get_or_insert(now);
        self.bucket_events += events as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_BUCKET {
            let rate = self.bucket_events as f64 / elapsed.as_secs_f64();
            self.events_per_sec = if self.events_per_sec == 0.0 {
                rate
            } else {
                self.events_per_sec + RATE_SMOOTHING * (rate - self.events_per_sec)
            };
            self.bucket_start = Some(now);
            self.bucket_events = 0;
        }
    }

    /// The longest a gap may stay open.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The smoothed arrival rate in events per second (0 before one bucket).
    pub fn events_per_sec(&self) -> f64 {
        self.events_per_sec
    }

    /// How long a gap with `missing` absent sequences may stay open.
    pub fn patience(&self, missing: u64) -> Duration {
        if self.events_per_sec <= 0.0 {
            return self.ceiling;
        }
        let expected = SAFETY_FACTOR * missing as f64 / self.events_per_sec;
        if !expected.is_finite() || expected >= self.ceiling.as_secs_f64() {
            return self.ceiling;
        }
        Duration::from_secs_f64(expected).clamp(self.floor, self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(100);
    const CEILING: Duration = Duration::from_secs(10);

    /// A policy that has seen a steady `rate` events/s for a second.
    fn steady(rate: u64) -> GapPolicy {
        let mut policy = GapPolicy::new(FLOOR, CEILING);
        let start = Instant::now();
        for tick in 0..=100u64 {
            policy.observe(
                (rate / 100) as usize,
                start + Duration::from_millis(10 * tick),
            );
        }
        policy
    }

    #[test]
    fn no_rate_yet_means_the_ceiling() {
        assert_eq!(GapPolicy::new(FLOOR, CEILING).patience(5), CEILING);
    }

    #[test]
    fn a_fast_stream_waits_the_floor() {
        let policy = steady(1_000_000);
        assert!((policy.events_per_sec() - 1_000_000.0).abs() < 50_000.0);
        assert_eq!(policy.patience(100), FLOOR);
    }

    #[test]
    fn a_slow_stream_waits_in_proportion_to_what_is_missing() {
        let policy = steady(1_000);
        // 4 * 100 / 1000 = 0.4 s
        let patience = policy.patience(100);
        assert!(patience > Duration::from_millis(350) && patience < Duration::from_millis(450));
        assert!(policy.patience(200) > patience);
        assert_eq!(policy.patience(1_000_000), CEILING);
    }
}
