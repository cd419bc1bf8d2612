//! Why a run failed: one variant per way a server can be wrong (or
//! unreachable), each carrying what a person needs to find the bug: which
//! client, how far it got, and the first sequence number where what arrived
//! differs from what was owed.

use std::time::Duration;

use super::expect::Tally;
use followermaze_protocol::Seq;

/// A client connection, as failures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRef {
    /// Its index among the run's connections (0-based).
    pub index: usize,
    /// The user id it announced.
    pub user: u32,
}

impl std::fmt::Display for ClientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} (user {})", self.index, self.user)
    }
}

/// How far a client had got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Notifications it had received correctly.
    pub received: u64,
    /// Notifications it was owed by then: those received plus those the
    /// source had already queued for it.
    pub owed: u64,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of the {} notifications owed so far received correctly",
            self.received, self.owed
        )
    }
}

/// How a line that arrived for the right event differs from the sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteDiff {
    /// Only the terminator differs (for example `\n` for `\r\n`).
    Terminator,
    /// The content differs.
    Content,
}

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Nothing accepts connections at an address: the server is not running.
    NotListening {
        /// The variable naming the port.
        variable: &'static str,
        /// The address tried.
        address: String,
        /// What the OS said.
        error: String,
    },
    /// A connection failed other than by being refused.
    Connect {
        /// The variable naming the port.
        variable: &'static str,
        /// The address tried.
        address: String,
        /// What went wrong.
        error: String,
    },
    /// A client received no opening broadcast in time: the server never
    /// registered it.
    NotRegistered {
        /// The first client still waiting.
        client: ClientRef,
        /// Clients registered by then.
        registered: usize,
        /// Clients in the run.
        clients: usize,
        /// How long the broadcasts went on.
        waited: Duration,
    },
    /// A notification never came: a later one arrived in its place and it
    /// did not follow.
    Missing {
        /// Who.
        client: ClientRef,
        /// The sequence number of the missing notification.
        seq: Seq,
        /// Its line.
        expected: String,
        /// What arrived in its place, if anything did.
        instead: Option<String>,
        /// How far the client got.
        progress: Progress,
    },
    /// Two notifications arrived in the wrong order.
    OutOfOrder {
        /// Who.
        client: ClientRef,
        /// The sequence number that should have come first.
        expected_seq: Seq,
        /// The one that came first instead.
        received_seq: Seq,
        /// How far the client got.
        progress: Progress,
    },
    /// The right event arrived with different bytes.
    WrongBytes {
        /// Who.
        client: ClientRef,
        /// The event's sequence number.
        seq: Seq,
        /// What differs.
        diff: ByteDiff,
        /// The line sent.
        expected: String,
        /// The line received.
        received: String,
        /// How far the client got.
        progress: Progress,
    },
    /// A notification the client was not owed (never, or not again).
    Unexpected {
        /// Who.
        client: ClientRef,
        /// Its sequence number.
        seq: Seq,
        /// Whether the client had already received it.
        repeated: bool,
        /// The line received.
        received: String,
        /// What was owed next, if anything.
        expected: Option<String>,
        /// How far the client got.
        progress: Progress,
    },
    /// A line that is not an event line at all.
    Malformed {
        /// Who.
        client: ClientRef,
        /// The line (quoted, perhaps cut).
        received: String,
        /// How far the client got.
        progress: Progress,
    },
    /// A client waited longer than `timeout` for a notification it is owed.
    Timeout {
        /// Who.
        client: ClientRef,
        /// The notification waited for.
        seq: Seq,
        /// Its line.
        expected: String,
        /// How long since the source sent it.
        waited: Duration,
        /// How far the client got.
        progress: Progress,
    },
    /// The server closed a client's connection before it got everything.
    Disconnected {
        /// Who.
        client: ClientRef,
        /// The notification it was waiting for, if any was queued.
        next: Option<Seq>,
        /// How far the client got.
        progress: Progress,
    },
    /// A client connection failed.
    ClientIo {
        /// Who.
        client: ClientRef,
        /// What the OS said.
        error: String,
    },
    /// The server stopped reading events for longer than `timeout`.
    SourceStalled {
        /// Events written by then.
        events_sent: u64,
        /// The timeout.
        waited: Duration,
    },
    /// The event source connection failed.
    SourceIo {
        /// What the OS said.
        error: String,
    },
    /// Every line matched, yet the totals do not (a verifier bug, or a
    /// hash collision hiding one): reported rather than ignored.
    TallyMismatch {
        /// Who.
        client: ClientRef,
        /// From the bytes the source sent.
        expected: Tally,
        /// From the bytes the client read.
        received: Tally,
    },
    /// The settings passed to [`super::run`] are invalid.
    Config(String),
    /// A bug in the verifier itself (a task panicked).
    Internal(String),
}

