//! Line framing over a growable read buffer: bytes in, whole lines out.
//!
//! A line ends at `\n` (so `\r\n` lines end there too) and may arrive split
//! across any number of reads; an incomplete line is a normal state meaning
//! "read more", never an error. Complete lines come out of one chunk of the
//! read buffer: the chunk itself ([`LineReader::take_lines`]), walked line by
//! line with [`Lines`] (the source's way: one reference count per read, and
//! it may recognise a line's end while parsing it), or as [`Bytes`] slices of
//! it ([`LineReader::drain`]: one each). [`read_events`] is where framing
//! meets parsing: it walks a chunk and makes events of its lines.
//!
//! A line longer than the configured limit is never buffered whole: once the
//! unterminated tail passes the limit it is dropped, and every byte up to the
//! next `\n` is dropped with it.

use bytes::{Buf, Bytes, BytesMut};
use followermaze_protocol::{parse_event, parse_tagged_at, ParseError};

use crate::batch::BatchEvent;

/// The longest line a source may send, terminator included. A valid event is
/// under 100 bytes (three 20-digit numbers and four separators); 4 KiB leaves
/// room for anything reasonable while bounding what one connection can make
/// us hold.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// How much spare room to make before each read. Large reads amortise the
/// syscall over thousands of events.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Complete lines totalling fewer bytes than this are copied out of the
/// read buffer instead of sharing it (see [`LineReader::drain`]); at or
/// above it they share it, at most 4× their size in buffer.
pub const COPY_CHUNKS_BELOW: usize = READ_CHUNK_BYTES / 4;

/// One framing result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, terminator included.
    Line(Bytes),
    /// A line over the limit was dropped; `bytes` counts what was dropped,
    /// terminator included.
    TooLong {
        /// Bytes dropped.
        bytes: usize,
    },
}

/// Where [`Lines`] found a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// A complete line, terminator included: `chunk[start..end]`.
    Line {
        /// Its first byte's offset.
        start: usize,
        /// The offset just past its terminator.
        end: usize,
    },
    /// A line over the limit was dropped; `bytes` counts what was dropped,
    /// terminator included.
    TooLong {
        /// Bytes dropped.
        bytes: usize,
    },
}

/// Accumulates reads and splits them into lines; see the module doc.
#[derive(Debug)]
pub struct LineReader {
    /// Bytes read but not yet returned: at most one incomplete line (bounded
    /// by `max_line_bytes`) after [`LineReader::drain`], plus the next read.
    buf: BytesMut,
    /// Lines longer than this (terminator included) are dropped.
    max_line_bytes: usize,
    /// `Some(n)` while dropping an over-long line: `n` bytes dropped so far,
    /// waiting for its `\n`.
    discarding: Option<usize>,
}

impl LineReader {
    /// A reader that drops lines longer than `max_line_bytes`.
    pub fn new(max_line_bytes: usize) -> Self {
        assert!(max_line_bytes > 0, "a line needs room for its terminator");
        LineReader {
            buf: BytesMut::new(),
            max_line_bytes,
            discarding: None,
        }
    }

