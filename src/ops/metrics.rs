//! The observability endpoint: `GET /metrics` in the Prometheus text format
//! and `GET /healthz`, over HTTP/1.1 on `metricsPort`.
//!
//! Nothing here runs on the hot path. The server already counts into
//! [`Stats`] (relaxed atomics, added once per read or per batch); a scrape
//! reads those atomics and builds the metric families from them, so the cost
//! of metrics is paid per scrape, not per event. The `prometheus` crate's
//! [`Registry`] checks the descriptors once at start-up and its
//! [`TextEncoder`] writes the exposition format; `hyper` serves it.
//!
//! A scrape reads each atomic separately: the numbers are not one consistent
//! snapshot (events delivered may be read a batch ahead of notifications).
//! Every counter is monotonic for the life of the process.
//!
//! Every metric, and its meaning, is listed in the README's Observability section.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::http;
use crate::ops::stats::{
    DisconnectReason, LatencyHistogram, Stats, WebTransport, LATENCY_BUCKETS, WEB_REFUSALS,
};
use followermaze_protocol::auth::AuthError;

/// Prefix of every metric name.
const PREFIX: &str = "followermaze_";

/// The latency histogram's exported buckets start at `2^FIRST_EXPORTED_BUCKET`
/// µs (16 µs): a loopback round trip already takes longer, so finer buckets
/// would be empty series. Samples below it are still counted, in the first
/// exported bucket (Prometheus buckets are cumulative).
const FIRST_EXPORTED_BUCKET: usize = 4;

/// A counter or gauge read straight from one [`Stats`] field.
struct FieldSpec {
    /// Name without [`PREFIX`].
    name: &'static str,
    /// The `# HELP` text: what one unit of it is.
    help: &'static str,
    /// Which field holds it.
    field: fn(&Stats) -> &AtomicU64,
}

/// Counters, in the order the README lists them.
const COUNTERS: &[FieldSpec] = &[
    FieldSpec {
        name: "events_received_total",
        help: "Source lines that parsed as events (duplicates and late ones included).",
        field: |stats| &stats.events_received,
    },
    FieldSpec {
        name: "events_delivered_total",
        help: "Events applied in sequence order and routed to their recipients.",
        field: |stats| &stats.events_delivered,
    },
    FieldSpec {
        name: "notifications_sent_total",
        help: "Notifications handed to connected clients' writers (one per event per recipient connection).",
        field: |stats| &stats.notifications,
    },
    FieldSpec {
        name: "client_written_bytes_total",
        help: "Bytes written to client sockets.",
        field: |stats| &stats.bytes_written,
    },
    FieldSpec {
        name: "client_writes_total",
        help: "Write system calls on client sockets (bytes per write shows batching).",
        field: |stats| &stats.client_writes,
    },
    FieldSpec {
        name: "client_ignored_bytes_total",
        help: "Bytes clients sent after their handshake, read and dropped.",
        field: |stats| &stats.client_bytes_ignored,
    },
    FieldSpec {
        name: "malformed_lines_total",
        help: "Source lines that were not valid events, dropped.",
        field: |stats| &stats.malformed_lines,
    },
    FieldSpec {
        name: "oversized_lines_total",
        help: "Source lines longer than the line limit, dropped.",
        field: |stats| &stats.oversized_lines,
    },
    FieldSpec {
        name: "duplicate_events_total",
        help: "Events dropped because their sequence number was already waiting in the reorder window.",
        field: |stats| &stats.duplicate_events,
    },
    FieldSpec {
        name: "late_events_total",
        help: "Events dropped because their sequence number was already delivered or skipped.",
        field: |stats| &stats.late_events,
    },
    FieldSpec {
        name: "too_far_events_total",
        help: "Events dropped because they were too far ahead of the reorder window.",
        field: |stats| &stats.too_far_events,
    },
    FieldSpec {
        name: "skipped_sequences_total",
        help: "Missing sequence numbers given up on (gaps skipped), counted one per number.",
        field: |stats| &stats.skipped_sequences,
    },
    FieldSpec {
        name: "refused_follows_total",
        help: "Follow events not recorded because the follower graph was full.",
        field: |stats| &stats.refused_follows,
    },
    FieldSpec {
        name: "source_connections_total",
        help: "Event source connections accepted.",
        field: |stats| &stats.source_connections,
    },
    FieldSpec {
        name: "accept_errors_total",
        help: "Accept calls that failed for lack of resources (out of file descriptors), on any listener.",
        field: |stats| &stats.accept_errors,
    },
    FieldSpec {
        name: "client_connects_total",
        help: "Client connections that completed the handshake.",
        field: |stats| &stats.client_connects,
    },
    FieldSpec {
        name: "replayed_lines_total",
        help: "Retained lines replayed to resuming connections.",
        field: |stats| &stats.replayed_lines,
    },
    FieldSpec {
        name: "sessions_purged_total",
        help: "Resumable sessions purged a window after their last connection closed.",
        field: |stats| &stats.sessions_purged,
    },
    FieldSpec {
        name: "retention_evictions_total",
        help: "Retained lines lost to a retention bound (per session or in total).",
        field: |stats| &stats.evicted_entries,
    },
    FieldSpec {
        name: "fault_refused_reconnects_total",
        help: "Fault injection (faultOfflineMs): reconnects refused during a user's outage after a reset.",
        field: |stats| &stats.fault_refused_reconnects,
    },
    FieldSpec {
        name: "published_messages_total",
        help: "Cluster sequencer: stream messages acknowledged by JetStream.",
        field: |stats| &stats.published_messages,
    },
    FieldSpec {
        name: "publish_failures_total",
        help: "Cluster sequencer: publishes or acks that failed and were retried after a reconnect.",
        field: |stats| &stats.publish_failures,
    },
    FieldSpec {
        name: "consumed_messages_total",
        help: "Cluster gateway: stream messages consumed.",
        field: |stats| &stats.consumed_messages,
    },
    FieldSpec {
        name: "skipped_messages_total",
        help: "Cluster gateway: stream messages skipped as not a followermaze message (no stream header, or lines that are not increasing events).",
        field: |stats| &stats.skipped_messages,
    },
    FieldSpec {
        name: "snapshots_written_total",
        help: "Cluster sequencer: follower-graph snapshots written.",
        field: |stats| &stats.snapshots_written,
    },
    FieldSpec {
        name: "snapshots_loaded_total",
        help: "Cluster gateway: follower-graph snapshots loaded.",
        field: |stats| &stats.snapshots_loaded,
    },
    FieldSpec {
        name: "stream_resumes_total",
        help: "Cluster gateway: resumes (#OK) whose missed lines were read from the stream (a session served by another gateway).",
        field: |stats| &stats.stream_resumes,
    },
];

