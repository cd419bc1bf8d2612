//! The web listener (`webPort`): browsers as clients, over the same
//! registry, sessions and verdicts as TCP clients.
//!
//! - `GET /`: the page ([`PAGE`], `page.html` embedded in the binary).
//! - `GET /ws`: a WebSocket session (`ws`).
//! - `GET /events`: a Server-Sent Events session (`sse`).
//!
//! - `route`: what a request asks for or why it is refused; pure.
//! - `ws`, `sse`: the two transports' writers.
//!
//! A session is a resumable client like any other: it counts toward
//! `maxClients`, shares `handshakeTimeoutMs`'s sibling deadlines (an
//! HTTP request's own), `maxClientBufferBytes` and the slow-consumer rule,
//! and can be resumed from any transport. HTTP connections are those of
//! [`crate::ops::http`], which no idle client can lock out.
//!
//! Uses `fanout`, `ops`, `settings`.

mod route;
mod sse;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::client::{Admission, Clients};
use crate::ops::http::{self, Lease};
use crate::ops::stats::{LogThrottle, Stats, WebTransport};
use crate::settings::WebSettings;
use followermaze_protocol::resume::Hello;
use route::{Refusal, Route, Rules};
use sse::EventStream;

/// The page: one static file, no build step.
pub(crate) const PAGE: &str = include_str!("page.html");

/// Serves the web listener until `shutdown`; then waits (at most
/// `drainTimeoutMs`) for its sessions to drain, as the TCP clients do.
pub(crate) async fn serve_web(
    listener: TcpListener,
    clients: Clients,
    settings: WebSettings,
    shutdown: CancellationToken,
) {
    if clients.settings.auth.is_none() {
        tracing::warn!(
            "web clients are not authenticated (authSecret unset): anyone who reaches webPort \
             may read any user's stream"
        );
    }
    let drain = clients.settings.drain_timeout;
    let stats = Arc::clone(&clients.stats);
    let sessions = TaskTracker::new();
    let web = Arc::new(Web {
        rules: Rules {
            allowed_origins: settings.allowed_origins.clone(),
            auth: clients.settings.auth.clone(),
        },
        clients,
        settings,
        sessions: sessions.clone(),
        refusals: std::sync::Mutex::new(LogThrottle::new(std::time::Duration::from_secs(5))),
    });
    let respond = move |request: Request<Incoming>, lease: Lease| {
        let web = Arc::clone(&web);
        async move { web.respond(request, lease).await }
    };
    let lifecycle = http::Lifecycle {
        drain,
        count_too_large: true,
    };
    http::serve(listener, "web", stats, shutdown, lifecycle, respond).await;
    sessions.close();
    if tokio::time::timeout(drain, sessions.wait()).await.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "web sockets still flushing at the drain timeout; closing them"
        );
    }
}

/// The web listener's shared state.
struct Web {
    /// The request checks.
    rules: Rules,
    /// What the client listeners share.
    clients: Clients,
    /// Ping and keep-alive periods.
    settings: WebSettings,
    /// Upgraded WebSocket sessions, waited for at shutdown.
    sessions: TaskTracker,
    /// Rate limit for refusal warnings.
    refusals: std::sync::Mutex<LogThrottle>,
}

impl Web {
    /// Answers one request.
    async fn respond(&self, request: Request<Incoming>, lease: Lease) -> Response<WebBody> {
        let route = match route::route(&request, &self.rules) {
            Ok(route) => route,
            Err(refusal) => return self.refuse(&refusal, lease.peer()),
        };
        match route {
            Route::Page => {
                let mut response = Response::new(WebBody::text(PAGE));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
            Route::Preflight { origin } => preflight(&origin),
            Route::WebSocket { hello, accept } => {
                let Some(admission) = self.admit(lease.peer()) else {
                    return self.full();
                };
                self.upgrade(request, hello, admission, &accept, lease.peer())
            }
            Route::Events { hello, origin } => {
                let Some(admission) = self.admit(lease.peer()) else {
                    return self.full();
                };
                self.events(hello, origin, admission, &lease).await
            }
        }
    }

    /// A place under `maxClients`, or `None` (then a `503`).
    fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        let admission = self.clients.admit();
        if admission.is_none() {
            tracing::debug!(%peer, "refusing web client: connection limit reached");
        }
        admission
    }