    /// The buffer to read into, with at least [`READ_CHUNK_BYTES`] spare.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.buf.reserve(READ_CHUNK_BYTES);
        &mut self.buf
    }

    /// Bytes of an incomplete line held back (what is lost if the peer goes
    /// away now).
    pub fn partial_len(&self) -> usize {
        self.buf.len() + self.discarding.unwrap_or(0)
    }

    /// Hands every complete line in the buffer to `on_frame`, in order, and
    /// keeps the incomplete tail for the next read.
    pub fn drain(&mut self, mut on_frame: impl FnMut(Frame)) {
        let max_line_bytes = self.max_line_bytes;
        let mut too_long_first = None;
        let chunk = self.take_lines(|bytes| too_long_first = Some(bytes));
        if let Some(bytes) = too_long_first {
            on_frame(Frame::TooLong { bytes });
        }
        let Some(chunk) = chunk else {
            return;
        };
        for span in Lines::new(&chunk, max_line_bytes) {
            match span {
                Span::Line { start, end } => on_frame(Frame::Line(chunk.slice(start..end))),
                Span::TooLong { bytes } => on_frame(Frame::TooLong { bytes }),
            }
        }
    }

    /// Takes every complete line in the buffer as one chunk (`None` if no
    /// line is complete), to be walked with [`Lines`], and keeps the
    /// incomplete tail for the next read. An over-long line whose end this
    /// read brought is not in the chunk: `on_dropped` is told how many bytes
    /// of it were dropped, terminator included.
    pub fn take_lines(&mut self, mut on_dropped: impl FnMut(usize)) -> Option<Bytes> {
        if let Some(dropped) = self.discarding {
            match memchr::memchr(b'\n', &self.buf) {
                Some(newline) => {
                    self.buf.advance(newline + 1);
                    self.discarding = None;
                    on_dropped(dropped + newline + 1);
                }
                None => {
                    self.discarding = Some(dropped + self.buf.len());
                    self.buf.clear();
                    return None;
                }
            }
        }
        let mut taken = None;
        if let Some(last_newline) = memchr::memrchr(b'\n', &self.buf) {
            let complete = last_newline + 1;
            // One chunk for all complete lines; each line is then a span or
            // a cheap slice of it. A slice keeps its whole read buffer alive,
            // so a small chunk (a slow or paced source) is copied out first:
            // a parked line must not pin 64 KiB.
            taken = Some(if complete >= COPY_CHUNKS_BELOW {
                self.buf.split_to(complete).freeze()
            } else {
                let chunk = Bytes::copy_from_slice(&self.buf[..complete]);
                self.buf.advance(complete);
                chunk
            });
        }
        if self.buf.len() > self.max_line_bytes {
            self.discarding = Some(self.buf.len());
            self.buf.clear();
        }
        taken
    }
}

/// The lines of a chunk of complete lines (one that ends with `\n`, as
/// [`LineReader::take_lines`] returns), in order, found with `memchr`.
///
/// A caller that can tell where a line ends while reading it (the source's
/// one-pass event parser) takes the line at [`Lines::next_start`] itself
/// and moves on with [`Lines::skip_to`]; the lines it declines come from
/// the iterator, with the length limit applied.
#[derive(Debug)]
pub struct Lines<'a> {
    chunk: &'a [u8],
    /// Where the next line starts.
    start: usize,
    max_line_bytes: usize,
}

impl<'a> Lines<'a> {
    /// The lines of `chunk`; longer than `max_line_bytes` (terminator
    /// included) they are [`Span::TooLong`].
    pub fn new(chunk: &'a [u8], max_line_bytes: usize) -> Lines<'a> {
        Lines {
            chunk,
            start: 0,
            max_line_bytes,
        }
    }

    /// Where the next line starts, if there is one.
    #[inline]
    pub fn next_start(&self) -> Option<usize> {
        (self.start < self.chunk.len()).then_some(self.start)
    }

    /// Moves past a line the caller read itself, which ended just before
    /// `end` (after its `\n`); the caller applies the length limit.
    #[inline]
    pub fn skip_to(&mut self, end: usize) {
        debug_assert!(end > self.start && self.chunk[end - 1] == b'\n');
        self.start = end;
    }
}

impl Iterator for Lines<'_> {
    type Item = Span;

    #[inline]
    fn next(&mut self) -> Option<Span> {
        let start = self.next_start()?;
        // A chunk ends with `\n`; a slice that does not (a caller's bug)
        // ends at its last byte instead of looping.
        let end = memchr::memchr(b'\n', &self.chunk[start..])
            .map_or(self.chunk.len(), |newline| start + newline + 1);
        self.start = end;
        Some(if end - start > self.max_line_bytes {
            Span::TooLong { bytes: end - start }
        } else {
            Span::Line { start, end }
        })
    }
}

/// A line of a chunk that [`read_events`] did not make an event of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped<'a> {
    /// Not an event: `error` says which rule `line` breaks.
    Malformed {
        /// The line.
        line: &'a [u8],
        /// The rule it breaks.
        error: ParseError,
    },
    /// Over the length limit: `bytes` dropped, terminator included.
    TooLong {
        /// Bytes dropped.
        bytes: usize,
    },
}

