//! The seam between putting events in order and acting on them: an
//! [`OrderedBatch`] is the one thing the registry consumes from upstream.
//!
//! Today the in-process sequencer produces batches from the reorder window;
//! a consumer of an ordered log (a NATS JetStream stream, say) could feed
//! the registry the same batches, with nothing downstream changing.
//!
//! What a producer promises, stated once here and `debug_assert!`ed where
//! it can be checked:
//! - a batch is never empty;
//! - within a batch, sequence numbers strictly increase;
//! - across the batches of one stream, they keep increasing: each batch's
//!   first sequence number is greater than the previous batch's last
//!   (gaps are allowed: a skipped sequence never comes);
//! - a batch marked [`OrderedBatch::starts_new_stream`] begins a new stream:
//!   the consumer forgets the follower graph before applying it, and its
//!   sequence numbers may start again from 1.
//!
//! Every producer caps its batches at [`MAX_DELIVER_EVENTS`], which bounds
//! the registry's queue; how it fills them below that is its own policy.
//!
//! A batch holds its lines in one buffer and each event names its line by
//! offset ([`BatchEvent`]): one reference count per batch instead of one
//! per event. (The per-event counts were a tenth of the classic run's
//! profile; the copies that replace them cost about the same, measured,
//! and the queued batches take a fifth less memory.) An event is 32 bytes
//! in the queues: its sequence number, its kind as a tag byte and two ids
//! ([`Tagged`]), and its line's offset and length (a line is at most
//! `MAX_LINE_BYTES`, 4 KiB, so its length fits 16 bits); the enum it
//! replaced made 40.

use std::time::Instant;

use bytes::Bytes;
use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{Event, EventKind, EventType, Seq, Tagged, UserId};

/// Most events in one batch: about one 64 KiB read's worth, which keeps
/// each queued batch near 200 KiB (32 bytes an event, and its line).
pub const MAX_DELIVER_EVENTS: usize = 4096;

/// One event of an [`OrderedBatch`]; its line is in the batch's buffer.
/// 32 bytes (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEvent {
    /// Position in the stream.
    pub seq: Seq,
    /// [`Tagged::from`].
    from: UserId,
    /// [`Tagged::to`].
    to: UserId,
    /// Its line: `lines[start..start + len]`.
    start: u32,
    len: u16,
    /// [`Tagged::tag`].
    tag: EventType,
}

const _: () = assert!(std::mem::size_of::<BatchEvent>() == 32);

impl BatchEvent {
    /// Event `seq` of `kind` whose line is `lines[start..start + len]` of
    /// the buffer it will be read with (at most 4 GiB: read chunks and
    /// batches are far smaller; `len` at most 64 KiB: a line is at most
    /// `MAX_LINE_BYTES`, 4 KiB).
    #[inline]
    pub(crate) fn new(seq: Seq, kind: impl Into<Tagged>, start: usize, len: usize) -> BatchEvent {
        debug_assert!(
            len <= usize::from(u16::MAX),
            "a line is at most MAX_LINE_BYTES"
        );
        let Tagged { tag, from, to } = kind.into();
        BatchEvent {
            seq,
            from,
            to,
            start: start as u32,
            len: len as u16,
            tag,
        }
    }

    /// What it does and who hears of it.
    #[inline]
    pub fn tagged(&self) -> Tagged {
        Tagged {
            tag: self.tag,
            from: self.from,
            to: self.to,
        }
    }

    /// Its line in `lines`, the buffer its offsets are in.
    #[inline]
    pub(crate) fn line<'a>(&self, lines: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        &lines[start..start + usize::from(self.len)]
    }
}

/// An event with its line, as the sequencer and the registry handle it:
/// the kind as [`Tagged`], which they route on without building the enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaggedRef<'a> {
    /// Position in the stream.
    pub seq: Seq,
    /// What it does and who hears of it.
    pub tagged: Tagged,
    /// The line exactly as read, terminator included.
    pub raw: &'a [u8],
}

/// An event of a batch with its line, as [`OrderedBatch::events`] yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Position in the stream.
    pub seq: Seq,
    /// What it does and who hears of it.
    pub kind: EventKind,
    /// The line exactly as read, terminator included.
    pub raw: &'a [u8],
}

/// Builds the events and the line buffer of a batch, copying each line in.
///
/// Neither buffer grows by doubling: a batch waits in the registry's queue
/// at its capacity, not its length. The events grow only as far as
/// [`BatchBuilder::reserve_events_to`] says, and the lines to what the
/// room left for events needs at the average line length so far. (Grown
/// by doubling, the classic 10M run's queued batches held 2.9 MB of
/// buffers at the heap's peak for 1.1 MB of events and lines.)
#[derive(Debug, Default)]
pub struct BatchBuilder {
    events: Vec<BatchEvent>,
    lines: Vec<u8>,
}

