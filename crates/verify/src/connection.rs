//! A client's connection to the server, over the transport the run uses
//! (`transport`): the client port, or the web listener over WebSocket or
//! Server-Sent Events. Whatever the transport, a [`Connection`] reads as
//! the byte stream a TCP client gets, so the reader, the checker and the
//! session are the same for all three.
//!
//! - TCP: the socket's bytes; the handshake is one line.
//! - WebSocket (`tokio-tungstenite`): the text messages' payloads, back to
//!   back (`web::payloads`); the handshake is `GET /ws?…` and its upgrade.
//!   Pings are answered by the library as messages are read.
//! - Server-Sent Events: `GET /events?…` (`Last-Event-ID` on a resume), then
//!   the chunked body's events rebuilt into lines (`web::sse`).
//!
//! Opening is two steps, [`connect`] then [`handshake`], so that a session
//! counts a connection (and mints its token) only once the socket is open,
//! as on TCP. A connection ends three ways, each told apart: the server
//! closes it (a read of 0 bytes, a WebSocket close, the end of the chunked
//! body), it fails ([`ReadError::Io`]: both are what a resumable client
//! resumes from), or the server breaks the web wire ([`ReadError::Wire`],
//! [`OpenError::Wire`]), which fails the run. A refusal with an HTTP status
//! is [`OpenError::Refused`].
//!
//! The client drops a connection itself ([`Connection::close`],
//! [`Connection::reset`]) on the TCP socket under any transport, so a reset
//! is an RST whatever rides on it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::config::Transport;
use super::hello::Hello;
use super::web::http::{parse_head, sse_request, MAX_HEAD_BYTES};
use super::web::payloads::Payloads;
use super::web::sse::SseBody;
use super::web::WireError;

/// Bytes one socket read of a web connection takes (the reader's own
/// buffer, `reader::READ_BUFFER_BYTES`, is as large).
pub(crate) const WEB_READ_BYTES: usize = 64 * 1024;

/// Most bytes of a refusal's body kept for the failure message.
const MAX_REFUSAL_BODY_BYTES: usize = 512;

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Connection(Inner);

/// A connection, by transport.
#[derive(Debug)]
enum Inner {
    /// The client port.
    Tcp(TcpStream),
    /// `/ws`.
    Ws(Box<WsConnection>),
    /// `/events`.
    Sse(Box<SseConnection>),
}

/// A WebSocket connection and the message being handed out.
#[derive(Debug)]
struct WsConnection {
    /// The socket, framed.
    socket: WebSocketStream<TcpStream>,
    /// The payloads read and not yet handed out.
    payloads: Payloads,
}

/// A Server-Sent Events connection past its response head.
#[derive(Debug)]
struct SseConnection {
    /// The socket.
    socket: TcpStream,
    /// Where socket reads go, [`WEB_READ_BYTES`] long.
    raw: Vec<u8>,
    /// The body: its framing and events.
    body: SseBody,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The socket failed or closed during the handshake: worth another
    /// attempt.
    Io(io::Error),
    /// The server answered the web handshake with this status.
    Refused {
        /// The status code.
        status: u16,
        /// Its reason phrase.
        reason: String,
        /// The start of its body (the web listener's is one line).
        body: String,
    },
    /// The server's answer broke the web wire.
    Wire(WireError),
}

impl OpenError {
    /// Whether another attempt may succeed: a socket error, or `503`
    /// (`maxClients` reached, for now).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            OpenError::Io(_) => true,
            OpenError::Refused { status, .. } => *status == 503,
            OpenError::Wire(_) => false,
        }
    }

    /// Whether nothing listens at the address.
    pub(crate) fn is_refused_connection(&self) -> bool {
        matches!(self, OpenError::Io(error) if error.kind() == io::ErrorKind::ConnectionRefused)
    }
}

impl From<io::Error> for OpenError {
    fn from(error: io::Error) -> OpenError {
        OpenError::Io(error)
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Io(error) => write!(f, "{error}"),
            OpenError::Refused {
                status,
                reason,
                body,
            } => {
                write!(f, "the server answered {status} {reason}")?;
                match body.trim() {
                    "" => Ok(()),
                    body => write!(f, ": {body}"),
                }
            }
            OpenError::Wire(error) => write!(f, "{error}"),
        }
    }
}

