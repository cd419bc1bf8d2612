//! The followermaze server binary: configuration, logging, signals; the
//! rest is the library's [`followermaze::run`].

use std::io::IsTerminal;
use std::process::ExitCode;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use followermaze::config::{LogFormat, SETTINGS};
use followermaze::{
    BindError, Config, GatewayListeners, Listeners, Role, SequencerListeners, Stats,
};
use followermaze_protocol::auth::SOURCE_SUBJECT;
use followermaze_protocol::cli::{self, About, EXIT_USAGE};
use followermaze_protocol::parse_user_id;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// What `--help` and `--version` say.
const ABOUT: About = About {
    binary: "followermaze",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Follower-maze event fan-out server: events in on eventListenerPort, each forwarded \
              byte for byte, in sequence order, to the clients on clientListenerPort it concerns. \
              `followermaze token <user> [--ttl-secs N]` (or `token --source`) prints a token \
              signed with authSecret instead (exit status 2 if it is unset).",
    modes: &[],
    settings: SETTINGS,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|mode| mode == "token") {
        return token(&args[1..]);
    }
    if let Err(exit) = cli::dispatch(&ABOUT, args) {
        return exit;
    }
    one_malloc_arena();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("followermaze: invalid configuration: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(error) = init_logging(&config) {
        eprintln!("followermaze: invalid configuration: {error}");
        return ExitCode::from(EXIT_USAGE);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("followermaze: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before any port is bound: the "listening" line promises that a
        // SIGTERM from then on drains.
        let shutdown = shutdown_signal();
        let served = match config.role {
            Role::Standalone => match Listeners::bind(&config).await {
                Ok(listeners) => followermaze::run(listeners, config, shutdown).await,
                Err(error) => return bind_failed(error),
            },
            Role::Sequencer => {
                let listeners = match bind_sequencer(&config) {
                    Ok(listeners) => listeners,
                    Err(error) => return bind_failed(error),
                };
                let stats = Arc::new(Stats::default());
                followermaze::run_sequencer(listeners, config, stats, shutdown).await
            }
            Role::Gateway => {
                let listeners = match bind_gateway(&config) {
                    Ok(listeners) => listeners,
                    Err(error) => return bind_failed(error),
                };
                let stats = Arc::new(Stats::default());
                followermaze::run_gateway(listeners, config, stats, shutdown).await
            }
        };
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("followermaze: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// How long a minted token is valid unless `--ttl-secs` says otherwise.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// `followermaze token <user> | --source [--ttl-secs N]`: prints a token
/// signed with `authSecret` from the environment.
fn token(args: &[String]) -> ExitCode {
    let usage = "usage: followermaze token <user> [--ttl-secs N] | followermaze token --source \
                 [--ttl-secs N]";
    let (subject, ttl) = match token_args(args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("followermaze token: {message}\n{usage}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let key = match Config::from_env().map(|config| config.auth_key()) {
        Ok(Some(key)) => key,
        Ok(None) => {
            eprintln!("followermaze token: authSecret is not set: nothing to sign with");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(error) => {
            eprintln!("followermaze token: invalid configuration: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    println!("{}", key.mint(&subject, ttl, SystemTime::now()));
    ExitCode::SUCCESS
}

/// The subject and lifetime `followermaze token`'s arguments ask for.
fn token_args(args: &[String]) -> Result<(String, Duration), String> {
    let mut subject = None;
    let mut ttl = DEFAULT_TOKEN_TTL;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--source" => subject = Some(SOURCE_SUBJECT.to_owned()),
            "--ttl-secs" => {
                let value = args.next().ok_or("--ttl-secs needs a number of seconds")?;
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("--ttl-secs {value}: expected a number of seconds"))?;
                ttl = Duration::from_secs(secs);
            }
            user if !user.starts_with('-') && subject.is_none() => {
                let user = parse_user_id(user.as_bytes())
                    .map_err(|_| format!("{user}: expected a user id (a decimal number)"))?;
                subject = Some(user.to_string());
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let subject = subject.ok_or("a user id or --source is required")?;
    Ok((subject, ttl))
}

/// A port could not be bound: one line, exit status 2.
fn bind_failed(error: BindError) -> ExitCode {
    eprintln!("followermaze: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Binds `port` (named `variable`) on `bindAddress` (the event port on
/// `eventBindAddress` when that is set).
fn bind(config: &Config, variable: &'static str, port: u16) -> Result<TcpListener, BindError> {
    let ip = match variable {
        "eventListenerPort" => config.event_address(),
        _ => config.bind_address,
    };
    let address = SocketAddr::new(ip, port);
    followermaze::listen(address).map_err(|error| BindError {
        variable,
        address,
        error,
    })
}

/// The metrics listener, unless `metricsPort` is 0.
fn bind_metrics(config: &Config) -> Result<Option<TcpListener>, BindError> {
    match config.metrics_port {
        0 => Ok(None),
        port => bind(config, "metricsPort", port).map(Some),
    }
}

/// The sequencer role's listeners: events and metrics, no clients.
fn bind_sequencer(config: &Config) -> Result<SequencerListeners, BindError> {
    Ok(SequencerListeners {
        events: bind(config, "eventListenerPort", config.event_listener_port)?,
        metrics: bind_metrics(config)?,
    })
}

/// The gateway role's listeners: clients (TCP and web) and metrics, no
/// events.
fn bind_gateway(config: &Config) -> Result<GatewayListeners, BindError> {
    Ok(GatewayListeners {
        clients: bind(config, "clientListenerPort", config.client_listener_port)?,
        web: match config.web_port {
            0 => None,
            port => Some(bind(config, "webPort", port)?),
        },
        metrics: bind_metrics(config)?,
    })
}

/// Asks glibc for a single malloc arena, unless `MALLOC_ARENA_MAX` says
/// otherwise.
///
/// Batches of events are allocated on one worker thread and freed on
/// another; with glibc's default of an arena per thread, that memory
/// spreads over several arenas and is returned late. Measured on the
/// classic 10M run (7 alternating runs each): one arena cuts the server's
/// peak RSS 23.0 -> 19.9 MB and its CPU 1.53 -> 1.44 s (median). Must run
/// before any thread starts.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before the runtime (or any other thread) exists.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// Logs to stderr in `config.log_format`, filtered by `RUST_LOG` when set,
/// else by `logLevel`.
/// A log filter that does not parse, and the variable that named it.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={filter}: {source}")]
struct BadLogFilter {
    /// `RUST_LOG` or `logLevel`.
    variable: &'static str,
    /// Its value.
    filter: String,
    /// Why it does not parse.
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

fn init_logging(config: &Config) -> Result<(), BadLogFilter> {
    let (variable, filter) = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => ("RUST_LOG", filter),
        _ => ("logLevel", config.log_level.clone()),
    };
    let filter = EnvFilter::try_new(&filter).map_err(|source| BadLogFilter {
        variable,
        filter,
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line, fields flattened beside the message, so a
        // shipper needs no multi-line parsing and no nested lookups.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
    Ok(())
}

/// Watches SIGINT and SIGTERM from the call on (the handlers are installed
/// at once, not when the future is first polled, which is only once the
/// server is up), and completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let watched = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        async move {
            match watched {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot watch SIGINT and SIGTERM; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
