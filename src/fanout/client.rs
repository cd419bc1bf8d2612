//! User client connections: the handshake, then one writer per connection
//! that moves bytes from its outbox to the socket.
//!
//! The handshake is one line, within a deadline and a byte bound: a user id
//! (classic), or `user|stream|after` (resumable; see
//! [`followermaze_protocol::resume`]); with `authSecret` set, only
//! `user|stream|after|token` with a valid token for that user
//! ([`followermaze_protocol::auth`]). Anything else closes that connection
//! only, without a reply. After it, whatever
//! the client sends is read into a small scratch buffer and dropped, so a
//! chatty client costs nothing and a closed one is noticed at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::fanout::command::{Command, ConnId};
use crate::fanout::outbox::{Closed, Outbox, Taken};
use crate::fanout::RegistryHandle;
use crate::ops::accept::accept;
use crate::ops::stats::{DisconnectReason, LogThrottle, Stats};
use crate::settings::ClientSettings;
use followermaze_protocol::auth::{split_token, AuthError, Key, MAX_TOKEN_BYTES};
use followermaze_protocol::resume::{parse_hello, Hello, HelloError, MAX_HELLO_BYTES};

/// The longest handshake line accepted, terminator included: the longest
/// resumable one (user, stream id, position).
pub(crate) const MAX_HANDSHAKE_BYTES: usize = MAX_HELLO_BYTES;

/// The same with `authSecret` set: a `|` and a token more.
pub(crate) const MAX_AUTH_HANDSHAKE_BYTES: usize = MAX_HELLO_BYTES + 1 + MAX_TOKEN_BYTES;

/// Scratch space for reading (and dropping) what a client sends after its
/// handshake. Small, because it lives in every connection's task.
const DISCARD_BYTES: usize = 256;

/// A writer's buffer larger than this after a write is freed rather than
/// kept, so one burst does not pin memory on an idle connection.
const WRITER_KEEP_BYTES: usize = 256 * 1024;

/// How often a repeating client warning may be logged.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Why a handshake failed.
#[derive(Debug)]
enum HandshakeError {
    /// No complete line within the deadline.
    Timeout,
    /// The connection closed before a complete line.
    ClosedEarly,
    /// No newline within [`MAX_HANDSHAKE_BYTES`].
    TooLong,
    /// The line was not a handshake.
    Invalid(HelloError),
    /// Its token was missing or bad (`authSecret` set).
    Refused(AuthError),
    /// The socket failed.
    Io(io::Error),
    /// The server is shutting down.
    Shutdown,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => f.write_str("no user id within the handshake timeout"),
            HandshakeError::ClosedEarly => f.write_str("closed before sending a user id"),
            HandshakeError::TooLong => write!(f, "no newline within {MAX_HANDSHAKE_BYTES} bytes"),
            HandshakeError::Invalid(error) => write!(f, "{error}"),
            HandshakeError::Refused(reason) => write!(f, "token {reason}"),
            HandshakeError::Io(error) => write!(f, "socket error: {error}"),
            HandshakeError::Shutdown => f.write_str("server shutting down"),
        }
    }
}