/// Why a read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed (a reset, say): the connection is over.
    Io(io::Error),
    /// The server broke the web wire.
    Wire(WireError),
}

/// Opens a TCP connection to `address`, with `TCP_NODELAY` (the client's
/// only writes are its handshake and, on the web, control frames).
pub(crate) async fn connect(address: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpStream::connect(address).await?;
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// Sends `hello` on `socket` (connected to `address`) as `transport`
/// spells it and, on the web, reads the server's answer up to the first
/// byte of the stream.
pub(crate) async fn handshake(
    transport: Transport,
    mut socket: TcpStream,
    address: SocketAddr,
    hello: &Hello,
) -> Result<Connection, OpenError> {
    match transport {
        Transport::Tcp => {
            socket.write_all(&hello.tcp_line()).await?;
            Ok(Connection(Inner::Tcp(socket)))
        }
        Transport::Ws => ws_handshake(socket, address, hello).await,
        Transport::Sse => sse_handshake(socket, address, hello).await,
    }
}

/// The WebSocket upgrade of `/ws?…` for `hello`.
async fn ws_handshake(
    socket: TcpStream,
    address: SocketAddr,
    hello: &Hello,
) -> Result<Connection, OpenError> {
    let url = format!("ws://{address}{}", hello.ws_target());
    let config = WebSocketConfig::default().read_buffer_size(WEB_READ_BYTES);
    match tokio_tungstenite::client_async_with_config(url, socket, Some(config)).await {
        Ok((socket, _response)) => Ok(Connection(Inner::Ws(Box::new(WsConnection {
            socket,
            payloads: Payloads::default(),
        })))),
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            Err(OpenError::Refused {
                status: response.status().as_u16(),
                reason: response
                    .status()
                    .canonical_reason()
                    .unwrap_or("")
                    .to_owned(),
                body: refusal_body(body),
            })
        }
        Err(error) => Err(match ws_failure(error) {
            ReadError::Io(error) => OpenError::Io(error),
            ReadError::Wire(error) => OpenError::Wire(WireError::new(format!(
                "the WebSocket handshake failed: {error}"
            ))),
        }),
    }
}

/// The request for `/events?…` for `hello`, and its response head.
async fn sse_handshake(
    mut socket: TcpStream,
    address: SocketAddr,
    hello: &Hello,
) -> Result<Connection, OpenError> {
    let request = sse_request(
        &address.to_string(),
        &hello.sse_target(),
        hello.last_event_id().as_deref(),
    );
    socket.write_all(&request).await?;
    let mut raw = vec![0u8; WEB_READ_BYTES];
    let mut filled = 0;
    let (head, length) = loop {
        if let Some(parsed) = parse_head(&raw[..filled]).map_err(OpenError::Wire)? {
            break parsed;
        }
        let limit = MAX_HEAD_BYTES.min(raw.len());
        let n = socket.read(&mut raw[filled..limit]).await?;
        if n == 0 {
            return Err(OpenError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before its response",
            )));
        }
        filled += n;
    };
    if head.status != 200 {
        // The body (one line) came with the head, or comes at once.
        let wanted = head.content_length.unwrap_or(0).min(MAX_REFUSAL_BODY_BYTES);
        let mut body = raw[length..filled].to_vec();
        if body.len() < wanted {
            let mut rest = vec![0u8; wanted - body.len()];
            let read = tokio::time::timeout(Duration::from_millis(100), socket.read(&mut rest));
            if let Ok(Ok(n)) = read.await {
                body.extend_from_slice(&rest[..n]);
            }
        }
        return Err(OpenError::Refused {
            status: head.status,
            reason: head.reason,
            body: refusal_body(&body),
        });
    }
    head.check_event_stream().map_err(OpenError::Wire)?;
    let mut body = SseBody::new(head.framing());
    body.feed(&raw[length..filled]).map_err(OpenError::Wire)?;
    Ok(Connection(Inner::Sse(Box::new(SseConnection {
        socket,
        raw,
        body,
    }))))
}

/// The start of a refusal's body, as text.
fn refusal_body(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_REFUSAL_BODY_BYTES)];
    String::from_utf8_lossy(cut).trim().to_owned()
}