/// Appends the events of `chunk`'s complete lines (a chunk
/// [`LineReader::take_lines`] returned) to `events`, in order, each naming
/// its line by offset in `chunk`; `on_skipped` hears of every other line.
///
/// The common line is framed and parsed in one pass ([`parse_tagged_at`]),
/// with no separate search for its end; any other line is found with
/// `memchr` and read field by field ([`parse_event`]). Measured on the
/// classic mix (`benches/parse.rs`), a third less time a line than
/// searching for every line's end first.
pub fn read_events<'a>(
    chunk: &'a [u8],
    max_line_bytes: usize,
    events: &mut Vec<BatchEvent>,
    mut on_skipped: impl FnMut(Skipped<'a>),
) {
    let mut lines = Lines::new(chunk, max_line_bytes);
    while let Some(start) = lines.next_start() {
        if let Some((end, seq, kind)) =
            parse_tagged_at(chunk, start).filter(|&(end, ..)| end - start <= max_line_bytes)
        {
            events.push(BatchEvent::new(seq, kind, start, end - start));
            lines.skip_to(end);
            continue;
        }
        match lines.next() {
            Some(Span::Line { start, end }) => match parse_event(&chunk[start..end]) {
                Ok((seq, kind)) => events.push(BatchEvent::new(seq, kind, start, end - start)),
                Err(error) => on_skipped(Skipped::Malformed {
                    line: &chunk[start..end],
                    error,
                }),
            },
            Some(Span::TooLong { bytes }) => on_skipped(Skipped::TooLong { bytes }),
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces cut at `cuts` and returns every frame.
    fn frames(input: &[u8], cuts: &[usize], max: usize) -> Vec<Frame> {
        let mut reader = LineReader::new(max);
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(start, input.len());
            reader.read_buf().extend_from_slice(&input[start..cut]);
            reader.drain(|frame| out.push(frame));
            start = cut;
        }
        out
    }

    fn line(text: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn splits_crlf_and_lf_lines_keeping_terminators() {
        assert_eq!(
            frames(b"1|B\r\n2|S|3\n3|B", &[], 64),
            vec![line("1|B\r\n"), line("2|S|3\n")]
        );
    }

    #[test]
    fn a_line_split_at_every_offset_comes_out_whole() {
        let input = b"10|P|3|4\r\n11|B\n12|S|9\r\n";
        for cut in 0..=input.len() {
            assert_eq!(
                frames(input, &[cut], 64),
                vec![line("10|P|3|4\r\n"), line("11|B\n"), line("12|S|9\r\n")],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn drops_an_over_long_line_without_buffering_it() {
        let mut input = b"1|B\n".to_vec();
        input.extend(std::iter::repeat_n(b'7', 100));
        input.extend_from_slice(b"\r\n2|B\n");
        let got = frames(&input, &[10, 30, 50, 70, 90], 16);
        assert_eq!(
            got,
            vec![line("1|B\n"), Frame::TooLong { bytes: 102 }, line("2|B\n")]
        );
    }

    /// Whether `line` is a slice of the same allocation as the reader's
    /// buffer (it ends exactly where the buffer's unread part begins).
    fn shares_buffer(reader: &LineReader, line: &Bytes, total: usize) -> bool {
        line.as_ptr().wrapping_add(total) == reader.buf.as_ptr()
    }

    #[test]
    fn small_reads_are_copied_large_ones_shared() {
        let mut reader = LineReader::new(MAX_LINE_BYTES);
        reader.read_buf().extend_from_slice(b"1|B\n2|B");
        let mut lines = Vec::new();
        reader.drain(|frame| lines.push(frame));
        let Frame::Line(small) = &lines[0] else {
            panic!("a line")
        };
        assert!(!shares_buffer(&reader, small, 4), "a small read is copied");

        let mut reader = LineReader::new(MAX_LINE_BYTES);
        let big: Vec<u8> = b"123456|S|42\n".repeat(2000);
        reader.read_buf().extend_from_slice(&big);
        reader.read_buf().extend_from_slice(b"9|B");
        let mut lines = Vec::new();
        reader.drain(|frame| lines.push(frame));
        let Frame::Line(first) = &lines[0] else {
            panic!("a line")
        };
        assert!(
            shares_buffer(&reader, first, big.len()),
            "a large read is shared"
        );
    }

    #[test]
    fn drops_an_over_long_line_that_arrives_whole() {
        let mut input = vec![b'9'; 40];
        input.extend_from_slice(b"\n3|B\n");
        assert_eq!(
            frames(&input, &[], 16),
            vec![Frame::TooLong { bytes: 41 }, line("3|B\n")]
        );
    }

    #[test]
    fn never_holds_more_than_the_limit_of_an_unterminated_line() {
        let mut reader = LineReader::new(32);
        for _ in 0..1000 {
            reader.read_buf().extend_from_slice(&[b'x'; 100]);
            reader.drain(|_| panic!("no line is complete"));
            assert!(reader.buf.len() <= 32);
        }
        assert_eq!(reader.partial_len(), 100_000);
    }

    /// `read_events`, against splitting at every `\n` and reading each
    /// line with `parse_event`: the same events, offsets and skipped lines,
    /// wherever the one-pass reader takes over or declines (near the end
    /// of the chunk, on long numbers, on malformed lines).
    fn read_events_reference(chunk: &[u8], max: usize) -> (Vec<BatchEvent>, Vec<String>) {
        let (mut events, mut skipped) = (Vec::new(), Vec::new());
        let mut start = 0;
        for line in chunk.split_inclusive(|&byte| byte == b'\n') {
            if line.len() > max {
                skipped.push(format!("too long {}", line.len()));
            } else {
                match parse_event(line) {
                    Ok((seq, kind)) => events.push(BatchEvent::new(seq, kind, start, line.len())),
                    Err(error) => skipped.push(format!("{error} {line:?}")),
                }
            }
            start += line.len();
        }
        (events, skipped)
    }

    proptest! {
        #[test]
        fn prop_read_events_agrees_with_reading_line_by_line(
            text in "([0-9]{0,18}\\|?[FUBPSX|]?(\\|[0-9]{0,18}){0,3}\r?\r?\n){1,30}",
            max in 4usize..40,
        ) {
            let chunk = text.as_bytes();
            let mut events = Vec::new();
            let mut skipped = Vec::new();
            read_events(chunk, max, &mut events, |skip| skipped.push(match skip {
                Skipped::TooLong { bytes } => format!("too long {bytes}"),
                Skipped::Malformed { line, error } => format!("{error} {line:?}"),
            }));
            prop_assert_eq!((events, skipped), read_events_reference(chunk, max));
        }

        #[test]
        fn prop_lines_survive_any_chunking(
            lines in prop::collection::vec("[0-9|A-Z]{0,12}(\r\n|\n)", 0..40),
            cuts in prop::collection::vec(0usize..600, 0..20),
        ) {
            let input: Vec<u8> = lines.concat().into_bytes();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let got = frames(&input, &cuts, 64);
            let want: Vec<Frame> = lines.iter().map(|l| line(l)).collect();
            prop_assert_eq!(got, want);
        }

        /// Fuzzing by property: arbitrary bytes in arbitrary chunks never
        /// panic, no line exceeds the limit, and every byte is accounted
        /// for (returned, dropped as too long, or still held back).
        #[test]
        fn prop_arbitrary_bytes_are_all_accounted_for(
            input in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'\n')], 0..2000),
            cuts in prop::collection::vec(0usize..2000, 0..30),
            max in 1usize..100,
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut reader = LineReader::new(max);
            let mut returned = 0;
            let mut dropped = 0;
            let mut start = 0;
            for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
                let cut = cut.clamp(start, input.len());
                reader.read_buf().extend_from_slice(&input[start..cut]);
                reader.drain(|frame| match frame {
                    Frame::Line(line) => {
                        assert!(line.len() <= max && line.ends_with(b"\n"));
                        returned += line.len();
                    }
                    Frame::TooLong { bytes } => dropped += bytes,
                });
                start = cut;
            }
            prop_assert_eq!(returned + dropped + reader.partial_len(), input.len());
        }
    }
}
