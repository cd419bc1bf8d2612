//! The web listener's wire (web-wire.md) as a client reads it, no I/O:
//! what the `connection` module turns a WebSocket or Server-Sent Events
//! connection's bytes into, the byte stream a resumable TCP connection
//! gets, for the reader to check like one.
//!
//! - `payloads`: WebSocket text messages, concatenated (byte-exact).
//! - `sse`: an event stream, its lines rebuilt as `data + "\r\n"`
//!   (line-exact), and the event format checked on the way.
//! - `chunked`: HTTP/1.1 chunked transfer coding, under `sse`.
//! - `http`: an SSE request and its response head.
//!
//! Whatever breaks the wire is a [`WireError`], which fails the run: it is
//! the server's fault, not a dropped connection to resume.

pub(crate) mod chunked;
pub(crate) mod http;
pub(crate) mod payloads;
pub(crate) mod sse;

/// The server broke the web wire: what it sent, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(String);

impl WireError {
    /// An error saying `message`.
    pub(crate) fn new(message: String) -> WireError {
        WireError(message)
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}
