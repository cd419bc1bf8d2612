//! Why a run failed: one variant per way a server can be wrong (or
//! unreachable), each carrying what a person needs to find the bug: which
//! client, how far it got, and the first sequence number where what arrived
//! differs from what was owed.

use std::time::Duration;

use super::expect::Tally;
use followermaze_protocol::resume::{StreamId, Verdict};
use followermaze_protocol::Seq;

/// A client, as failures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRef {
    /// Its index among the run's clients (0-based).
    pub index: usize,
    /// The user id it announced.
    pub user: u32,
    /// On a resumable run, the connection it was on and how that began;
    /// `None` on a plain run (one connection per client).
    pub connection: Option<ConnectionRef>,
}

impl ClientRef {
    /// Client `index` of user `user`, before any resumable connection.
    pub(crate) const fn new(index: usize, user: u32) -> ClientRef {
        ClientRef {
            index,
            user,
            connection: None,
        }
    }
}

impl std::fmt::Display for ClientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {} (user {})", self.index, self.user)?;
        match &self.connection {
            Some(connection) => write!(f, " {connection}"),
            None => Ok(()),
        }
    }
}

/// One resumable connection of a client, as failures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRef {
    /// 1 for the client's first connection, counting every attempt that
    /// sent a handshake.
    pub number: u32,
    /// The `<after>` it sent: `None` on a first connection (`user||0`).
    pub after: Option<Seq>,
    /// The verdict it received and its `<seq>`, once it has.
    pub verdict: Option<(Verdict, Seq)>,
}

impl std::fmt::Display for ConnectionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "on connection {} (", self.number)?;
        match self.after {
            None => write!(f, "a first connection")?,
            Some(after) => write!(f, "resumed after {after}")?,
        }
        match self.verdict {
            None => write!(f, ", no verdict yet)"),
            Some((verdict, seq)) => write!(f, ", got {} {seq})", verdict_tag(verdict)),
        }
    }
}

/// `#OK` or `#GAP`.
pub(crate) fn verdict_tag(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Ok => "#OK",
        Verdict::Gap => "#GAP",
    }
}

/// What is wrong with a verdict (`#OK` or `#GAP`) or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictProblem {
    /// The connection's first line is not a verdict.
    NotFirst,
    /// A second verdict on one connection.
    Again,
    /// `#GAP` on a first connection, which always gets `#OK`.
    GapOnFirst,
    /// `#OK` at another position than the client's own `<after>`.
    NotAtAfter {
        /// The `<after>` the client sent.
        after: Seq,
    },
    /// `#GAP` below the client's `<after>`: lines it has would come again.
    GapBehind {
        /// The `<after>` the client sent.
        after: Seq,
    },
    /// `#GAP` to a client that was away for less than the window.
    EarlyGap {
        /// How long it was away.
        offline: Duration,
        /// The server's window (`resumeWindowSecs`).
        window: Duration,
    },
    /// A verdict naming another stream than the client's.
    OtherStream {
        /// The stream the client is on.
        expected: StreamId,
    },
    /// A verdict at a position the event source has not reached.
    Ahead {
        /// The last sequence number the source had written.
        handed: Seq,
    },
    /// No verdict within `timeout` of connecting.
    Never {
        /// How long the connection waited.
        waited: Duration,
    },
}

impl std::fmt::Display for VerdictProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerdictProblem::NotFirst => f.write_str("the first line is not a verdict"),
            VerdictProblem::Again => f.write_str("a second verdict on one connection"),
            VerdictProblem::GapOnFirst => {
                f.write_str("#GAP on a first connection, which must get #OK")
            }
            VerdictProblem::NotAtAfter { after } => {
                write!(f, "#OK must carry the client's own after, {after}")
            }
            VerdictProblem::GapBehind { after } => write!(
                f,
                "#GAP below the client's after, {after}: lines it has would come again"
            ),
            VerdictProblem::EarlyGap { offline, window } => write!(
                f,
                "#GAP after {} ms away, within the {} s window",
                offline.as_millis(),
                window.as_secs()
            ),
            VerdictProblem::OtherStream { expected } => {
                write!(f, "another stream than the client's, {expected}")
            }
            VerdictProblem::Ahead { handed } => write!(
                f,
                "a position the event source has not reached (it had written up to {handed})"
            ),
            VerdictProblem::Never { waited } => {
                write!(f, "no verdict in {} ms", waited.as_millis())
            }
        }
    }
}

/// How a checkpoint (`#AT`) differs from what the client counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointProblem {
    /// A checkpoint before the connection's verdict.
    BeforeVerdict,
    /// Another stream than the client's.
    OtherStream {
        /// The stream the client is on.
        expected: StreamId,
    },
    /// `<count>` is not the number of event lines received on this
    /// connection since its verdict.
    Count {
        /// The client's count.
        counted: u64,
    },
    /// `<crc32>` is not the CRC-32 of those lines.
    Crc {
        /// The client's CRC-32.
        computed: u32,
    },
    /// `<seq>` is below a position this connection already had.
    Behind {
        /// That position.
        position: Seq,
    },
    /// `<seq>` is a position the event source has not reached.
    Ahead {
        /// The last sequence number the source had written.
        handed: Seq,
    },
}

