//! HTTP/1.1 connections that cannot lock a listener out: the accept loop
//! and connection lifecycle of the metrics endpoint and the web listener.
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
//! - **While it carries a stream** (an event stream of the web listener;
//!   see [`Lease::open_stream`]) it has none of these deadlines and gives
//!   its slot back: the stream is bounded by `maxClients`, and ends when
//!   its client leaves or falls behind. A WebSocket leaves this module
//!   altogether once upgraded.
//!
//! At most [`MAX_CONNECTIONS`] are open at once; past that a new one waits
//! in the kernel's accept backlog, at most [`IDLE_TIMEOUT`] (the oldest
//! idle one is closed by then). A probe therefore gets its answer at once
//! while up to [`MAX_CONNECTIONS`] idle connections are held.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
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

/// Bound on each connection's read and write buffers, in bytes (hyper's
/// least): requests are a few header lines, and a request line and
/// headers over 8 KiB get `431`. A larger response body is written in
/// more than one piece.
const MAX_BUFFER_BYTES: usize = 8 * 1024;

/// A connection is asked to close (after its current response) once it has
/// been open this long, busy or not; scrapers simply reconnect.
pub(crate) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// After being asked to close, a connection has this long to finish its
/// response before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a listener's connections end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifecycle {
    /// At shutdown, how long open connections (streams, say) may take to
    /// finish before they are dropped; zero drops them at once (a scrape
    /// in flight fails, which a scraper retries).
    pub(crate) drain: Duration,
    /// Whether requests whose headers overflow the buffer (answered `431`
    /// by hyper) are counted as web refusals.
    pub(crate) count_too_large: bool,
}

/// Serves `respond` over HTTP/1.1 on `listener` (named `name` in logs)
/// until `shutdown` is cancelled; then stops accepting, asks every
/// connection to close after its response, and waits up to
/// `lifecycle.drain` for them. `respond` gets each request with the
/// [`Lease`] of its connection, and may upgrade it.
pub(crate) async fn serve<F, Fut, B>(
    listener: TcpListener,
    name: &'static str,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    lifecycle: Lifecycle,
    respond: F,
) where
    F: Fn(Request<Incoming>, Lease) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
        // MAX_CONNECTIONS entries plus the open streams.
        while connections.try_join_next().is_some() {}
        let connection = HttpConnection {
            peer,
            lease: Lease::new(slot, peer),
            stats: Arc::clone(&stats),
            shutdown: shutdown.clone(),
            count_too_large: lifecycle.count_too_large,
        };
        connections.spawn(connection.serve(stream, Arc::clone(&respond)));
    }
    drop(listener);
    let drained = tokio::time::timeout(lifecycle.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() && !lifecycle.drain.is_zero() {
        tracing::warn!(
            listener = name,
            connections = connections.len(),
            "HTTP connections still open at the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
}

/// One HTTP connection's context.
struct HttpConnection {
    /// The client's address, for logs.
    peer: SocketAddr,
    /// Its slot and activity.
    lease: Lease,
    /// Where a `431` is counted.
    stats: Arc<Stats>,
    /// Cancelled at shutdown: the connection closes after its response.
    shutdown: CancellationToken,
    /// See [`Lifecycle::count_too_large`].
    count_too_large: bool,
}

impl HttpConnection {
    /// Serves the connection until it closes; see the module doc for its
    /// deadlines.
    async fn serve<F, Fut, B>(self, stream: TcpStream, respond: Arc<F>)
    where
        F: Fn(Request<Incoming>, Lease) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Before its first byte a connection costs no buffer: wait for it
        // here, not in hyper, whose header timeout starts only with that
        // byte.
        tokio::select! {
            readable = tokio::time::timeout(IDLE_TIMEOUT, stream.readable()) => match readable {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            },
            () = self.shutdown.cancelled() => return,
        }
        let lease = self.lease.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(request, lease.clone());
            async move { Ok::<_, Infallible>(response.await) }
        });
        let io = Watched {
            inner: stream,
            lease: self.lease.clone(),
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_BUFFER_BYTES)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let outcome = tokio::select! {
            outcome = connection.as_mut() => outcome,
            () = until_idle_or_old(&self.lease) => {
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(CLOSE_GRACE, connection).await {
                    Ok(outcome) => outcome,
                    Err(_) => return,
                }
            }
            () = self.shutdown.cancelled() => {
                // A stream in progress ends when its source drains; the
                // listener's drain timeout bounds the wait.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = outcome {
            if error.is_parse_too_large() && self.count_too_large {
                self.stats.web_refused(431);
            }
            // Resets and timeouts from scrapers are routine: debug, not warn.
            tracing::debug!(peer = %self.peer, %error, "HTTP connection ended with an error");
        }
    }
}

