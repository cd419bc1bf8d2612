//! followermaze-protocol: what the follower-maze binaries agree on, as pure
//! functions and values: no sockets, no runtime.
//!
//! The server, the verifier and (later) the gateways all speak the same
//! wire format and read the same environment variables; keeping both here
//! means a checker and the thing it checks cannot disagree by accident, and
//! that each rule is written once.
//!
//! # Layout
//!
//! - [`event`]: event lines from the source and the user id a client sends
//!   first, bytes to values: the exact grammar (`parse_event`) and the
//!   server's one-pass reader for the common line (`parse_event_at`).
//! - [`resume`]: the resumable-session handshake and control lines (`#OK`,
//!   `#GAP`, `#AT`).
//! - [`settings`]: settings from environment variables, one table per
//!   binary, one error format.
//! - [`cli`]: `--help`, `--version` and modes, the same for every binary.
//! - [`auth`]: signed connection tokens (HS256 JWT): minted, checked, and
//!   where they travel in a handshake or a source's first line.

pub mod auth;
pub mod cli;
pub mod event;
pub mod resume;
pub mod settings;

pub use event::{
    parse_decimal, parse_event, parse_event_at, parse_tagged_at, parse_user_id, strip_terminator,
    Event, EventKind, EventType, ParseError, Seq, Tagged, UserId,
};
