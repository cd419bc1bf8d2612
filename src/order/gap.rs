//! When to give up on a missing event: the gap-skip deadline.
//!
//! The protocol has no acknowledgement and no retransmission, so a lost event
//! would stall every client forever. When the next expected sequence is
//! missing while later ones wait behind it, the gap is skipped at
//!
//! ```text
//! deadline   = max(since + floor, min(by_rate, by_silence))
//! by_rate    = since + clamp(4 × missing / rate, floor, ceiling)
//! by_silence = last_read + 4 × read_interval
//! ```
//!
//! `since` is when the gap opened; `missing` counts the sequences between the
//! next expected one and the highest seen that have not arrived; `floor` and
//! `ceiling` are `gapTimeoutMinMs` and `gapTimeoutMaxMs`; `rate` (events per
//! second) and `read_interval` (seconds between reads) are estimated from
//! the arrival times of recent reads (below), and `last_read` is when the
//! latest one arrived. Case by case:
//!
//! - **Steady stream.** Reads keep coming about `read_interval` apart, so
//!   `by_silence` keeps moving ahead of `by_rate`, and the wait is
//!   `clamp(4 × missing / rate, floor, ceiling)`: at a paced rate a shuffled
//!   batch takes `missing / rate` to fill its holes, and we allow four times
//!   that. At a fast rate that is the floor.
//! - **Fast burst, then silence.** 20,000 events in 6 ms is a rate of
//!   millions per second, with reads well under a millisecond apart: both
//!   terms fall before `since + floor`, so the wait is the floor.
//! - **Silence.** A source that has sent nothing for four of its read
//!   intervals has stopped; nothing from it is on its way to fill the gap,
//!   however slow its rate made `by_rate`. The wait ends at
//!   `max(since + floor, last_read + 4 × read_interval)`, shrinking to the
//!   floor for a source whose reads came close together.
//! - **No source connected.** The ceiling, `since + ceiling`, decided by the
//!   sequencer: a dropped source may reconnect and resend. A source
//!   connecting then starts the wait afresh, from its connection, though
//!   never past `since + ceiling`.
//! - **Nothing measured yet.** The ceiling.
//!
//! The estimate: read `i` brings `n_i` events at `t_i`, `Δ_i` after the
//! previous read (or after the clock restarted, when a source connected to
//! a server with none). With weights `w_i = exp(-(now - t_i) / 1 s)`:
//!
//! ```text
//! rate          = Σ w_i n_i / Σ w_i min(Δ_i, ceiling)
//! read_interval = Σ w_i min(Δ_i, ceiling) / Σ w_i
//! ```
//!
//! Numerator and denominator weigh the same reads alike, so the ratio is
//! exact for any periodic stream, however slow or fast, and a burst's reads
//! microseconds apart give the burst's rate, not an unknown one. Intervals
//! are capped at the ceiling: no gap waits longer, so a longer pause tells
//! nothing more, and an hour's idleness before a burst must not make the
//! burst look slow. Reads that all came at one instant have no measured time:
//! an unbounded rate, so the floor. The estimate decays while nothing
//! arrives ([`GapPolicy::events_per_sec`] counts the silence so far as an
//! interval with no events), but the deadline never needs re-evaluating
//! during a silence: `by_silence` is already a fixed instant.
//!
//! Pure arithmetic over [`Instant`]s the caller passes in: no clock reads, no
//! timers, no allocation; one `exp` per read batch. Tests drive it with
//! made-up times.

use std::time::{Duration, Instant};

/// How many times the expected fill time (and the usual gap between reads)
/// we wait before calling an event lost. Generous, because skipping is
/// irreversible and waiting is not.
const SAFETY_FACTOR: f64 = 4.0;

/// Time constant of the exponential weights, in seconds: a read this long
/// ago counts `1/e` as much as one now.
const RATE_TIME_CONSTANT_SECS: f64 = 1.0;

