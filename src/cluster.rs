//! Wiring for the two cluster roles; the standalone server is in
//! [`crate::server`], and both follow its numbered steps.
//!
//! ```text
//! sequencer: source sockets -> source -> sequencer -> publisher -> JetStream
//! gateway:   JetStream -> gateway (consumer) -> registry -> outbox -> client sockets
//! ```
//!
//! The sequencer's batches go to a [`BatchSink`]: here the publisher, not
//! the registry. A gateway's registry gets the same [`crate::batch::OrderedBatch`]es,
//! rebuilt from the stream, so routing is the standalone server's.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch::OrderedBatch;
use crate::client::accept_clients;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::jetstream::Log;
use crate::lines::MAX_LINE_BYTES;
use crate::metrics::{Health, WatchedTasks};
use crate::publisher::{self, AnotherWriter, Publisher};
use crate::registry::Registry;
use crate::sequencer::Sequencer;
use crate::server::{display_addr, finish, Observers, ServerError, Task};
use crate::sink::BatchSink;
use crate::source::accept_sources;
use crate::stats::Stats;

/// What the sequencer role listens on.
#[derive(Debug)]
pub struct SequencerListeners {
    /// Where the event source connects.
    pub events: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`; `None` turns them off.
    pub metrics: Option<TcpListener>,
}

/// What the gateway role listens on.
#[derive(Debug)]
pub struct GatewayListeners {
    /// Where user clients connect.
    pub clients: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`; `None` turns them off.
    pub metrics: Option<TcpListener>,
}

/// Runs the sequencer role until `shutdown` completes.
///
/// Start (the observers first: `/healthz` 200 and `/readyz` 503 until step
/// 4, so a sequencer waiting for NATS says so):
/// 1. **Stream**: connect to NATS (waiting for it), create or update the
///    stream and the snapshot bucket, and recover: the latest snapshot
///    plus the stream after it give the graph, the last event sequence and
///    the stream id a previous sequencer left.
/// 2. **Publisher**: writes a snapshot at once (gateways start from it),
///    then publishes what the sequencer sends.
/// 3. **Sequencer**: carries on after the stream's last event; its sink is
///    the publisher.
/// 4. **Sources** are accepted; the observers watch the tasks, and
///    `/readyz` says 200.
///
/// Shutdown: stop input, wait for the sources, the sequencer (it releases
/// what is parked), then the publisher (it publishes what it holds and
/// waits for every ack, at most `drainTimeoutMs` past the others).
pub async fn run_sequencer(
    listeners: SequencerListeners,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    // The endpoint first, so that while NATS is awaited `/healthz` says
    // the process is alive and `/readyz` that it takes no source yet.
    let ready = Arc::new(AtomicBool::new(false));
    let watched = WatchedTasks::default();
    let health = Health {
        tasks: watched.clone(),
        ready: ready.clone(),
    };
    let observers = Observers::start(listeners.metrics, &config, &stats, health);

    // 1. and 2. wait for NATS as long as it takes, unless shutdown comes
    // first: nothing was accepted yet, so there is nothing to drain.
    let mut shutdown = std::pin::pin!(shutdown);
    let (publisher, to_publisher, position) = tokio::select! {
        started = start_publisher(&config, &stats) => started,
        () = &mut shutdown => {
            tracing::info!("shutdown requested before the stream could be opened: nothing to drain");
            return finish(observers.stop().await);
        }
    };
    // The one way a publisher fails: another sequencer wrote to the stream.
    // Its reason comes back here, for the role's error and exit status.
    let (another_writer_tx, mut another_writer) = oneshot::channel::<AnotherWriter>();
    let mut publisher = Task::spawn("publisher", async move {
        if let Err(another) = publisher.run().await {
            // The receiver lives until the publisher has been joined below.
            let _ = another_writer_tx.send(another);
        }
    });

    // 3. Sequencer.
    let (sequencer, to_sequencer) = Sequencer::new(
        &config.sequencer(),
        BatchSink::Publisher(to_publisher),
        stats.clone(),
    );
    let mut sequencer = Task::spawn("sequencer", sequencer.starting_after(position).run());

    // 4. Sources and observers.
    let stop_input = CancellationToken::new();
    let address = display_addr(&listeners.events);
    let mut sources = Task::spawn(
        "sources",
        accept_sources(
            listeners.events,
            to_sequencer,
            stats.clone(),
            MAX_LINE_BYTES,
            stop_input.clone(),
        ),
    );
    tracing::info!(events = %address, "followermaze sequencer listening");
    let _ = watched.set(vec![
        ("sources", sources.handle.abort_handle()),
        ("sequencer", sequencer.handle.abort_handle()),
        ("publisher", publisher.handle.abort_handle()),
    ]);
    ready.store(true, Ordering::Relaxed);

    // Shutdown.
    let mut failures = Vec::new();
    let ended_early = tokio::select! {
        () = &mut shutdown => None,
        _ = sequencer.join() => Some(sequencer.name),
        _ = publisher.join() => Some(publisher.name),
    };
    ready.store(false, Ordering::Relaxed);
    match ended_early {
        None => tracing::info!("shutdown requested: draining"),
        Some(name) => failures.push(format!("{name} task ended early")),
    }
    stop_input.cancel();
    // One deadline for the whole drain: with NATS away, the publisher
    // cannot empty its window, the sequencer's queue to it stays full, and
    // a source can wait on that queue for ever.
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let drained = tokio::time::timeout(drain, async {
        let mut failures = Vec::new();
        failures.extend(sources.join().await);
        failures.extend(sequencer.join().await);
        failures.extend(publisher.join().await);
        failures
    })
    .await;
    match drained {
        Ok(drain_failures) => failures.extend(drain_failures),
        Err(_) => {
            for task in [&sources, &sequencer, &publisher] {
                task.handle.abort();
            }
            failures.push(format!(
                "could not publish what was released within drainTimeoutMs ({} ms; NATS away?): \
                 a source that resends from the stream's last sequence loses nothing",
                drain.as_millis()
            ));
        }
    }
    // The publisher has been joined by now, so an empty channel means it
    // did not fail (unless the drain timed out: then the timeout says why).
    if let Ok(AnotherWriter(why)) = another_writer.try_recv() {
        // The cause first: the tasks that "ended early" ended because of it.
        failures.insert(
            0,
            format!("another sequencer publishes to the stream, so this one stopped: {why}"),
        );
    }
    failures.extend(observers.stop().await);
    finish(failures)
}