/// Accepts clients until shutdown, then gives their writers up to
/// `drain_timeout` to flush before closing them.
pub(crate) async fn accept_clients(
    listener: TcpListener,
    registry: RegistryHandle,
    stats: Arc<Stats>,
    settings: ClientSettings,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_clients));
    let mut connections = JoinSet::new();
    let mut errors = LogThrottle::new(WARN_EVERY);
    let mut refusals = LogThrottle::new(WARN_EVERY);
    let bad_handshakes = Arc::new(std::sync::Mutex::new(LogThrottle::new(WARN_EVERY)));
    let mut next_id: ConnId = 0;
    while let Some((stream, peer)) =
        accept(&listener, &shutdown, "client", &mut errors, &stats).await
    {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.disconnected(DisconnectReason::Rejected);
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(
                    %peer,
                    limit = settings.max_clients,
                    suppressed,
                    "refusing client: connection limit reached"
                );
            }
            continue;
        };
        next_id += 1;
        let connection = Connection {
            peer,
            id: next_id,
            registry: registry.clone(),
            stats: stats.clone(),
            handshake_timeout: settings.handshake_timeout,
            send_buffer_bytes: settings.send_buffer_bytes,
            auth: settings.auth.clone(),
            shutdown: shutdown.clone(),
            bad_handshakes: Arc::clone(&bad_handshakes),
        };
        connections.spawn(async move {
            connection.serve(stream).await;
            drop(slot);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(settings.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            clients = connections.len(),
            timeout_ms = settings.drain_timeout.as_millis() as u64,
            "clients still flushing at the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
}

/// One client connection's context.
struct Connection {
    /// The client's address, for logs.
    peer: SocketAddr,
    /// This connection's id.
    id: ConnId,
    /// Where to register.
    registry: RegistryHandle,
    /// Shared counters.
    stats: Arc<Stats>,
    /// Deadline for the id line.
    handshake_timeout: Duration,
    /// `SO_SNDBUF`, or 0 for the OS default.
    send_buffer_bytes: usize,
    /// When set, the handshake must carry a token for its user.
    auth: Option<Arc<Key>>,
    /// Cancelled at shutdown (ends a pending handshake).
    shutdown: CancellationToken,
    /// Shared rate limit for bad-handshake warnings: a port scan must not
    /// flood the log.
    bad_handshakes: Arc<std::sync::Mutex<LogThrottle>>,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream) {
        // We batch writes ourselves; Nagle would only add latency.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, %error, "could not set TCP_NODELAY");
        }
        if self.send_buffer_bytes > 0 {
            let socket = socket2::SockRef::from(&stream);
            if let Err(error) = socket.set_send_buffer_size(self.send_buffer_bytes) {
                tracing::debug!(peer = %self.peer, %error, "could not set SO_SNDBUF");
            }
        }
        let handshake = tokio::select! {
            () = self.shutdown.cancelled() => Err(HandshakeError::Shutdown),
            result = tokio::time::timeout(self.handshake_timeout, self.read_hello(&mut stream)) => {
                result.unwrap_or(Err(HandshakeError::Timeout))
            }
        };
        let hello = match handshake {
            Ok(hello) => hello,
            Err(HandshakeError::Shutdown) => return,
            Err(HandshakeError::Refused(reason)) => return self.refuse(reason),
            Err(error) => {
                self.stats.disconnected(DisconnectReason::BadHandshake);
                if let Some(suppressed) = self.warning_allowed() {
                    tracing::warn!(peer = %self.peer, %error, suppressed, "closing client: bad handshake");
                }
                return;
            }
        };
        let user = hello.user();
        let outbox = Arc::new(Outbox::new());
        let register = Command::Register {
            hello,
            conn: self.id,
            outbox: Arc::clone(&outbox),
        };
        if self.registry.send(register).await.is_err() {
            return;
        }
        Stats::add(&self.stats.client_connects, 1);
        tracing::debug!(peer = %self.peer, user, conn = self.id, "client registered");

        let reason = pump(&mut stream, &outbox, &self.stats).await;

        outbox.close(Closed::Gone);
        // At shutdown the registry may be gone: nothing left to tell it.
        let _ = self
            .registry
            .send(Command::Unregister {
                user,
                conn: self.id,
            })
            .await;
        self.stats.disconnected(reason);
        tracing::debug!(peer = %self.peer, user, conn = self.id, reason = reason.as_str(), "client disconnected");
    }
}

impl Connection {
    /// Reads the handshake line and parses it, checking its token when
    /// `authSecret` is set. Bytes after the newline in the same read are
    /// dropped (the protocol gives them no meaning).
    async fn read_hello(&self, stream: &mut TcpStream) -> Result<Hello, HandshakeError> {
        let max = match self.auth {
            None => MAX_HANDSHAKE_BYTES,
            Some(_) => MAX_AUTH_HANDSHAKE_BYTES,
        };
        // On the heap, and only for the handshake: the connection's task
        // keeps no room for it afterwards.
        let mut line = vec![0u8; max];
        let mut filled = 0;
        loop {
            let read = stream
                .read(&mut line[filled..])
                .await
                .map_err(HandshakeError::Io)?;
            if read == 0 {
                return Err(HandshakeError::ClosedEarly);
            }
            if let Some(newline) = memchr::memchr(b'\n', &line[filled..filled + read]) {
                let end = filled + newline + 1;
                return hello_of(&line[..end], self.auth.as_deref());
            }
            filled += read;
            if filled == line.len() {
                return Err(HandshakeError::TooLong);
            }
        }
    }

