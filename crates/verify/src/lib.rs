//! The verifier: a load generator that proves a follower-maze server
//! correct, for ours or anyone's.
//!
//! It connects `concurrencyLevel` clients, opens the stream with broadcasts
//! until every client has received one (the only sign of registration the
//! protocol offers), then streams the rest of `totalEvents` events in
//! shuffled batches, deterministic from `randomSeed`. It models the follower
//! graph itself and checks every client's notifications byte for byte, in
//! order, as they arrive, with memory proportional to clients, never to
//! events. The last event is a broadcast, so every client knows when it has
//! everything.
//!
//! ```text
//!            generator --> source thread ----- events ----> server
//!         (graph model)       |  queue expected entries        |
//!                             v  (bounded, per client)         v
//!                          checkers <-- client readers <-- notifications
//! ```
//!
//! With `resumable=true` every client speaks the resumable protocol: its
//! reader drops the connection now and then (`killswitchMs`), stays away
//! (`offlineMs`), reconnects and checks the verdict, the replay and every
//! checkpoint against what it was owed (see `session` and `reader`).
//!
//! With `authSecret` (the server's token secret) every connection carries a
//! signed token: the source's first line is `#AUTH|<token>`, and each client
//! handshake ends in `|<token>` for its user, which only the resumable
//! handshake can carry, so such a run is resumable (see `credentials`).
//!
//! With `transport=ws` or `sse` the clients connect to the server's web
//! listener instead, over WebSocket or Server-Sent Events, each connection
//! a resumable session (so such a run is resumable too). Each connection
//! reads back as the byte stream a resumable TCP connection gets (see
//! `connection` and `web`), and is checked as one: byte for byte over
//! WebSocket, line for line over SSE, whose framing hides the bytes.
//!
//! # API
//!
//! [`run`] takes a [`VerifyConfig`] (read from the environment with
//! [`VerifyConfig::from_env`]'s table, [`SETTINGS`]) and returns a
//! [`Report`] or the first [`Failure`]; the types those carry are exported
//! beside them. [`sink()`] is the discard server. Everything else is
//! private to the crate.
//!
//! # Layout
//!
//! Pure logic (no I/O):
//! - `config`: settings from the classic environment variables.
//! - `credentials`: the tokens of `authSecret`, and where they go in a
//!   handshake or a source's first line.
//! - `hello`: a client connection's handshake, as each transport spells
//!   it.
//! - `web`: the web listener's wire as a client reads it: WebSocket
//!   payloads, Server-Sent Events and their chunked HTTP body.
//! - `rng`: the deterministic random numbers.
//! - `line`: generated events and their exact wire bytes.
//! - `graph`: the model of who follows whom and who is connected.
//! - `opening`: the opening broadcasts' tick, and how far a probe got.
//! - `generator`: the stream: batches, their shuffle, who is owed what.
//! - `expect`: per-client tallies and the expectation entries.
//! - `check`: one client's received lines against what it is owed.
//! - `session`: a resumable client's side of the protocol: handshakes,
//!   verdicts, checkpoints.
//! - `drops`: when and how a resumable client drops its connection.
//! - `latency`: send times per chunk, latency histograms.
//! - `failure`, `report`: how a run ends; `server_usage`: the server's CPU
//!   time over it, when its `/metrics` tells.
//!
//! Threads, tasks and sockets:
//! - `source`: the event source thread: opening, generate, write.
//! - `connection`: a client's connection over any transport, read as the
//!   byte stream a TCP client gets.
//! - `probe`: a resumable run opens its stream before its clients connect.
//! - `reader`: one task per client connection.
//! - `shared`: the state they share (first failure, plan, counters).
//! - `progress`: progress lines or a progress bar.
//! - `sink`: a discard server, to measure the verifier's own ceiling.
//! - [`run`] (here): connects everything, starts it, waits for it and
//!   reports: four stages, one function each.
//!
//! Imports between these modules go one way: no two use each other, even
//! through a third (`tests/layout.rs` checks it).

// A `Failure` names the client and, on a resumable run, its connection,
// which makes it larger than clippy likes in a `Result`. It is built once,
// when a run fails; boxing it would buy nothing and cost the hot path's
// `Result`s an indirection (STYLE: hot paths do not box errors).
#![allow(clippy::result_large_err)]