    /// `503`: `maxClients` connections are open.
    fn full(&self) -> Response<WebBody> {
        let refusal = Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "connection limit reached (maxClients); retry later".into(),
            auth: None,
        };
        self.clients.stats.web_refused(refusal.status.as_u16());
        plain(refusal.status, &refusal.reason)
    }

    /// Answers a refused request with its status and reason, counted and
    /// logged (rate-limited; tokens by reason, as on every listener).
    fn refuse(&self, refusal: &Refusal, peer: SocketAddr) -> Response<WebBody> {
        let status = refusal.status;
        self.clients.stats.web_refused(status.as_u16());
        if let Some(reason) = refusal.auth {
            self.clients.refused(peer, reason);
        } else if let Some(suppressed) = self.refusals.lock().ok().and_then(|mut t| t.allow()) {
            tracing::info!(%peer, status = status.as_u16(), reason = %refusal.reason, suppressed, "refusing web request");
        }
        let mut response = plain(status, &refusal.reason);
        if status == StatusCode::UPGRADE_REQUIRED {
            let headers = response.headers_mut();
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        response
    }

    /// Answers `101` and serves the WebSocket once hyper hands it over.
    fn upgrade(
        &self,
        mut request: Request<Incoming>,
        hello: Hello,
        admission: Admission,
        accept: &str,
        peer: SocketAddr,
    ) -> Response<WebBody> {
        let on_upgrade = hyper::upgrade::on(&mut request);
        let clients = self.clients.clone();
        let ping_after = self.settings.ping_after;
        self.sessions.spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let Some((socket, read_ahead)) = http::upgraded_socket(upgraded) else {
                tracing::error!(%peer, "upgraded connection of an unexpected type");
                return;
            };
            let Some(registered) = admission.register(&clients, hello).await else {
                return;
            };
            Stats::add(
                &clients.stats.web_sessions[WebTransport::WebSocket as usize],
                1,
            );
            ws::serve(
                socket,
                read_ahead,
                registered,
                &clients.stats,
                ping_after,
                peer,
            )
            .await;
        });
        let mut response = Response::new(WebBody::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(accept) {
            headers.insert("sec-websocket-accept", accept);
        }
        response
    }

    /// Registers an event stream and answers with it.
    async fn events(
        &self,
        hello: Hello,
        origin: Option<String>,
        admission: Admission,
        lease: &Lease,
    ) -> Response<WebBody> {
        let Some(registered) = admission.register(&self.clients, hello).await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        };
        let stats = &self.clients.stats;
        Stats::add(&stats.web_sessions[WebTransport::Events as usize], 1);
        let stream = EventStream::new(
            registered,
            Arc::clone(stats),
            self.settings.keep_alive,
            lease.open_stream(),
        );
        let mut response = Response::new(WebBody::Events(Box::new(stream)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Proxies such as nginx must not hold events back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        // When the stream ends, so does the connection (a browser
        // reconnects on a new one).
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if let Some(origin) = origin.and_then(|origin| HeaderValue::from_str(&origin).ok()) {
            headers.insert("access-control-allow-origin", origin);
            headers.insert("vary", HeaderValue::from_static("Origin"));
        }
        response
    }
}

/// The answer to a CORS preflight of `/events` from an allowed `origin`.
fn preflight(origin: &str) -> Response<WebBody> {
    let mut response = Response::new(WebBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert("access-control-allow-origin", origin);
    }
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("Authorization, Last-Event-ID"),
    );
    headers.insert("access-control-max-age", HeaderValue::from_static("600"));
    headers.insert("vary", HeaderValue::from_static("Origin"));
    response
}

/// A plain-text response of one line.
fn plain(status: StatusCode, reason: &str) -> Response<WebBody> {
    let mut response = Response::new(WebBody::text(format!("{reason}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A web response's body: fixed bytes, or a session's event stream.
pub(crate) enum WebBody {
    /// The whole body (taken when sent).
    Full(Option<Bytes>),
    /// An event stream, until the session ends.
    Events(Box<EventStream>),
}

impl WebBody {
    /// A fixed body.
    fn text(text: impl Into<Bytes>) -> WebBody {
        WebBody::Full(Some(text.into()))
    }

    /// No body.
    fn empty() -> WebBody {
        WebBody::Full(None)
    }
}

impl Body for WebBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            WebBody::Full(bytes) => {
                std::task::Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes))))
            }
            WebBody::Events(stream) => std::pin::Pin::new(stream.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, WebBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            WebBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            WebBody::Events(_) => SizeHint::default(),
        }
    }
}