/// Gauges, in the order the README lists them.
const GAUGES: &[GaugeSpec] = &[
    GaugeSpec {
        name: "connected_clients",
        help: "Clients registered now.",
        field: |stats| &stats.clients_connected,
        per_unit: 1,
    },
    GaugeSpec {
        name: "connected_sources",
        help: "Event source connections open now.",
        field: |stats| &stats.sources_connected,
        per_unit: 1,
    },
    GaugeSpec {
        name: "reorder_window_events",
        help: "Events parked in the reorder window, waiting for an earlier sequence number.",
        field: |stats| &stats.window_len,
        per_unit: 1,
    },
    GaugeSpec {
        name: "next_expected_sequence",
        help: "The sequence number the reorder window will release next.",
        field: |stats| &stats.next_sequence,
        per_unit: 1,
    },
    GaugeSpec {
        name: "open_sessions",
        help: "Resumable sessions open now (connected, or within their window).",
        field: |stats| &stats.sessions_open,
        per_unit: 1,
    },
    GaugeSpec {
        name: "retained_bytes",
        help: "Bytes retained for resumable sessions, as resumeTotalBytes counts them.",
        field: |stats| &stats.retained_bytes,
        per_unit: 1,
    },
    GaugeSpec {
        name: "gateway_lag_messages",
        help: "Cluster gateway: stream messages not yet consumed, as of the last one consumed.",
        field: |stats| &stats.gateway_lag_messages,
        per_unit: 1,
    },
    GaugeSpec {
        name: "gateway_lag_events",
        help: "Cluster gateway: events not yet consumed, estimated as the messages pending times the events of the last one consumed.",
        field: |stats| &stats.gateway_lag_events,
        per_unit: 1,
    },
    GaugeSpec {
        name: "gateway_lag_seconds",
        help: "Cluster gateway: how long ago the stream stored the last message consumed, while more were pending (0 when caught up).",
        field: |stats| &stats.gateway_lag_ms,
        per_unit: 1000,
    },
];

/// A gauge read from [`Stats`], kept there in `1 / per_unit` of its unit.
struct GaugeSpec {
    /// Name without [`PREFIX`].
    name: &'static str,
    /// The `# HELP` text.
    help: &'static str,
    /// Where its value is.
    field: fn(&Stats) -> &AtomicU64,
    /// Stored units per exported unit (1000 for seconds kept in ms).
    per_unit: u64,
}