mod check;
mod config;
mod connection;
mod credentials;
mod drops;
mod expect;
mod failure;
mod generator;
mod graph;
mod hello;
mod latency;
mod line;
mod opening;
mod probe;
mod progress;
mod reader;
mod report;
mod rng;
mod server_usage;
mod session;
mod shared;
mod sink;
mod source;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

// The crate's API: everything a caller needs to run a verification and read
// its outcome, and the sink. The modules themselves are private.
pub use config::{
    AuthSecret, ConfigError, LineEndings, LogLevel, Transport, VerifyConfig, SETTINGS,
};
pub use drops::DropKind;
pub use expect::Tally;
pub use failure::{
    ByteDiff, CheckpointProblem, ClientRef, ConnectionRef, Failure, Progress, VerdictProblem,
};
pub use generator::{MixCounts, Profile};
pub use latency::LatencySummary;
pub use report::{ClientSummary, Report, ResumeReport};
pub use server_usage::ServerUsage;
pub use session::ResumeStats;
pub use sink::{sink, SinkReport};

use check::Checker;
use connection::{Connection, OpenError};
use credentials::Credentials;
use drops::DropSchedule;
use expect::queue_capacity;
use generator::{client_users, GeneratorSettings};
use hello::{Hello, Start};
use latency::Latencies;
use line::LineWriter;
use opening::Opened;
use probe::Probed;
use reader::{read_client, ReaderOutcome, Resume};
use session::{Session, SessionSettings};
use shared::Shared;
use source::{Source, SourceOutcome, SourceSettings};

/// Runs one verification against the server `config` names. Needs a tokio
/// runtime with the `net` and `time` drivers; client readers run as tasks on
/// it, the event source on a thread of its own.
///
/// Returns the measurements on success, or the first thing that went
/// wrong. Bounded in time: every wait is under `config.timeout`.
pub async fn run(config: VerifyConfig) -> Result<Report, Failure> {
    config
        .validate()
        .map_err(|error| Failure::Config(error.to_string()))?;
    let started = Instant::now();
    let usage_before = scrape_server(&config).await;
    let connected = connect(&config)
        .await
        .map_err(|failure| hint_refusal(&config, failure))?;
    let running = start(&config, connected);
    let finished = join(running)
        .await
        .map_err(|failure| hint_refusal(&config, failure))?;
    let mut report = report(&config, finished, started)?;
    if let (Some(before), Some(after)) = (usage_before, scrape_server(&config).await) {
        let endpoint = format!("{}:{}", config.host, config.metrics_port);
        report.server = Some(ServerUsage::between(endpoint, before, after));
    }
    Ok(report)
}

/// What [`hint_refusal`] adds to a failure.
const REFUSAL_HINT: &str = " (authSecret is set: a server closes a connection whose token it \
                            refuses, without a reply; does it have the same authSecret?)";

/// `failure`, saying that it may be a refused token if it looks like one:
/// with `authSecret`, a server refuses a token by closing the connection,
/// which the verifier sees as a failed source write, a probe closed, or a
/// client that never gets its verdict.
fn hint_refusal(config: &VerifyConfig, mut failure: Failure) -> Failure {
    if config.auth_secret.is_none() {
        return failure;
    }
    let error = match &mut failure {
        Failure::SourceIo { error } | Failure::Reconnect { error, .. } => Some(error),
        Failure::Connect { error, .. } if error.contains("closed the probe connection") => {
            Some(error)
        }
        _ => None,
    };
    if let Some(error) = error {
        error.push_str(REFUSAL_HINT);
    }
    failure
}

/// The server's own figures, if `metricsPort` is set and it gives them.
async fn scrape_server(config: &VerifyConfig) -> Option<server_usage::Usage> {
    match config.metrics_port {
        0 => None,
        port => server_usage::scrape(&config.host, port).await,
    }
}

/// Every socket open, nothing running yet (but a resumable run's probe).
struct Connected {
    /// The user id of each client connection, in client order.
    users: Vec<u32>,
    /// To the event port, blocking: the source thread writes to it.
    source_stream: std::net::TcpStream,
    /// One per client, in client order, its handshake already sent.
    client_streams: Vec<Connection>,
    /// Where clients connect (one or more), for reconnects: the client
    /// ports, or the web listeners.
    client_addrs: Arc<[SocketAddr]>,
    /// On a resumable run, one per client, in client order, at its first
    /// connection; empty on a plain run.
    sessions: Vec<Session>,
    /// What the readers, the source and the coordinator share (the probe
    /// stamped its broadcasts on its clock).
    shared: Arc<Shared>,
    /// The opening broadcasts the probe sent.
    opened: Opened,
    /// How long connecting the clients took, for the report.
    connect_time: Duration,
}

