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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
use followermaze_protocol::UserId;

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

/// What every client listener shares, the TCP one and the web one: the
/// registry, the counters, the settings, the connection limit and the
/// connection ids.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    /// Where connections register.
    registry: RegistryHandle,
    /// Shared counters.
    pub(crate) stats: Arc<Stats>,
    /// Deadlines, limits and the token key.
    pub(crate) settings: ClientSettings,
    /// `maxClients`: one permit per connection, from accept to close.
    slots: Arc<Semaphore>,
    /// The last connection id handed out; ids are unique across listeners.
    ids: Arc<AtomicU64>,
    /// Shared rate limit for bad-handshake and refused-token warnings: a
    /// port scan must not flood the log.
    warnings: Arc<std::sync::Mutex<LogThrottle>>,
}

impl Clients {
    /// The shared state of the client listeners of one registry.
    pub(crate) fn new(
        registry: RegistryHandle,
        stats: Arc<Stats>,
        settings: ClientSettings,
    ) -> Clients {
        Clients {
            registry,
            stats,
            slots: Arc::new(Semaphore::new(settings.max_clients)),
            settings,
            ids: Arc::new(AtomicU64::new(0)),
            warnings: Arc::new(std::sync::Mutex::new(LogThrottle::new(WARN_EVERY))),
        }
    }

    /// A place for one more connection, or `None` when `maxClients` are
    /// open (counted as a rejected client).
    pub(crate) fn admit(&self) -> Option<Admission> {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.stats.disconnected(DisconnectReason::Rejected);
            return None;
        };
        Some(Admission {
            slot,
            id: self.ids.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    /// Whether a handshake warning may be logged now (with how many were
    /// suppressed since the last): one rate limit for every connection.
    pub(crate) fn warning_allowed(&self) -> Option<u64> {
        let mut throttle = self.warnings.lock().ok()?;
        throttle.allow()
    }

    /// Counts a client refused for its token, by reason, and says so
    /// (rate-limited).
    pub(crate) fn refused(&self, peer: SocketAddr, reason: AuthError) {
        Stats::add(&self.stats.client_auth_refusals[reason.index()], 1);
        if let Some(suppressed) = self.warning_allowed() {
            tracing::warn!(
                %peer,
                %reason,
                suppressed,
                "refusing client: it must present a token signed with authSecret for its user"
            );
        }
    }
}

/// One admitted connection: its place under `maxClients` and its id.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Given back when the connection closes.
    slot: OwnedSemaphorePermit,
    /// This connection's id.
    id: ConnId,
}

impl Admission {
    /// Registers the connection as `hello` says: from now on the registry
    /// writes its bytes (the verdict first, for a resumable one) to the
    /// returned connection's outbox. `None` when the registry has stopped.
    pub(crate) async fn register(self, clients: &Clients, hello: Hello) -> Option<Registered> {
        self.register_with(clients, hello, Outbox::new()).await
    }

    /// [`Admission::register`] with `outbox` (a TCP client's, which the
    /// registry may write through to its socket).
    async fn register_with(
        self,
        clients: &Clients,
        hello: Hello,
        outbox: Outbox,
    ) -> Option<Registered> {
        let user = hello.user();
        let outbox = Arc::new(outbox);
        let register = Command::Register {
            hello,
            conn: self.id,
            outbox: Arc::clone(&outbox),
        };
        clients.registry.send(register).await.ok()?;
        Stats::add(&clients.stats.client_connects, 1);
        Some(Registered {
            user,
            conn: self.id,
            outbox,
            registry: clients.registry.clone(),
            stats: Arc::clone(&clients.stats),
            reason: None,
            ended: false,
            _slot: self.slot,
        })
    }
}

/// A registered connection. [`Registered::end`] tells the registry it is
/// gone; dropped without it (an event stream whose client left), it does
/// the same from a task of its own.
#[derive(Debug)]
pub(crate) struct Registered {
    /// The user it announced.
    pub(crate) user: UserId,
    /// Its id.
    pub(crate) conn: ConnId,
    /// Where the registry puts its bytes.
    outbox: Arc<Outbox>,
    /// Told when it ends.
    registry: RegistryHandle,
    /// Where its disconnect is counted.
    stats: Arc<Stats>,
    /// Why it is ending, once known; counted as normal if never said.
    reason: Option<DisconnectReason>,
    /// Set by [`Registered::end`]: nothing left for `drop` to do.
    ended: bool,
    /// Its place under `maxClients`, given back last.
    _slot: OwnedSemaphorePermit,
}

impl Registered {
    /// Where the registry puts its bytes.
    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The outbox itself, for a writer that must own a handle to it.
    pub(crate) fn shared_outbox(&self) -> Arc<Outbox> {
        Arc::clone(&self.outbox)
    }