/// A counter with one series per value of one label, read from [`Stats`].
struct LabelledSpec {
    /// Name without [`PREFIX`].
    name: &'static str,
    /// The `# HELP` text.
    help: &'static str,
    /// The label's name.
    label: &'static str,
    /// Each label value and its count.
    series: fn(&Stats) -> Vec<(&'static str, u64)>,
}

/// Labelled counters, in the order the README lists them.
const LABELLED: &[LabelledSpec] = &[
    LabelledSpec {
        name: "client_disconnects_total",
        help: "Client connections that ended, by reason (rejected: refused at the connection limit).",
        label: "reason",
        series: |stats| {
            DisconnectReason::ALL
                .iter()
                .map(|&reason| (reason.as_str(), stats.disconnects(reason)))
                .collect()
        },
    },
    LabelledSpec {
        name: "client_auth_refusals_total",
        help: "Client handshakes refused for their token (authSecret set), by reason.",
        label: "reason",
        series: |stats| auth_series(&stats.client_auth_refusals),
    },
    LabelledSpec {
        name: "source_auth_refusals_total",
        help: "Event source connections refused for their #AUTH line (authSecret set), by reason.",
        label: "reason",
        series: |stats| auth_series(&stats.source_auth_refusals),
    },
    LabelledSpec {
        name: "web_refusals_total",
        help: "Web listener requests refused, by HTTP status (400 bad parameters, 401 token, 403 origin, 404, 405, 426 no upgrade, 431 headers too large, 503 maxClients).",
        label: "status",
        series: |stats| {
            WEB_REFUSALS
                .iter()
                .zip(WEB_STATUS_LABELS)
                .map(|(&status, label)| (label, stats.web_refusals(status)))
                .collect()
        },
    },
    LabelledSpec {
        name: "web_sessions_total",
        help: "Web sessions opened, by transport (ws, sse).",
        label: "transport",
        series: |stats| {
            WebTransport::ALL
                .iter()
                .map(|&transport| {
                    let count = Stats::get(&stats.web_sessions[transport as usize]);
                    (transport.as_str(), count)
                })
                .collect()
        },
    },
    LabelledSpec {
        name: "resumes_total",
        help: "Resumable connections that named a stream to resume, by the verdict they got (ok, gap).",
        label: "verdict",
        series: |stats| {
            vec![
                ("ok", Stats::get(&stats.resumes_ok)),
                ("gap", Stats::get(&stats.resumes_gap)),
            ]
        },
    },
];

/// One refusal counter per [`AuthError`] reason, labelled.
fn auth_series(counters: &[AtomicU64; AuthError::ALL.len()]) -> Vec<(&'static str, u64)> {
    AuthError::ALL
        .iter()
        .map(|&reason| (reason.as_str(), Stats::get(&counters[reason.index()])))
        .collect()
}

/// [`WEB_REFUSALS`] as label values.
const WEB_STATUS_LABELS: [&str; WEB_REFUSALS.len()] =
    ["400", "401", "403", "404", "405", "426", "431", "503"];

/// Name and help of the latency histogram.
const LATENCY: (&str, &str) = (
    "delivery_latency_seconds",
    "Time from the source read that carried an event to the client write that delivered it; one sample per write.",
);

/// Turns [`Stats`] into metric families at scrape time (see the module doc).
pub(crate) struct StatsCollector {
    /// What is read.
    stats: Arc<Stats>,
    /// Every family's descriptor, for the registry's checks.
    descs: Vec<Desc>,
}

impl StatsCollector {
    /// A collector reading `stats`.
    pub(crate) fn new(stats: Arc<Stats>) -> StatsCollector {
        let plain = COUNTERS
            .iter()
            .map(|spec| (spec.name, spec.help, Vec::new()))
            .chain(GAUGES.iter().map(|spec| (spec.name, spec.help, Vec::new())))
            .chain(
                LABELLED
                    .iter()
                    .map(|spec| (spec.name, spec.help, vec![spec.label.to_owned()])),
            )
            .chain([(LATENCY.0, LATENCY.1, Vec::new())]);
        let descs = plain
            .map(|(name, help, labels)| {
                Desc::new(
                    format!("{PREFIX}{name}"),
                    help.to_owned(),
                    labels,
                    Default::default(),
                )
                .expect("metric names and help texts are valid constants")
            })
            .collect();
        StatsCollector { stats, descs }
    }
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsCollector")
            .field("families", &self.descs.len())
            .finish()
    }
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = &*self.stats;
        let mut families = Vec::with_capacity(self.descs.len());
        for spec in COUNTERS {
            let value = Stats::get((spec.field)(stats));
            families.push(family(
                spec.name,
                spec.help,
                MetricType::COUNTER,
                vec![counter(value, Vec::new())],
            ));
        }
        for spec in GAUGES {
            let mut gauge = proto::Gauge::default();
            gauge.set_value(Stats::get((spec.field)(stats)) as f64 / spec.per_unit as f64);
            families.push(family(
                spec.name,
                spec.help,
                MetricType::GAUGE,
                vec![proto::Metric::from_gauge(gauge)],
            ));
        }
        for spec in LABELLED {
            let series = (spec.series)(stats)
                .into_iter()
                .map(|(value, count)| {
                    let mut label = LabelPair::default();
                    label.set_name(spec.label.to_owned());
                    label.set_value(value.to_owned());
                    counter(count, vec![label])
                })
                .collect();
            families.push(family(spec.name, spec.help, MetricType::COUNTER, series));
        }
        let mut latency = proto::Metric::default();
        latency.set_histogram(histogram(&stats.latency));
        families.push(family(
            LATENCY.0,
            LATENCY.1,
            MetricType::HISTOGRAM,
            vec![latency],
        ));
        families
    }
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(format!("{PREFIX}{name}"));
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(value: u64, labels: Vec<LabelPair>) -> proto::Metric {
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    let mut metric = proto::Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}

