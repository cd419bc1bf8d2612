//! The periodic summary: one log line every `summaryIntervalSecs` with the
//! main counters, for operators without Prometheus.
//!
//! Like the metrics endpoint it only reads [`Stats`], so it costs nothing
//! on the hot path. Rates and the latency quantile are over the last
//! interval; the other numbers are totals since start. A last line is
//! logged when the server stops, with the final totals.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::ops::stats::{DisconnectReason, Stats, LATENCY_BUCKETS};

/// The numbers one line is made of, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Events parsed from sources.
    pub events_received: u64,
    /// Events delivered in order.
    pub events_delivered: u64,
    /// Notifications handed to writers.
    pub notifications: u64,
    /// Bytes written to clients.
    pub bytes_written: u64,
    /// Malformed plus oversized source lines.
    pub bad_lines: u64,
    /// Late plus duplicate plus too-far-ahead events.
    pub dropped_events: u64,
    /// Sequence numbers skipped by the gap rules.
    pub skipped: u64,
    /// Gauge: events parked in the reorder window.
    pub window: u64,
    /// Gauge: next sequence to release.
    pub next_sequence: u64,
    /// Gauge: registered clients.
    pub clients: u64,
    /// Gauge: open source connections.
    pub sources: u64,
    /// Clients disconnected for not reading.
    pub slow_consumers: u64,
    /// Gauge: resumable sessions open.
    pub sessions: u64,
    /// Resumes answered `#OK`.
    pub resumes_ok: u64,
    /// Resumes answered `#GAP`.
    pub resumes_gap: u64,
    /// Latency histogram bucket counts (not cumulative).
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Snapshot {
    /// Reads `stats` now.
    pub(crate) fn take(stats: &Stats) -> Snapshot {
        let get = Stats::get;
        Snapshot {
            events_received: get(&stats.events_received),
            events_delivered: get(&stats.events_delivered),
            notifications: get(&stats.notifications),
            bytes_written: get(&stats.bytes_written),
            bad_lines: get(&stats.malformed_lines) + get(&stats.oversized_lines),
            dropped_events: get(&stats.late_events)
                + get(&stats.duplicate_events)
                + get(&stats.too_far_events),
            skipped: get(&stats.skipped_sequences),
            window: get(&stats.window_len),
            next_sequence: get(&stats.next_sequence),
            clients: get(&stats.clients_connected),
            sources: get(&stats.sources_connected),
            slow_consumers: stats.disconnects(DisconnectReason::SlowConsumer),
            sessions: get(&stats.sessions_open),
            resumes_ok: get(&stats.resumes_ok),
            resumes_gap: get(&stats.resumes_gap),
            latency: stats.latency.counts(),
        }
    }
}

/// One summary line: `now`'s totals, with rates and p99 since `before`.
#[derive(Debug)]
pub(crate) struct Line<'a> {
    /// The previous snapshot (all zero for the first line).
    pub before: &'a Snapshot,
    /// This snapshot.
    pub now: &'a Snapshot,
    /// Time between the two.
    pub elapsed: Duration,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (before, now) = (self.before, self.now);
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let rate = |total: u64, earlier: u64| total.saturating_sub(earlier) as f64 / secs;
        write!(
            f,
            "events in={} ({:.0}/s) out={} ({:.0}/s) window={} next={} \
             clients={} sources={} notifications={} bytes={} \
             bad_lines={} dropped={} skipped={} slow_consumers={} \
             sessions={} resumes_ok={} resumes_gap={} p99",
            now.events_received,
            rate(now.events_received, before.events_received),
            now.events_delivered,
            rate(now.events_delivered, before.events_delivered),
            now.window,
            now.next_sequence,
            now.clients,
            now.sources,
            now.notifications,
            now.bytes_written,
            now.bad_lines,
            now.dropped_events,
            now.skipped,
            now.slow_consumers,
            now.sessions,
            now.resumes_ok,
            now.resumes_gap,
        )?;
        let recent: [u64; LATENCY_BUCKETS] =
            std::array::from_fn(|i| now.latency[i].saturating_sub(before.latency[i]));
        match quantile_bucket(&recent, 0.99) {
            Some(index) if index == LATENCY_BUCKETS - 1 => {
                write!(f, ">={:?}", bucket_bound(index - 1))
            }
            Some(index) => write!(f, "<{:?}", bucket_bound(index)),
            None => f.write_str("=n/a"),
        }
    }
}

/// The upper bound of latency bucket `index`.
fn bucket_bound(index: usize) -> Duration {
    Duration::from_micros(1 << index)
}

/// The bucket holding quantile `q` of `counts`; `None` if there are none.
/// (Like `LatencyHistogram::quantile_upper_bound`, over a difference of two
/// readings rather than the totals.)
fn quantile_bucket(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<usize> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    counts.iter().position(|&count| {
        seen += count;
        seen >= rank
    })
}

/// Logs a summary every `every` until `shutdown` is cancelled, then a last
/// one.
pub(crate) async fn run(stats: Arc<Stats>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // After a stall, one line late is better than a burst of lines.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut before = Snapshot::take(&Stats::default());
    let mut then = Instant::now();
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let now = Snapshot::take(&stats);
        let at = Instant::now();
        let line = Line {
            before: &before,
            now: &now,
            elapsed: at.duration_since(then),
        };
        if last {
            tracing::info!("final summary: {line}");
            return;
        }
        tracing::info!("summary: {line}");
        (before, then) = (now, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_totals_rates_and_recent_p99() {
        let stats = Stats::default();
        Stats::add(&stats.events_received, 1000);
        Stats::add(&stats.events_delivered, 990);
        Stats::add(&stats.malformed_lines, 2);
        Stats::add(&stats.oversized_lines, 1);
        Stats::add(&stats.late_events, 4);
        Stats::add(&stats.duplicate_events, 5);
        Stats::set(&stats.next_sequence, 991);
        Stats::set(&stats.clients_connected, 3);
        Stats::set(&stats.sessions_open, 2);
        Stats::add(&stats.resumes_ok, 5);
        Stats::add(&stats.resumes_gap, 1);
        stats.latency.record(Duration::from_secs(1)); // before the interval
        let before = Snapshot::take(&stats);
        Stats::add(&stats.events_received, 3000);
        Stats::add(&stats.events_delivered, 3010);
        for _ in 0..100 {
            stats.latency.record(Duration::from_micros(300));
        }
        let now = Snapshot::take(&stats);
        let line = Line {
            before: &before,
            now: &now,
            elapsed: Duration::from_secs(10),
        }
        .to_string();
        assert_eq!(
            line,
            "events in=4000 (300/s) out=4000 (301/s) window=0 next=991 clients=3 sources=0 \
             notifications=0 bytes=0 bad_lines=3 dropped=9 skipped=0 slow_consumers=0 \
             sessions=2 resumes_ok=5 resumes_gap=1 p99<512µs"
        );
    }

    #[test]
    fn an_idle_interval_has_no_quantile_and_overflow_is_open_ended() {
        let idle = Snapshot::take(&Stats::default());
        let line = Line {
            before: &idle,
            now: &idle,
            elapsed: Duration::ZERO,
        }
        .to_string();
        assert!(line.ends_with("p99=n/a"), "{line}");
        let stats = Stats::default();
        stats.latency.record(Duration::from_secs(3600));
        let now = Snapshot::take(&stats);
        let line = Line {
            before: &idle,
            now: &now,
            elapsed: Duration::from_secs(1),
        }
        .to_string();
        assert!(line.ends_with("p99>=33.554432s"), "{line}");
    }
}
