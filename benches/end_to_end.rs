//! End to end in one process: the server and the verifier's engine over
//! loopback, for the classic profile and the fan-out profile. Prints, per
//! profile, the median of several runs: events/s, notifications/s and
//! delivered bytes/s (every notification checked byte for byte).
//!
//! `cargo bench --bench end_to_end`. Sizes: `E2E_EVENTS` (default 1,000,000
//! classic; fan-out uses the same count), `E2E_RUNS` (default 3). The
//! classic default run of 10M events is `E2E_EVENTS=10000000`; both
//! processes separately, as users run them, is `./followermaze.sh`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use followermaze::Stats;
use followermaze::{Config, Listeners};
use followermaze_verify::{Profile, Report, VerifyConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Starts the server on loopback ephemeral ports; returns its ports and a
/// way to stop it.
async fn start_server() -> (u16, u16, oneshot::Sender<()>, impl Future<Output = ()>) {
    let listeners = Listeners {
        events: TcpListener::bind("127.0.0.1:0").await.expect("bind events"),
        clients: TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind clients"),
        web: None,
        metrics: None,
    };
    let events = listeners.events.local_addr().expect("addr").port();
    let clients = listeners.clients.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = Config {
        metrics_port: 0,
        summary_interval_secs: 0,
        ..Config::default()
    };
    let server = tokio::spawn(followermaze::run_with_stats(
        listeners,
        config,
        Arc::new(Stats::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    (events, clients, stop, async move {
        let _ = server.await;
    })
}

async fn one_run(profile: Profile, events: u64) -> Report {
    let (event_port, client_port, stop, stopped) = start_server().await;
    let config = VerifyConfig {
        event_listener_port: event_port,
        client_listener_port: client_port,
        total_events: events,
        profile,
        log_interval: Duration::ZERO,
        log_level: followermaze_verify::LogLevel::Error,
        ..VerifyConfig::default()
    };
    let report = match followermaze_verify::run(config).await {
        Ok(report) => report,
        Err(failure) => panic!("end-to-end run failed: {failure}"),
    };
    let _ = stop.send(());
    stopped.await;
    report
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let events = env_number("E2E_EVENTS", 1_000_000);
    let runs = env_number("E2E_RUNS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (name, profile) in [("classic", Profile::Classic), ("fanout", Profile::Fanout)] {
        let mut events_per_sec = Vec::new();
        let mut notifications_per_sec = Vec::new();
        let mut bytes_per_sec = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..runs {
            let report = runtime.block_on(one_run(profile, events));
            let stream = report.stream_time.as_secs_f64().max(1e-9);
            events_per_sec.push(report.events as f64 / stream);
            notifications_per_sec.push(report.notifications as f64 / stream);
            bytes_per_sec.push(report.notification_bytes as f64 / stream);
            wall.push(report.elapsed.as_secs_f64());
        }
        println!(
            "end_to_end/{name}: {events} events, median of {runs}: {:.2} s wall, {:.2} M events/s, \
             {:.2} M notifications/s, {:.1} MB/s delivered",
            median(wall),
            median(events_per_sec) / 1e6,
            median(notifications_per_sec) / 1e6,
            median(bytes_per_sec) / 1e6,
        );
    }
}