/// The histogram in Prometheus form: cumulative buckets from
/// [`FIRST_EXPORTED_BUCKET`] up to the last closed one; the open last bucket
/// is only in `+Inf`, which the encoder writes from the sample count.
fn histogram(latency: &LatencyHistogram) -> proto::Histogram {
    let counts = latency.counts();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS - FIRST_EXPORTED_BUCKET);
    for (index, count) in counts.iter().enumerate().take(LATENCY_BUCKETS - 1) {
        cumulative += count;
        if index >= FIRST_EXPORTED_BUCKET {
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(LatencyHistogram::bucket_bound_secs(index));
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
    }
    let mut histogram = proto::Histogram::default();
    histogram.set_sample_count(counts.iter().sum());
    histogram.set_sample_sum(latency.sum_secs());
    histogram.set_bucket(buckets);
    histogram
}

/// The tasks `/healthz` watches, by name. Set once: at once by a role
/// that starts them before its endpoint, or once started by a role that
/// serves its endpoint while it waits for something first (a sequencer
/// waiting for NATS: alive, so healthy, but not ready).
pub(crate) type WatchedTasks = Arc<OnceLock<Vec<(&'static str, AbortHandle)>>>;

/// What `/healthz` and `/readyz` look at. Each task runs for the life of
/// the server and ends only at shutdown (or if it panicked), so the server
/// is healthy exactly while none has finished.
#[derive(Debug)]
pub(crate) struct Health {
    /// The tasks that take events and clients in this role, by name:
    /// standalone, both accept loops, the sequencer and the registry.
    pub tasks: WatchedTasks,
    /// Set while the server should get traffic: cleared while a role is
    /// still starting (a gateway catching up with the stream, a sequencer
    /// waiting for NATS) and once shutdown starts (draining).
    pub ready: Arc<AtomicBool>,
    /// Set while a gateway is more than `maxLagMs` behind the stream: not
    /// ready either. Never set outside a gateway.
    pub lagging: Arc<AtomicBool>,
}

impl Health {
    /// Health over `tasks`, all started already.
    pub(crate) fn watching(
        tasks: Vec<(&'static str, AbortHandle)>,
        ready: Arc<AtomicBool>,
    ) -> Health {
        Health {
            tasks: Arc::new(OnceLock::from(tasks)),
            ready,
            lagging: Arc::new(AtomicBool::new(false)),
        }
    }

    /// This health, not ready either while `lagging` is set.
    pub(crate) fn with_lag(self, lagging: Arc<AtomicBool>) -> Health {
        Health { lagging, ..self }
    }

    /// Whether the server can take events and clients now (or, before its
    /// tasks are set, is still starting them).
    pub(crate) fn is_healthy(&self) -> bool {
        match self.tasks.get() {
            None => true,
            Some(tasks) => tasks.iter().all(|(_, task)| !task.is_finished()),
        }
    }

    /// Whether it is healthy, caught up and not draining.
    pub(crate) fn is_ready(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.ready.load(Relaxed) && !self.lagging.load(Relaxed) && self.is_healthy()
    }
}

/// Everything a request needs; shared by the connections.
#[derive(Debug)]
struct Endpoint {
    /// Holds the [`StatsCollector`] and the process's own figures.
    registry: Registry,
    /// For `/healthz`.
    health: Health,
}

impl Endpoint {
    fn new(stats: Arc<Stats>, health: Health) -> Endpoint {
        let registry = Registry::new();
        registry
            .register(Box::new(StatsCollector::new(stats)))
            .expect("one collector with unique, valid descriptors");
        registry
            .register(Box::new(crate::ops::process::ProcessCollector::new()))
            .expect("process metrics' names are not ours");
        Endpoint { registry, health }
    }

    /// Answers one request. Only `GET` (and `HEAD`, which hyper answers
    /// without the body) is served.
    fn respond(&self, method: &Method, path: &str) -> Response<String> {
        let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
        if !known {
            return text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            );
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if path == "/readyz" {
            return if self.health.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            };
        }
        if path == "/healthz" {
            return if self.health.is_healthy() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "unavailable\n")
            };
        }
        let encoder = TextEncoder::new();
        let mut body = String::new();
        match encoder.encode_utf8(&self.registry.gather(), &mut body) {
            Ok(()) => {
                let mut response = Response::new(body);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(prometheus::TEXT_FORMAT),
                );
                response
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` is cancelled (see [`http`] for how connections are held).
pub(crate) async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    health: Health,
    shutdown: CancellationToken,
) {
    match listener.local_addr() {
        Ok(address) => tracing::info!(%address, "metrics endpoint listening"),
        Err(error) => {
            tracing::info!(address = %format!("<unknown: {error}>"), "metrics endpoint listening")
        }
    }
    let endpoint = Endpoint::new(Arc::clone(&stats), health);
    let respond = move |request: Request<Incoming>, _lease: http::Lease| {
        let response = endpoint.respond(request.method(), request.uri().path());
        std::future::ready(response)
    };
    let lifecycle = http::Lifecycle {
        drain: std::time::Duration::ZERO,
        count_too_large: false,
    };
    http::serve(listener, "metrics", stats, shutdown, lifecycle, respond).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stats() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    fn encode(stats: Arc<Stats>) -> String {
        let registry = Registry::new();
        registry
            .register(Box::new(StatsCollector::new(stats)))
            .unwrap();
        let mut body = String::new();
        TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut body)
            .unwrap();
        body
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for spec in COUNTERS {
            assert!(spec.name.ends_with("_total"), "{}", spec.name);
        }
        for spec in GAUGES {
            assert!(!spec.name.ends_with("_total"), "{}", spec.name);
        }
        for spec in LABELLED {
            assert!(spec.name.ends_with("_total"), "{}", spec.name);
        }
        assert!(LATENCY.0.ends_with("_seconds"));
        let names: std::collections::HashSet<_> = COUNTERS
            .iter()
            .map(|spec| spec.name)
            .chain(GAUGES.iter().map(|spec| spec.name))
            .chain(LABELLED.iter().map(|spec| spec.name))
            .chain([LATENCY.0])
            .collect();
        assert_eq!(
            names.len(),
            COUNTERS.len() + GAUGES.len() + LABELLED.len() + 1,
            "unique"
        );
    }

    #[test]
    fn a_lagging_gateway_is_not_ready_and_its_lag_is_exported_in_seconds() {
        let ready = Arc::new(AtomicBool::new(true));
        let lagging = Arc::new(AtomicBool::new(false));
        let health = Health::watching(Vec::new(), ready).with_lag(Arc::clone(&lagging));
        assert!(health.is_ready());
        lagging.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(!health.is_ready());
        let stats = stats();
        Stats::set(&stats.gateway_lag_ms, 2500);
        let body = encode(stats);
        assert!(
            body.contains("followermaze_gateway_lag_seconds 2.5\n"),
            "{body}"
        );
    }

    #[test]
    fn counters_gauges_and_reasons_are_read_from_stats() {
        let stats = stats();
        Stats::add(&stats.events_received, 7);
        Stats::add(&stats.bytes_written, 1234);
        Stats::set(&stats.next_sequence, 42);
        stats.disconnected(DisconnectReason::SlowConsumer);
        let body = encode(stats);
        assert!(
            body.contains("\nfollowermaze_events_received_total 7\n"),
            "{body}"
        );
        assert!(body.contains("\nfollowermaze_client_written_bytes_total 1234\n"));
        assert!(body.contains("# TYPE followermaze_next_expected_sequence gauge\n"));
        assert!(body.contains("\nfollowermaze_next_expected_sequence 42\n"));
        assert!(
            body.contains("followermaze_client_disconnects_total{reason=\"slow_consumer\"} 1\n")
        );
        assert!(body.contains("followermaze_client_disconnects_total{reason=\"normal\"} 0\n"));
        assert!(body.contains("followermaze_resumes_total{verdict=\"gap\"} 0\n"));
        assert!(body.contains("# HELP followermaze_late_events_total "));
    }

    #[test]
    fn latency_buckets_are_cumulative_with_the_overflow_in_inf() {
        let stats = stats();
        stats.latency.record(Duration::from_micros(3)); // below the first exported bucket
        stats.latency.record(Duration::from_micros(300)); // under 512 µs
        stats.latency.record(Duration::from_secs(3600)); // the open bucket
        let body = encode(stats);
        let bucket = |le: &str| {
            let prefix = format!("followermaze_delivery_latency_seconds_bucket{{le=\"{le}\"}} ");
            body.lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in {body}"))
                .to_owned()
        };
        assert_eq!(bucket("0.000016"), "1");
        assert_eq!(bucket("0.000256"), "1");
        assert_eq!(bucket("0.000512"), "2");
        assert_eq!(bucket("33.554432"), "2");
        assert_eq!(bucket("+Inf"), "3");
        assert!(body.contains("\nfollowermaze_delivery_latency_seconds_count 3\n"));
        assert!(!body.contains("le=\"0.000008\""), "{body}");
    }

    /// A task that runs until aborted.
    fn running() -> tokio::task::JoinHandle<()> {
        tokio::spawn(std::future::pending::<()>())
    }

    /// Health over four running tasks, and the tasks.
    fn health() -> (Health, [tokio::task::JoinHandle<()>; 4]) {
        let tasks = [running(), running(), running(), running()];
        let names = ["sources", "clients", "sequencer", "registry"];
        let health = Health::watching(
            names
                .into_iter()
                .zip(&tasks)
                .map(|(name, task)| (name, task.abort_handle()))
                .collect(),
            Arc::new(AtomicBool::new(true)),
        );
        (health, tasks)
    }

    #[tokio::test]
    async fn healthy_only_while_listeners_sequencer_and_registry_run() {
        for (index, name) in ["sources", "clients", "sequencer", "registry"]
            .into_iter()
            .enumerate()
        {
            let (health, tasks) = health();
            assert!(health.is_healthy());
            let mut tasks = Vec::from(tasks);
            let stopped = tasks.swap_remove(index);
            stopped.abort();
            let ended = tokio::time::timeout(Duration::from_secs(10), stopped).await;
            assert!(ended.is_ok(), "an aborted task ends");
            assert!(!health.is_healthy(), "{name} stopped");
            for task in tasks {
                task.abort();
            }
        }
    }

    #[tokio::test]
    async fn ready_only_while_healthy_and_the_flag_is_set() {
        let (health, tasks) = health();
        let ready = health.ready.clone();
        let endpoint = Endpoint::new(stats(), health);
        let status = || endpoint.respond(&Method::GET, "/readyz").status();
        assert_eq!(status(), StatusCode::OK);
        ready.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "catching up or draining"
        );
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tasks[3].abort();
        let mut tasks = Vec::from(tasks);
        let stopped = tasks.swap_remove(3);
        let ended = tokio::time::timeout(Duration::from_secs(10), stopped).await;
        assert!(ended.is_ok(), "an aborted task ends");
        assert_eq!(status(), StatusCode::SERVICE_UNAVAILABLE, "a task ended");
        for task in tasks {
            task.abort();
        }
    }

    #[tokio::test]
    async fn routes_answer_by_path_and_method() {
        let (health, _tasks) = health();
        let endpoint = Endpoint::new(stats(), health);
        let status = |method: Method, path: &str| endpoint.respond(&method, path).status();
        assert_eq!(status(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(status(Method::HEAD, "/metrics"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(
            status(Method::POST, "/metrics"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(Method::GET, "/"), StatusCode::NOT_FOUND);
        let metrics = endpoint.respond(&Method::GET, "/metrics");
        assert_eq!(metrics.headers()[CONTENT_TYPE], "text/plain; version=0.0.4");
    }
}