/// Completes once nothing moved on the connection for [`IDLE_TIMEOUT`], or
/// it is [`MAX_CONNECTION_AGE`] old; never while it carries a stream.
async fn until_idle_or_old(lease: &Lease) {
    let state = &lease.state;
    let deadline = state.start + MAX_CONNECTION_AGE;
    loop {
        let stream_ended = state.stream_ended.notified();
        if state.streams.load(Ordering::Acquire) > 0 {
            stream_ended.await;
            continue;
        }
        let idle_at = state.last() + IDLE_TIMEOUT;
        let wake = idle_at.min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            // A stream opened: wait for its end instead.
            () = state.stream_opened.notified() => continue,
        }
        let now = Instant::now();
        if state.streams.load(Ordering::Acquire) == 0
            && (now >= deadline || now >= state.last() + IDLE_TIMEOUT)
        {
            return;
        }
    }
}

/// What a request's handler may do with its connection: say that it now
/// carries a long-lived stream.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// Shared with the connection's deadline watch and its socket.
    state: Arc<LeaseState>,
}

/// See [`Lease`].
#[derive(Debug)]
struct LeaseState {
    /// When the connection started serving.
    start: Instant,
    /// Milliseconds after `start` when a byte was last read or written.
    last_ms: AtomicU64,
    /// Streams open on the connection (0 or 1 for HTTP/1.1).
    streams: AtomicUsize,
    /// Signalled when a stream opens.
    stream_opened: Notify,
    /// Signalled when a stream ends.
    stream_ended: Notify,
    /// The client's address.
    peer: SocketAddr,
    /// The connection's place among [`MAX_CONNECTIONS`]; given back when a
    /// stream opens.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Lease {
    /// A lease of `peer`'s connection holding `slot`, starting now.
    fn new(slot: OwnedSemaphorePermit, peer: SocketAddr) -> Lease {
        Lease {
            state: Arc::new(LeaseState {
                peer,
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
                streams: AtomicUsize::new(0),
                stream_opened: Notify::new(),
                stream_ended: Notify::new(),
                slot: Mutex::new(Some(slot)),
            }),
        }
    }

    /// The client's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.state.peer
    }

    /// The connection now carries a long-lived stream (an event stream):
    /// it has no idle or age deadline while the guard lives, and gives its
    /// slot among [`MAX_CONNECTIONS`] back for good, since the stream is
    /// bounded by `maxClients` instead.
    pub(crate) fn open_stream(&self) -> StreamGuard {
        self.state.streams.fetch_add(1, Ordering::AcqRel);
        self.state.stream_opened.notify_one();
        if let Ok(mut slot) = self.state.slot.lock() {
            slot.take();
        }
        StreamGuard {
            state: Arc::clone(&self.state),
        }
    }
}

/// Holds a connection's stream open; see [`Lease::open_stream`].
#[derive(Debug)]
pub(crate) struct StreamGuard {
    /// The connection's lease.
    state: Arc<LeaseState>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.state.touch();
        self.state.streams.fetch_sub(1, Ordering::AcqRel);
        self.state.stream_ended.notify_one();
    }
}

impl LeaseState {
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

/// A socket that notes in its [`Lease`] each time bytes move.
struct Watched {
    /// The socket.
    inner: TcpStream,
    /// Where its last movement is noted.
    lease: Lease,
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
            self.lease.state.touch();
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
            self.lease.state.touch();
        }
        polled
    }

    /// Vectored, so hyper queues a body's chunks and writes them with
    /// their framing in one `writev`, rather than copying each into a
    /// buffer of its own (which, for an event stream's large chunks, grew
    /// to the largest and stayed that size).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, slices);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.lease.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The socket under an upgraded connection of [`serve`], and the bytes
/// the client sent after its upgrade request (already read by hyper).
/// Taking the socket back drops hyper's buffers and its boxed I/O: an idle
/// upgraded connection then costs only what its new protocol keeps.
pub(crate) fn upgraded_socket(upgraded: Upgraded) -> Option<(TcpStream, Vec<u8>)> {
    let parts = upgraded.downcast::<TokioIo<Watched>>().ok()?;
    Some((parts.io.into_inner().inner, parts.read_buf.to_vec()))
}
