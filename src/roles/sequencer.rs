//! The sequencer role: the standalone server's upstream half, publishing
//! its ordered batches to the JetStream stream.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::batch::OrderedBatch;
use crate::cluster::jetstream::Log;
use crate::cluster::publisher::{self, AnotherWriter, Publisher, SnapshotPolicy};
use crate::cluster::snapshots;
use crate::config::Config;
use crate::ingest::lines::MAX_LINE_BYTES;
use crate::ingest::source::accept_sources;
use crate::ops::metrics::{Health, WatchedTasks};
use crate::ops::stats::Stats;
use crate::order::sequencer::Sequencer;
use crate::order::sink::BatchSink;
use crate::tasks::{
    display_addr, finish, wait_for_shutdown, Failure, Observers, ServerError, Task,
};

/// What the sequencer role listens on.
#[derive(Debug)]
pub struct SequencerListeners {
    /// Where the event source connects.
    pub events: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`; `None` turns them off.
    pub metrics: Option<TcpListener>,
}

/// How long to wait before asking NATS again while the role starts.
const START_RETRY: Duration = Duration::from_millis(500);

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
        lagging: Arc::new(AtomicBool::new(false)),
    };
    let interval = config.summary_interval_secs;
    let observers = Observers::start(listeners.metrics, interval, &stats, health);

    // 1. and 2. wait for NATS as long as it takes, unless shutdown comes
    // first: nothing was accepted yet, so there is nothing to drain.
    let mut shutdown = std::pin::pin!(shutdown);
    let started = tokio::select! {
        started = start_publisher(&config, &stats) => started,
        () = &mut shutdown => {
            tracing::info!("shutdown requested before the stream could be opened: nothing to drain");
            return finish(observers.stop().await);
        }
    };
    // 3. and 4.
    let pipeline = Pipeline::start(started, listeners.events, &config, &stats);
    // Set once, here: nothing else sets it.
    let _ = watched.set(pipeline.watched());
    ready.store(true, Ordering::Relaxed);

    let drain = Duration::from_millis(config.drain_timeout_ms);
    let mut failures = pipeline.shut_down(shutdown, &ready, drain).await;
    failures.extend(observers.stop().await);
    finish(failures)
}

/// What start steps 1 and 2 hand on: the publisher, its input, and the
/// last event sequence in the stream.
type Started = (Publisher, mpsc::Sender<OrderedBatch>, u64);

/// Steps 1 and 2 of [`run_sequencer`]: the stream opened and recovered, a
/// first snapshot written, retrying each until NATS answers.
async fn start_publisher(config: &Config, stats: &Arc<Stats>) -> Started {
    // 1. Stream.
    let log = Log::open(&config.stream(), true).await;
    let recovered = loop {
        match publisher::recover(&log, config.max_follow_edges).await {
            Ok(recovered) => break recovered,
            Err(error) => {
                tracing::warn!(%error, "cannot recover the stream's state yet; retrying");
                tokio::time::sleep(START_RETRY).await;
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
    let policy = SnapshotPolicy {
        every: Duration::from_secs(config.snapshot_interval_secs),
        kept: snapshots::kept_for(config.resume_window_secs, config.snapshot_interval_secs),
    };
    let (mut publisher, to_publisher) = Publisher::new(log, recovered, policy, stats.clone());
    while let Err(error) = publisher.initial_snapshot().await {
        tracing::warn!(%error, "cannot write the first snapshot yet; retrying");
        tokio::time::sleep(START_RETRY).await;
    }
    (publisher, to_publisher, position)
}

/// The tasks of start steps 2 to 4, each waited for at shutdown.
struct Pipeline {
    /// Publishes what the sequencer releases; waited for last.
    publisher: Task,
    /// Orders the sources' events.
    sequencer: Task,
    /// Accepts and reads event sources; stopped first.
    sources: Task,
    /// Cancelled first at shutdown: stops accepting and reading sources.
    stop_input: CancellationToken,
    /// The one way a publisher fails: another sequencer wrote to the
    /// stream. Its reason comes back here, for the role's error.
    another_writer: oneshot::Receiver<AnotherWriter>,
}

impl Pipeline {
    /// Start steps 2 (the publisher's task) to 4.
    fn start(
        (publisher, to_publisher, position): Started,
        events: TcpListener,
        config: &Config,
        stats: &Arc<Stats>,
    ) -> Pipeline {
        let (another_writer_tx, another_writer) = oneshot::channel::<AnotherWriter>();
        let publisher = Task::spawn("publisher", async move {
            if let Err(another) = publisher.run().await {
                // The receiver lives until the publisher has been joined.
                let _ = another_writer_tx.send(another);
            }
        });

        // 3. Sequencer.
        let sink = BatchSink::Publisher(to_publisher);
        let (sequencer, to_sequencer) = Sequencer::new(&config.sequencer(), sink, stats.clone());
        let sequencer = Task::spawn("sequencer", sequencer.starting_after(position).run());

        // 4. Sources.
        let stop_input = CancellationToken::new();
        let address = display_addr(&events);
        let (stop, settings) = (stop_input.clone(), config.sources(MAX_LINE_BYTES));
        let accept = accept_sources(events, to_sequencer, stats.clone(), settings, stop);
        let sources = Task::spawn("sources", accept);
        tracing::info!(events = %address, "followermaze sequencer listening");
        Pipeline {
            publisher,
            sequencer,
            sources,
            stop_input,
            another_writer,
        }
    }

    /// What `/healthz` watches.
    fn watched(&self) -> Vec<(&'static str, tokio::task::AbortHandle)> {
        vec![
            ("sources", self.sources.handle.abort_handle()),
            ("sequencer", self.sequencer.handle.abort_handle()),
            ("publisher", self.publisher.handle.abort_handle()),
        ]
    }

    /// Shutdown: wait, stop input, then drain sources, sequencer and
    /// publisher within one deadline; returns what went wrong.
    async fn shut_down(
        mut self,
        shutdown: impl Future<Output = ()>,
        ready: &AtomicBool,
        drain: Duration,
    ) -> Vec<Failure> {
        let core = (&mut self.sequencer, &mut self.publisher);
        let mut failures = wait_for_shutdown(shutdown, core, ready).await;
        self.stop_input.cancel();
        // One deadline for the whole drain: with NATS away, the publisher
        // cannot empty its window, the sequencer's queue to it stays full,
        // and a source can wait on that queue for ever.
        let drained = tokio::time::timeout(drain, async {
            let mut failures = Vec::new();
            failures.extend(self.sources.join().await);
            failures.extend(self.sequencer.join().await);
            failures.extend(self.publisher.join().await);
            failures
        })
        .await;
        match drained {
            Ok(drain_failures) => failures.extend(drain_failures),
            Err(_) => {
                for task in [&self.sources, &self.sequencer, &self.publisher] {
                    task.handle.abort();
                }
                let millis = drain.as_millis();
                failures.push(Failure::Undrained { millis });
            }
        }
        // The publisher has been joined by now, so an empty channel means
        // it did not fail (unless the drain timed out: then that says why).
        if let Ok(AnotherWriter(why)) = self.another_writer.try_recv() {
            // The cause first: the tasks that "ended early" ended of it.
            failures.insert(0, Failure::AnotherSequencer(why));
        }
        failures
    }
}
