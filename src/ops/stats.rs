//! Process-wide counters and gauges, shared by every task.
//!
//! Plain relaxed atomics: the hot paths add once per read or per batch, never
//! per event, and nothing orders other memory through them. The metrics
//! endpoint and the periodic log summary read them; tests read them to wait
//! for real conditions.

use followermaze_protocol::auth::AuthError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a client connection ended; one counter each, indexed by discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed its side (or the server shut down cleanly).
    Normal,
    /// Its outbound buffer passed the bound: it was not reading.
    SlowConsumer,
    /// Its first line was not a user id, or did not come in time.
    BadHandshake,
    /// A socket error (reset, broken pipe, ...).
    Error,
    /// Refused at accept: the connection limit was reached.
    Rejected,
    /// Reset on purpose by fault injection (`faultResetEvery`).
    FaultReset,
}

impl DisconnectReason {
    /// Every reason, in discriminant order, for exporters that list them.
    pub const ALL: [DisconnectReason; 6] = [
        DisconnectReason::Normal,
        DisconnectReason::SlowConsumer,
        DisconnectReason::BadHandshake,
        DisconnectReason::Error,
        DisconnectReason::Rejected,
        DisconnectReason::FaultReset,
    ];

    /// The label value used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::BadHandshake => "bad_handshake",
            DisconnectReason::Error => "error",
            DisconnectReason::Rejected => "rejected",
            DisconnectReason::FaultReset => "fault_reset",
        }
    }
}

/// See the module doc. Field names are the metric names without prefix.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines from sources that parsed as events.
    pub events_received: AtomicU64,
    /// Events applied to the registry, in order.
    pub events_delivered: AtomicU64,
    /// Source lines that were not events (any [`followermaze_protocol::ParseError`]).
    pub malformed_lines: AtomicU64,
    /// Source lines dropped for exceeding the line limit.
    pub oversized_lines: AtomicU64,
    /// Events whose sequence had already been released or skipped.
    pub late_events: AtomicU64,
    /// Events whose sequence was already waiting in the window.
    pub duplicate_events: AtomicU64,
    /// Events too far ahead of the window to be placed.
    pub too_far_events: AtomicU64,
    /// Sequences given up on by the gap-skip rules.
    pub skipped_sequences: AtomicU64,
    /// Follows not recorded because the follower graph was full.
    pub refused_follows: AtomicU64,
    /// Gauge: events parked in the reorder window.
    pub window_len: AtomicU64,
    /// Gauge: the next sequence the window will release.
    pub next_sequence: AtomicU64,
    /// `accept` calls that failed for lack of resources (`EMFILE`...).
    pub accept_errors: AtomicU64,
    /// Event source connections accepted.
    pub source_connections: AtomicU64,
    /// Gauge: source connections open now.
    pub sources_connected: AtomicU64,
    /// Client connections that completed the handshake.
    pub client_connects: AtomicU64,
    /// Gauge: registered clients now.
    pub clients_connected: AtomicU64,
    /// Disconnects, indexed like [`DisconnectReason::ALL`].
    pub client_disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    /// Client handshakes refused for their token (`authSecret`), indexed
    /// like [`AuthError::ALL`].
    pub client_auth_refusals: [AtomicU64; AuthError::ALL.len()],
    /// Event sources refused for their first line (`authSecret`), indexed
    /// like [`AuthError::ALL`].
    pub source_auth_refusals: [AtomicU64; AuthError::ALL.len()],
    /// Web requests refused, by status (400, 401, 403, 404, 405, 426, 431,
    /// 503, in that order); read with [`Stats::web_refusals`].
    pub web_refusals: [AtomicU64; WEB_REFUSALS.len()],
    /// Web sessions opened (after their checks, before the verdict),
    /// indexed like [`WebTransport::ALL`].
    pub web_sessions: [AtomicU64; WebTransport::ALL.len()],
    /// Notifications queued for clients (one per event per recipient).
    pub notifications: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_written: AtomicU64,
    /// Write syscalls that wrote to client sockets.
    pub client_writes: AtomicU64,
    /// Bytes clients sent after their handshake (read and dropped).
    pub client_bytes_ignored: AtomicU64,
    /// Gauge: resumable sessions open now (connected or within their
    /// window).
    pub sessions_open: AtomicU64,
    /// Resumable connections answered `#OK`.
    pub resumes_ok: AtomicU64,
    /// Resumable connections answered `#GAP`.
    pub resumes_gap: AtomicU64,
    /// Retained lines replayed to resuming connections.
    pub replayed_lines: AtomicU64,
    /// Sessions purged a window after their last connection closed.
    pub sessions_purged: AtomicU64,
    /// Gauge: bytes retained for sessions (lines, index and sessions, as
    /// `resumeTotalBytes` counts them).
    pub retained_bytes: AtomicU64,
    /// Retained lines lost to a retention bound.
    pub evicted_entries: AtomicU64,
    /// Gauge, cluster gateway: stream messages pending after the last one
    /// consumed.
    pub gateway_lag_messages: AtomicU64,
    /// Gauge, cluster gateway: events pending, estimated as the messages
    /// pending times the events of the last one consumed.
    pub gateway_lag_events: AtomicU64,
    /// Gauge, cluster gateway: milliseconds since the stream stored the
    /// last message consumed, while more were pending (0 when caught up).
    pub gateway_lag_ms: AtomicU64,
    /// Reconnects refused during a fault-injected outage
    /// (`faultOfflineMs`).
    pub fault_refused_reconnects: AtomicU64,
    /// Cluster: messages the sequencer's publisher had acknowledged by
    /// JetStream.
    pub published_messages: AtomicU64,
    /// Cluster: publishes or acks that failed (NATS slow, down or
    /// restarting); each is retried after a reconnect.
    pub publish_failures: AtomicU64,
    /// Cluster: stream messages a gateway consumed.
    pub consumed_messages: AtomicU64,
    /// Cluster: stream messages a gateway skipped because no sequencer of
    /// ours wrote them (no stream header, or a payload that is not event
    /// lines in increasing order).
    pub skipped_messages: AtomicU64,
    /// Cluster: graph snapshots the sequencer wrote.
    pub snapshots_written: AtomicU64,
    /// Cluster: snapshots a gateway loaded (at start, or after falling
    /// behind the retained stream).
    pub snapshots_loaded: AtomicU64,
    /// Cluster: resumes (`#OK`) whose missed lines a gateway read from the
    /// stream, the session having been served elsewhere.
    pub stream_resumes: AtomicU64,
    /// Time from a source read to the write that delivered its events.
    pub latency: LatencyHistogram,
}

