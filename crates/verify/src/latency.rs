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
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_US, 2)
                .expect("constant bounds are valid"),
        }
    }
}

impl Latencies {
    /// Records one latency.
    #[inline]
    pub(crate) fn record(&mut self, micros: u64) {
        self.histogram
            .saturating_record(micros.clamp(1, MAX_TRACKED_US));
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so this cannot fail; if it somehow did,
        // the report would just have fewer samples.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Percentiles, or `None` with no samples.
    pub(crate) fn summary(&self) -> Option<LatencySummary> {
        let h = &self.histogram;
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