/// What a WebSocket error means here: the connection's end (the socket
/// failed or closed, with or without a closing handshake), or a breach of
/// the wire (anything else the library refuses: a masked or unknown frame,
/// a text message that is not UTF-8, one over its size limit).
fn ws_failure(error: WsError) -> ReadError {
    match error {
        WsError::Io(error) => ReadError::Io(error),
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::HandshakeIncomplete,
        ) => ReadError::Io(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            error.to_string(),
        )),
        other => ReadError::Wire(WireError::new(format!("WebSocket: {other}"))),
    }
}

impl Connection {
    /// Reads the next bytes of the stream into `buf` (not empty); 0 when
    /// the server has closed the connection. Cancel-safe: nothing read is
    /// lost if the future is dropped.
    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        match &mut self.0 {
            Inner::Tcp(socket) => socket.read(buf).await.map_err(ReadError::Io),
            Inner::Ws(ws) => loop {
                if ws.payloads.available() > 0 {
                    return Ok(ws.payloads.take(buf));
                }
                // `next` is cancel-safe: a message half read stays in the
                // stream's buffer.
                let Some(message) = ws.socket.next().await else {
                    return Ok(0);
                };
                if !ws.message(message)? {
                    return Ok(0);
                }
            },
            Inner::Sse(sse) => loop {
                if sse.body.available() > 0 {
                    return Ok(sse.body.take(buf));
                }
                if sse.body.ended() {
                    return Ok(0);
                }
                let n = sse.socket.read(&mut sse.raw).await.map_err(ReadError::Io)?;
                if n == 0 {
                    return Ok(0);
                }
                sse.body.feed(&sse.raw[..n]).map_err(ReadError::Wire)?;
            },
        }
    }

    /// What the connection already holds, without waiting (after the final
    /// broadcast, nothing more is owed: whatever is there is extra). 0 if
    /// nothing is, or the connection is over.
    pub(crate) fn read_now(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        match &mut self.0 {
            Inner::Tcp(socket) => Ok(socket.try_read(buf).unwrap_or(0)),
            Inner::Ws(ws) => {
                if ws.payloads.available() == 0 {
                    if let Some(Some(message)) = ws.socket.next().now_or_never() {
                        ws.message(message)?;
                    }
                }
                Ok(ws.payloads.take(buf))
            }
            Inner::Sse(sse) => {
                if sse.body.available() == 0 {
                    if let Ok(n @ 1..) = sse.socket.try_read(&mut sse.raw) {
                        sse.body.feed(&sse.raw[..n]).map_err(ReadError::Wire)?;
                    }
                }
                Ok(sse.body.take(buf))
            }
        }
    }

    /// Closes the connection cleanly: on the web, a WebSocket close frame
    /// first; then the TCP socket's FIN.
    pub(crate) async fn close(&mut self) {
        let socket = match &mut self.0 {
            Inner::Tcp(socket) => socket,
            Inner::Ws(ws) => {
                // The server answers with its own close, which nobody reads:
                // the connection is over for this client either way.
                let _ = ws.socket.close(None).await;
                ws.socket.get_mut()
            }
            Inner::Sse(sse) => &mut sse.socket,
        };
        // FIN first; the kernel may still reset if lines were in flight.
        let _ = socket.shutdown().await;
    }

    /// Makes the connection's close, when it is dropped, a reset (RST):
    /// `SO_LINGER` 0 on its TCP socket, whatever the transport.
    pub(crate) fn reset(&self) {
        let socket = match &self.0 {
            Inner::Tcp(socket) => socket,
            Inner::Ws(ws) => ws.socket.get_ref(),
            Inner::Sse(sse) => &sse.socket,
        };
        let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
    }
}

impl WsConnection {
    /// Takes in `message` as read; returns whether the connection goes on
    /// (not on a close).
    fn message(&mut self, message: Result<Message, WsError>) -> Result<bool, ReadError> {
        match message.map_err(ws_failure)? {
            Message::Text(text) => self.payloads.push(text.into()).map_err(ReadError::Wire)?,
            Message::Binary(payload) => {
                return Err(ReadError::Wire(WireError::new(format!(
                    "a binary WebSocket message of {} bytes: the server's messages are text",
                    payload.len()
                ))))
            }
            Message::Close(_) => return Ok(false),
            // Pings are answered by the library; pongs and raw frames
            // carry no lines.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        Ok(true)
    }
}
