//! Wiring: binds nothing itself, takes the listeners and a shutdown future,
//! starts the pipeline, and tears it down in order.
//!
//! Shutdown order, and why: (1) stop accepting and stop reading sources, so
//! no new input arrives; (2) the sequencer, its inputs closed, releases what
//! is parked and stops the registry; (3) the registry tells every writer to
//! drain; (4) writers flush and close, within the drain timeout; (5) the
//! observers (metrics endpoint, log summary) stop last, so the final
//! numbers can still be read during the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::accept_clients;
use crate::config::Config;
use crate::lines::MAX_LINE_BYTES;
use crate::metrics::Health;
use crate::registry::Registry;
use crate::sequencer::Sequencer;
use crate::source::accept_sources;
use crate::stats::Stats;

/// The listening sockets the server serves.
#[derive(Debug)]
pub struct Listeners {
    /// Where the event source connects.
    pub events: TcpListener,
    /// Where user clients connect.
    pub clients: TcpListener,
    /// Where `/metrics` and `/healthz` are served; `None` turns them off.
    pub metrics: Option<TcpListener>,
}

/// A listener could not be bound.
#[derive(Debug)]
pub struct BindError {
    /// The configuration variable naming the port.
    pub variable: &'static str,
    /// The address we tried.
    pub address: SocketAddr,
    /// What the OS said.
    pub error: std::io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot listen on {} ({}): {}",
            self.address, self.variable, self.error
        )
    }
}

impl std::error::Error for BindError {}

impl Listeners {
    /// Binds the listeners as `config` says (the metrics one unless its port
    /// is 0).
    pub async fn bind(config: &Config) -> Result<Listeners, BindError> {
        async fn one(
            variable: &'static str,
            address: SocketAddr,
        ) -> Result<TcpListener, BindError> {
            listen(address).map_err(|error| BindError {
                variable,
                address,
                error,
            })
        }
        let ip = config.bind_address;
        Ok(Listeners {
            events: one(
                "eventListenerPort",
                SocketAddr::new(ip, config.event_listener_port),
            )
            .await?,
            clients: one(
                "clientListenerPort",
                SocketAddr::new(ip, config.client_listener_port),
            )
            .await?,
            metrics: match config.metrics_port {
                0 => None,
                port => Some(one("metricsPort", SocketAddr::new(ip, port)).await?),
            },
        })
    }
}

/// How many connections the kernel may queue before we accept them. The
/// standard library's 128 overflows when a few hundred clients connect at
/// once (each overflow costs the client a one-second SYN retry); the kernel
/// caps this at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` with `SO_REUSEADDR` (a restarted server need not wait
/// out `TIME_WAIT`) and [`LISTEN_BACKLOG`].
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A core task ended abnormally (a bug: it panicked).
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

/// Serves until `shutdown` completes, then drains and returns. See
/// [`run_with_stats`] to watch the counters.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with_stats(listeners, config, Arc::new(Stats::default()), shutdown).await
}

/// [`run`], counting into `stats`.
pub async fn run_with_stats(
    listeners: Listeners,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let addresses = (
        display_addr(&listeners.events),
        display_addr(&listeners.clients),
    );
    let stop_accepting = CancellationToken::new();
    let (registry, registry_handle) = Registry::new(config.registry(), stats.clone());
    let (sequencer, to_sequencer) =
        Sequencer::new(&config.sequencer(), registry_handle.clone(), stats.clone());

    let mut registry_task = tokio::spawn(registry.run());
    let mut sequencer_task = tokio::spawn(sequencer.run());
    let sources_task = tokio::spawn(accept_sources(
        listeners.events,
        to_sequencer,
        stats.clone(),
        MAX_LINE_BYTES,
        stop_accepting.clone(),
    ));
    let clients_task = tokio::spawn(accept_clients(
        listeners.clients,
        registry_handle,
        stats.clone(),
        config.clients(),
        stop_accepting.clone(),
    ));
    tracing::info!(
        events = %addresses.0,
        clients = %addresses.1,
        "followermaze listening"
    );
    // Observers only read `stats`; they outlive the drain so the last
    // numbers can still be scraped and logged, and stop once it is done.
    let stop_observers = CancellationToken::new();
    let mut observers = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.metrics {
        let health = Health {
            sources: sources_task.abort_handle(),
            clients: clients_task.abort_handle(),
            sequencer: sequencer_task.abort_handle(),
            registry: registry_task.abort_handle(),
        };
        observers.spawn(crate::metrics::serve(
            listener,
            stats.clone(),
            health,
            stop_observers.clone(),
        ));
    }
    if config.summary_interval_secs > 0 {
        let every = std::time::Duration::from_secs(config.summary_interval_secs);
        observers.spawn(crate::summary::run(
            stats.clone(),
            every,
            stop_observers.clone(),
        ));
    }

    let mut failure = None;
    tokio::select! {
        () = shutdown => tracing::info!("shutdown requested: draining"),
        ended = &mut registry_task => failure = Some(format!("registry task ended early: {ended:?}")),
        ended = &mut sequencer_task => failure = Some(format!("sequencer task ended early: {ended:?}")),
    }
    stop_accepting.cancel();
    let outcomes = [
        ("sources", sources_task.await),
        ("clients", clients_task.await),
    ];
    if failure.is_none() {
        for (name, handle) in [("sequencer", sequencer_task), ("registry", registry_task)] {
            if let Err(error) = handle.await {
                failure = Some(format!("{name} task failed: {error}"));
            }
        }
    }
    for (name, outcome) in outcomes {
        if let Err(error) = outcome {
            failure.get_or_insert(format!("{name} task failed: {error}"));
        }
    }
    stop_observers.cancel();
    while let Some(outcome) = observers.join_next().await {
        if let Err(error) = outcome {
            failure.get_or_insert(format!("observer task failed: {error}"));
        }
    }
    match failure {
        Some(message) => {
            tracing::error!(%message, "server stopped abnormally");
            Err(ServerError(message))
        }
        None => {
            tracing::info!("server stopped");
            Ok(())
        }
    }
}

/// A listener's bound address for the startup line.
fn display_addr(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(
        |error| format!("<unknown: {error}>"),
        |addr| addr.to_string(),
    )
}