    /// Notes why the connection is ending, for the count when it is
    /// dropped.
    pub(crate) fn ending(&mut self, reason: DisconnectReason) {
        self.reason = Some(reason);
    }

    /// Closes the outbox, tells the registry and counts the disconnect.
    pub(crate) async fn end(mut self, reason: DisconnectReason) {
        self.ended = true;
        self.outbox.close(Closed::Gone);
        // At shutdown the registry may be gone: nothing left to tell it.
        let _ = self.registry.send(self.unregister()).await;
        self.stats.disconnected(reason);
    }

    /// The registry's command for this connection's end.
    fn unregister(&self) -> Command {
        Command::Unregister {
            user: self.user,
            conn: self.conn,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.outbox.close(Closed::Gone);
        let reason = self.reason.unwrap_or(DisconnectReason::Normal);
        self.stats.disconnected(reason);
        let (registry, unregister) = (self.registry.clone(), self.unregister());
        // Dropped on the runtime (an HTTP connection's task): tell the
        // registry from a task. Off it, the registry is gone too.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = registry.send(unregister).await;
            });
        }
    }
}

/// Accepts clients until shutdown, then gives their writers up to
/// `drain_timeout` to flush before closing them.
pub(crate) async fn accept_clients(
    listener: TcpListener,
    clients: Clients,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut errors = LogThrottle::new(WARN_EVERY);
    let mut refusals = LogThrottle::new(WARN_EVERY);
    let stats = Arc::clone(&clients.stats);
    while let Some((stream, peer)) =
        accept(&listener, &shutdown, "client", &mut errors, &stats).await
    {
        while connections.try_join_next().is_some() {}
        let Some(admission) = clients.admit() else {
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(
                    %peer,
                    limit = clients.settings.max_clients,
                    suppressed,
                    "refusing client: connection limit reached"
                );
            }
            continue;
        };
        let connection = Connection {
            peer,
            clients: clients.clone(),
            shutdown: shutdown.clone(),
        };
        connections.spawn(connection.serve(stream, admission));
    }
    drop(listener);
    let drain_timeout = clients.settings.drain_timeout;
    let drained = tokio::time::timeout(drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            clients = connections.len(),
            timeout_ms = drain_timeout.as_millis() as u64,
            "clients still flushing at the drain timeout; closing them"
        );
        connections.shutdown().await;
    }
}

/// One TCP client connection's context.
struct Connection {
    /// The client's address, for logs.
    peer: SocketAddr,
    /// What the client listeners share.
    clients: Clients,
    /// Cancelled at shutdown (ends a pending handshake).
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream, admission: Admission) {
        // We batch writes ourselves; Nagle would only add latency.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, %error, "could not set TCP_NODELAY");
        }
        set_send_buffer(&stream, self.clients.settings.send_buffer_bytes, self.peer);
        let handshake = tokio::select! {
            () = self.shutdown.cancelled() => Err(HandshakeError::Shutdown),
            result = tokio::time::timeout(
                self.clients.settings.handshake_timeout,
                self.read_hello(&mut stream),
            ) => {
                result.unwrap_or(Err(HandshakeError::Timeout))
            }
        };
        let hello = match handshake {
            Ok(hello) => hello,
            Err(HandshakeError::Shutdown) => return,
            Err(HandshakeError::Refused(reason)) => return self.clients.refused(self.peer, reason),
            Err(error) => {
                self.clients
                    .stats
                    .disconnected(DisconnectReason::BadHandshake);
                if let Some(suppressed) = self.clients.warning_allowed() {
                    tracing::warn!(peer = %self.peer, %error, suppressed, "closing client: bad handshake");
                }
                return;
            }
        };
        // Shared with the outbox, which the registry may write through.
        let stream = Arc::new(stream);
        let outbox = Outbox::for_socket(Arc::clone(&stream));
        let Some(registered) = admission.register_with(&self.clients, hello, outbox).await else {
            return;
        };
        let (user, conn) = (registered.user, registered.conn);
        tracing::debug!(peer = %self.peer, user, conn, "client registered");
        let reason = pump(&stream, registered.outbox(), &self.clients.stats).await;
        registered.end(reason).await;
        tracing::debug!(peer = %self.peer, user, conn, reason = reason.as_str(), "client disconnected");
    }
}