/// Decides how long a gap may last; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct GapPolicy {
    /// Never skip sooner than this after a gap opens: shuffled holes need a
    /// moment to fill even at the fastest rate.
    floor: Duration,
    /// Always skip once a gap is this old: a bound on how long one lost
    /// event may stall every client.
    ceiling: Duration,
    /// Decayed sum of the events read: the numerator of the rate.
    events: f64,
    /// Decayed count of reads: the denominator of the read interval.
    reads: f64,
    /// Decayed sum, in seconds, of the time before each read (each capped
    /// at the ceiling): the denominator of the rate and the numerator of the
    /// read interval.
    interval_secs: f64,
    /// When the latest read arrived or the clock restarted, whichever is
    /// later; `None` before either. The next interval starts here, and so
    /// does a silence.
    last: Option<Instant>,
}

impl GapPolicy {
    /// A policy whose deadlines lie between `floor` and `ceiling` after a
    /// gap opens.
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> Self {
        GapPolicy {
            floor,
            ceiling: ceiling.max(floor),
            events: 0.0,
            reads: 0.0,
            interval_secs: 0.0,
            last: None,
        }
    }

    /// Starts the next interval at `now` without counting the time since
    /// the last read: called when a source connects while none was, since
    /// no stream flowed in between.
    pub(crate) fn restart_clock(&mut self, now: Instant) {
        self.decay_to(now);
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
    }

    /// Records that a read of `events` events arrived at `now`.
    pub(crate) fn observe(&mut self, events: usize, now: Instant) {
        let elapsed_secs = self.decay_to(now);
        self.events += events as f64;
        self.reads += 1.0;
        self.interval_secs += elapsed_secs.min(self.ceiling.as_secs_f64());
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
    }

    /// The longest a gap may stay open.
    pub(crate) fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The estimated arrival rate at `now`, events per second: the silence
    /// since the last read counts as an interval with no events, so the
    /// rate decays toward 0 while nothing arrives. 0 before any event;
    /// infinite if every read so far came at one instant.
    pub(crate) fn events_per_sec(&self, now: Instant) -> f64 {
        let silence_secs = self.silence_secs(now);
        let weight = decay(silence_secs);
        let time_secs = self.interval_secs * weight + silence_secs.min(self.ceiling.as_secs_f64());
        let events = self.events * weight;
        if time_secs > 0.0 {
            events / time_secs
        } else if events > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// How long nothing has arrived, as of `now`.
    pub(crate) fn quiet_for(&self, now: Instant) -> Duration {
        self.last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last))
    }

    /// When a gap that opened at `since`, with `missing` absent sequences,
    /// is to be skipped while a source is connected (see the module doc).
    pub(crate) fn deadline(&self, since: Instant, missing: u64) -> Instant {
        let Some(last) = self.last else {
            return since + self.ceiling;
        };
        if self.events <= 0.0 || self.reads <= 0.0 {
            return since + self.ceiling;
        }
        // 4 × missing / rate, written so that a rate measured over no time
        // at all (an unbounded one) gives 0 rather than a division by 0.
        let fill_secs = SAFETY_FACTOR * missing as f64 * self.interval_secs / self.events;
        let by_rate = since + capped(fill_secs, self.ceiling).max(self.floor);
        let quiet_secs = SAFETY_FACTOR * self.interval_secs / self.reads;
        let by_silence = last + capped(quiet_secs, self.ceiling);
        by_rate.min(by_silence).max(since + self.floor)
    }

    /// Seconds from the last read to `now` (0 before any, or if `now` is
    /// earlier: reads from two sources may be stamped out of order).
    fn silence_secs(&self, now: Instant) -> f64 {
        self.quiet_for(now).as_secs_f64()
    }

    /// Ages the sums to `now`; returns the seconds since the last read.
    fn decay_to(&mut self, now: Instant) -> f64 {
        let elapsed_secs = self.silence_secs(now);
        let weight = decay(elapsed_secs);
        self.events *= weight;
        self.reads *= weight;
        self.interval_secs *= weight;
        elapsed_secs
    }
}

/// The weight of something `elapsed_secs` old.
fn decay(elapsed_secs: f64) -> f64 {
    (-elapsed_secs / RATE_TIME_CONSTANT_SECS).exp()
}

