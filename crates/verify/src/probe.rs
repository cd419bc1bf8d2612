//! A resumable run starts its stream before its clients connect.
//!
//! A resumable client's first verdict, `#OK|stream|P`, registers it at the
//! server's position `P`: lines above `P` are owed, none at or below. That
//! must be a position in *this run's* stream. A long-lived server that
//! served a run before is still at that run's last sequence number, on that
//! run's stream; our first event starts a new stream there (the sequence
//! restarts, and every session ends), so a client registered before it
//! would hold a verdict of the old stream.
//!
//! So before the clients connect, a probe (a connection of a user no event
//! names, so it is owed broadcasts only) waits while the event source
//! sends opening broadcasts `1, 2, ...`, one per [`OPENING_TICK`], exactly as
//! the source's opening does, until the probe receives one. The server has
//! then applied one of ours: it is on our stream, and every verdict from now
//! on is a position in it. The probe closes, the clients connect, and the
//! source's opening carries on from the next broadcast (clients registered
//! below the last one sent are owed the rest, which were stamped on the send
//! clock like any opening broadcast).
//!
//! The probe is a classic connection, unless the server requires tokens
//! (`authSecret`): a classic handshake is then refused, so it sends a
//! resumable first handshake with its token, `user||0|<token>`, and skips
//! the verdict and checkpoints it gets like any line that is not one of our
//! broadcasts. Over a web transport it connects as the clients do (there
//! every connection is a first resumable one), and reads the same lines.
//!
//! A resumable probe on a long-lived server connects on the previous run's
//! stream, which our first broadcast ends: the server then ends every
//! session and closes its connections, the probe's among them. So a probe
//! closed after the server answered it (its verdict) connects again and
//! waits on; one closed without a word fails (a refused token, say).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::config::Transport;
use super::connection::{self, Connection, ReadError};
use super::credentials::Credentials;
use super::failure::Failure;
use super::hello::{Hello, Start};
use super::line::{format_line, Event, MAX_LINE_BYTES};
use super::opening::{Opened, OPENING_TICK};
use super::shared::Shared;
use followermaze_protocol::{parse_event, EventKind, Seq};

/// Bytes the probe reads at a time; it needs one line.
const PROBE_BUFFER_BYTES: usize = 4096;

/// Where the probe connects: each of `addresses` (a cluster's gateways, or
/// web listeners), over `transport`, named by `variable` in failures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probed<'a> {
    /// The client (or web) addresses.
    pub(crate) addresses: &'a [SocketAddr],
    /// How clients connect.
    pub(crate) transport: Transport,
    /// The variable naming the addresses.
    pub(crate) variable: &'static str,
}

/// Sends opening broadcasts on `source` until a probe connection to each of
/// `clients`' addresses in turn (a cluster's gateways each apply the stream
/// on their own) for `probe_user` receives one; stamps each on `shared`'s
/// send clock (broadcast `n` is chunk `n - 1`, as the source's opening
/// numbers them). With `credentials`, each probe's handshake carries a
/// token. Fails after `timeout` in all.
pub(crate) async fn start_stream(
    source: &mut TcpStream,
    clients: Probed<'_>,
    (probe_user, credentials): (u32, Option<&Credentials>),
    shared: &Shared,
    timeout: Duration,
) -> Result<Opened, Failure> {
    let started = Instant::now();
    let mut opened = Opened::default();
    for &address in clients.addresses {
        let hello = probe_hello(probe_user, credentials, clients.transport);
        probe_one(
            source,
            (address, clients),
            &hello,
            shared,
            (started, timeout),
            &mut opened,
        )
        .await?;
    }
    Ok(opened)
}

/// The probe's handshake for `user` over `transport`: classic (`user`), or
/// with `credentials` a resumable first connection with its token
/// (`user||0|<token>`), as a classic one would be refused. On the web,
/// where every connection is resumable, a first connection.
fn probe_hello(user: u32, credentials: Option<&Credentials>, transport: Transport) -> Hello {
    let classic = credentials.is_none() && transport == Transport::Tcp;
    Hello {
        user,
        start: if classic {
            Start::Classic
        } else {
            Start::First
        },
        token: credentials.map(|credentials| credentials.token(user)),
    }
}

/// [`start_stream`] for one client address, carrying on from `opened`;
/// `hello` is the probe's handshake.
async fn probe_one(
    source: &mut TcpStream,
    (address, clients): (SocketAddr, Probed<'_>),
    hello: &Hello,
    shared: &Shared,
    (started, timeout): (Instant, Duration),
    opened: &mut Opened,
) -> Result<(), Failure> {
    let mut probe = open_probe((address, clients), hello, timeout).await?;
    let mut received = ProbeBuffer {
        buf: vec![0u8; PROBE_BUFFER_BYTES],
        filled: 0,
        answered: false,
    };
    loop {
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(Failure::StreamNotStarted {
                broadcasts: opened.broadcasts,
                waited,
            });
        }
        send_broadcast(source, shared, (timeout - waited, timeout), opened).await?;
        let tick = Instant::now() + OPENING_TICK;
        let heard = received
            .broadcast_by(
                &mut probe,
                (address, clients.variable),
                opened.broadcasts,
                tick,
            )
            .await?;
        match heard {
            Heard::Ours => return Ok(()),
            Heard::NotYet => {}
            Heard::Ended => {
                probe = open_probe((address, clients), hello, timeout).await?;
                received.filled = 0;
                received.answered = false;
            }
        }
    }
}

