//! The verifier binary: settings from the environment, [`run`], then the
//! classic verdict and exit status. `followermaze.sh` builds and runs it.
//!
//! `followermaze-verify sink` instead serves both ports and discards
//! everything, to measure the verifier's own ceiling (see the README's verifier section).
//!
//! Exit status: 0 all notifications received; 1 something went wrong; 2 the
//! configuration is invalid or nothing listens on the ports.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use followermaze_protocol::cli::{self, About, EXIT_USAGE};
use followermaze_verify::{run, sink, Failure, LogLevel, VerifyConfig, SETTINGS};

/// What `--help` and `--version` say.
const ABOUT: About = About {
    binary: "followermaze-verify",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Proves a running follower-maze server correct: streams events to it, connects \
              clients, and checks every notification byte for byte, in order.",
    modes: &[
        ("verify", "run the check against the server (the default)"),
        (
            "sink",
            "serve both ports and discard everything until the event source closes, to \
             measure the verifier's own ceiling",
        ),
    ],
    settings: SETTINGS,
};

/// How long the sink waits for an event source to finish.
const SINK_LIMIT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let mode = match cli::dispatch(&ABOUT, std::env::args().skip(1)) {
        Ok(mode) => mode,
        Err(exit) => return exit,
    };
    let config = match VerifyConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("followermaze-verify: invalid configuration: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("followermaze-verify: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match mode.as_deref() {
        Some("sink") => runtime.block_on(serve_sink(config)),
        _ => runtime.block_on(verify(config)),
    }
}

async fn verify(config: VerifyConfig) -> ExitCode {
    let level = config.log_level;
    match run(config).await {
        Ok(report) => {
            if level >= LogLevel::Debug {
                for (index, client) in report.per_client.iter().enumerate() {
                    println!(
                        "client {index} (user {}): registered at opening broadcast {}, \
                         {} notifications, {} bytes",
                        client.user,
                        client.first_broadcast.unwrap_or(0),
                        client.notifications,
                        client.bytes
                    );
                }
            }
            if level >= LogLevel::Info {
                println!("{report}");
            }
            println!("{}", report.banner());
            ExitCode::SUCCESS
        }
        Err(failure @ Failure::NotListening { .. }) => {
            eprintln!("followermaze-verify: {failure}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(failure) => {
            println!("SOMETHING WENT WRONG: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_sink(config: VerifyConfig) -> ExitCode {
    async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener, String> {
        let address = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&address).await;
        listener.map_err(|error| format!("cannot listen on {address}: {error}"))
    }
    let listeners = match (
        bind(&config.host, config.event_listener_port).await,
        bind(&config.host, config.client_listener_port).await,
    ) {
        (Ok(events), Ok(clients)) => (events, clients),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("followermaze-verify sink: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let addresses: Vec<SocketAddr> = [&listeners.0, &listeners.1]
        .iter()
        .filter_map(|listener| listener.local_addr().ok())
        .collect();
    println!("sink: discarding everything sent to {addresses:?} until the event source closes");
    match sink(listeners.0, listeners.1, SINK_LIMIT).await {
        Ok(report) => {
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            println!(
                "sink: {} bytes in {:.3} s ({:.0} MB/s) from the event source; {} clients",
                report.bytes,
                secs,
                report.bytes as f64 / secs / 1e6,
                report.clients
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("followermaze-verify sink: {error}");
            ExitCode::FAILURE
        }
    }
}
