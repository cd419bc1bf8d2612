//! Accepting connections without dying or spinning when the process runs
//! out of file descriptors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::ops::stats::{LogThrottle, Stats};

/// How long to pause accepting after a resource error (`EMFILE`, `ENFILE`,
/// `ENOBUFS`...). The pending connection stays in the kernel's backlog; the
/// pause lets other connections close and free descriptors instead of
/// retrying in a hot loop.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts the next connection. Returns `None` once `shutdown` is cancelled.
///
/// Errors that concern only the connection being accepted (it was reset
/// before we got to it) are skipped at once; any other error is logged (at
/// most once every few seconds) and followed by [`ACCEPT_BACKOFF`].
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &'static str,
    errors: &mut LogThrottle,
    stats: &Stats,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(connection) => return Some(connection),
            Err(error) if concerns_one_connection(&error) => continue,
            Err(error) => {
                Stats::add(&stats.accept_errors, 1);
                if let Some(suppressed) = errors.allow() {
                    tracing::warn!(
                        listener = what,
                        %error,
                        suppressed,
                        backoff_ms = ACCEPT_BACKOFF.as_millis() as u64,
                        "accept failed (out of file descriptors?); pausing"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
