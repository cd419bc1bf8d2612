//! Source-to-client latency without per-event state.
//!
//! The source writes its stream in numbered chunks and stamps each chunk's
//! send time into a fixed ring ([`SendClock`]) just before writing it. Every
//! queued expectation carries its chunk number, so when a client reads a
//! notification, its latency is "now minus the send time of the chunk that
//! carried the event". Memory is the ring, whatever the stream's length.
//!
//! A ring slot packs the chunk number's low bits with the time, so a reader
//! whose chunk has been overwritten (it would have to be more than a ring's
//! worth of chunks behind, which the expectation queues' bound rules out)
//! sees a mismatch and skips the sample rather than record a wrong one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Chunk stamps kept; a power of two. 512 KiB of slots.
const SLOTS: usize = 1 << 16;

/// Low bits of a slot: microseconds since the clock started (12.7 days).
const TIME_BITS: u32 = 40;
/// Mask for [`TIME_BITS`].
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// A slot never written (no chunk tag can be all ones within a run of less
/// than 2^24 chunks with this value's time).
const EMPTY: u64 = u64::MAX;

/// Longest latency the histograms record, in microseconds; anything longer
/// is recorded as this (a run would have failed on its timeout long before).
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// See the module doc.
#[derive(Debug)]
pub(crate) struct SendClock {
    /// Time zero.
    start: Instant,
    /// `slots[chunk % SLOTS]`: tag (chunk's high bits) and send time.
    slots: Box<[AtomicU64]>,
}

impl Default for SendClock {
    fn default() -> Self {
        SendClock::new()
    }
}

impl SendClock {
    /// A clock starting now, with no chunk stamped.
    pub(crate) fn new() -> SendClock {
        SendClock {
            start: Instant::now(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(EMPTY)).collect(),
        }
    }

    /// Microseconds since the clock started.
    #[inline]
    pub(crate) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 & TIME_MASK
    }

    /// Records that `chunk` is being sent now.
    pub(crate) fn stamp(&self, chunk: u32) {
        let slot = &self.slots[chunk as usize % SLOTS];
        // Relaxed: a reader only ever looks at a chunk after reading bytes
        // that the kernel received after this store.
        slot.store(
            (u64::from(chunk) >> SLOTS.trailing_zeros() << TIME_BITS) | self.now_us(),
            Ordering::Relaxed,
        );
    }

    /// When `chunk` was sent (microseconds since start), if it has been and
    /// its slot still holds it.
    #[inline]
    pub(crate) fn sent_at(&self, chunk: u32) -> Option<u64> {
        let value = self.slots[chunk as usize % SLOTS].load(Ordering::Relaxed);
        let tag = u64::from(chunk) >> SLOTS.trailing_zeros();
        (value != EMPTY && value >> TIME_BITS == tag).then_some(value & TIME_MASK)
    }
}

/// A latency histogram in microseconds; one per client reader, merged at
/// the end.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    /// Two significant digits: about 1% error, 30 KiB per histogram.
    histogram: Histogram<u64>,
    /// A run of equal samples not yet in `histogram`: (value, count). The
    /// lines of one read that came in one chunk have the same latency, so
    /// a run is recorded once rather than once a line.
    run: (u64, u64),
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_US, 2)
                .expect("constant bounds are valid"),
            run: (0, 0),
        }
    }
}

impl Latencies {
    /// Records one latency.
    #[inline]
    pub(crate) fn record(&mut self, micros: u64) {
        let micros = micros.clamp(1, MAX_TRACKED_US);
        if micros == self.run.0 {
            self.run.1 += 1;
        } else {
            self.end_run();
            self.run = (micros, 1);
        }
    }

    /// Records the pending run into the histogram.
    fn end_run(&mut self) {
        let (micros, count) = std::mem::take(&mut self.run);
        if count > 0 {
            self.histogram.saturating_record_n(micros, count);
        }
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        self.end_run();
        // Same bounds on both sides, so this cannot fail; if it somehow did,
        // the report would just have fewer samples.
        let _ = self.histogram.add(&other.histogram);
        let (micros, count) = other.run;
        if count > 0 {
            self.histogram.saturating_record_n(micros, count);
        }
    }

    /// Percentiles, or `None` with no samples.
    pub(crate) fn summary(&self) -> Option<LatencySummary> {
        let mut all = self.clone();
        all.end_run();
        let h = &all.histogram;
        if h.is_empty() {
            return None;
        }
        let at = |quantile: f64| Duration::from_micros(h.value_at_quantile(quantile));
        Some(LatencySummary {
            samples: h.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(h.max()),
        })
    }
}

/// Latency percentiles from send to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Notifications measured.
    pub samples: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_equal_samples_count_as_every_sample() {
        // Runs of every length, cut by merges and summaries, against the
        // histogram fed one sample at a time.
        let mut rng = crate::rng::Rng::new(5);
        let (mut runs, mut merged) = (Latencies::default(), Latencies::default());
        let mut one_by_one = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_US, 2).unwrap();
        for i in 0..5_000 {
            let micros = [0, 1, 7, 7_000, MAX_TRACKED_US + 1][rng.below(5) as usize];
            for _ in 0..rng.below(4) {
                runs.record(micros);
                one_by_one.saturating_record(micros.clamp(1, MAX_TRACKED_US));
            }
            if i % 700 == 0 {
                merged.merge(&runs);
                runs = Latencies::default();
                assert_eq!(merged.summary().map(|s| s.samples), Some(one_by_one.len()));
            }
        }
        merged.merge(&runs);
        let mut all = merged.clone();
        all.end_run();
        assert_eq!(all.histogram, one_by_one);
        assert_eq!(merged.summary().map(|s| s.samples), Some(one_by_one.len()));
    }

    #[test]
    fn stamps_are_found_until_overwritten() {
        let clock = SendClock::new();
        assert_eq!(clock.sent_at(3), None);
        clock.stamp(3);
        let at = clock.sent_at(3).expect("just stamped");
        assert!(at <= clock.now_us());
        clock.stamp(3 + SLOTS as u32);
        assert_eq!(clock.sent_at(3), None, "a lapped chunk is not misread");
        assert!(clock.sent_at(3 + SLOTS as u32).is_some());
    }

    #[test]
    fn summary_of_samples() {
        let mut a = Latencies::default();
        assert!(a.summary().is_none());
        for us in 1..=1000 {
            a.record(us);
        }
        let mut b = Latencies::default();
        b.record(50_000);
        a.merge(&b);
        let summary = a.summary().unwrap();
        assert_eq!(summary.samples, 1001);
        assert!(
            summary.p50 >= Duration::from_micros(490) && summary.p50 <= Duration::from_micros(510)
        );
        assert!(summary.max >= Duration::from_millis(49));
    }
}