impl std::fmt::Display for CheckpointProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointProblem::BeforeVerdict => f.write_str("a checkpoint before the verdict"),
            CheckpointProblem::OtherStream { expected } => {
                write!(f, "another stream than the client's, {expected}")
            }
            CheckpointProblem::Count { counted } => write!(
                f,
                "the client received {counted} event lines on this connection since its verdict"
            ),
            CheckpointProblem::Crc { computed } => write!(
                f,
                "the event lines received on this connection since its verdict have CRC-32 \
                 {computed:08x}"
            ),
            CheckpointProblem::Behind { position } => write!(
                f,
                "below position {position}, which this connection had already reached"
            ),
            CheckpointProblem::Ahead { handed } => write!(
                f,
                "a position the event source has not reached (it had written up to {handed})"
            ),
        }
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
    /// A control line (`#...`) on a plain connection, which must never
    /// receive one.
    ControlOnPlain {
        /// Who.
        client: ClientRef,
        /// The line (quoted).
        received: String,
        /// How far the client got.
        progress: Progress,
    },
    /// A resumable connection's verdict broke the protocol's rules, or
    /// never came.
    BadVerdict {
        /// Who, on which connection.
        client: ClientRef,
        /// What is wrong.
        problem: VerdictProblem,
        /// The line received (quoted).
        received: String,
    },
    /// A checkpoint's figures are not the client's own.
    BadCheckpoint {
        /// Who, on which connection.
        client: ClientRef,
        /// What differs.
        problem: CheckpointProblem,
        /// The line received (quoted).
        received: String,
    },
    /// A line starting with `#` that is none of `#OK`, `#GAP`, `#AT`.
    MalformedControl {
        /// Who, on which connection.
        client: ClientRef,
        /// The line received (quoted).
        received: String,
    },
    /// A client that dropped could not reconnect within `timeout`.
    Reconnect {
        /// Who, and the connection that dropped.
        client: ClientRef,
        /// Attempts made.
        attempts: u32,
        /// How long it tried.
        waited: Duration,
        /// The last attempt's error.
        error: String,
    },
    /// A web client's server broke the web listener's wire (web-wire.md):
    /// a WebSocket message that is binary or cuts a line, an SSE event
    /// that is not one the wire has, a response that is not an event
    /// stream.
    WebWire {
        /// Who, on which connection.
        client: ClientRef,
        /// What it sent, and what was expected.
        error: String,
    },
    /// On a resumable run, no opening broadcast reached the probe
    /// connection that starts the stream before the clients connect.
    StreamNotStarted {
        /// Broadcasts sent.
        broadcasts: u64,
        /// How long they went on.
        waited: Duration,
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
            Failure::ControlOnPlain { .. } => "control line on a plain connection",
            Failure::BadVerdict { .. } => "wrong resume verdict",
            Failure::BadCheckpoint { .. } => "wrong checkpoint",
            Failure::MalformedControl { .. } => "malformed control line",
            Failure::Reconnect { .. } => "cannot reconnect",
            Failure::WebWire { .. } => "web wire broken",
            Failure::StreamNotStarted { .. } => "stream not started",
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
            | Failure::TallyMismatch { client, .. }
            | Failure::ControlOnPlain { client, .. }
            | Failure::BadVerdict { client, .. }
            | Failure::BadCheckpoint { client, .. }
            | Failure::MalformedControl { client, .. }
            | Failure::Reconnect { client, .. }
            | Failure::WebWire { client, .. } => Some(*client),
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
            Failure::ControlOnPlain {
                client,
                received,
                progress,
            } => write!(
                f,
                "{reason}: {client} received {received}, but only a resumable connection may \
                 ({progress})"
            ),
            Failure::BadVerdict {
                client,
                problem,
                received,
            } => write!(f, "{reason}: {client} received {received}: {problem}"),
            Failure::BadCheckpoint {
                client,
                problem,
                received,
            } => write!(f, "{reason}: {client} received {received}: {problem}"),
            Failure::MalformedControl { client, received } => write!(
                f,
                "{reason}: {client} received {received}, which is none of #OK, #GAP, #AT"
            ),
            Failure::Reconnect {
                client,
                attempts,
                waited,
                error,
            } => write!(
                f,
                "{reason}: {client} dropped and failed {attempts} attempts in {} ms: {error}",
                waited.as_millis()
            ),
            Failure::WebWire { client, error } => write!(f, "{reason}: {client}: {error}"),
            Failure::StreamNotStarted { broadcasts, waited } => write!(
                f,
                "{reason}: none of {broadcasts} opening broadcasts reached the probe connection \
                 in {} ms (a resumable run starts the stream before its clients connect, so that \
                 their first verdicts are of this stream)",
                waited.as_millis()
            ),
            Failure::Config(message) | Failure::Internal(message) => {
                write!(f, "{reason}: {message}")
            }
        }
    }
}

impl std::error::Error for Failure {}
