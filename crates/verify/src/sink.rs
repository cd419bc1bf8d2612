//! A server that accepts on both ports and discards everything: the
//! yardstick for the verifier's own ceiling. Run against it with
//! `concurrencyLevel=0`, the verifier only generates, formats and writes, so
//! the events per second it reports are the most it can offer any server.
//!
//! Bounded: it returns when the first event source disconnects, or at
//! `limit`, whichever comes first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    let accepted = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    // Clients may connect before or after the source: accept them all the
    // while, and hold them open without writing.
    let counter = accepted.clone();
    tasks.spawn(async move {
        let mut readers = JoinSet::new();
        while let Ok((mut stream, _)) = clients.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            readers.spawn(async move {
                let mut scratch = [0u8; 256];
                while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
            });
            while readers.try_join_next().is_some() {}
        }
    });
    let work = async {
        let (mut source, _) = events.accept().await?;
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
        Ok::<_, std::io::Error>((bytes, first.map(|t| t.elapsed()).unwrap_or_default()))
    };
    let result = tokio::time::timeout(limit, work).await;
    // Dropping the accept task's JoinSet closes every client connection.
    tasks.shutdown().await;
    match result {
        Ok(Ok((bytes, elapsed))) => Ok(SinkReport {
            bytes,
            elapsed,
            clients: accepted.load(Ordering::Relaxed),
        }),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no event source finished within {} s", limit.as_secs()),
        )),
    }
}
