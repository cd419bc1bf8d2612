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
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
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
            let bytes = writing.len();
            // The message owns the buffer (no copy); the registry's next
            // push allocates the outbox a new one.
            let payload = Bytes::from(std::mem::take(&mut writing));
            let message = Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true));
            tokio::select! {
                sent = ws.send(message) => if sent.is_err() {
                    return DisconnectReason::Error;
                },
                // A stuck client must not pin this task in `send` when the
                // registry gives up on it.
                reason = cut(outbox) => return reason,
            }
            Stats::add(&stats.client_writes, 1);
            Stats::add(&stats.bytes_written, bytes as u64);
            if let Some(read_at) = oldest_read_at {
                stats.latency.record(read_at.elapsed());
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
    let error = match received? {
        Ok(message) => {
            Stats::add(&stats.client_bytes_ignored, message.len() as u64);
            return None;
        }
        Err(error) => error,
    };
    let close = |code, reason: &'static str| CloseFrame {
        code,
        reason: reason.into(),
    };
    let frame = match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
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