/// Steps 1 and 2 of [`run_sequencer`]: the stream opened and recovered, a
/// first snapshot written, retrying each until NATS answers. Returns the
/// publisher, its input, and the last event sequence in the stream.
async fn start_publisher(
    config: &Config,
    stats: &Arc<Stats>,
) -> (Publisher, mpsc::Sender<OrderedBatch>, u64) {
    // 1. Stream.
    let log = Log::open(config, true).await;
    let recovered = loop {
        match publisher::recover(&log, config.max_follow_edges).await {
            Ok(recovered) => break recovered,
            Err(error) => {
                tracing::warn!(%error, "cannot recover the stream's state yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tracing::info!(
        stream_seq = recovered.stream_seq,
        position = recovered.position,
        edges = recovered.graph.edges(),
        stream = recovered.stream.as_str(),
        "sequencer: carrying on after the stream's last event"
    );
    let position = recovered.position;

    // 2. Publisher.
    let every = Duration::from_secs(config.snapshot_interval_secs);
    let (mut publisher, to_publisher) = Publisher::new(log, recovered, every, stats.clone());
    while let Err(error) = publisher.initial_snapshot().await {
        tracing::warn!(%error, "cannot write the first snapshot yet; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (publisher, to_publisher, position)
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
    let (fetches, fetch_requests) = tokio::sync::mpsc::channel(crate::history::FETCH_QUEUE);
    let (registry, registry_handle) = Registry::new(config.registry(), stats.clone());
    let registry = registry.with_history(fetches);
    let mut registry = Task::spawn("registry", registry.run());

    // 2. Gateway.
    let ready = Arc::new(AtomicBool::new(false));
    let stop_consuming = CancellationToken::new();
    let (restored_tx, restored_rx) = oneshot::channel::<()>();
    let gateway = {
        let (config, handle, stats, ready) = (
            config.clone(),
            registry_handle.clone(),
            stats.clone(),
            ready.clone(),
        );
        let stop = stop_consuming.clone();
        async move {
            let work = async {
                let log = Log::open(&config, false).await;
                // Resume fetches read on a connection of their own: a burst
                // of them must not push the live consumer's connection past
                // nats-server's pending limit (it would drop both).
                let fetch_log = Log::open(&config, false).await;
                // Ends when the registry drops its sender.
                tokio::spawn(crate::history::serve(
                    fetch_log,
                    fetch_requests,
                    handle.clone(),
                ));
                let snapshot = Gateway::first_snapshot(&log, config.max_follow_edges).await;
                let mut gateway =
                    Gateway::new(log, handle.clone(), config.max_follow_edges, stats, ready);
                if !gateway.restore(snapshot).await {
                    // The registry is gone: dropping `restored_tx` keeps
                    // the client listener shut.
                    return None;
                }
                // The client loop may have stopped already; then nobody waits.
                let _ = restored_tx.send(());
                Some(gateway)
            };
            let gateway = tokio::select! {
                () = stop.cancelled() => None,
                gateway = work => gateway,
            };
            match gateway {
                Some(gateway) => gateway.run(stop).await,
                // Stopped before the stream was reached: stop the registry.
                None => drop(handle.send(crate::registry::Command::Shutdown).await),
            }
        }
    };
    let mut gateway = Task::spawn("gateway", gateway);

    // 3. Clients.
    let stop_input = CancellationToken::new();
    let address = display_addr(&listeners.clients);
    let clients = {
        let (stats, settings, stop) = (stats.clone(), config.clients(), stop_input.clone());
        let listener = listeners.clients;
        async move {
            tokio::select! {
                () = stop.cancelled() => return,
                restored = restored_rx => if restored.is_err() { return },
            }
            accept_clients(listener, registry_handle, stats, settings, stop).await;
        }
    };
    let mut clients = Task::spawn("clients", clients);
    tracing::info!(clients = %address, "followermaze gateway listening");

    // 4. Observers.
    let health = Health::watching(
        vec![
            ("clients", clients.handle.abort_handle()),
            ("gateway", gateway.handle.abort_handle()),
            ("registry", registry.handle.abort_handle()),
        ],
        ready.clone(),
    );
    let observers = Observers::start(listeners.metrics, &config, &stats, health);

    // Shutdown.
    let mut failures = Vec::new();
    let ended_early = tokio::select! {
        () = shutdown => None,
        _ = registry.join() => Some(registry.name),
        _ = gateway.join() => Some(gateway.name),
    };
    ready.store(false, Ordering::Relaxed);
    match ended_early {
        None => tracing::info!("shutdown requested: draining"),
        Some(name) => failures.push(format!("{name} task ended early")),
    }
    stop_input.cancel();
    stop_consuming.cancel();
    failures.extend(gateway.join().await);
    failures.extend(registry.join().await);
    failures.extend(clients.join().await);
    failures.extend(observers.stop().await);
    finish(failures)
}
