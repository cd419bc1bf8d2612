//! A server that accepts on both ports and discards everything: the
//! yardstick for the verifier's own ceiling. Run against it with
//! `concurrencyLevel=0`, the verifier only generates, formats and writes, so
//! the events per second it reports are the most it can offer any server.
//!
//! Bounded: it returns when the first event source disconnects, or at
//! `limit`, whichever comes first.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Bytes per read: large, so the sink costs as little as possible.
const SINK_READ_BYTES: usize = 1 << 20;

/// What the sink saw from its first event source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkReport {
    /// Bytes read before the source closed.
    pub bytes: u64,
    /// From the first byte to the close.
    pub elapsed: Duration,
    /// Client connections accepted (and read from, and never written to).
    pub clients: u64,
}

/// Discards what the first event source sends, and what clients send, until
/// that source closes or `limit` passes.
pub async fn sink(
    events: TcpListener,
    clients: TcpListener,
    limit: Duration,
) -> std::io::Result<SinkReport> {
    let work = async {
        let mut client_tasks = JoinSet::new();
        let mut accepted = 0u64;
        let source = loop {
            tokio::select! {
                accepted_source = events.accept() => break accepted_source?.0,
                client = clients.accept() => {
                    if let Ok((mut stream, _)) = client {
                        accepted += 1;
                        client_tasks.spawn(async move {
                            let mut scratch = [0u8; 256];
                            while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
                        });
                    }
                }
            }
        };
        let mut source = source;
        let mut buf = vec![0u8; SINK_READ_BYTES];
        let mut bytes = 0u64;
        let mut first = None;
        loop {
            let n = source.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            bytes += n as u64;
        }
        client_tasks.shutdown().await;
        Ok(SinkReport {
            bytes,
            elapsed: first.map(|t| t.elapsed()).unwrap_or_default(),
            clients: accepted,
        })
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no event source finished within {} s", limit.as_secs()),
        )),
    }
}
