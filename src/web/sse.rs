//! Server-Sent Events: a session's lines as a `text/event-stream`.
//!
//! The registry writes the same lines to this connection's outbox as to a
//! resumable TCP client's; [`SseEncoder`] turns each into one event:
//!
//! ```text
//! retry: 1000                     once, before the verdict
//! event: verdict                  #OK / #GAP
//! id: k3j9x0:18842
//! data: #OK|k3j9x0|18842
//!
//! id: k3j9x0:18843                an event line, unnamed
//! data: 18843|P|32|56
//!
//! event: checkpoint               #AT
//! id: k3j9x0:19500
//! data: #AT|k3j9x0|19500|612|8f3a2c1d
//!
//! : keep-alive                    after 15 s with nothing to send
//! ```
//!
//! Every `id` is a position to resume after, so the browser's own
//! `Last-Event-ID` resumes the session. A checkpoint's count and CRC-32 are
//! recomputed over the lines as an SSE client sees them (each `data` value
//! and `\r\n`), so a client checks them without knowing how the source
//! terminated its lines.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::time::{Instant as TokioInstant, Sleep};

use followermaze_protocol::event::strip_terminator;
use followermaze_protocol::resume::{parse_control, write_checkpoint, Control, StreamId};

use crate::fanout::client::Registered;
use crate::fanout::outbox::{Closed, Outbox, Taken};
use crate::ops::http::StreamGuard;
use crate::ops::stats::{DisconnectReason, Stats};

/// The reconnection delay the stream asks browsers for, in milliseconds.
const RETRY_MS: &str = "1000";

/// The comment that keeps an idle stream (and the proxies on its way)
/// alive.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Turns a session's lines into events; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct SseEncoder {
    /// The stream of the verdict, once it came; ids are `<stream>:<seq>`.
    stream: Option<StreamId>,
    /// Event lines since the verdict.
    count: u64,
    /// CRC-32 of those lines as the client sees them.
    crc: crc32fast::Hasher,
    /// Whether the `retry` field was sent.
    retry_sent: bool,
}

impl SseEncoder {
    /// Appends the events for `lines` (whole lines, as the registry wrote
    /// them) to `out`.
    pub(crate) fn encode(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        out.reserve(lines.len() * 2 + 64);
        for line in lines.split_inclusive(|&byte| byte == b'\n') {
            self.encode_line(line, out);
        }
    }

    /// One line's event.
    fn encode_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let data = strip_terminator(line);
        if data.first() != Some(&b'#') {
            // An event line: its sequence number is its first field.
            let seq_len = memchr::memchr(b'|', data).unwrap_or(data.len());
            self.push_id(&data[..seq_len], out);
            push_data(data, out);
            // The line as the client sees it, `data` and `\r\n`: most often
            // the line as it came, in one piece.
            if line.len() == data.len() + 2 && line.ends_with(b"\r\n") {
                self.crc.update(line);
            } else {
                self.crc.update(data);
                self.crc.update(b"\r\n");
            }
            self.count += 1;
            return;
        }
        match parse_control(data) {
            Some(Control::Verdict { stream, seq, .. }) => {
                if !self.retry_sent {
                    out.extend_from_slice(b"retry: ");
                    out.extend_from_slice(RETRY_MS.as_bytes());
                    out.push(b'\n');
                    self.retry_sent = true;
                }
                self.stream = Some(stream);
                self.count = 0;
                self.crc = crc32fast::Hasher::new();
                out.extend_from_slice(b"event: verdict\n");
                self.push_id(seq.to_string().as_bytes(), out);
                push_data(data, out);
            }
            Some(Control::Checkpoint { stream, seq, .. }) => {
                let mut checkpoint = Vec::with_capacity(64);
                let crc = self.crc.clone().finalize();
                write_checkpoint(&mut checkpoint, &stream, seq, self.count, crc);
                out.extend_from_slice(b"event: checkpoint\n");
                self.push_id(seq.to_string().as_bytes(), out);
                push_data(strip_terminator(&checkpoint), out);
            }
            // The registry writes no other control line; pass anything
            // else on as a comment rather than lose it silently.
            None => {
                out.extend_from_slice(b": ");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\n\n");
            }
        }
    }

    /// `id: <stream>:<seq>\n`.
    fn push_id(&self, seq: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        if let Some(stream) = &self.stream {
            out.extend_from_slice(stream.as_bytes());
        }
        out.push(b':');
        out.extend_from_slice(seq);
        out.push(b'\n');
    }
}

