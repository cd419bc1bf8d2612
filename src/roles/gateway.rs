//! The gateway role: the standalone server's downstream half, fed from the
//! JetStream stream instead of a sequencer.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cluster::fetcher::{self, MIN_FETCH_QUEUE};
use crate::cluster::gateway::{Gateway, Lag};
use crate::cluster::jetstream::Log;
use crate::config::Config;
use crate::fanout::command::{Command, FetchRequest};
use crate::fanout::{Registry, RegistryHandle};
use crate::ops::metrics::Health;
use crate::ops::stats::Stats;
use crate::tasks::{
    display_addr, finish, serve_clients, wait_for_shutdown, Failure, Observers, ServerError, Task,
};

/// What the gateway role listens on.
#[derive(Debug)]
pub struct GatewayListeners {
    /// Where user clients connect.
    pub clients: TcpListener,
    /// Where browsers connect (the page, `/ws`, `/events`); `None` turns
    /// it off.
    pub web: Option<TcpListener>,
    /// `/metrics`, `/healthz`, `/readyz`; `None` turns them off.
    pub metrics: Option<TcpListener>,
}

/// Runs the gateway role until `shutdown` completes.
///
/// Start:
/// 1. **Registry**, as standalone.
/// 2. **Gateway**: connect to NATS (waiting for it and for the stream),
///    load the latest snapshot into the registry (graph, position, the
///    cluster's stream id), then consume the stream after it.
/// 3. **Clients** are accepted once the snapshot is in the registry, so
///    every client sees the cluster's stream id; `/readyz` says 503 until
///    the gateway has caught up.
/// 4. **Observers**.
///
/// Shutdown: not ready; stop accepting; stop consuming (the gateway stops
/// the registry, which drains the writers); wait for the clients.
pub async fn run_gateway(
    listeners: GatewayListeners,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    // 1. Registry, resuming sessions of other gateways from the stream.
    let (fetches, fetch_requests) = mpsc::channel(config.max_clients.max(MIN_FETCH_QUEUE));
    let (registry, handle) = Registry::new(config.registry(), stats.clone());
    let registry = Task::spawn("registry", registry.with_history(fetches).run());

    // 2. Gateway.
    let ready = Arc::new(AtomicBool::new(false));
    let lag = Lag {
        max: Duration::from_millis(config.max_lag_ms),
        lagging: Arc::new(AtomicBool::new(false)),
    };
    let stop_consuming = CancellationToken::new();
    let (restored_tx, restored) = oneshot::channel::<()>();
    let start = Start {
        config: config.clone(),
        registry: handle.clone(),
        stats: stats.clone(),
        ready: ready.clone(),
        lag: lag.clone(),
        fetch_requests,
        restored: restored_tx,
    };
    let gateway = Task::spawn("gateway", consume(start, stop_consuming.clone()));

    // 3. Clients, once the snapshot is in.
    let stop_input = CancellationToken::new();
    let address = display_addr(&listeners.clients);
    let clients = {
        let (stats, config, stop) = (stats.clone(), config.clone(), stop_input.clone());
        let (tcp, web) = (listeners.clients, listeners.web);
        async move {
            tokio::select! {
                () = stop.cancelled() => return,
                restored = restored => if restored.is_err() { return },
            }
            serve_clients(tcp, web, handle, stats, &config, stop).await;
        }
    };
    let clients = Task::spawn("clients", clients);
    tracing::info!(clients = %address, "followermaze gateway listening");

    // 4. Observers.
    let watched = vec![
        ("clients", clients.handle.abort_handle()),
        ("gateway", gateway.handle.abort_handle()),
        ("registry", registry.handle.abort_handle()),
    ];
    let health = Health::watching(watched, ready.clone()).with_lag(lag.lagging);
    let interval = config.summary_interval_secs;
    let observers = Observers::start(listeners.metrics, interval, &stats, health);

    // Shutdown.
    let pipeline = Pipeline {
        registry,
        gateway,
        clients,
        stop_input,
        stop_consuming,
    };
    let mut failures = pipeline.shut_down(shutdown, &ready).await;
    failures.extend(observers.stop().await);
    finish(failures)
}

/// What the gateway task starts from.
struct Start {
    /// The stream's settings and the graph's bound.
    config: Config,
    /// Where the batches go.
    registry: RegistryHandle,
    /// Counters.
    stats: Arc<Stats>,
    /// `/readyz`: set once caught up with the stream.
    ready: Arc<AtomicBool>,
    /// `/readyz` again: how far behind the stream the gateway may be.
    lag: Lag,
    /// The registry's resumes from the stream, for the fetcher.
    fetch_requests: mpsc::Receiver<FetchRequest>,
    /// Told once the snapshot is in the registry; dropped if it never is,
    /// which keeps the client listener shut.
    restored: oneshot::Sender<()>,
}

/// Start step 2 and the gateway's life: open the stream, start the
/// fetcher, restore the latest snapshot, then consume until `stop`.
async fn consume(start: Start, stop: CancellationToken) {
    let registry = start.registry.clone();
    let gateway = tokio::select! {
        () = stop.cancelled() => None,
        gateway = open(start) => gateway,
    };
    match gateway {
        Some(gateway) => gateway.run(stop).await,
        // Stopped before the stream was reached: stop the registry (if it
        // is gone already, there is nobody left to stop).
        None => drop(registry.send(Command::Shutdown).await),
    }
}

/// Opens the stream (waiting for NATS), starts the fetcher on a connection
/// of its own, and restores the registry from the latest snapshot; `None`
/// if the registry is gone.
async fn open(start: Start) -> Option<Gateway> {
    let Start {
        config,
        registry,
        stats,
        ready,
        lag,
        fetch_requests,
        restored,
    } = start;
    let settings = config.stream();
    let log = Log::open(&settings, false).await;
    // Resume fetches read on a connection of their own: a burst of them
    // must not push the live consumer's connection past nats-server's
    // pending limit (it would drop both).
    let fetch_log = Log::open(&settings, false).await;
    // Ends when the registry drops its sender.
    let max_edges = config.max_follow_edges;
    tokio::spawn(fetcher::serve(
        fetch_log,
        fetch_requests,
        registry.clone(),
        max_edges,
    ));
    let snapshot = Gateway::first_snapshot(&log, max_edges).await;
    let mut gateway = Gateway::new(log, registry, max_edges, stats, (ready, lag));
    if !gateway.restore(snapshot).await {
        return None;
    }
    // The client loop may have stopped already; then nobody waits.
    let _ = restored.send(());
    Some(gateway)
}

/// The gateway role's tasks, each waited for at shutdown.
struct Pipeline {
    /// The actor; stopped by the gateway.
    registry: Task,
    /// The stream's consumer.
    gateway: Task,
    /// The client accept loop and writers.
    clients: Task,
    /// Stops accepting clients.
    stop_input: CancellationToken,
    /// Stops consuming the stream.
    stop_consuming: CancellationToken,
}

impl Pipeline {
    /// Shutdown: wait, stop input and consuming, then wait for the
    /// gateway, the registry (it drains the writers) and the clients.
    async fn shut_down(
        mut self,
        shutdown: impl Future<Output = ()>,
        ready: &AtomicBool,
    ) -> Vec<Failure> {
        let core = (&mut self.registry, &mut self.gateway);
        let mut failures = wait_for_shutdown(shutdown, core, ready).await;
        self.stop_input.cancel();
        self.stop_consuming.cancel();
        failures.extend(self.gateway.join().await);
        failures.extend(self.registry.join().await);
        failures.extend(self.clients.join().await);
        failures
    }
}
