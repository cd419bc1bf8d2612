//! Fuzzes what the network sends us: arbitrary bytes, in arbitrary read
//! sizes, through the line framer and the event parser, and each line as a
//! client handshake. Nothing may panic, no line may exceed the limit, and
//! every byte must be accounted for.
//!
//! `cargo fuzz run source_stream` (see the README's "Limits and failure
//! behaviour" section).
#![no_main]

use followermaze::ingest::lines::{Frame, LineReader};
use followermaze_protocol::{parse_event, parse_user_id};
use libfuzzer_sys::fuzz_target;

/// A small limit, so over-long lines are exercised often.
const MAX_LINE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&chunking, input)) = data.split_first() else {
        return;
    };
    // Read sizes cycle through 1..=16 scaled by the first byte.
    let step = usize::from(chunking % 16) + 1;
    let mut reader = LineReader::new(MAX_LINE);
    let (mut returned, mut dropped) = (0usize, 0usize);
    for piece in input.chunks(step) {
        reader.read_buf().extend_from_slice(piece);
        reader.drain(|frame| match frame {
            Frame::Line(line) => {
                assert!(line.len() <= MAX_LINE && line.ends_with(b"\n"));
                returned += line.len();
                let _ = parse_event(&line);
                let _ = parse_user_id(&line);
            }
            Frame::TooLong { bytes } => dropped += bytes,
        });
    }
    assert_eq!(returned + dropped + reader.partial_len(), input.len());
});
