//! Ingest: event source connections, from bytes on a socket to parsed
//! events handed to the sequencer.
//!
//! - [`lines`]: line framing over a read buffer, with a line-length bound,
//!   and `read_events`, where framing meets parsing (one pass a line).
//! - `source`: one task per source connection: read, frame, parse, send
//!   each read's events to the sequencer.
//!
//! Uses `order` (the sequencer's input), `ops`, `batch`.

pub mod lines;
pub(crate) mod source;