/// `secs` as a duration of at most `cap` (no panic on huge values).
fn capped(secs: f64, cap: Duration) -> Duration {
    if secs.is_finite() && secs < cap.as_secs_f64() {
        Duration::from_secs_f64(secs.max(0.0))
    } else {
        cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults, `gapTimeoutMinMs` and `gapTimeoutMaxMs`.
    const FLOOR: Duration = Duration::from_millis(500);
    const CEILING: Duration = Duration::from_secs(10);

    /// A synthetic timeline: reads as (offset from the start, events).
    struct Timeline {
        /// Time zero.
        start: Instant,
        /// Reads in order.
        reads: Vec<(Duration, usize)>,
    }

    impl Timeline {
        fn new() -> Timeline {
            Timeline {
                start: Instant::now(),
                reads: Vec::new(),
            }
        }

        /// Where the timeline ends so far.
        fn end(&self) -> Duration {
            self.reads.last().map_or(Duration::ZERO, |&(at, _)| at)
        }

        /// `events` spread evenly over `reads` reads, the last `over` after
        /// the end so far (the first `over / reads` after it).
        fn burst(mut self, events: usize, reads: usize, over: Duration) -> Timeline {
            let from = self.end();
            for read in 1..=reads {
                let at = from + over * read as u32 / reads as u32;
                self.reads.push((at, events / reads));
            }
            self
        }

        /// `per_read` events every `every`, for `over`.
        fn steady(mut self, per_read: usize, every: Duration, over: Duration) -> Timeline {
            let from = self.end();
            let mut at = from + every;
            while at <= from + over {
                self.reads.push((at, per_read));
                at += every;
            }
            self
        }

        /// Nothing for `over`, then one read of `events`.
        fn after(mut self, over: Duration, events: usize) -> Timeline {
            let at = self.end() + over;
            self.reads.push((at, events));
            self
        }

        /// Replays the timeline from a clock restarted at time zero (a
        /// source connecting). A gap of `missing` sequences opens with the
        /// read at `opens_at` and nothing fills it. Returns when it is
        /// skipped, after it opened: the first deadline, as recomputed after
        /// each read, that comes before the next read.
        fn skip_after(&self, opens_at: Duration, missing: u64) -> Duration {
            let mut policy = GapPolicy::new(FLOOR, CEILING);
            policy.restart_clock(self.start);
            let since = self.start + opens_at;
            let mut deadline = None;
            for &(at, events) in &self.reads {
                let now = self.start + at;
                if let Some(due) = deadline {
                    if due < now {
                        break;
                    }
                }
                policy.observe(events, now);
                if now >= since {
                    deadline = Some(policy.deadline(since, missing));
                }
            }
            deadline.expect("the gap opened") - since
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// Asserts `got` is within a millisecond of `want`.
    fn assert_near(got: Duration, want: Duration) {
        let error = got.abs_diff(want);
        assert!(error < ms(1), "got {got:?}, want {want:?}");
    }

    #[test]
    fn nothing_measured_means_the_ceiling() {
        let policy = GapPolicy::new(FLOOR, CEILING);
        let since = Instant::now();
        assert_eq!(policy.deadline(since, 5), since + CEILING);
        assert_eq!(policy.events_per_sec(since), 0.0);
    }

    #[test]
    fn a_burst_then_silence_waits_the_floor() {
        // 20,000 events in 6 ms over ten reads; the hole shows in the
        // third; then the source stays open and sends nothing.
        let timeline = Timeline::new().burst(20_000, 10, ms(6));
        let opens_at = timeline.reads[2].0;
        assert_eq!(timeline.skip_after(opens_at, 1), FLOOR);
        // However many holes: a silent source fills none of them.
        assert_eq!(timeline.skip_after(opens_at, 10_000), FLOOR);
    }

    #[test]
    fn a_burst_is_a_very_high_rate() {
        let timeline = Timeline::new().burst(20_000, 10, ms(6));
        let mut policy = GapPolicy::new(FLOOR, CEILING);
        policy.restart_clock(timeline.start);
        for &(at, events) in &timeline.reads {
            policy.observe(events, timeline.start + at);
        }
        let rate = policy.events_per_sec(timeline.start + timeline.end());
        assert!((rate - 20_000.0 / 0.006).abs() < 1_000.0, "{rate}");
    }

    #[test]
    fn a_burst_in_one_read_waits_the_floor() {
        let mut policy = GapPolicy::new(FLOOR, CEILING);
        let now = Instant::now();
        policy.observe(20_000, now);
        assert_eq!(policy.deadline(now, 1), now + FLOOR);
    }

    #[test]
    fn a_long_idle_before_a_burst_does_not_make_it_slow() {
        let timeline = Timeline::new()
            .steady(10, ms(10), secs(2))
            .after(secs(3_600), 2_000)
            .burst(18_000, 9, ms(6));
        let opens_at = timeline.end() - ms(3);
        assert_eq!(timeline.skip_after(opens_at, 1), FLOOR);
    }

    #[test]
    fn a_steady_stream_waits_four_times_the_fill_time() {
        // 100 events/s, one every 10 ms, before the gap and after it.
        let timeline = Timeline::new().steady(1, ms(10), secs(30));
        let opens_at = secs(2);
        // 4 × 50 / 100 = 2 s.
        assert_near(timeline.skip_after(opens_at, 50), secs(2));
        // 4 × 200 / 100 = 8 s.
        assert_near(timeline.skip_after(opens_at, 200), secs(8));
        // 4 × 1 / 100 = 40 ms: the floor. 4 × 1,000 / 100 = 40 s: the
        // ceiling.
        assert_eq!(timeline.skip_after(opens_at, 1), FLOOR);
        assert_eq!(timeline.skip_after(opens_at, 1_000), CEILING);
    }

    #[test]
    fn a_fast_stream_waits_the_floor() {
        // A million events/s in reads of 10,000 every 10 ms.
        let timeline = Timeline::new().steady(10_000, ms(10), secs(3));
        assert_eq!(timeline.skip_after(secs(1), 10_000), FLOOR);
    }

    #[test]
    fn a_slow_trickle_keeps_its_gap_open_while_it_trickles() {
        // One event every 2 s: 0.5 events/s. 4 × 1 / 0.5 = 8 s, and reads
        // 2 s apart never look like silence (that takes 8 s).
        let timeline = Timeline::new().steady(1, secs(2), secs(60));
        assert_near(timeline.skip_after(secs(10), 1), secs(8));
        // 4 × 3 / 0.5 = 24 s: the ceiling.
        assert_eq!(timeline.skip_after(secs(10), 3), CEILING);
    }

    #[test]
    fn a_stream_that_falls_silent_is_given_up_after_four_read_intervals() {
        // 5 events/s, one every 200 ms; the gap opens with the last read.
        // By rate the wait would be 4 × 10 / 5 = 8 s; the source sends
        // nothing more, so it ends 4 × 200 ms after that read.
        let timeline = Timeline::new().steady(1, ms(200), secs(5));
        assert_near(timeline.skip_after(timeline.end(), 10), ms(800));
        // Closer reads: the wait shrinks to the floor, never below.
        let timeline = Timeline::new().steady(1, ms(50), secs(5));
        assert_eq!(timeline.skip_after(timeline.end(), 10), FLOOR);
    }

    #[test]
    fn the_rate_decays_while_nothing_arrives() {
        let mut policy = GapPolicy::new(FLOOR, CEILING);
        let start = Instant::now();
        policy.restart_clock(start);
        for tick in 1..=100u32 {
            policy.observe(10, start + ms(10) * tick);
        }
        let end = start + secs(1);
        assert!((policy.events_per_sec(end) - 1_000.0).abs() < 1.0);
        let mut previous = policy.events_per_sec(end);
        for later in [ms(100), secs(1), secs(5), secs(30)] {
            let rate = policy.events_per_sec(end + later);
            assert!(rate < previous, "{rate} after {later:?}");
            previous = rate;
        }
        assert!(previous < 1e-6, "{previous}");
        // The deadline is a fixed instant: silence does not move it.
        assert_eq!(policy.deadline(end, 1), end + FLOOR);
    }

    #[test]
    fn reads_stamped_out_of_order_are_harmless() {
        let mut policy = GapPolicy::new(FLOOR, CEILING);
        let start = Instant::now();
        policy.restart_clock(start);
        policy.observe(10, start + ms(20));
        policy.observe(10, start + ms(10));
        assert!((policy.events_per_sec(start + ms(20)) - 1_000.0).abs() < 1.0);
        assert_eq!(policy.quiet_for(start + ms(30)), ms(10));
    }
}