/// Writes the next opening broadcast to `source` within `remaining` (of
/// `timeout` in all), stamped on `shared`'s send clock first (broadcast `n`
/// is chunk `n - 1`), and counts it in `opened`.
async fn send_broadcast(
    source: &mut TcpStream,
    shared: &Shared,
    (remaining, timeout): (Duration, Duration),
    opened: &mut Opened,
) -> Result<(), Failure> {
    let seq = opened.broadcasts + 1;
    let mut line = [0u8; MAX_LINE_BYTES];
    let len = format_line(&Event::broadcast(seq), &mut line);
    let chunk = u32::try_from(seq - 1).expect("far fewer opening broadcasts than 2^32");
    shared.clock.stamp(chunk);
    shared.events_handed.store(seq, Ordering::Release);
    match tokio::time::timeout(remaining, source.write_all(&line[..len])).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Err(Failure::SourceIo {
                error: error.to_string(),
            })
        }
        Err(_) => {
            return Err(Failure::SourceStalled {
                events_sent: opened.broadcasts,
                waited: timeout,
            })
        }
    }
    opened.broadcasts = seq;
    opened.bytes += len as u64;
    shared.events_sent.store(seq, Ordering::Relaxed);
    Ok(())
}

/// A probe connection to `address`, one of `clients`, that has sent
/// `hello`.
async fn open_probe(
    (address, clients): (SocketAddr, Probed<'_>),
    hello: &Hello,
    timeout: Duration,
) -> Result<Connection, Failure> {
    let failure = |error: String| connect_failure(address, clients.variable, error);
    let connected = tokio::time::timeout(timeout, async {
        let socket = connection::connect(address).await?;
        connection::handshake(clients.transport, socket, address, hello).await
    });
    match connected.await {
        Ok(Ok(probe)) => Ok(probe),
        Ok(Err(error)) => Err(failure(error.to_string())),
        Err(_) => Err(failure("connection timed out".into())),
    }
}

/// What the probe heard by a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// One of our broadcasts.
    Ours,
    /// Not yet.
    NotYet,
    /// The server closed the connection after answering it: a new stream
    /// ended its session.
    Ended,
}

/// What the probe connection has read: `buf[..filled]` is the start of a
/// line not yet complete.
struct ProbeBuffer {
    /// [`PROBE_BUFFER_BYTES`] long.
    buf: Vec<u8>,
    /// Bytes of `buf` in use.
    filled: usize,
    /// Whether the server has sent anything on this connection.
    answered: bool,
}

impl ProbeBuffer {
    /// Reads `probe` (a connection to `address`, which `variable` names)
    /// until `tick`; returns whether one of our broadcasts, at or below
    /// `seq`, arrived by then, or the server ended the connection after
    /// answering it. Anything else is not ours and is skipped; a line
    /// longer than the buffer is thrown away whole. A close without an
    /// answer fails.
    async fn broadcast_by(
        &mut self,
        probe: &mut Connection,
        (address, variable): (SocketAddr, &'static str),
        seq: Seq,
        tick: Instant,
    ) -> Result<Heard, Failure> {
        while let Ok(read) =
            tokio::time::timeout_at(tick.into(), probe.read(&mut self.buf[self.filled..])).await
        {
            let n = match read {
                Ok(0) | Err(ReadError::Io(_)) if self.answered => return Ok(Heard::Ended),
                Ok(0) | Err(ReadError::Io(_)) => {
                    let error = "the server closed the probe connection".to_owned();
                    return Err(connect_failure(address, variable, error));
                }
                Err(ReadError::Wire(error)) => {
                    return Err(connect_failure(address, variable, error.to_string()))
                }
                Ok(n) => n,
            };
            self.filled += n;
            self.answered = true;
            while let Some(newline) = memchr::memchr(b'\n', &self.buf[..self.filled]) {
                let line = &self.buf[..=newline];
                if matches!(parse_event(line), Ok((got, EventKind::Broadcast)) if got <= seq) {
                    return Ok(Heard::Ours);
                }
                // Anything else is not ours; wait for one of ours.
                self.buf.copy_within(newline + 1..self.filled, 0);
                self.filled -= newline + 1;
            }
            if self.filled == self.buf.len() {
                self.filled = 0;
            }
        }
        Ok(Heard::NotYet)
    }
}

/// The probe could not connect to `address` (which `variable` names), or
/// was closed.
fn connect_failure(address: SocketAddr, variable: &'static str, error: String) -> Failure {
    Failure::Connect {
        variable,
        address: address.to_string(),
        error: format!("probe connection: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use followermaze_protocol::auth::{split_token, Key};

    use super::*;

    #[test]
    fn the_probe_is_classic_unless_it_needs_a_token_or_is_on_the_web() {
        assert_eq!(
            probe_hello(1001, None, Transport::Tcp).tcp_line(),
            b"1001\r\n"
        );
        for transport in [Transport::Ws, Transport::Sse] {
            let hello = probe_hello(1001, None, transport);
            assert_eq!(hello.start, Start::First);
            assert_eq!(hello.ws_target(), "/ws?user=1001");
        }
        let secret = b"the probe test's secret";
        let hello = probe_hello(1001, Some(&Credentials::new(secret)), Transport::Tcp).tcp_line();
        assert!(hello.starts_with(b"1001||0|eyJ") && hello.ends_with(b"\r\n"));
        let (fields, token) = split_token(&hello);
        assert_eq!(fields, b"1001||0");
        assert_eq!(
            Key::new(secret).check(token.expect("a token"), "1001"),
            Ok(())
        );
    }
}
