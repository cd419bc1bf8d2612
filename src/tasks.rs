//! What the three wirings (the standalone server and the two cluster roles)
//! share: a named task that can be waited for more than once, the
//! observers, the first shutdown step, and how a run ends.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::client::{accept_clients, Clients};
use crate::fanout::RegistryHandle;
use crate::ops::metrics::{self, Health};
use crate::ops::stats::Stats;
use crate::ops::summary;
use crate::web::serve_web;

/// Something that went wrong in a run, in the order shutdown saw it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A core task ended before shutdown was requested (a bug, or the
    /// cause named before it).
    #[error("{0} task ended early")]
    EndedEarly(&'static str),
    /// A task panicked or was aborted.
    #[error("{task} task failed: {source}")]
    Task {
        /// The task's name.
        task: &'static str,
        /// How it ended.
        #[source]
        source: JoinError,
    },
    /// The sequencer role could not publish what it had released before
    /// `drainTimeoutMs`.
    #[error(
        "could not publish what was released within drainTimeoutMs ({millis} ms; NATS away?): \
         a source that resends from the stream's last sequence loses nothing"
    )]
    Undrained {
        /// The drain timeout.
        millis: u128,
    },
    /// Another sequencer wrote to the stream, so this one stopped.
    #[error("another sequencer publishes to the stream, so this one stopped: {0}")]
    AnotherSequencer(String),
}

/// The server stopped abnormally: a task panicked, a core task ended
/// before shutdown was requested, or a cluster role could not go on. Holds
/// every failure seen, in shutdown order (a cause before its effects).
#[derive(Debug)]
pub struct ServerError {
    /// What went wrong; never empty.
    pub failures: Vec<Failure>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, failure) in self.failures.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .first()
            .map(|failure| failure as &(dyn std::error::Error + 'static))
    }
}

/// How a run ends, logged: `Ok` if nothing failed, else every failure in
/// one [`ServerError`].
pub(crate) fn finish(failures: Vec<Failure>) -> Result<(), ServerError> {
    if failures.is_empty() {
        tracing::info!("server stopped");
        Ok(())
    } else {
        let error = ServerError { failures };
        tracing::error!(message = %error, "server stopped abnormally");
        Err(error)
    }
}

/// Shutdown step 1 of every wiring: waits for `shutdown`, or for one of
/// the two core tasks to end on its own (a bug: returned as failures, with
/// how it ended); then says the process is no longer ready.
pub(crate) async fn wait_for_shutdown(
    shutdown: impl Future<Output = ()>,
    (first, second): (&mut Task, &mut Task),
    ready: &AtomicBool,
) -> Vec<Failure> {
    let names = (first.name, second.name);
    let ended_early = tokio::select! {
        () = shutdown => None,
        failed = first.join() => Some((names.0, failed)),
        failed = second.join() => Some((names.1, failed)),
    };
    ready.store(false, Ordering::Relaxed);
    match ended_early {
        None => {
            tracing::info!("shutdown requested: draining");
            Vec::new()
        }
        Some((name, failed)) => std::iter::once(Failure::EndedEarly(name))
            .chain(failed)
            .collect(),
    }
}

/// A task of a wiring, and how it ended once it has: shutdown step 1 may
/// see a core task end before that task's own step comes, and a
/// `JoinHandle` can be awaited to its end only once.
pub(crate) struct Task {
    /// Names the task in errors.
    pub(crate) name: &'static str,
    /// The spawned task.
    pub(crate) handle: JoinHandle<()>,
    /// `None` until [`Task::join`] has seen it end; then how it failed,
    /// until that is reported.
    ended: Option<Option<JoinError>>,
}

impl Task {
    /// Spawns `task` on the runtime under `name`.
    pub(crate) fn spawn(
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Task {
        Task {
            name,
            handle: tokio::spawn(task),
            ended: None,
        }
    }

    /// Waits until the task has ended (at once if it already has; cancel
    /// safe); returns what went wrong if it panicked or was aborted, the
    /// first time it is asked after the end.
    pub(crate) async fn join(&mut self) -> Option<Failure> {
        if self.ended.is_none() {
            self.ended = Some((&mut self.handle).await.err());
        }
        let source = self.ended.as_mut().and_then(Option::take)?;
        Some(Failure::Task {
            task: self.name,
            source,
        })
    }
}

/// The tasks that only read the counters: started after the pipeline (or
/// before it, in a role that waits for NATS) and stopped last, so the
/// final numbers can still be scraped and logged during the drain.
pub(crate) struct Observers {
    /// The metrics endpoint and the log summary, whichever are on.
    tasks: JoinSet<()>,
    /// Cancelled by [`Observers::stop`].
    stop: CancellationToken,
}

impl Observers {
    /// The metrics endpoint if it has a listener, the summary if it has an
    /// interval (`summaryIntervalSecs`, 0 = off).
    pub(crate) fn start(
        metrics: Option<TcpListener>,
        summary_interval_secs: u64,
        stats: &Arc<Stats>,
        health: Health,
    ) -> Observers {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        if let Some(listener) = metrics {
            tasks.spawn(metrics::serve(
                listener,
                stats.clone(),
                health,
                stop.clone(),
            ));
        }
        if summary_interval_secs > 0 {
            let every = std::time::Duration::from_secs(summary_interval_secs);
            tasks.spawn(summary::run(stats.clone(), every, stop.clone()));
        }
        Observers { tasks, stop }
    }

    /// Stops them; returns what went wrong.
    pub(crate) async fn stop(mut self) -> Vec<Failure> {
        self.stop.cancel();
        let mut failures = Vec::new();
        while let Some(outcome) = self.tasks.join_next().await {
            if let Err(source) = outcome {
                failures.push(Failure::Task {
                    task: "observer",
                    source,
                });
            }
        }
        failures
    }
}

/// A listener's bound address for the startup line.
pub(crate) fn display_addr(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(
        |error| format!("<unknown: {error}>"),
        |addr| addr.to_string(),
    )
}

/// Every client listener of one registry: the TCP one, and the web one
/// when `web` is given; until `stop`, then until their connections drain.
pub(crate) fn serve_clients(
    tcp: TcpListener,
    web: Option<TcpListener>,
    registry: RegistryHandle,
    stats: Arc<Stats>,
    config: &Config,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let clients = Clients::new(registry, stats, config.clients());
    let web_settings = config.web();
    async move {
        let tcp = accept_clients(tcp, clients.clone(), stop.clone());
        match web {
            Some(web) => {
                let web = serve_web(web, clients, web_settings, stop);
                tokio::join!(tcp, web);
            }
            None => tcp.await,
        }
    }
}
