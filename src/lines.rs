//! Line framing over a growable read buffer: bytes in, whole lines out.
//!
//! A line ends at `\n` (so `\r\n` lines end there too) and may arrive split
//! across any number of reads; an incomplete line is a normal state meaning
//! "read more", never an error. Complete lines come out of one chunk of the
//! read buffer: as its spans ([`LineReader::drain_chunk`], the source's
//! way: one reference count per read) or as [`Bytes`] slices of it
//! ([`LineReader::drain`]: one each).
//!
//! A line longer than the configured limit is never buffered whole: once the
//! unterminated tail passes the limit it is dropped, and every byte up to the
//! next `\n` is dropped with it.

use bytes::{Buf, Bytes, BytesMut};

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
    TooLong { bytes: usize },
}

/// Where [`LineReader::drain_chunk`] found a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// A complete line, terminator included: `chunk[start..end]`.
    Line { start: usize, end: usize },
    /// A line over the limit was dropped; `bytes` counts what was dropped,
    /// terminator included.
    TooLong { bytes: usize },
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
        self.drain_spans(|chunk, span| match span {
            Span::Line { start, end } => on_frame(Frame::Line(chunk.slice(start..end))),
            Span::TooLong { bytes } => on_frame(Frame::TooLong { bytes }),
        });
    }

    /// Like [`LineReader::drain`], but each complete line is handed over as
    /// its place in one chunk holding them all, which is returned (`None`
    /// if no line was complete): a caller that keeps the chunk needs no
    /// reference count per line.
    pub fn drain_chunk(&mut self, mut on_span: impl FnMut(&[u8], Span)) -> Option<Bytes> {
        self.drain_spans(|chunk, span| on_span(chunk, span))
    }

    /// The framing itself: `on_span` gets the chunk of complete lines (empty
    /// for a line dropped before it) and each line's span in it.
    fn drain_spans(&mut self, mut on_span: impl FnMut(&Bytes, Span)) -> Option<Bytes> {
        if let Some(dropped) = self.discarding {
            match memchr::memchr(b'\n', &self.buf) {
                Some(newline) => {
                    self.buf.advance(newline + 1);
                    self.discarding = None;
                    let bytes = dropped + newline + 1;
                    on_span(&Bytes::new(), Span::TooLong { bytes });
                }
                None => {
                    self.discarding = Some(dropped + self.buf.len());
                    self.buf.clear();
                    return None;
                }
            }
        }
        let mut drained = None;
        if let Some(last_newline) = memchr::memrchr(b'\n', &self.buf) {
            let complete = last_newline + 1;
            // One chunk for all complete lines; each line is then a cheap
            // slice of it. A slice keeps its whole read buffer alive, so a
            // small chunk (a slow or paced source) is copied out first: a
            // parked line must not pin 64 KiB.
            let chunk = if complete >= COPY_CHUNKS_BELOW {
                self.buf.split_to(complete).freeze()
            } else {
                let chunk = Bytes::copy_from_slice(&self.buf[..complete]);
                self.buf.advance(complete);
                chunk
            };
            let mut start = 0;
            for newline in memchr::memchr_iter(b'\n', &chunk) {
                let end = newline + 1;
                if end - start > self.max_line_bytes {
                    on_span(&chunk, Span::TooLong { bytes: end - start });
                } else {
                    on_span(&chunk, Span::Line { start, end });
                }
                start = end;
            }
            drained = Some(chunk);
        }
        if self.buf.len() > self.max_line_bytes {
            self.discarding = Some(self.buf.len());
            self.buf.clear();
        }
        drained
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

    proptest! {
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
