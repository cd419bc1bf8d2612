//! WebSocket sessions: a session's lines as text messages.
//!
//! Each message is what the outbox held when the writer took it: whole
//! lines, many of them under load, so the concatenation of all payloads is
//! exactly the byte stream a resumable TCP client with the same handshake
//! receives (the verdict first, `#AT` checkpoints included).
//!
//! What the client sends is read and dropped; the protocol is kept with
//! it all the same: pings are answered with their payload, a close gets a
//! close back, a message over [`MAX_CLIENT_MESSAGE_BYTES`] (its frames
//! joined) closes with 1009, a protocol error (an unmasked frame, say) with
//! 1002, and after [`crate::settings::WebSettings::ping_after`] with no
//! traffic either way the server pings.
//!
//! The crate is `tokio-tungstenite`: it enforces what RFC 6455 asks of a
//! server (masked client frames, UTF-8 text, control frame sizes, the
//! close handshake) and takes our message size bound across fragments.
//! `fastwebsockets`, the other candidate, sends faster (a vectored write
//! without a copy) but accepts unmasked client frames and has no bound
//! across fragments; BENCHMARKS.md has the A/B.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::fanout::client::Registered;
use crate::fanout::outbox::{Closed, Outbox, Taken};
use crate::ops::stats::{DisconnectReason, Stats};

/// The largest client message accepted, its frames joined: 64 KiB.
pub(crate) const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest message the server sends. tungstenite copies a message
/// into its write buffer and, after each partial write, moves what is left
/// to the buffer's front (`FrameCodec::write_out_buffer`): a 4 MiB batch
/// as one message, written 200 KiB at a time, would move about 40 MiB, and
/// leave a 4 MiB buffer in the connection. Messages of at most 64 KiB
/// keep both small; each still holds whole lines.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A writer's buffer larger than this after a write is freed rather than
/// kept, as for TCP writers.
const WRITER_KEEP_BYTES: usize = 256 * 1024;

/// The read buffer a connection starts with. Clients send next to
/// nothing, so it is small; a larger message grows it while it is read.
const READ_BUFFER_BYTES: usize = 512;

/// The WebSocket settings every session uses.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Each message is written (and flushed) as it is sent.
        .write_buffer_size(0)
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES))
}

/// Serves one upgraded connection: `socket`, with `read_ahead` (bytes the
/// client sent after its upgrade request, already read) until the client
/// leaves, falls behind, or the session's outbox closes.
pub(crate) async fn serve(
    socket: TcpStream,
    read_ahead: Vec<u8>,
    registered: Registered,
    stats: &Stats,
    ping_after: Duration,
    peer: SocketAddr,
) {
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%peer, %error, "could not set TCP_NODELAY");
    }
    let mut ws =
        WebSocketStream::from_partially_read(socket, read_ahead, Role::Server, Some(config()))
            .await;
    let (user, conn) = (registered.user, registered.conn);
    let reason = pump(&mut ws, registered.outbox(), stats, ping_after).await;
    if reason == DisconnectReason::FaultReset {
        // Linger 0: closing sends RST, as for a TCP client.
        let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
    }
    registered.end(reason).await;
    tracing::debug!(%peer, user, conn, reason = reason.as_str(), "web socket closed");
}

/// Moves the outbox's bytes to the socket, one text message per take, and
/// answers the client, until the session ends; returns why.
async fn pump(
    ws: &mut WebSocketStream<TcpStream>,
    outbox: &Outbox,
    stats: &Stats,
    ping_after: Duration,
) -> DisconnectReason {
    let mut writing: Vec<u8> = Vec::new();
    let mut last_traffic = Instant::now();
    loop {
        let Taken {
            closed,
            oldest_read_at,
        } = outbox.take(&mut writing);
        if closed == Some(Closed::SlowConsumer) {
            return DisconnectReason::SlowConsumer;
        }
        if !writing.is_empty() {
            tokio::select! {
                sent = send_lines(ws, &writing, stats) => if sent.is_err() {
                    return DisconnectReason::Error;
                },
                // A stuck client must not pin this task in `send` when the
                // registry gives up on it.
                reason = cut(outbox) => return reason,
            }
            if let Some(read_at) = oldest_read_at {
                stats.latency.record(read_at.elapsed());
            }
            writing.clear();
            if writing.capacity() > WRITER_KEEP_BYTES {
                writing = Vec::new();
            }
            last_traffic = Instant::now();
            // More may have arrived while sending.
            continue;
        }
        match closed {
            None => {}
            Some(Closed::Reset) => return DisconnectReason::FaultReset,
            Some(_) => {
                // Drained: say goodbye properly.
                let goodbye = CloseFrame {
                    code: CloseCode::Away,
                    reason: "server shutting down".into(),
                };
                let _ = ws.close(Some(goodbye)).await;
                return DisconnectReason::Normal;
            }
        }
        tokio::select! {
            () = outbox.woken() => {}
            received = ws.next() => {
                last_traffic = Instant::now();
                if let Some(reason) = received_from_client(ws, received, stats).await {
                    return reason;
                }
            }
            () = tokio::time::sleep_until(last_traffic + ping_after) => {
                last_traffic = Instant::now();
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    return DisconnectReason::Error;
                }
            }
        }
    }
}

