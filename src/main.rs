//! The followermaze server binary: configuration, logging, signals; the
//! rest is the library's [`followermaze::run`].

use std::io::IsTerminal;
use std::process::ExitCode;

use followermaze::config::{LogFormat, SETTINGS};
use followermaze::{Config, Listeners};
use followermaze_protocol::cli::{self, About, Invocation, EXIT_USAGE};
use tracing_subscriber::EnvFilter;

/// What `--help` and `--version` say.
const ABOUT: About = About {
    binary: "followermaze",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Follower-maze event fan-out server: events in on eventListenerPort, each forwarded \
              byte for byte, in sequence order, to the clients on clientListenerPort it concerns.",
    modes: &[],
    settings: SETTINGS,
};

fn main() -> ExitCode {
    match cli::parse(&ABOUT, std::env::args().skip(1)) {
        Ok(Invocation::Run(_)) => {}
        Ok(Invocation::Help) => {
            print!("{}", cli::usage(&ABOUT));
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("{} {}", ABOUT.binary, ABOUT.version);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
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
        let listeners = match Listeners::bind(&config).await {
            Ok(listeners) => listeners,
            Err(error) => {
                eprintln!("followermaze: {error}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        match followermaze::run(listeners, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("followermaze: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs to stderr in `config.log_format`, filtered by `RUST_LOG` when set,
/// else by `logLevel`.
fn init_logging(config: &Config) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => {
            EnvFilter::try_new(&filter).map_err(|error| format!("RUST_LOG={filter}: {error}"))?
        }
        _ => EnvFilter::try_new(&config.log_level)
            .map_err(|error| format!("logLevel={}: {error}", config.log_level))?,
    };
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

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