/// Sets `SO_SNDBUF` on a client socket (0 leaves the OS default).
pub(crate) fn set_send_buffer(stream: &TcpStream, bytes: usize, peer: SocketAddr) {
    if bytes > 0 {
        let socket = socket2::SockRef::from(stream);
        if let Err(error) = socket.set_send_buffer_size(bytes) {
            tracing::debug!(%peer, %error, "could not set SO_SNDBUF");
        }
    }
}

impl Connection {
    /// Reads the handshake line and parses it, checking its token when
    /// `authSecret` is set. Bytes after the newline in the same read are
    /// dropped (the protocol gives them no meaning).
    async fn read_hello(&self, stream: &mut TcpStream) -> Result<Hello, HandshakeError> {
        let max = match self.clients.settings.auth {
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
                return hello_of(&line[..end], self.clients.settings.auth.as_deref());
            }
            filled += read;
            if filled == line.len() {
                return Err(HandshakeError::TooLong);
            }
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
/// outbox is closed, or the socket fails; returns why it stopped. The
/// socket is shared with the outbox (the registry may write through it
/// while this writer holds no bytes; see [`crate::fanout::outbox`]), so it
/// is used by readiness and `try_` calls, which take it by reference.
async fn pump(stream: &TcpStream, outbox: &Outbox, stats: &Stats) -> DisconnectReason {
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
            if let Err(reason) = write_all(stream, &writing, outbox, stats).await {
                return reason;
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
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
                return DisconnectReason::FaultReset;
            }
            Some(_) => {
                // Drained (or closed by us): say goodbye properly.
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
                return DisconnectReason::Normal;
            }
        }
        tokio::select! {
            () = outbox.woken() => {}
            read = read_some(stream, &mut discard) => match read {
                Ok(0) => return DisconnectReason::Normal,
                Ok(n) => Stats::add(&stats.client_bytes_ignored, n as u64),
                Err(_) => return DisconnectReason::Error,
            }
        }
    }
}

/// Writes all of `bytes` to `stream`, counting each write; gives up when
/// the registry closes `outbox` as a slow consumer (a stuck client must
/// not pin the writer in a write), or the socket fails.
async fn write_all(
    stream: &TcpStream,
    bytes: &[u8],
    outbox: &Outbox,
    stats: &Stats,
) -> Result<(), DisconnectReason> {
    let mut rest = bytes;
    while !rest.is_empty() {
        tokio::select! {
            ready = stream.writable() => {
                if ready.is_err() {
                    return Err(DisconnectReason::Error);
                }
                match stream.try_write(rest) {
                    Ok(0) => return Err(DisconnectReason::Error),
                    Ok(n) => {
                        rest = &rest[n..];
                        Stats::add(&stats.client_writes, 1);
                        Stats::add(&stats.bytes_written, n as u64);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(DisconnectReason::Error),
                }
            },
            () = outbox.woken() => {
                if outbox.closed() == Some(Closed::SlowConsumer) {
                    return Err(DisconnectReason::SlowConsumer);
                }
            }
        }
    }
    Ok(())
}

/// Reads what the client sent into `buf`, waiting until it sent something
/// (or closed: `Ok(0)`). Cancel safe.
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}