/// The run under way: the readers, the source thread and the progress
/// display, and what is needed to wait for and stop them.
struct Running {
    /// The user id of each client connection, in client order.
    users: Vec<u32>,
    /// How long connecting the clients took, for the report.
    connect_time: Duration,
    /// What the readers, the source and the coordinator share.
    shared: Arc<Shared>,
    /// One task per client connection.
    readers: JoinSet<Option<ReaderOutcome>>,
    /// The source thread's result; closed without one if the thread died.
    source_result: oneshot::Receiver<Result<SourceOutcome, source::Stopped>>,
    /// A second handle on the source's socket, to unblock its write if the
    /// run fails meanwhile (`None` if it could not be cloned).
    source_socket: Option<std::net::TcpStream>,
    /// The progress display.
    progress: tokio::task::JoinHandle<()>,
    /// Tells the progress display the stream is over.
    progress_finished: CancellationToken,
}

/// Everything stopped and nothing failed: what each part produced.
struct Finished {
    /// The user id of each client connection, in client order.
    users: Vec<u32>,
    /// How long connecting the clients took, for the report.
    connect_time: Duration,
    /// Each client's outcome, by client index (`None`: none arrived).
    outcomes: Vec<Option<ReaderOutcome>>,
    /// What the source sent and what it owed each client.
    source: SourceOutcome,
    /// When the last reader finished: the end of the stream.
    stream_done: Instant,
    /// Every resume's reconnect-to-verdict time.
    resume_latency: Latencies,
}

/// Resolves the server's ports, connects the event source and then every
/// client (each sends its handshake, over the run's transport), and
/// announces the run. A resumable run starts its stream first ([`probe`]).
async fn connect(config: &VerifyConfig) -> Result<Connected, Failure> {
    let users = client_users(
        config.random_seed,
        config.number_of_users,
        config.concurrency_level,
    );
    let event_addr = resolve(config, config.event_listener_port, "eventListenerPort").await?;
    let client_addrs = client_addresses(config).await?;
    let shared = Arc::new(Shared::new(users.len()));
    let credentials = config
        .auth_secret
        .as_ref()
        .map(|secret| Arc::new(Credentials::new(secret.expose())));

    let mut source_stream = connect_to(event_addr, "eventListenerPort", config.timeout).await?;
    if let Some(credentials) = &credentials {
        authenticate_source(&mut source_stream, credentials, config.timeout).await?;
    }
    let opened = match config.resumable && !users.is_empty() {
        true => {
            let clients = Probed {
                addresses: &client_addrs,
                transport: config.transport,
                variable: client_variable(config, client_addrs.len()),
            };
            let probe = (clients, credentials.as_deref());
            open_stream(config, &mut source_stream, probe, &shared).await?
        }
        false => Opened::default(),
    };
    let source_stream = into_blocking(source_stream)?;

    let mut sessions = first_sessions(config, &users, credentials);
    let connecting = Instant::now();
    let client_streams = connect_clients(config, &client_addrs, &users, &mut sessions).await?;
    let connect_time = connecting.elapsed();
    if config.log_level >= LogLevel::Info {
        // Only once connected: a server that is not running gets exactly
        // one line, the failure.
        println!("{}", run_banner(config, event_addr, &client_addrs));
    }
    Ok(Connected {
        users,
        source_stream,
        client_streams,
        client_addrs,
        sessions,
        shared,
        opened,
        connect_time,
    })
}

/// Sends the source's first line, `#AUTH|<token>`, on `source` before any
/// event: a server with `authSecret` closes a source that does not.
async fn authenticate_source(
    source: &mut TcpStream,
    credentials: &Credentials,
    timeout: Duration,
) -> Result<(), Failure> {
    let line = credentials.source_line();
    match tokio::time::timeout(timeout, source.write_all(&line)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failure::SourceIo {
            error: format!("sending its #AUTH line: {error}"),
        }),
        Err(_) => Err(Failure::SourceStalled {
            events_sent: 0,
            waited: timeout,
        }),
    }
}

