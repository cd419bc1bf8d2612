//! The web listener end to end: the real server on 127.0.0.1:0, browsers'
//! transports spoken over real TCP. A WebSocket's payloads, joined, are
//! the bytes a resumable TCP client gets; an event stream carries the same
//! lines; both resume; every bad request gets its status, counted; the
//! protocol's edges hold; an idle crowd cannot lock the listener out.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{allow_open_files, get, send, wait_until, within, TestServer};
use followermaze::{Config, DisconnectReason, Stats, WebTransport};
use followermaze_protocol::auth::{AuthError, Key};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Events for several users; user 7's share is `SEVEN_SEES`.
const EVENTS: &str =
    "3|B\r\n1|F|9|7\r\n2|P|9|7\r\n5|S|9\r\n4|F|7|9\r\n6|P|8|9\r\n7|U|9|7\r\n8|S|8\r\n";

/// What user 7 receives of [`EVENTS`], in order.
const SEVEN_SEES: &str = "1|F|9|7\r\n2|P|9|7\r\n3|B\r\n5|S|9\r\n";

/// A server with a web listener and no periodic checkpoints (their timing
/// differs between connections).
async fn server() -> TestServer {
    server_with(Config {
        checkpoint_interval_ms: 0,
        ..Config::default()
    })
    .await
}

/// A server with a web listener and `config`.
async fn server_with(config: Config) -> TestServer {
    TestServer::start_with_web(config).await
}

fn web(server: &TestServer) -> SocketAddr {
    server.web.expect("a web listener")
}

/// Opens a WebSocket on `/ws?<query>` and waits until its session is
/// registered.
async fn ws(server: &TestServer, query: &str) -> WebSocketStream<TcpStream> {
    let before = get(&server.stats.client_connects);
    let address = web(server);
    let stream = within("connect", TcpStream::connect(address))
        .await
        .unwrap();
    let url = format!("ws://{address}/ws?{query}");
    let (ws, response) = within("upgrade", tokio_tungstenite::client_async(url, stream))
        .await
        .expect("a WebSocket upgrade");
    assert_eq!(response.status(), 101);
    wait_until("registration", || {
        get(&server.stats.client_connects) > before
    })
    .await;
    ws
}