impl BatchBuilder {
    /// Room for `events` events of `line_bytes` bytes of lines in all.
    pub fn with_capacity(events: usize, line_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            events: Vec::with_capacity(events),
            lines: Vec::with_capacity(line_bytes),
        }
    }

    /// Appends an event and its line (at most `MAX_LINE_BYTES`).
    #[inline]
    pub fn push(&mut self, seq: Seq, kind: impl Into<Tagged>, raw: &[u8]) {
        if self.lines.capacity() - self.lines.len() < raw.len() {
            self.grow_lines(raw.len());
        }
        // A batch's lines stay far below 4 GiB: the sequencer caps a batch
        // at MAX_DELIVER_EVENTS lines of at most MAX_LINE_BYTES.
        let start = self.lines.len();
        self.lines.extend_from_slice(raw);
        self.events
            .push(BatchEvent::new(seq, kind, start, raw.len()));
    }

    /// Room for a line of `needed` bytes and, at the average line length so
    /// far plus a byte, for the lines of the events there is room for after it.
    #[cold]
    fn grow_lines(&mut self, needed: usize) {
        let (bytes, events) = (self.lines.len(), self.events.len());
        let average = bytes.div_ceil(events.max(1)) + 1;
        let events_left = self.events.capacity().saturating_sub(events + 1);
        self.lines.reserve_exact(needed + events_left * average);
    }

    /// Room for `events` events in all, exactly, if there is less.
    #[inline]
    pub fn reserve_events_to(&mut self, events: usize) {
        self.events
            .reserve_exact(events.saturating_sub(self.events.len()));
    }

    /// Whether the next push needs more room for events.
    #[inline]
    pub fn events_full(&self) -> bool {
        self.events.len() == self.events.capacity()
    }

    /// Bytes of lines pushed so far.
    pub fn line_bytes(&self) -> usize {
        self.lines.len()
    }

    /// Events pushed so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The batch of what was pushed (non-empty, strictly increasing),
    /// made deliverable by a read at `read_at`.
    pub fn finish(self, read_at: Instant) -> OrderedBatch {
        OrderedBatch::over(self.events, Bytes::from(self.lines), read_at)
    }
}

/// Events in strictly increasing sequence order, ready to apply; see the
/// module doc for what a producer promises.
#[derive(Debug)]
pub struct OrderedBatch {
    /// The events, in the order they must be applied ...
    events: Vec<BatchEvent>,
    /// ... and their lines.
    lines: Bytes,
    /// When the source read that made them deliverable; carried to the
    /// writers so the latency histogram measures read-to-write.
    read_at: Instant,
    /// Whether a new stream begins with this batch: the follower graph of
    /// the old one must be forgotten first.
    new_stream: bool,
    /// The stream id the producer names this batch's sequence space with,
    /// if it names one: in a cluster every gateway must give resumable
    /// clients the sequencer's id, not one of its own.
    stream: Option<StreamId>,
    /// The cluster stream message these events came from (its JetStream
    /// sequence), if any: a gateway indexes them to find where in the
    /// shared stream a resume from another gateway must read.
    message: Option<u64>,
}

impl OrderedBatch {
    /// A batch of `events`, made deliverable by a read at `read_at`,
    /// continuing the current stream; their lines are copied into one
    /// buffer (a convenience for tests and benches: producers build with
    /// [`BatchBuilder`]).
    ///
    /// `events` must be non-empty and strictly increasing by sequence
    /// number (checked in debug builds).
    pub fn new(events: Vec<Event>, read_at: Instant) -> OrderedBatch {
        let bytes = events.iter().map(|event| event.raw.len()).sum();
        let mut builder = BatchBuilder::with_capacity(events.len(), bytes);
        for event in &events {
            builder.push(event.seq, event.kind, &event.raw);
        }
        builder.finish(read_at)
    }

    /// A batch of `events` whose lines are in `lines`, at the offsets each
    /// names (a builder's buffer, or a whole cluster message's payload,
    /// which then needs no copy). The events must be non-empty and
    /// strictly increasing by sequence number (checked in debug builds).
    pub(crate) fn over(events: Vec<BatchEvent>, lines: Bytes, read_at: Instant) -> OrderedBatch {
        debug_assert!(!events.is_empty(), "an ordered batch is never empty");
        debug_assert!(
            events.windows(2).all(|pair| pair[0].seq < pair[1].seq),
            "an ordered batch strictly increases by sequence number"
        );
        debug_assert!(events
            .iter()
            .all(|event| (event.start as usize + usize::from(event.len)) <= lines.len()));
        OrderedBatch {
            events,
            lines,
            read_at,
            new_stream: false,
            stream: None,
            message: None,
        }
    }