impl Stats {
    /// Adds `n` to `counter`.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sets a gauge.
    #[inline]
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Reads a counter or gauge.
    #[inline]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one disconnect.
    pub fn disconnected(&self, reason: DisconnectReason) {
        Stats::add(&self.client_disconnects[reason as usize], 1);
    }

    /// Disconnects so far for `reason`.
    pub fn disconnects(&self, reason: DisconnectReason) -> u64 {
        Stats::get(&self.client_disconnects[reason as usize])
    }
}

/// The statuses the web listener refuses requests with, in the order they
/// are counted and exported.
pub(crate) const WEB_REFUSALS: [u16; 8] = [400, 401, 403, 404, 405, 426, 431, 503];

/// A browser transport of the web listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebTransport {
    /// WebSocket, `/ws`.
    WebSocket,
    /// Server-Sent Events, `/events`.
    Events,
}

impl WebTransport {
    /// Every transport, in discriminant order.
    pub const ALL: [WebTransport; 2] = [WebTransport::WebSocket, WebTransport::Events];

    /// Its label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WebTransport::WebSocket => "ws",
            WebTransport::Events => "sse",
        }
    }
}

impl Stats {
    /// Counts a web request refused with `status` (one of the statuses of
    /// [`Stats::web_refusals`]; any other is a bug, counted nowhere).
    pub fn web_refused(&self, status: u16) {
        if let Some(index) = WEB_REFUSALS.iter().position(|&known| known == status) {
            Stats::add(&self.web_refusals[index], 1);
        }
    }

    /// Web requests refused with `status` so far.
    pub fn web_refusals(&self, status: u16) -> u64 {
        WEB_REFUSALS
            .iter()
            .position(|&known| known == status)
            .map_or(0, |index| Stats::get(&self.web_refusals[index]))
    }
}

/// Number of latency buckets: bucket `i` counts samples under `2^i` µs
/// (the last also counts everything longer, about 67 s and up).
pub(crate) const LATENCY_BUCKETS: usize = 27;

/// A lock-free histogram of durations in power-of-two microsecond buckets:
/// one relaxed add per sample (per write syscall, not per event), coarse but
/// plenty for "is p99 under a millisecond".
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Sample counts per bucket; see [`LATENCY_BUCKETS`].
    buckets: [AtomicU64; LATENCY_BUCKETS],
    /// Sum of all samples, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records one sample.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let index = ((u64::BITS - micros.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The upper bound of bucket `index`, in seconds (the last is open).
    pub fn bucket_bound_secs(index: usize) -> f64 {
        (1u64 << index) as f64 / 1e6
    }

    /// Sample counts per bucket, not cumulative.
    pub fn counts(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|index| self.buckets[index].load(Ordering::Relaxed))
    }

    /// Sum of all samples, in seconds.
    pub fn sum_secs(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// An upper bound for quantile `q` (0..=1): the bound of the bucket
    /// holding it. `None` before any sample.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<Duration> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(1u64 << index));
            }
        }
        None
    }
}

/// Rate-limits a log line that can repeat: the first occurrence is logged,
/// then at most one per interval, carrying how many were held back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    /// Minimum time between two lines.
    interval: Duration,
    /// When the last line was allowed.
    last: Option<Instant>,
    /// Occurrences since then that were not logged.
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle allowing one line per `interval`.
    pub(crate) const fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed)` if a line may be logged now (with the count
    /// of occurrences held back since the last one), `None` to stay quiet.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_the_first_then_holds_back() {
        let mut throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.suppressed, 2);
    }

    #[test]
    fn latency_buckets_are_powers_of_two_microseconds() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile_upper_bound(0.5), None);
        for _ in 0..98 {
            histogram.record(Duration::from_micros(300)); // under 512 µs
        }
        histogram.record(Duration::from_millis(3)); // under 4096 µs
        histogram.record(Duration::from_secs(3600)); // overflow bucket
        assert_eq!(
            histogram.quantile_upper_bound(0.5),
            Some(Duration::from_micros(512))
        );
        assert_eq!(
            histogram.quantile_upper_bound(0.99),
            Some(Duration::from_micros(4096))
        );
        assert_eq!(histogram.counts()[LATENCY_BUCKETS - 1], 1);
    }

    #[test]
    fn disconnect_counters_are_per_reason() {
        let stats = Stats::default();
        stats.disconnected(DisconnectReason::SlowConsumer);
        stats.disconnected(DisconnectReason::SlowConsumer);
        stats.disconnected(DisconnectReason::Normal);
        assert_eq!(stats.disconnects(DisconnectReason::SlowConsumer), 2);
        assert_eq!(stats.disconnects(DisconnectReason::Normal), 1);
        assert_eq!(stats.disconnects(DisconnectReason::Error), 0);
    }
}