/// `data: <data>\n\n`: the field and the end of the event.
fn push_data(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// A registered session's event stream, as the body of its response:
/// hyper polls it for frames, and drops it when the client leaves.
pub(crate) struct EventStream {
    /// The session's connection; dropping it unregisters.
    registered: Registered,
    /// Its outbox (also inside `registered`), for the wake future.
    outbox: Arc<Outbox>,
    /// Completes when the outbox has bytes or closes.
    woken: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Lines into events.
    encoder: SseEncoder,
    /// Bytes taken from the outbox, reused.
    taken: Vec<u8>,
    /// When the next keep-alive comment is due.
    keep_alive: Pin<Box<Sleep>>,
    /// The keep-alive period.
    keep_alive_every: Duration,
    /// Counters.
    stats: Arc<Stats>,
    /// Set once the stream has ended.
    done: bool,
    /// Frees the connection of its deadlines while the stream lives.
    _stream: StreamGuard,
}

impl EventStream {
    /// The stream of `registered`'s lines, a keep-alive comment every
    /// `keep_alive_every` of silence.
    pub(crate) fn new(
        registered: Registered,
        stats: Arc<Stats>,
        keep_alive_every: Duration,
        guard: StreamGuard,
    ) -> EventStream {
        let outbox = registered.shared_outbox();
        EventStream {
            woken: wake_future(Arc::clone(&outbox)),
            outbox,
            registered,
            encoder: SseEncoder::default(),
            taken: Vec::new(),
            keep_alive: Box::pin(tokio::time::sleep(keep_alive_every)),
            keep_alive_every,
            stats,
            done: false,
            _stream: guard,
        }
    }

    /// Ends the stream for `reason`. A slow consumer's ends with an error,
    /// which makes hyper drop the connection at once (what was pending is
    /// dropped, as for a TCP client). Any other ends cleanly, after
    /// everything sent is flushed, and the connection closes: a fault
    /// reset too, since hyper would drop a frame still unflushed when an
    /// error follows it, and a browser resumes after a clean end as after
    /// a drop.
    fn end(&mut self, reason: DisconnectReason) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.done = true;
        self.registered.ending(reason);
        match reason {
            DisconnectReason::SlowConsumer => {
                Poll::Ready(Some(Err(io::Error::other(reason.as_str()))))
            }
            _ => Poll::Ready(None),
        }
    }
}

/// A boxed wait for `outbox`'s next wake (it owns its `Arc`, so the body
/// can keep it across polls).
fn wake_future(outbox: Arc<Outbox>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move { outbox.woken().await })
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let Taken {
                closed,
                oldest_read_at,
            } = this.outbox.take(&mut this.taken);
            if closed == Some(Closed::SlowConsumer) {
                return this.end(DisconnectReason::SlowConsumer);
            }
            if !this.taken.is_empty() {
                let mut events = Vec::new();
                this.encoder.encode(&this.taken, &mut events);
                this.taken.clear();
                Stats::add(&this.stats.client_writes, 1);
                Stats::add(&this.stats.bytes_written, events.len() as u64);
                if let Some(read_at) = oldest_read_at {
                    this.stats.latency.record(read_at.elapsed());
                }
                let next = TokioInstant::now() + this.keep_alive_every;
                this.keep_alive.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(events)))));
            }
            match closed {
                None => {}
                Some(Closed::Reset) => return this.end(DisconnectReason::FaultReset),
                Some(_) => return this.end(DisconnectReason::Normal),
            }
            if this.woken.as_mut().poll(cx).is_ready() {
                this.woken = wake_future(Arc::clone(&this.outbox));
                continue;
            }
            if this.keep_alive.as_mut().poll(cx).is_ready() {
                let next = TokioInstant::now() + this.keep_alive_every;
                this.keep_alive.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(encoder: &mut SseEncoder, lines: &str) -> String {
        let mut out = Vec::new();
        encoder.encode(lines.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_session_becomes_a_verdict_unnamed_events_and_checkpoints() {
        let mut encoder = SseEncoder::default();
        let crc = crc32fast::hash(b"11|B\r\n12|S|4\r\n");
        let events = encode(
            &mut encoder,
            "#OK|k3|10\r\n11|B\r\n12|S|4\n#AT|k3|12|9|00000000\r\n",
        );
        assert_eq!(
            events,
            format!(
                "retry: 1000\nevent: verdict\nid: k3:10\ndata: #OK|k3|10\n\n\
                 id: k3:11\ndata: 11|B\n\n\
                 id: k3:12\ndata: 12|S|4\n\n\
                 event: checkpoint\nid: k3:12\ndata: #AT|k3|12|2|{crc:08x}\n\n"
            )
        );
    }

    #[test]
    fn lines_split_across_takes_and_a_new_verdict_restart_the_count() {
        let mut encoder = SseEncoder::default();
        encode(&mut encoder, "#GAP|k3|10\r\n11|B\r\n");
        let events = encode(
            &mut encoder,
            "12|B\r\n#OK|k3|12\r\n13|B\r\n#AT|k3|13|0|00000000\r\n",
        );
        assert!(
            events.starts_with("id: k3:12\ndata: 12|B\n\nevent: verdict\n"),
            "{events}"
        );
        assert!(!events.contains("retry"), "retry is sent once: {events}");
        let crc = crc32fast::hash(b"13|B\r\n");
        assert!(
            events.ends_with(&format!("data: #AT|k3|13|1|{crc:08x}\n\n")),
            "{events}"
        );
    }
}