/// A resumable run's probe: opening broadcasts on `source` until the
/// server is on this run's stream at every one of `clients`, each probe
/// with a token if there are `credentials`.
async fn open_stream(
    config: &VerifyConfig,
    source: &mut TcpStream,
    (clients, credentials): (Probed<'_>, Option<&Credentials>),
    shared: &Shared,
) -> Result<Opened, Failure> {
    // A user no event names: it is owed broadcasts only.
    let probe = (config.number_of_users + 1, credentials);
    probe::start_stream(source, clients, probe, shared, config.timeout).await
}

/// The source's socket as a blocking std stream, for its thread.
fn into_blocking(stream: TcpStream) -> Result<std::net::TcpStream, Failure> {
    stream
        .into_std()
        .and_then(|stream| stream.set_nonblocking(false).map(|()| stream))
        .map_err(|error| Failure::SourceIo {
            error: error.to_string(),
        })
}

/// On a resumable run, one session per client, in client order, before its
/// first connection, each signing its handshakes with `credentials` if
/// there are any; none on a plain run.
fn first_sessions(
    config: &VerifyConfig,
    users: &[u32],
    credentials: Option<Arc<Credentials>>,
) -> Vec<Session> {
    // `authSecret` needs `resumable` (`VerifyConfig::validate`): a plain
    // client's handshake has no room for a token.
    debug_assert!(config.resumable || credentials.is_none());
    if !config.resumable {
        return Vec::new();
    }
    let settings = SessionSettings {
        window: config.resume_window,
        credentials,
    };
    users
        .iter()
        .map(|&user| Session::new(user, settings.clone()))
        .collect()
}

/// The line that announces the run, once every client is connected.
fn run_banner(
    config: &VerifyConfig,
    event_addr: SocketAddr,
    client_addrs: &[SocketAddr],
) -> String {
    format!(
        "verifying {event_addr} (events) and {} ({}): {} events, {} clients \
         of {} users, {} profile, seed {}{}{}",
        client_addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(","),
        match config.transport {
            Transport::Tcp => "clients",
            Transport::Ws => "WebSocket clients",
            Transport::Sse => "Server-Sent Events clients",
        },
        config.total_events,
        config.concurrency_level,
        config.number_of_users,
        config.profile.name(),
        config.random_seed,
        match config.rate {
            0 => String::new(),
            rate => format!(", {rate} events/s"),
        },
        resume_banner(config),
    )
}

/// How the banner describes a resumable run (empty for a plain one), and
/// whether its connections carry tokens.
fn resume_banner(config: &VerifyConfig) -> String {
    if !config.resumable {
        return String::new();
    }
    let mut text = String::from(", resumable");
    if config.auth_secret.is_some() {
        text += ", signed tokens (authSecret) on the source and every client";
    }
    if !config.killswitch.is_zero() {
        text += &format!(", a drop every {} ms", config.killswitch.as_millis());
    }
    if !config.offline.is_zero() {
        text += &format!(", offline up to {} ms", config.offline.as_millis());
    }
    text
}

/// Starts a reader task per client (each with its checker and expectation
/// queue), the source thread that feeds those queues, and the progress
/// display. Never fails: a source thread that cannot start is recorded in
/// `shared` like any other failure, and `join` reports it.
fn start(config: &VerifyConfig, connected: Connected) -> Running {
    let Connected {
        users,
        source_stream,
        client_streams,
        client_addrs,
        sessions,
        shared,
        opened,
        connect_time,
    } = connected;
    let source_socket = source_stream.try_clone().ok();
    let capacity = queue_capacity(config.max_event_source_batch_size, users.len());
    let mut producers = Vec::with_capacity(users.len());
    let mut readers = JoinSet::new();
    let mut sessions = sessions.into_iter();
    // One table of user ids for every checker.
    let writer = LineWriter::new(config.number_of_users);
    for (index, (stream, &user)) in client_streams.into_iter().zip(&users).enumerate() {
        let (producer, consumer) = rtrb::RingBuffer::new(capacity);
        producers.push(producer);
        let client = ClientRef::new(index, user);
        let mut checker = Checker::new(
            client,
            consumer,
            shared.clone(),
            config.line_endings,
            writer.clone(),
        );
        let resume = sessions.next().map(|session| {
            checker.set_connection(Some(session.connection()));
            resume_for(config, index, &client_addrs, session)
        });
        let (shared, timeout) = (shared.clone(), config.timeout);
        readers.spawn(read_client(
            client, stream, checker, shared, timeout, resume,
        ));
    }
    let source_result = start_source(config, source_stream, &users, opened, &shared, producers);
    let progress_finished = CancellationToken::new();
    let progress = tokio::spawn(progress::show(
        shared.clone(),
        config.total_events,
        config.log_interval,
        config.log_level,
        progress_finished.clone(),
    ));
    Running {
        users,
        connect_time,
        shared,
        readers,
        source_result,
        source_socket,
        progress,
        progress_finished,
    }
}

/// What client `index`'s reader needs to resume: where to reconnect
/// (starting from its own address), its session, its drop schedule.
fn resume_for(
    config: &VerifyConfig,
    index: usize,
    client_addrs: &Arc<[SocketAddr]>,
    session: Session,
) -> Resume {
    Resume {
        addresses: client_addrs.clone(),
        at: index % client_addrs.len(),
        transport: config.transport,
        session,
        drops: DropSchedule::new(config.random_seed, index, config.killswitch, config.offline),
    }
}

/// Starts the source thread on `stream`, feeding `producers` (one per
/// client, in client order) and carrying on from `opened`. Returns where
/// its result will come; a thread that cannot start is recorded in
/// `shared` (and the receiver closes without a result).
fn start_source(
    config: &VerifyConfig,
    stream: std::net::TcpStream,
    users: &[u32],
    opened: Opened,
    shared: &Arc<Shared>,
    producers: Vec<rtrb::Producer<expect::Expected>>,
) -> oneshot::Receiver<Result<SourceOutcome, source::Stopped>> {
    let settings = SourceSettings {
        generator: GeneratorSettings {
            seed: config.random_seed,
            users: config.number_of_users,
            client_users: users.to_vec(),
            max_batch: config.max_event_source_batch_size,
            profile: config.profile,
        },
        total_events: config.total_events,
        rate: config.rate,
        timeout: config.timeout,
        opened,
    };
    let source = Source::new(stream, settings, shared.clone(), producers);
    let (source_done, source_result) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("followermaze-source".into())
        .spawn(move || {
            // The receiver only goes away if the run was dropped.
            let _ = source_done.send(source.run());
        });
    if let Err(error) = spawned {
        shared.fail(Failure::Internal(format!(
            "cannot start the source thread: {error}"
        )));
    }
    source_result
}

/// Waits for every reader, then the source (unblocking its write first if
/// the run failed), then the progress display. Returns the first failure
/// any of them recorded, or what each produced.
async fn join(running: Running) -> Result<Finished, Failure> {
    let Running {
        users,
        connect_time,
        shared,
        mut readers,
        source_result,
        source_socket,
        progress,
        progress_finished,
    } = running;
    let mut outcomes: Vec<Option<ReaderOutcome>> = (0..users.len()).map(|_| None).collect();
    while let Some(joined) = readers.join_next().await {
        match joined {
            Ok(Some(outcome)) => {
                let index = outcome.client.index;
                outcomes[index] = Some(outcome);
            }
            // The reader recorded why in `shared`.
            Ok(None) => {}
            Err(error) => shared.fail(Failure::Internal(format!("a client reader died: {error}"))),
        }
    }
    let stream_done = Instant::now();
    if shared.aborted() {
        // The source may be blocked in a write the server will never
        // drain; closing the socket ends the write at once.
        if let Some(socket) = &source_socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
    let source_outcome = match source_result.await {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(source::Stopped)) => None,
        Err(_) => {
            shared.fail(Failure::Internal("the source thread died".into()));
            None
        }
    };
    progress_finished.cancel();
    // The progress task only prints; its end is not an error either way.
    let _ = progress.await;
    shared.cancel.cancel();
    if let Some(failure) = shared.failure() {
        return Err(failure);
    }
    let source = source_outcome
        .ok_or_else(|| Failure::Internal("the source stopped without a reason".into()))?;
    Ok(Finished {
        users,
        connect_time,
        outcomes,
        source,
        stream_done,
        resume_latency: shared.resume_latency(),
    })
}

/// Compares what each client received with what the source owed it, and
/// sums the run's figures into the [`Report`]. A client whose tally differs
/// from the source's fails the run even though each line checked out.
fn report(config: &VerifyConfig, finished: Finished, started: Instant) -> Result<Report, Failure> {
    let Finished {
        users,
        connect_time,
        outcomes,
        source,
        stream_done,
        resume_latency,
    } = finished;
    let mut latencies = Latencies::default();
    let mut resume = config.resumable.then(ResumeStats::default);
    let (mut notifications, mut notification_bytes, mut reterminated) = (0, 0, 0);
    let mut per_client = Vec::with_capacity(users.len());
    for (index, outcome) in outcomes.iter().enumerate() {
        let client = ClientRef::new(index, users[index]);
        let Some(outcome) = outcome else {
            return Err(Failure::Internal(format!(
                "{client} ended without a verdict"
            )));
        };
        let expected = source.tallies[index];
        if outcome.tally != expected {
            return Err(Failure::TallyMismatch {
                client,
                expected,
                received: outcome.tally,
            });
        }
        let summary = ClientSummary {
            user: client.user,
            first_broadcast: outcome.first_broadcast,
            notifications: outcome.tally.count + outcome.opening.count,
            bytes: outcome.bytes_received,
        };
        notifications += summary.notifications;
        notification_bytes += summary.bytes;
        reterminated += outcome.reterminated;
        per_client.push(summary);
        latencies.merge(&outcome.latencies);
        if let (Some(total), Some(stats)) = (resume.as_mut(), &outcome.resume) {
            total.merge(stats);
        }
    }
    let stream_time = stream_done.saturating_duration_since(source.main_started);
    Ok(Report {
        profile: config.profile,
        clients: users.len(),
        events: source.events,
        opening_broadcasts: source.opening,
        mix: source.mix,
        edges: source.edges,
        bytes_sent: source.bytes,
        connect_time,
        opening_time: source.opening_time,
        send_time: source.send_time,
        stream_time,
        elapsed: started.elapsed(),
        notifications,
        notification_bytes,
        reterminated,
        latency: latencies.summary(),
        per_client,
        resume: resume.map(|stats| ResumeReport {
            stats,
            verdict_latency: resume_latency.summary(),
        }),
        server: None,
        authenticated: config.auth_secret.is_some(),
        transport: config.transport,
    })
}

/// Connects one client per entry of `users`, in order (client `i` to
/// `addresses[i mod n]`), over the run's transport, and sends each its
/// handshake: its user id, or on a resumable run (`sessions` not empty) its
/// session's first handshake, `user||0` (`user||0|<token>` with
/// `authSecret`; on the web, `?user=` and `&token=`).
///
/// One at a time on purpose: each connection waits in the server's accept
/// queue until the server accepts it, and a burst larger than that queue
/// (often 128) makes the kernel drop connections, which then cost a
/// one-second SYN retry each. Opening them concurrently was measured to
/// make that worse, not better.
async fn connect_clients(
    config: &VerifyConfig,
    addresses: &[SocketAddr],
    users: &[u32],
    sessions: &mut [Session],
) -> Result<Vec<Connection>, Failure> {
    let mut streams = Vec::with_capacity(users.len());
    let variable = client_variable(config, addresses.len());
    for (index, &user) in users.iter().enumerate() {
        let address = addresses[index % addresses.len()];
        let hello = |sessions: &mut [Session]| match sessions.get_mut(index) {
            Some(session) => session.hello(0, None),
            None => Hello {
                user,
                start: Start::Classic,
                token: None,
            },
        };
        let opened = tokio::time::timeout(config.timeout, async {
            let socket = connection::connect(address).await?;
            let hello = hello(sessions);
            connection::handshake(config.transport, socket, address, &hello).await
        })
        .await;
        let client = ClientRef::new(index, user);
        let error = match opened {
            Ok(Ok(stream)) => {
                streams.push(stream);
                continue;
            }
            Ok(Err(OpenError::Wire(error))) => {
                return Err(Failure::WebWire {
                    client,
                    error: error.to_string(),
                })
            }
            Ok(Err(error)) if error.is_refused_connection() => {
                return Err(Failure::NotListening {
                    variable,
                    address: address.to_string(),
                    error: error.to_string(),
                })
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "connection timed out".to_owned(),
        };
        return Err(Failure::Connect {
            variable,
            address: address.to_string(),
            error: format!("{client}: {error}"),
        });
    }
    Ok(streams)
}

/// The variable that names where clients connect, for failures: the port,
/// or the list when there are `addresses` (more than one).
fn client_variable(config: &VerifyConfig, addresses: usize) -> &'static str {
    match (config.transport.is_web(), addresses) {
        (false, 1) => "clientListenerPort",
        (false, _) => "clientAddresses",
        (true, 1) => "webPort",
        (true, _) => "webAddresses",
    }
}

/// Where clients connect: each entry of `clientAddresses` resolved (its
/// first address), or `serverHost:clientListenerPort` if there are none;
/// with a web transport, the same of `webAddresses` and `webPort`. Never
/// empty.
async fn client_addresses(config: &VerifyConfig) -> Result<Arc<[SocketAddr]>, Failure> {
    let (list, port, variables) = match config.transport.is_web() {
        false => (
            &config.client_addresses,
            config.client_listener_port,
            ("clientAddresses", "clientListenerPort"),
        ),
        true => (
            &config.web_addresses,
            config.web_port,
            ("webAddresses", "webPort"),
        ),
    };
    if list.is_empty() {
        let address = resolve(config, port, variables.1).await?;
        return Ok(Arc::from([address]));
    }
    let mut resolved = Vec::with_capacity(list.len());
    for entry in list {
        let failure = |error: String| Failure::Connect {
            variable: variables.0,
            address: entry.clone(),
            error,
        };
        let mut addresses = tokio::net::lookup_host(entry.as_str())
            .await
            .map_err(|error| failure(error.to_string()))?;
        let address = addresses
            .next()
            .ok_or_else(|| failure("the host name resolves to no address".into()))?;
        resolved.push(address);
    }
    Ok(resolved.into())
}

/// The first address `config.host` resolves to, with `port`.
async fn resolve(
    config: &VerifyConfig,
    port: u16,
    variable: &'static str,
) -> Result<SocketAddr, Failure> {
    let failure = |error: String| Failure::Connect {
        variable,
        address: format!("{}:{port}", config.host),
        error,
    };
    let mut addresses = tokio::net::lookup_host((config.host.as_str(), port))
        .await
        .map_err(|error| failure(error.to_string()))?;
    addresses
        .next()
        .ok_or_else(|| failure("the host name resolves to no address".into()))
}

/// Connects to `address`, telling "nothing listens there" apart.
async fn connect_to(
    address: SocketAddr,
    variable: &'static str,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let connected = tokio::time::timeout(timeout, TcpStream::connect(address)).await;
    let error = match connected {
        Ok(Ok(stream)) => {
            // Our writes are whole lines or large chunks already.
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
        Ok(Err(error)) => error,
        Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"),
    };
    if error.kind() == std::io::ErrorKind::ConnectionRefused {
        Err(Failure::NotListening {
            variable,
            address: address.to_string(),
            error: error.to_string(),
        })
    } else {
        Err(Failure::Connect {
            variable,
            address: address.to_string(),
            error: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_says_when_tokens_are_in_use_never_the_secret() {
        let plain = VerifyConfig::default();
        assert_eq!(resume_banner(&plain), "");
        let signed = VerifyConfig {
            resumable: true,
            auth_secret: AuthSecret::new("s3cret"),
            ..VerifyConfig::default()
        };
        let text = resume_banner(&signed);
        assert!(
            text.starts_with(", resumable, signed tokens (authSecret)"),
            "{text}"
        );
        let address: SocketAddr = "127.0.0.1:9090".parse().expect("an address");
        let banner = run_banner(&signed, address, &[address]);
        assert!(banner.contains("signed tokens") && !banner.contains("s3cret"));
    }

    #[test]
    fn a_close_that_may_be_a_refused_token_says_so_with_auth_secret_only() {
        let closed = || Failure::SourceIo {
            error: "Broken pipe (os error 32)".into(),
        };
        let plain = hint_refusal(&VerifyConfig::default(), closed());
        assert!(!plain.to_string().contains("authSecret"), "{plain}");
        let signed = VerifyConfig {
            resumable: true,
            auth_secret: AuthSecret::new("s3cret"),
            ..VerifyConfig::default()
        };
        let hinted = hint_refusal(&signed, closed()).to_string();
        assert!(
            hinted.contains("Broken pipe (os error 32) (authSecret is set"),
            "{hinted}"
        );
        assert!(!hinted.contains("s3cret"), "{hinted}");
        let unrelated = hint_refusal(&signed, Failure::Internal("x".into()));
        assert!(!unrelated.to_string().contains("authSecret"));
    }
}