    /// Whether a handshake warning may be logged now (with how many were
    /// suppressed since the last): one rate limit for every connection.
    fn warning_allowed(&self) -> Option<u64> {
        let mut throttle = self.bad_handshakes.lock().ok()?;
        throttle.allow()
    }

    /// Closes a client whose token was missing or bad, without a reply:
    /// counts it by reason and says so (rate-limited).
    fn refuse(&self, reason: AuthError) {
        Stats::add(&self.stats.client_auth_refusals[reason.index()], 1);
        if let Some(suppressed) = self.warning_allowed() {
            tracing::warn!(
                peer = %self.peer,
                %reason,
                suppressed,
                "refusing client: its handshake must carry a token signed with authSecret for its user"
            );
        }
    }
}

/// The handshake `line` says, with its token checked against `auth` when
/// authentication is on: then only the four-field form with a valid token
/// for the user it names is accepted. Without `auth` the classic protocol
/// holds (a fourth field is a bad handshake).
fn hello_of(line: &[u8], auth: Option<&Key>) -> Result<Hello, HandshakeError> {
    let Some(key) = auth else {
        return parse_hello(line).map_err(HandshakeError::Invalid);
    };
    let (handshake, token) = split_token(line);
    let hello = parse_hello(handshake).map_err(HandshakeError::Invalid)?;
    let token = match (&hello, token) {
        (Hello::Resumable { .. }, Some(token)) => token,
        _ => return Err(HandshakeError::Refused(AuthError::Missing)),
    };
    let subject = hello.user().to_string();
    key.check(token, &subject)
        .map_err(HandshakeError::Refused)?;
    Ok(hello)
}

/// Moves bytes from `outbox` to the socket until the client leaves, the
/// outbox is closed, or the socket fails; returns why it stopped.
async fn pump(stream: &mut TcpStream, outbox: &Outbox, stats: &Stats) -> DisconnectReason {
    let mut writing: Vec<u8> = Vec::new();
    let mut discard = [0u8; DISCARD_BYTES];
    loop {
        let Taken {
            closed,
            oldest_read_at,
        } = outbox.take(&mut writing);
        if closed == Some(Closed::SlowConsumer) {
            return DisconnectReason::SlowConsumer;
        }
        if !writing.is_empty() {
            let mut rest: &[u8] = &writing;
            while !rest.is_empty() {
                tokio::select! {
                    written = stream.write(rest) => match written {
                        Ok(0) | Err(_) => return DisconnectReason::Error,
                        Ok(n) => {
                            rest = &rest[n..];
                            Stats::add(&stats.client_writes, 1);
                            Stats::add(&stats.bytes_written, n as u64);
                        }
                    },
                    // A stuck client must not pin this task in `write`
                    // when the registry gives up on it.
                    () = outbox.woken() => {
                        if outbox.closed() == Some(Closed::SlowConsumer) {
                            return DisconnectReason::SlowConsumer;
                        }
                    }
                }
            }
            if let Some(read_at) = oldest_read_at {
                stats.latency.record(read_at.elapsed());
            }
            writing.clear();
            if writing.capacity() > WRITER_KEEP_BYTES {
                writing = Vec::new();
            }
            // More may have arrived while writing; the wake for it may have
            // been consumed above, so look before waiting.
            continue;
        }
        match closed {
            None => {}
            Some(Closed::Reset) => {
                // Linger 0: closing sends RST instead of FIN.
                let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
                return DisconnectReason::FaultReset;
            }
            Some(_) => {
                // Drained (or closed by us): say goodbye properly.
                let _ = stream.shutdown().await;
                return DisconnectReason::Normal;
            }
        }
        tokio::select! {
            () = outbox.woken() => {}
            read = stream.read(&mut discard) => match read {
                Ok(0) => return DisconnectReason::Normal,
                Ok(n) => Stats::add(&stats.client_bytes_ignored, n as u64),
                Err(_) => return DisconnectReason::Error,
            }
        }
    }
}
