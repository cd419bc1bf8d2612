//! Wiring: binds nothing itself, takes the listeners and a shutdown future,
//! starts the pipeline, and tears it down in order. [`run_with_stats`]
//! lists the steps; the code below follows them one by one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::Registry;
use crate::ingest::lines::MAX_LINE_BYTES;
use crate::ingest::source::accept_sources;
use crate::ops::metrics::Health;
use crate::ops::stats::Stats;
use crate::order::sequencer::Sequencer;
use crate::order::sink::BatchSink;
use crate::tasks::{
    display_addr, finish, serve_clients, wait_for_shutdown, Failure, Observers, ServerError, Task,
};

/// The listening sockets the server serves.
#[derive(Debug)]
pub struct Listeners {
    /// Where the event source connects.
    pub events: TcpListener,
    /// Where user clients connect.
    pub clients: TcpListener,
    /// Where browsers connect (the page, `/ws`, `/events`); `None` turns
    /// it off.
    pub web: Option<TcpListener>,
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
    /// Binds the listeners as `config` says (the web and metrics ones
    /// unless their port is 0).
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
                SocketAddr::new(config.event_address(), config.event_listener_port),
            )
            .await?,
            clients: one(
                "clientListenerPort",
                SocketAddr::new(ip, config.client_listener_port),
            )
            .await?,
            web: match config.web_port {
                0 => None,
                port => Some(one("webPort", SocketAddr::new(ip, port)).await?),
            },
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
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` with `SO_REUSEADDR` (a restarted server need not wait
/// out `TIME_WAIT`) and a backlog of `LISTEN_BACKLOG` (4096).
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
///
/// Start, downstream first, so every queue has its receiver before anything
/// is sent on it:
/// 1. **Registry**: the actor that owns the follower graph and the clients.
/// 2. **Sequencer**: owns the reorder window; sends the registry ordered
///    batches.
/// 3. **Accept loops**: event sources feed the sequencer; clients register
///    with the registry. The server now listens.
/// 4. **Observers**: the metrics endpoint (its `/healthz` watches the tasks
///    of steps 1 to 3) and the periodic log summary.
///
/// Shutdown, upstream first, so nothing in flight is lost:
/// 1. **Wait** for `shutdown`, or for the registry or the sequencer to end
///    on its own (a bug, reported in the error).
/// 2. **Stop input**: stop accepting and stop reading sources; wait for the
///    source tasks, whose last events are then with the sequencer.
/// 3. **Release**: the sequencer, its inputs closed, releases what is
///    parked, in order, and stops the registry; wait for it.
/// 4. **Drain**: the registry tells every writer to drain; wait for it,
///    then for the writers to flush and close (at most `drainTimeoutMs`).
/// 5. **Observers** stop last, so the final numbers can still be scraped
///    and logged during the drain.
pub async fn run_with_stats(
    listeners: Listeners,
    config: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Listeners {
        events,
        clients,
        web,
        metrics,
    } = listeners;
    // Start steps 1 to 3, then 4.
    let pipeline = Pipeline::start(events, (clients, web), &config, &stats);
    let health = pipeline.health();
    let observers = Observers::start(metrics, config.summary_interval_secs, &stats, health);
    // Shutdown steps 1 to 4, then 5.
    let mut failures = pipeline.shut_down(shutdown).await;
    failures.extend(observers.stop().await);
    finish(failures)
}

/// The tasks of start steps 1 to 3, each waited for in its shutdown step.
struct Pipeline {
    /// Start step 1; waited for in shutdown step 4.
    registry: Task,
    /// Start step 2; waited for in shutdown step 3.
    sequencer: Task,
    /// Start step 3, event sources; waited for in shutdown step 2.
    sources: Task,
    /// Start step 3, clients and their writers; waited for in shutdown
    /// step 4, after the registry has told the writers to drain.
    clients: Task,
    /// Cancelled in shutdown step 2: stops both accept loops and the
    /// source reads.
    stop_input: CancellationToken,
    /// `/readyz`: cleared in shutdown step 1.
    ready: Arc<AtomicBool>,
}

impl Pipeline {
    /// Start steps 1 to 3.
    fn start(
        events: TcpListener,
        (clients, web): (TcpListener, Option<TcpListener>),
        config: &Config,
        stats: &Arc<Stats>,
    ) -> Pipeline {
        let addresses = (display_addr(&events), display_addr(&clients));
        let web_address = web.as_ref().map_or_else(|| "off".to_owned(), display_addr);

        // 1. Registry.
        let (registry, registry_handle) = Registry::new(config.registry(), stats.clone());
        let registry = Task::spawn("registry", registry.run());

        // 2. Sequencer.
        let (sequencer, to_sequencer) = Sequencer::new(
            &config.sequencer(),
            BatchSink::Registry(registry_handle.clone()),
            stats.clone(),
        );
        let sequencer = Task::spawn("sequencer", sequencer.run());

        // 3. Accept loops.
        let stop_input = CancellationToken::new();
        let sources = Task::spawn(
            "sources",
            accept_sources(
                events,
                to_sequencer,
                stats.clone(),
                config.sources(MAX_LINE_BYTES),
                stop_input.clone(),
            ),
        );
        let clients = Task::spawn(
            "clients",
            serve_clients(
                clients,
                web,
                registry_handle,
                stats.clone(),
                config,
                stop_input.clone(),
            ),
        );
        tracing::info!(
            events = %addresses.0,
            clients = %addresses.1,
            web = %web_address,
            "followermaze listening"
        );

        Pipeline {
            registry,
            sequencer,
            sources,
            clients,
            stop_input,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// What `/healthz` watches: every task of start steps 1 to 3; and
    /// `/readyz`, ready until shutdown starts.
    fn health(&self) -> Health {
        Health::watching(
            vec![
                ("sources", self.sources.handle.abort_handle()),
                ("clients", self.clients.handle.abort_handle()),
                ("sequencer", self.sequencer.handle.abort_handle()),
                ("registry", self.registry.handle.abort_handle()),
            ],
            self.ready.clone(),
        )
    }

    /// Shutdown steps 1 to 4; returns what went wrong.
    async fn shut_down(mut self, shutdown: impl Future<Output = ()>) -> Vec<Failure> {
        // 1. Wait.
        let core = (&mut self.registry, &mut self.sequencer);
        let mut failures = wait_for_shutdown(shutdown, core, &self.ready).await;

        // 2. Stop input.
        self.stop_input.cancel();
        failures.extend(self.sources.join().await);

        // 3. Release.
        failures.extend(self.sequencer.join().await);

        // 4. Drain.
        failures.extend(self.registry.join().await);
        failures.extend(self.clients.join().await);

        failures
    }
}
