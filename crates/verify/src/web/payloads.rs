//! A WebSocket connection's text messages, read back into the byte stream
//! a TCP client gets. No I/O: the `connection` module pushes each message's
//! payload as it arrives.
//!
//! The web listener's wire (web-wire.md): every server message is a TEXT
//! message holding whole lines only, and the concatenation of all payloads
//! is exactly the byte stream a resumable TCP connection with the same
//! handshake receives. So the reader takes the payloads' bytes as it would
//! take a socket's, and the check is byte-exact. A payload is kept as it
//! came (a reference-counted buffer) and handed out in pieces of whatever
//! size the reader asks for, never copied here.
//!
//! A non-empty payload that does not end in `\n` breaks the wire (a line
//! cut across two messages): a [`WireError`]. An empty one holds no line
//! and is skipped.

use tokio_tungstenite::tungstenite::Bytes;

use super::WireError;

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Payloads {
    /// The payload being handed out.
    current: Bytes,
    /// How much of it has been.
    at: usize,
}

impl Payloads {
    /// Takes the next message's payload; the previous one must have been
    /// handed out whole.
    pub(crate) fn push(&mut self, payload: Bytes) -> Result<(), WireError> {
        debug_assert_eq!(self.available(), 0, "a payload pushed over another");
        if payload.last().is_some_and(|&last| last != b'\n') {
            let tail = &payload[payload.len().saturating_sub(40)..];
            return Err(WireError::new(format!(
                "a WebSocket message of {} bytes that does not end a line (it ends `{}`): \
                 every message holds whole lines only",
                payload.len(),
                String::from_utf8_lossy(tail).escape_debug()
            )));
        }
        self.current = payload;
        self.at = 0;
        Ok(())
    }

    /// Bytes not handed out yet.
    pub(crate) fn available(&self) -> usize {
        self.current.len() - self.at
    }

    /// Moves up to `buf.len()` bytes into `buf`; returns how many.
    pub(crate) fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.available());
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of `messages`, pushed one by one and taken `take` bytes
    /// at a time.
    fn concatenated(messages: &[&str], take: usize) -> Result<Vec<u8>, WireError> {
        let mut payloads = Payloads::default();
        let mut out = Vec::new();
        let mut buf = vec![0u8; take];
        for message in messages {
            payloads.push(Bytes::copy_from_slice(message.as_bytes()))?;
            while payloads.available() > 0 {
                let n = payloads.take(&mut buf);
                assert!(n > 0 && n <= take);
                out.extend_from_slice(&buf[..n]);
            }
        }
        Ok(out)
    }

    #[test]
    fn the_payloads_concatenate_into_the_tcp_stream_whatever_the_reads() {
        let messages = [
            "#OK|k3j9x0|18000\r\n",
            "18004|P|17|2932\r\n18010|B\r\n",
            "",
            "#AT|k3j9x0|18842|2|1c291ca3\r\n18850|S|3\r\n",
        ];
        let stream = messages.concat();
        for take in [1, 2, 5, 17, 64 * 1024] {
            assert_eq!(
                concatenated(&messages, take).unwrap(),
                stream.as_bytes(),
                "{take}"
            );
        }
    }

    #[test]
    fn a_message_that_cuts_a_line_is_an_error() {
        let error = concatenated(&["#OK|s|1\r\n", "2|B\r\n3|"], 64).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("of 7 bytes that does not end a line"),
            "{text}"
        );
        assert!(text.contains("ends `2|B\\r\\n3|`"), "{text}");
    }
}