impl Failure {
    /// A short stable name for the kind of failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::NotListening { .. } => "server not listening",
            Failure::Connect { .. } => "cannot connect",
            Failure::NotRegistered { .. } => "client not registered",
            Failure::Missing { .. } => "missing notification",
            Failure::OutOfOrder { .. } => "notifications out of order",
            Failure::WrongBytes { .. } => "notification bytes differ",
            Failure::Unexpected { .. } => "unexpected notification",
            Failure::Malformed { .. } => "malformed notification",
            Failure::Timeout { .. } => "timed out waiting for a notification",
            Failure::Disconnected { .. } => "client disconnected by the server",
            Failure::ClientIo { .. } => "client connection failed",
            Failure::SourceStalled { .. } => "server stopped reading events",
            Failure::SourceIo { .. } => "event source connection failed",
            Failure::TallyMismatch { .. } => "totals differ",
            Failure::Config(_) => "invalid configuration",
            Failure::Internal(_) => "verifier bug",
        }
    }

    /// The client concerned, for failures about one client.
    pub fn client(&self) -> Option<ClientRef> {
        match self {
            Failure::NotRegistered { client, .. }
            | Failure::Missing { client, .. }
            | Failure::OutOfOrder { client, .. }
            | Failure::WrongBytes { client, .. }
            | Failure::Unexpected { client, .. }
            | Failure::Malformed { client, .. }
            | Failure::Timeout { client, .. }
            | Failure::Disconnected { client, .. }
            | Failure::ClientIo { client, .. }
            | Failure::TallyMismatch { client, .. } => Some(*client),
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = self.reason();
        match self {
            Failure::NotListening {
                variable,
                address,
                error,
            } => write!(
                f,
                "{reason}: nothing accepts connections on {address} ({variable}): {error}; \
                 start the server first (`cargo run --release`)"
            ),
            Failure::Connect {
                variable,
                address,
                error,
            } => write!(f, "{reason} to {address} ({variable}): {error}"),
            Failure::NotRegistered {
                client,
                registered,
                clients,
                waited,
            } => write!(
                f,
                "{reason}: {client} received none of the opening broadcasts in {} ms \
                 ({registered} of {clients} clients did)",
                waited.as_millis()
            ),
            Failure::Missing {
                client,
                seq,
                expected,
                instead,
                progress,
            } => {
                write!(
                    f,
                    "{reason}: {client} never received event {seq} {expected}"
                )?;
                if let Some(instead) = instead {
                    write!(f, "; {instead} arrived in its place")?;
                }
                write!(f, " ({progress})")
            }
            Failure::OutOfOrder {
                client,
                expected_seq,
                received_seq,
                progress,
            } => write!(
                f,
                "{reason}: {client} received event {received_seq} before event {expected_seq} \
                 ({progress})"
            ),
            Failure::WrongBytes {
                client,
                seq,
                diff,
                expected,
                received,
                progress,
            } => {
                let what = match diff {
                    ByteDiff::Terminator => "the line terminator differs",
                    ByteDiff::Content => "the content differs",
                };
                write!(
                    f,
                    "{reason}: {client}, event {seq}: {what}: sent {expected}, received {received} \
                     ({progress})"
                )
            }
            Failure::Unexpected {
                client,
                seq,
                repeated,
                received,
                expected,
                progress,
            } => {
                let why = if *repeated {
                    "a second time"
                } else {
                    "but is not owed it"
                };
                write!(
                    f,
                    "{reason}: {client} received event {seq} {why}: {received}"
                )?;
                match expected {
                    Some(expected) => write!(f, "; next owed was {expected}")?,
                    None => write!(f, "; nothing was owed")?,
                }
                write!(f, " ({progress})")
            }
            Failure::Malformed {
                client,
                received,
                progress,
            } => write!(
                f,
                "{reason}: {client} received {received}, which is not an event line ({progress})"
            ),
            Failure::Timeout {
                client,
                seq,
                expected,
                waited,
                progress,
            } => write!(
                f,
                "{reason}: {client} waited {} ms for event {seq} {expected} ({progress})",
                waited.as_millis()
            ),
            Failure::Disconnected {
                client,
                next,
                progress,
            } => {
                write!(f, "{reason}: the server closed {client}'s connection")?;
                if let Some(next) = next {
                    write!(f, " while it was owed event {next}")?;
                }
                write!(f, " ({progress})")
            }
            Failure::ClientIo { client, error } => write!(f, "{reason}: {client}: {error}"),
            Failure::SourceStalled {
                events_sent,
                waited,
            } => write!(
                f,
                "{reason}: a write blocked for {} ms after {events_sent} events",
                waited.as_millis()
            ),
            Failure::SourceIo { error } => write!(f, "{reason}: {error}"),
            Failure::TallyMismatch {
                client,
                expected,
                received,
            } => write!(
                f,
                "{reason}: {client}: sent {} notifications / {} bytes / digest {:016x}, \
                 received {} / {} / {:016x}",
                expected.count,
                expected.bytes,
                expected.digest,
                received.count,
                received.bytes,
                received.digest
            ),
            Failure::Config(message) | Failure::Internal(message) => {
                write!(f, "{reason}: {message}")
            }
        }
    }
}

impl std::error::Error for Failure {}
