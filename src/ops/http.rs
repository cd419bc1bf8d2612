//! HTTP/1.1 connections that cannot lock a listener out: the accept loop
//! and connection lifecycle of the metrics endpoint (and of any listener
//! that answers small requests).
//!
//! What a connection may hold, and for how long:
//! - **Before its first byte** it holds no buffer (hyper allocates one at
//!   its first read), only its task and socket, and it is closed after
//!   [`IDLE_TIMEOUT`]. Idle connections are what locked the endpoint out
//!   before: 16 slots held by connections that never sent a byte, whose
//!   header timeout never started, made `/healthz` wait up to a minute.
//! - **While a request's headers arrive** it has [`HEADER_READ_TIMEOUT`]
//!   for all of them (a half-sent request is closed after it).
//! - **Between keep-alive requests** it is idle again: closed once nothing
//!   moved on it for [`IDLE_TIMEOUT`].
//! - **However busy**, it is asked to close after [`MAX_CONNECTION_AGE`].
//!
//! At most [`MAX_CONNECTIONS`] are open at once; past that a new one waits
//! in the kernel's accept backlog, at most [`IDLE_TIMEOUT`] (the oldest
//! idle one is closed by then). A probe therefore gets its answer at once
//! while up to [`MAX_CONNECTIONS`] idle connections are held.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ops::accept::accept;
use crate::ops::stats::{LogThrottle, Stats};

/// Most connections open at once, idle ones included. An idle connection
/// costs its task and its socket (no buffer before its first byte; hyper's
/// 8 KiB read buffer after it, for at most [`IDLE_TIMEOUT`] once idle), so
/// this bounds the endpoint to a few tens of MiB in the worst case.
pub(crate) const MAX_CONNECTIONS: usize = 4096;

/// A connection on which nothing moved for this long (no byte read or
/// written: before its first request, or between two) is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client must send a request's headers within this long of its first
/// byte.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on each connection's read and write buffers, in bytes: requests
/// are a few header lines, and larger headers get `431`. A scrape's body
/// (about 6 KiB) is written in more than one piece if it grows past this.
const MAX_BUFFER_BYTES: usize = 16 * 1024;

/// A connection is asked to close (after its current response) once it has
/// been open this long, busy or not; scrapers simply reconnect.
pub(crate) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// After being asked to close, a connection has this long to finish its
/// response before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `respond` over HTTP/1.1 on `listener` (named `name` in logs)
/// until `shutdown` is cancelled; then stops accepting and drops the
/// connections still open (a request in flight at that moment fails, which
/// a scraper retries).
pub(crate) async fn serve<F>(
    listener: TcpListener,
    name: &'static str,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    respond: F,
) where
    F: Fn(&Request<Incoming>) -> Response<String> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut accept_errors = LogThrottle::new(Duration::from_secs(5));
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => {
                slot.expect("the semaphore is never closed")
            }
        };
        let Some((stream, peer)) =
            accept(&listener, &shutdown, name, &mut accept_errors, &stats).await
        else {
            break;
        };
        // Reap finished connections so the set holds at most about
        // MAX_CONNECTIONS entries.
        while connections.try_join_next().is_some() {}
        let respond = Arc::clone(&respond);
        connections.spawn(serve_connection(stream, peer, respond, slot));
    }
    connections.shutdown().await;
}

/// Serves one connection, holding `_slot` until it closes; see the module
/// doc for its deadlines.
async fn serve_connection<F>(
    stream: TcpStream,
    peer: SocketAddr,
    respond: Arc<F>,
    _slot: OwnedSemaphorePermit,
) where
    F: Fn(&Request<Incoming>) -> Response<String> + Send + Sync + 'static,
{
    // Before its first byte a connection costs no buffer: wait for it here,
    // not in hyper, whose header timeout starts only with that byte.
    match tokio::time::timeout(IDLE_TIMEOUT, stream.readable()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let activity = Arc::new(Activity::new());
    let io = Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUFFER_BYTES)
        .serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = until_idle_or_old(&activity) => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, connection).await {
                Ok(outcome) => outcome,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = outcome {
        // Resets and timeouts from scrapers are routine: debug, not warn.
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// Completes once nothing moved on the connection for [`IDLE_TIMEOUT`], or
/// it is [`MAX_CONNECTION_AGE`] old.
async fn until_idle_or_old(activity: &Activity) {
    let deadline = activity.start + MAX_CONNECTION_AGE;
    loop {
        let idle_at = activity.last() + IDLE_TIMEOUT;
        let wake = idle_at.min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if now >= deadline || now >= activity.last() + IDLE_TIMEOUT {
            return;
        }
    }
}

/// When bytes last moved on a connection, for its idle deadline.
#[derive(Debug)]
struct Activity {
    /// When the connection started serving.
    start: Instant,
    /// Milliseconds after `start` when a byte was last read or written.
    last_ms: AtomicU64,
}

impl Activity {
    /// Activity starting now.
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Bytes moved now.
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved.
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that notes in its [`Activity`] each time bytes move.
struct Watched {
    /// The socket.
    inner: TcpStream,
    /// Where its last movement is noted.
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, bytes);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