/// Sends `lines` (whole lines) as text messages of at most
/// [`MAX_MESSAGE_BYTES`] each (one longer line is a message of its own).
async fn send_lines(
    ws: &mut WebSocketStream<TcpStream>,
    mut lines: &[u8],
    stats: &Stats,
) -> Result<(), WsError> {
    while !lines.is_empty() {
        let (message, rest) = lines.split_at(message_end(lines, MAX_MESSAGE_BYTES));
        let payload = Bytes::copy_from_slice(message);
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        ws.send(Message::Frame(frame)).await?;
        Stats::add(&stats.client_writes, 1);
        Stats::add(&stats.bytes_written, message.len() as u64);
        lines = rest;
    }
    Ok(())
}

/// Where the first message of `lines` ends: after the last whole line
/// within `max` bytes, or after the first line if it alone is longer.
fn message_end(lines: &[u8], max: usize) -> usize {
    if lines.len() <= max {
        return lines.len();
    }
    let last_within = memchr::memrchr(b'\n', &lines[..max]);
    let first = || memchr::memchr(b'\n', lines).unwrap_or(lines.len() - 1);
    last_within.unwrap_or_else(first) + 1
}

/// Completes when the registry cuts the session off as a slow consumer.
async fn cut(outbox: &Outbox) -> DisconnectReason {
    loop {
        outbox.woken().await;
        if outbox.closed() == Some(Closed::SlowConsumer) {
            return DisconnectReason::SlowConsumer;
        }
    }
}

/// Handles what the client sent; `Some` when the session ends with it.
/// Pings and closes are answered by the protocol layer on its next read
/// or write, which the caller's loop makes at once.
async fn received_from_client(
    ws: &mut WebSocketStream<TcpStream>,
    received: Option<Result<Message, WsError>>,
    stats: &Stats,
) -> Option<DisconnectReason> {
    let error = match received {
        // The stream ended: the client closed.
        None => return Some(DisconnectReason::Normal),
        Some(Ok(message)) => {
            Stats::add(&stats.client_bytes_ignored, message.len() as u64);
            return None;
        }
        Some(Err(error)) => error,
    };
    let close = |code, reason: &'static str| CloseFrame {
        code,
        reason: reason.into(),
    };
    let frame = match error {
        // The client closed its side, with or without a close handshake.
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            return Some(DisconnectReason::Normal)
        }
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            close(CloseCode::Size, "message over 64 KiB")
        }
        WsError::Capacity(_) | WsError::Protocol(_) | WsError::Utf8(_) => {
            close(CloseCode::Protocol, "protocol error")
        }
        _ => return Some(DisconnectReason::Error),
    };
    let _ = ws.close(Some(frame)).await;
    Some(DisconnectReason::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_end_on_a_line_within_the_bound_or_after_one_long_line() {
        assert_eq!(message_end(b"1|B\r\n2|B\r\n", 64), 10);
        assert_eq!(message_end(b"1|B\r\n2|B\r\n", 9), 5);
        assert_eq!(message_end(b"1|B\r\n2|B\r\n", 5), 5);
        assert_eq!(message_end(b"123456|B\r\n2|B\r\n", 4), 10);
        let mut lines = b"1|B\r\n2|B\r\n".as_slice();
        let mut messages = Vec::new();
        while !lines.is_empty() {
            let (message, rest) = lines.split_at(message_end(lines, 7));
            messages.push(message);
            lines = rest;
        }
        assert_eq!(messages, [&b"1|B\r\n"[..], b"2|B\r\n"]);
    }
}
