//! The followermaze server binary: configuration, logging, signals; the
//! rest is the library's [`followermaze::run`].

use std::io::IsTerminal;
use std::process::ExitCode;

use followermaze::{Config, Listeners};
use tracing_subscriber::EnvFilter;

/// Exit status for a configuration or startup error (bad variable, port in
/// use), so scripts can tell it from a crash.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("followermaze: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => EnvFilter::try_new(&filter)
            .map_err(|error| format!("invalid RUST_LOG {filter:?}: {error}")),
        _ => EnvFilter::try_new(&config.log_level)
            .map_err(|error| format!("invalid logLevel {:?}: {error}", config.log_level)),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(message) => {
            eprintln!("followermaze: invalid configuration: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

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
                return ExitCode::from(EXIT_CONFIG);
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