/// Reads text messages, joined, until they hold `lines` lines.
async fn ws_lines(ws: &mut WebSocketStream<TcpStream>, lines: usize) -> String {
    let mut joined = String::new();
    while joined.matches('\n').count() < lines {
        let message = within("a message", ws.next()).await;
        match message {
            Some(Ok(Message::Text(text))) => {
                assert!(text.ends_with('\n'), "a message of whole lines: {text:?}");
                joined.push_str(&text);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
    joined
}

/// A resumable TCP client connected with `hello`, registered.
async fn tcp_client(server: &TestServer, hello: &str) -> TcpStream {
    let before = get(&server.stats.client_connects);
    let mut stream = within("connect", TcpStream::connect(server.clients))
        .await
        .unwrap();
    stream.write_all(hello.as_bytes()).await.unwrap();
    wait_until("registration", || {
        get(&server.stats.client_connects) > before
    })
    .await;
    stream
}

/// Reads from `stream` until it holds `lines` lines.
async fn tcp_lines(stream: &mut TcpStream, lines: usize) -> String {
    let mut got = String::new();
    let mut buffer = [0u8; 4096];
    while got.matches('\n').count() < lines {
        let read = within("a read", stream.read(&mut buffer)).await.unwrap();
        assert!(read > 0, "closed early after {got:?}");
        got.push_str(std::str::from_utf8(&buffer[..read]).unwrap());
    }
    got
}

/// An open event stream: the response head and the body so far, its
/// chunked framing removed.
struct EventStream {
    stream: TcpStream,
    status: u16,
    head: String,
    raw: Vec<u8>,
    body: String,
}

impl EventStream {
    /// `GET <target>` with `headers` (each `Name: value\r\n`).
    async fn open(address: SocketAddr, target: &str, headers: &str) -> EventStream {
        let mut stream = within("connect", TcpStream::connect(address))
            .await
            .unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: {address}\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buffer = [0u8; 4096];
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let read = within("the response head", stream.read(&mut buffer))
                .await
                .unwrap();
            assert!(read > 0, "closed before the head: {raw:?}");
            raw.extend_from_slice(&buffer[..read]);
        };
        let head = String::from_utf8(raw[..end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        let raw = raw[end + 4..].to_vec();
        EventStream {
            stream,
            status,
            head,
            raw,
            body: String::new(),
        }
    }

    /// Reads until the body holds `events` complete events (blocks
    /// separated by an empty line); returns the body so far.
    async fn events(&mut self, events: usize) -> &str {
        let mut buffer = [0u8; 4096];
        loop {
            self.dechunk();
            if self.body.matches("\n\n").count() >= events {
                return &self.body;
            }
            let read = within("events", self.stream.read(&mut buffer))
                .await
                .unwrap();
            assert!(read > 0, "closed early after {:?}", self.body);
            self.raw.extend_from_slice(&buffer[..read]);
        }
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..line_end]).unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            let chunk = &self.raw[start..start + size];
            self.body.push_str(std::str::from_utf8(chunk).unwrap());
            self.raw.drain(..start + size + 2);
        }
    }
}

/// The lines an SSE client rebuilds from `body`: each event's `data` and
/// `\r\n`, comments and other fields left out.
fn sse_lines(body: &str) -> String {
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(|data| format!("{data}\r\n"))
        .collect()
}

/// Sends one raw request and reads the whole answer (the request asks the
/// server to close): status and body.
async fn exchange(address: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = within("connect", TcpStream::connect(address))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("the answer", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_owned())
}

/// `GET <target>` with `headers`, closing after the answer.
async fn get_status(address: SocketAddr, target: &str, headers: &str) -> (u16, String) {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{headers}\r\n");
    exchange(address, &request).await
}

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn a_web_socket_carries_the_bytes_a_tcp_client_gets() {
    let server = server().await;
    let mut ws = ws(&server, "user=7").await;
    let mut tcp = tcp_client(&server, "7||\r\n").await;
    let mut source = server.source().await;
    send(&mut source, EVENTS).await;
    let over_ws = ws_lines(&mut ws, 5).await;
    assert_eq!(over_ws, tcp_lines(&mut tcp, 5).await);
    let (verdict, events) = over_ws.split_once("\r\n").unwrap();
    assert!(
        verdict.starts_with("#OK|") && verdict.ends_with("|0"),
        "{verdict}"
    );
    assert_eq!(events, SEVEN_SEES);
    assert_eq!(
        Stats::get(&server.stats.web_sessions[WebTransport::WebSocket as usize]),
        1
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_stream_carries_the_same_lines_and_checkpoints_that_verify() {
    let server = server_with(Config {
        checkpoint_interval_ms: 10,
        ..Config::default()
    })
    .await;
    let before = get(&server.stats.client_connects);
    let origin = format!("Origin: http://{}\r\n", web(&server));
    let mut events = EventStream::open(web(&server), "/events?user=7", &origin).await;
    assert_eq!(events.status, 200, "{}", events.head);
    let head = events.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains(&format!(
            "access-control-allow-origin: http://{}",
            web(&server)
        )),
        "{head}"
    );
    wait_until("registration", || {
        get(&server.stats.client_connects) > before
    })
    .await;
    let mut source = server.source().await;
    send(&mut source, EVENTS).await;
    // The verdict, four events, and a checkpoint after them.
    let body = loop {
        let body = events.events(6).await.to_owned();
        if body.contains("data: #AT|") && body.matches("\n\nid: ").count() >= 4 {
            let at = body.rfind("event: checkpoint").unwrap();
            if body[..at].matches("data: ").count() >= 5 {
                break body;
            }
        }
        let count = body.matches("\n\n").count();
        events.events(count + 1).await;
    };
    assert!(
        body.starts_with("retry: 1000\nevent: verdict\nid: "),
        "{body}"
    );
    let lines = sse_lines(&body);
    let mut lines = lines.split_inclusive('\n');
    let verdict = lines.next().unwrap();
    let stream = verdict.split('|').nth(1).unwrap().to_owned();
    assert_eq!(verdict, format!("#OK|{stream}|0\r\n"));
    let rest: String = lines.filter(|line| !line.starts_with("#AT|")).collect();
    assert_eq!(rest, SEVEN_SEES);
    assert!(
        body.contains(&format!("id: {stream}:1\ndata: 1|F|9|7\n\n")),
        "{body}"
    );
    // The last checkpoint after all four covers them as the client saw them.
    let crc = crc32fast::hash(SEVEN_SEES.as_bytes());
    let last = body.rsplit("event: checkpoint\n").next().unwrap();
    assert!(
        last.starts_with(&format!(
            "id: {stream}:8\ndata: #AT|{stream}|8|4|{crc:08x}\n\n"
        )),
        "{last}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn both_transports_resume_a_session_where_it_left_off_and_across_transports() {
    let server = server().await;
    let mut first = ws(&server, "user=7").await;
    let mut source = server.source().await;
    send(&mut source, "1|F|9|7\r\n2|P|9|7\r\n").await;
    let got = ws_lines(&mut first, 3).await;
    let stream = got.split('|').nth(1).unwrap().to_owned();
    drop(first);
    wait_until("the drop noticed", || {
        server.stats.disconnects(DisconnectReason::Normal) >= 1
    })
    .await;
    // Missed while away, then resumed over WebSocket after line 1.
    send(&mut source, "3|B\r\n").await;
    server.delivered(3).await;
    let mut again = ws(&server, &format!("user=7&stream={stream}&after=1")).await;
    assert_eq!(
        ws_lines(&mut again, 3).await,
        format!("#OK|{stream}|1\r\n2|P|9|7\r\n3|B\r\n")
    );
    drop(again);
    wait_until("the drop noticed", || {
        server.stats.disconnects(DisconnectReason::Normal) >= 2
    })
    .await;
    // And over SSE, from the browser's own Last-Event-ID.
    send(&mut source, "4|F|7|9\r\n5|S|9\r\n").await;
    server.delivered(5).await;
    let header = format!("Last-Event-ID: {stream}:3\r\n");
    let mut events = EventStream::open(web(&server), "/events?user=7", &header).await;
    let body = events.events(2).await;
    assert_eq!(sse_lines(body), format!("#OK|{stream}|3\r\n5|S|9\r\n"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn each_bad_request_gets_its_status_and_a_one_line_reason_counted() {
    let server = server_with(Config {
        max_clients: 1,
        resume_total_bytes: 1 << 20,
        ..Config::default()
    })
    .await;
    let address = web(&server);
    let cases = [
        ("/nope", "", 404),
        ("/events", "", 400),
        ("/events?user=7", "Last-Event-ID: nocolon\r\n", 400),
        ("/ws?user=7&stream=UPPER&after=1", UPGRADE, 400),
        ("/ws?user=7", "", 426),
        (
            "/events?user=7",
            "Origin: http://elsewhere.example\r\n",
            403,
        ),
    ];
    for (target, headers, status) in cases {
        let (got, body) = get_status(address, target, headers).await;
        assert_eq!(got, status, "{target} {headers:?}: {body}");
        assert_eq!(body.lines().count(), 1, "one line: {body:?}");
    }
    let post = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(exchange(address, &post).await.0, 405);
    let huge = format!("X-Filler: {}\r\n", "x".repeat(9000));
    assert_eq!(get_status(address, "/", &huge).await.0, 431);
    // One client fills maxClients: the next is told to come back later.
    let _only = ws(&server, "user=1").await;
    assert_eq!(get_status(address, "/events?user=2", "").await.0, 503);
    for (status, count) in [
        (400, 3),
        (403, 1),
        (404, 1),
        (405, 1),
        (426, 1),
        (431, 1),
        (503, 1),
    ] {
        assert_eq!(server.stats.web_refusals(status), count, "status {status}");
    }
    assert_eq!(get_status(address, "/", "").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_required_on_the_web_listener_and_refusals_counted_by_reason() {
    const SECRET: &str = "the secret of tests/web.rs";
    let config = Config::from_vars([("authSecret".to_owned(), SECRET.to_owned())]).unwrap();
    let server = server_with(config).await;
    let address = web(&server);
    let key = Key::new(SECRET.as_bytes());
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let good = key.mint("7", hour, now);
    let cases = [
        (String::new(), AuthError::Missing),
        (key.mint("8", hour, now), AuthError::WrongSubject),
        (
            key.mint("7", hour, now - 2 * hour - Duration::from_secs(120)),
            AuthError::Expired,
        ),
        (
            Key::new(b"another").mint("7", hour, now),
            AuthError::BadSignature,
        ),
        ("not.a.token".to_owned(), AuthError::Malformed),
    ];
    for (token, reason) in &cases {
        let ws = format!("/ws?user=7&token={token}");
        let (status, body) = get_status(address, &ws, UPGRADE).await;
        assert_eq!(status, 401, "{reason:?}: {body}");
        let bearer = format!("Authorization: Bearer {token}\r\n");
        assert_eq!(get_status(address, "/events?user=7", &bearer).await.0, 401);
        let refused = get(&server.stats.client_auth_refusals[reason.index()]);
        assert_eq!(refused, 2, "{reason:?}");
    }
    let mut ws = ws(&server, &format!("user=7&token={good}")).await;
    assert!(ws_lines(&mut ws, 1).await.starts_with("#OK|"));
    let bearer = format!("Authorization: Bearer {good}\r\n");
    let mut events = EventStream::open(address, "/events?user=7", &bearer).await;
    assert_eq!(events.status, 200);
    assert!(sse_lines(events.events(1).await).starts_with("#OK|"));
    assert_eq!(server.stats.web_refusals(401), 10);
    server.stop().await.unwrap();
}

/// A raw WebSocket client, for the frames a library will not send.
struct RawSocket {
    stream: TcpStream,
    read: Vec<u8>,
}

impl RawSocket {
    /// Opens a WebSocket for `user` and reads its verdict.
    async fn open(server: &TestServer, user: u64) -> RawSocket {
        let before = get(&server.stats.client_connects);
        let mut socket = RawSocket::request(web(server), user).await;
        wait_until("registration", || {
            get(&server.stats.client_connects) > before
        })
        .await;
        socket.upgraded().await;
        socket
    }

    /// Connects and sends the upgrade request for `user`, at once.
    async fn request(address: SocketAddr, user: u64) -> RawSocket {
        let mut stream = within("connect", TcpStream::connect(address))
            .await
            .unwrap();
        let request = format!("GET /ws?user={user} HTTP/1.1\r\nHost: {address}\r\n{UPGRADE}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        RawSocket {
            stream,
            read: Vec::new(),
        }
    }

    /// Reads the `101` and the verdict.
    async fn upgraded(&mut self) {
        let mut buffer = [0u8; 1024];
        let end = loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = within("the 101", self.stream.read(&mut buffer))
                .await
                .unwrap();
            assert!(n > 0, "closed before the 101");
            self.read.extend_from_slice(&buffer[..n]);
        };
        let head = String::from_utf8_lossy(&self.read[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        self.read.drain(..end + 4);
        let (opcode, verdict) = self.frame().await;
        assert_eq!(opcode, 1, "a text verdict");
        assert!(verdict.starts_with(b"#OK|"));
    }

    /// Sends a frame; masked unless `mask` is `None`.
    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            len @ 0..=125 => frame.push(mask_bit | len as u8),
            len @ 126..=65535 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        match mask {
            Some(mask) => {
                frame.extend_from_slice(&mask);
                frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            }
            None => frame.extend_from_slice(payload),
        }
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Reads the next frame from the server: opcode and payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.read) {
                self.read.drain(..used);
                return (opcode, payload);
            }
            let mut buffer = [0u8; 4096];
            let n = within("a frame", self.stream.read(&mut buffer))
                .await
                .unwrap();
            assert!(n > 0, "closed without a frame");
            self.read.extend_from_slice(&buffer[..n]);
        }
    }

    /// Reads frames until one with `opcode`; returns its payload.
    async fn until(&mut self, opcode: u8) -> Vec<u8> {
        loop {
            let (got, payload) = self.frame().await;
            if got == opcode {
                return payload;
            }
        }
    }
}

/// An unmasked server frame at the start of `bytes`, if complete.
fn parse_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    assert_eq!(second & 0x80, 0, "server frames are unmasked");
    let (len, at) = match second & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        len => (len as usize, 2),
    };
    let payload = bytes.get(at..at + len)?.to_vec();
    Some((first & 0x0f, payload, at + len))
}

const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

/// A close frame's code.
fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn web_socket_edges_hold_pings_fragments_sizes_and_closes() {
    let server = server().await;
    let mut source = server.source().await;

    // A ping gets its payload back.
    let mut socket = RawSocket::open(&server, 1).await;
    socket.send(true, 0x9, b"are you there", MASK).await;
    assert_eq!(socket.until(0xA).await, b"are you there");

    // A fragmented message with a ping between its fragments is read (and
    // ignored); the session goes on.
    socket.send(false, 0x1, b"frag", MASK).await;
    socket.send(true, 0x9, b"between", MASK).await;
    socket.send(false, 0x0, b"men", MASK).await;
    socket.send(true, 0x0, b"ted", MASK).await;
    assert_eq!(socket.until(0xA).await, b"between");
    send(&mut source, "1|P|2|1\r\n").await;
    assert_eq!(socket.until(0x1).await, b"1|P|2|1\r\n");

    // 65,536 bytes across two fragments is allowed...
    socket.send(false, 0x2, &[0u8; 32768], MASK).await;
    socket.send(true, 0x0, &[0u8; 32768], MASK).await;
    socket.send(true, 0x9, b"still here", MASK).await;
    assert_eq!(socket.until(0xA).await, b"still here");
    // ... one byte more closes with 1009.
    socket.send(false, 0x2, &[0u8; 32768], MASK).await;
    socket.send(true, 0x0, &[0u8; 32769], MASK).await;
    assert_eq!(close_code(&socket.until(0x8).await), 1009);

    // An unmasked frame is a protocol error: 1002.
    let mut socket = RawSocket::open(&server, 1).await;
    socket.send(true, 0x1, b"unmasked", None).await;
    assert_eq!(close_code(&socket.until(0x8).await), 1002);

    // A close gets a close back, then the connection ends.
    let mut socket = RawSocket::open(&server, 1).await;
    socket.send(true, 0x8, &1000u16.to_be_bytes(), MASK).await;
    assert_eq!(close_code(&socket.until(0x8).await), 1000);
    let mut rest = Vec::new();
    within("the end", socket.stream.read_to_end(&mut rest))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_web_socket_that_never_reads_is_cut_off_as_a_slow_consumer() {
    let server = server_with(Config {
        max_client_buffer_bytes: 64 * 1024,
        resume_buffer_bytes: 32 * 1024,
        client_send_buffer_bytes: 4096,
        checkpoint_interval_ms: 0,
        ..Config::default()
    })
    .await;
    let _reader_that_never_reads = RawSocket::open(&server, 1).await;
    let mut source = server.source().await;
    // Broadcasts until the writer falls behind (the kernel's buffers
    // absorb the first few MiB), at most 2M.
    let mut seq = 0u64;
    while server.stats.disconnects(DisconnectReason::SlowConsumer) == 0 {
        assert!(seq < 2_000_000, "no slow consumer after {seq} broadcasts");
        let mut batch = String::new();
        for _ in 0..10_000 {
            seq += 1;
            batch.push_str(&format!("{seq}|B\r\n"));
        }
        send(&mut source, &batch).await;
        server.delivered(seq).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_web_sockets_at_once_each_get_a_broadcast() {
    // 2,000 sockets on each side, and the rest.
    allow_open_files(4400);
    let server = server().await;
    let address = web(&server);
    // Each connection sends its request as it connects: none is idle.
    let mut sockets = Vec::new();
    for user in 0..2000 {
        sockets.push(RawSocket::request(address, user).await);
    }
    wait_until("2,000 registrations", || {
        get(&server.stats.client_connects) == 2000
    })
    .await;
    for socket in &mut sockets {
        socket.upgraded().await;
    }
    let mut source = server.source().await;
    send(&mut source, "1|B\r\n").await;
    for socket in &mut sockets {
        assert_eq!(socket.until(0x1).await, b"1|B\r\n");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_lock_the_web_listener_out() {
    allow_open_files(2400);
    let server = server().await;
    let address = web(&server);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            within("idle connect", TcpStream::connect(address))
                .await
                .unwrap(),
        );
    }
    let (status, page) = get_status(address, "/", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    // The listener closes an idle one itself.
    let mut rest = Vec::new();
    within("closed by the server", idle[0].read_to_end(&mut rest))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_browser_that_leaves_an_event_stream_is_unregistered_at_once() {
    let server = server().await;
    let before = get(&server.stats.client_connects);
    let mut events = EventStream::open(web(&server), "/events?user=7", "").await;
    wait_until("registration", || {
        get(&server.stats.client_connects) > before
    })
    .await;
    assert!(sse_lines(events.events(1).await).starts_with("#OK|"));
    assert_eq!(get(&server.stats.clients_connected), 1);
    drop(events);
    // Nothing is sent to an idle stream: the server notices the close
    // itself, not at its next keep-alive.
    wait_until("unregistered", || get(&server.stats.clients_connected) == 0).await;
    assert_eq!(server.stats.disconnects(DisconnectReason::Normal), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_fault_reset_ends_an_event_stream_after_its_lines_and_it_resumes() {
    let server = server_with(Config {
        checkpoint_interval_ms: 0,
        fault_reset_every: 3,
        ..Config::default()
    })
    .await;
    let mut source = server.source().await;
    let broadcasts: String = (1..=10).map(|seq| format!("{seq}|B\r\n")).collect();
    let mut stream = String::new();
    let mut after = 0;
    // Each connection gets its verdict and three lines, then ends; the
    // next resumes after the last of them, the burst already waiting.
    for connection in 0..3 {
        let before = get(&server.stats.client_connects);
        let resume = match connection {
            0 => String::new(),
            _ => format!("Last-Event-ID: {stream}:{after}\r\n"),
        };
        let mut events = EventStream::open(web(&server), "/events?user=1", &resume).await;
        wait_until("registration", || {
            get(&server.stats.client_connects) > before
        })
        .await;
        if connection == 0 {
            send(&mut source, &broadcasts).await;
        }
        let mut rest = Vec::new();
        within("the reset", events.stream.read_to_end(&mut rest))
            .await
            .unwrap();
        events.raw.extend_from_slice(&rest);
        events.dechunk();
        let lines = sse_lines(&events.body);
        let verdict = lines.lines().next().unwrap().to_owned();
        stream = verdict.split('|').nth(1).unwrap().to_owned();
        let expected: String = (after + 1..=after + 3)
            .map(|seq| format!("{seq}|B\r\n"))
            .collect();
        assert_eq!(lines, format!("#OK|{stream}|{after}\r\n{expected}"));
        after += 3;
    }
    assert_eq!(server.stats.disconnects(DisconnectReason::FaultReset), 3);
    server.stop().await.unwrap();
}
