//! Event source connections: read, frame, parse, and pass events to the
//! sequencer, one read's worth at a time.
//!
//! Bad lines are skipped (logged at most every few seconds, always counted)
//! and the connection carries on; a source that disconnects mid-line loses
//! only that incomplete line. Reading stops at shutdown; what was read whole
//! is still passed on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchEvent;
use crate::ingest::lines::{read_events, LineReader, Skipped};
use crate::ops::accept::accept;
use crate::ops::stats::{LogThrottle, Stats};
use crate::order::sequencer::{ReadEvents, SourceId, SourceMsg};
use crate::settings::SourceSettings;
use followermaze_protocol::auth::{
    parse_auth_line, AuthError, Key, AUTH_PREFIX, MAX_TOKEN_BYTES, SOURCE_SUBJECT,
};
use followermaze_protocol::ParseError;

/// How often a repeating bad-input warning may be logged, per connection.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// How many bytes of a bad line a warning quotes.
const QUOTE_BYTES: usize = 64;

/// Accepts event sources until shutdown, then waits for their last events to
/// reach the sequencer.
pub(crate) async fn accept_sources(
    listener: TcpListener,
    sequencer: mpsc::Sender<SourceMsg>,
    stats: Arc<Stats>,
    settings: SourceSettings,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut errors = LogThrottle::new(WARN_EVERY);
    // Shared by every connection: a flood of bad tokens must not flood
    // the log.
    let refusals = Arc::new(Mutex::new(LogThrottle::new(WARN_EVERY)));
    let mut next_id: SourceId = 0;
    while let Some((stream, peer)) =
        accept(&listener, &shutdown, "event source", &mut errors, &stats).await
    {
        next_id += 1;
        Stats::add(&stats.source_connections, 1);
        let source = Source {
            peer,
            id: next_id,
            sequencer: sequencer.clone(),
            stats: stats.clone(),
            settings: settings.clone(),
            refusals: Arc::clone(&refusals),
        };
        connections.spawn(source.serve(stream, shutdown.clone()));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One event source connection's context.
struct Source {
    /// Its address, for logs.
    peer: SocketAddr,
    /// Its id, for the sequencer and logs.
    id: SourceId,
    /// Where its events go.
    sequencer: mpsc::Sender<SourceMsg>,
    /// Shared counters.
    stats: Arc<Stats>,
    /// Line bound and authentication.
    settings: SourceSettings,
    /// Rate limit for refusal warnings, shared by all sources.
    refusals: Arc<Mutex<LogThrottle>>,
}

impl Source {
    /// Authenticates the source (with `authSecret` set), then reads its
    /// events until it closes or `shutdown`.
    async fn serve(self, mut stream: TcpStream, shutdown: CancellationToken) {
        let (id, peer, stats) = (self.id, self.peer, &self.stats);
        let mut reader = LineReader::new(self.settings.max_line_bytes);
        if let Some(key) = &self.settings.auth {
            let deadline = self.settings.auth_timeout;
            let first = tokio::time::timeout(deadline, authenticate(&mut stream, &mut reader, key));
            let refused = match first.await {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some(reason),
                Err(_) => Some(AuthError::Missing),
            };
            if let Some(reason) = refused {
                return self.refuse(reason);
            }
        }
        let open = stats.sources_connected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(%peer, source = id, open, "event source connected");
        if self.sequencer.send(SourceMsg::Opened(id)).await.is_err() {
            return;
        }
        let mut parser = LineParser {
            id,
            max_line_bytes: self.settings.max_line_bytes,
            bytes_per_event: 16,
            stats: stats.clone(),
            bad_lines: LogThrottle::new(WARN_EVERY),
        };
        let (ending, events_read) = read_until_end(
            &mut stream,
            &mut reader,
            &mut parser,
            &self.sequencer,
            &shutdown,
        )
        .await;
        let partial = reader.partial_len();
        if partial > 0 {
            tracing::warn!(
                source = id,
                bytes = partial,
                "event source ended mid-line; the incomplete line is dropped"
            );
        }
        stats.sources_connected.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(%peer, source = id, events = events_read, reason = ending, "event source disconnected");
        // If the sequencer is gone the server is stopping; nothing to tell.
        let _ = self.sequencer.send(SourceMsg::Closed(id)).await;
    }

    /// Closes a source that did not authenticate, before any event: counts
    /// it by reason and says so (rate-limited).
    fn refuse(&self, reason: AuthError) {
        Stats::add(&self.stats.source_auth_refusals[reason.index()], 1);
        let allowed = self.refusals.lock().map(|mut throttle| throttle.allow());
        if let Ok(Some(suppressed)) = allowed {
            tracing::warn!(
                peer = %self.peer,
                source = self.id,
                %reason,
                suppressed,
                "refusing event source: its first line must be #AUTH|<token> signed with authSecret for `source`"
            );
        }
    }
}

/// The longest first line of a source that must authenticate.
const MAX_AUTH_LINE_BYTES: usize = AUTH_PREFIX.len() + MAX_TOKEN_BYTES + 2;

/// Reads a source's first line into `reader`'s buffer and checks that it
/// is `#AUTH|<token>` for the subject `source`; what followed it stays in
/// the buffer, for the events.
async fn authenticate(
    stream: &mut TcpStream,
    reader: &mut LineReader,
    key: &Key,
) -> Result<(), AuthError> {
    let line = loop {
        let buf = reader.read_buf();
        if let Some(newline) = memchr::memchr(b'\n', buf) {
            break buf.split_to(newline + 1);
        }
        if buf.len() > MAX_AUTH_LINE_BYTES {
            return Err(AuthError::Malformed);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(AuthError::Missing),
            Ok(_) => {}
        }
    };
    let token = parse_auth_line(&line).ok_or(AuthError::Missing)?;
    key.check(token, SOURCE_SUBJECT)
}

/// Reads, frames and parses until the connection ends or `shutdown`, and
/// sends each read's events to the sequencer; returns why it ended and
/// how many events it read.
async fn read_until_end(
    stream: &mut TcpStream,
    reader: &mut LineReader,
    parser: &mut LineParser,
    sequencer: &mpsc::Sender<SourceMsg>,
    shutdown: &CancellationToken,
) -> (&'static str, u64) {
    let id = parser.id;
    let mut events_read: u64 = 0;
    // What authentication read past its line waits in the buffer.
    if reader.partial_len() > 0 {
        match forward(reader, parser, sequencer, std::time::Instant::now()).await {
            Ok(events) => events_read += events,
            Err(SequencerGone) => return ("server shutting down", events_read),
        }
    }
    let ending = loop {
        let read = tokio::select! {
            () = shutdown.cancelled() => break "server shutting down",
            read = stream.read_buf(reader.read_buf()) => read,
        };
        match read {
            Ok(0) => break "source closed the connection",
            Ok(_) => {
                let read_at = std::time::Instant::now();
                match forward(reader, parser, sequencer, read_at).await {
                    Ok(events) => events_read += events,
                    Err(SequencerGone) => break "server shutting down",
                }
            }
            Err(error) => {
                tracing::warn!(source = id, %error, "event source read failed");
                break "read error";
            }
        }
    };
    (ending, events_read)
}

/// The sequencer has stopped: the server is shutting down.
struct SequencerGone;

/// Frames and parses the complete lines in `reader`'s buffer and sends
/// their events to the sequencer; returns how many it sent.
#[inline]
async fn forward(
    reader: &mut LineReader,
    parser: &mut LineParser,
    sequencer: &mpsc::Sender<SourceMsg>,
    read_at: std::time::Instant,
) -> Result<u64, SequencerGone> {
    let chunk = reader.take_lines(|bytes| parser.too_long(bytes));
    let events = chunk
        .as_ref()
        .map_or_else(Vec::new, |chunk| parser.parse(chunk));
    // Events come from complete lines, so there is a chunk.
    let Some(chunk) = chunk.filter(|_| !events.is_empty()) else {
        return Ok(0);
    };
    let count = events.len() as u64;
    Stats::add(&parser.stats.events_received, count);
    let message = SourceMsg::Events(parser.id, ReadEvents { chunk, events }, read_at);
    match sequencer.send(message).await {
        Ok(()) => Ok(count),
        Err(_) => Err(SequencerGone),
    }
}

/// Turns one source connection's lines into events, and counts and logs
/// (throttled) the lines it skips.
struct LineParser {
    id: SourceId,
    max_line_bytes: usize,
    /// Bytes a line in the last read that had events.
    bytes_per_event: usize,
    stats: Arc<Stats>,
    bad_lines: LogThrottle,
}

impl LineParser {
    /// The events of `chunk`'s complete lines, each naming its line by
    /// offset in `chunk`.
    ///
    /// The events wait in the sequencer's queue at their `Vec`'s capacity,
    /// so it is sized from the last read's bytes per event, plus an eighth:
    /// a fixed guess of 16 bytes a line made it double, to twice what it
    /// held, for the short lines of a stream's first million events.
    fn parse(&mut self, chunk: &[u8]) -> Vec<BatchEvent> {
        let expected = chunk.len() / self.bytes_per_event;
        let mut events = Vec::with_capacity(expected + expected / 8 + 1);
        read_events(
            chunk,
            self.max_line_bytes,
            &mut events,
            |skipped| match skipped {
                Skipped::Malformed { line, error } => self.malformed(line, error),
                Skipped::TooLong { bytes } => self.too_long(bytes),
            },
        );
        if let Some(per_event) = chunk.len().checked_div(events.len()) {
            // The shortest event line, `1|B\n`, is 4 bytes.
            self.bytes_per_event = per_event.max(4);
        }
        events
    }

    fn malformed(&mut self, line: &[u8], error: ParseError) {
        Stats::add(&self.stats.malformed_lines, 1);
        if let Some(suppressed) = self.bad_lines.allow() {
            tracing::warn!(
                source = self.id,
                %error,
                line = %quote(line),
                suppressed,
                "skipped a malformed event line"
            );
        }
    }

    fn too_long(&mut self, bytes: usize) {
        Stats::add(&self.stats.oversized_lines, 1);
        if let Some(suppressed) = self.bad_lines.allow() {
            tracing::warn!(
                source = self.id,
                bytes,
                limit = self.max_line_bytes,
                suppressed,
                "skipped an over-long event line"
            );
        }
    }
}

/// A printable, bounded rendering of a bad line for a log message.
fn quote(raw: &[u8]) -> String {
    let shown = &raw[..raw.len().min(QUOTE_BYTES)];
    let mut text = String::from_utf8_lossy(shown).escape_debug().to_string();
    if raw.len() > QUOTE_BYTES {
        text.push('…');
    }
    text
}