    /// This batch, marked as the first of a new stream.
    pub fn starting_new_stream(mut self) -> OrderedBatch {
        self.new_stream = true;
        self
    }

    /// This batch, naming its sequence space `stream` (the registry adopts
    /// that id for resumable sessions).
    pub fn in_stream(mut self, stream: StreamId) -> OrderedBatch {
        self.stream = Some(stream);
        self
    }

    /// This batch, taken from stream message `stream_seq` of the cluster's
    /// JetStream stream.
    pub(crate) fn in_message(mut self, stream_seq: u64) -> OrderedBatch {
        self.message = Some(stream_seq);
        self
    }

    /// The stream message the events came from, if any.
    #[inline]
    pub(crate) fn message(&self) -> Option<u64> {
        self.message
    }

    /// The stream id the producer named, if any.
    #[inline]
    pub fn stream(&self) -> Option<StreamId> {
        self.stream
    }

    /// The events with their lines, in sequence order.
    #[inline]
    pub fn events(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> + '_ {
        self.events.iter().map(move |event| EventRef {
            seq: event.seq,
            kind: event.tagged().into(),
            raw: event.line(&self.lines),
        })
    }

    /// The events with their lines, in sequence order, their kinds as
    /// [`Tagged`] (the registry's loop).
    #[inline]
    pub(crate) fn tagged_events(&self) -> impl ExactSizeIterator<Item = TaggedRef<'_>> + '_ {
        self.events.iter().map(move |event| TaggedRef {
            seq: event.seq,
            tagged: event.tagged(),
            raw: event.line(&self.lines),
        })
    }

    /// How many events the batch holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it holds none (never, for a batch a producer sent).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// When the source read that made these events deliverable.
    #[inline]
    pub fn read_at(&self) -> Instant {
        self.read_at
    }

    /// Whether a new stream begins with this batch.
    #[inline]
    pub fn starts_new_stream(&self) -> bool {
        self.new_stream
    }

    /// Whether this batch may follow a batch whose last sequence number was
    /// `previous` (`None` before the first batch): true if it starts a new
    /// stream or carries on after `previous`.
    pub fn follows(&self, previous: Option<Seq>) -> bool {
        match previous {
            _ if self.new_stream => true,
            None => true,
            Some(last) => self.first_seq() > last,
        }
    }

    /// The first sequence number in the batch.
    pub fn first_seq(&self) -> Seq {
        self.events.first().map_or(0, |event| event.seq)
    }

    /// The last sequence number in the batch.
    pub fn last_seq(&self) -> Seq {
        self.events.last().map_or(0, |event| event.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(seqs: &[Seq]) -> Vec<Event> {
        seqs.iter()
            .map(|&seq| Event {
                seq,
                kind: EventKind::Broadcast,
                raw: Bytes::from(format!("{seq}|B\n")),
            })
            .collect()
    }

    #[test]
    fn each_event_keeps_its_own_line() {
        let batch = OrderedBatch::new(events(&[5, 6, 10]), Instant::now());
        let lines: Vec<(Seq, &[u8])> = batch.events().map(|e| (e.seq, e.raw)).collect();
        assert_eq!(
            lines,
            [(5, &b"5|B\n"[..]), (6, &b"6|B\n"[..]), (10, &b"10|B\n"[..])]
        );
        assert_eq!(batch.len(), 3);
    }

    #[test]
    fn a_batch_carries_on_after_the_one_before_unless_a_stream_starts() {
        let batch = OrderedBatch::new(events(&[5, 6, 9]), Instant::now());
        assert_eq!((batch.first_seq(), batch.last_seq()), (5, 9));
        assert!(batch.follows(None));
        assert!(batch.follows(Some(4)), "a gap is allowed");
        assert!(!batch.follows(Some(5)));
        assert!(!batch.starts_new_stream());
        let restart = OrderedBatch::new(events(&[1, 2]), Instant::now()).starting_new_stream();
        assert!(restart.starts_new_stream());
        assert!(restart.follows(Some(9)));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "strictly increases")]
    fn an_out_of_order_batch_is_caught_in_debug_builds() {
        OrderedBatch::new(events(&[2, 1]), Instant::now());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "never empty")]
    fn an_empty_batch_is_caught_in_debug_builds() {
        OrderedBatch::new(Vec::new(), Instant::now());
    }
}
