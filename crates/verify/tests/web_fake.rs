//! The verifier's web transports (`transport=ws|sse`) against a fake web
//! listener, correct or with one deliberate fault.
//!
//! The fake speaks the wire of web-wire.md as simply as it can: one lock
//! over the follower graph, the sessions and the connections, so a
//! connection's verdict, replay and live lines are queued in order; every
//! line of a session kept for good (a run is a few thousand events), so a
//! resume is always complete; a checkpoint to every connection every
//! [`CHECKPOINT_EVERY`] events, its count and CRC-32 kept by the
//! connection's writer over exactly what it wrote. Optionally it resets
//! (RST) each connection after every `reset_every` lines written on it,
//! like the server's `faultResetEvery`: a count of lines, not a time, so
//! the resumes happen on every run.
//!
//! Its SSE body is chunked at sizes that cycle through 1, 3, 7, 64 and 4096
//! bytes, so chunk boundaries fall everywhere: inside field names, values,
//! terminators and the chunk framing of the next write.
//!
//! A fault strikes once, on the first connection of a client (never the
//! probe's: a user no event names) where it can, and it can on every run:
//! the opening broadcasts reach every client before anything else, and the
//! stream goes on long after. So each fault test asserts the failure that
//! names it, never a timing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use followermaze_protocol::auth::Key;
use followermaze_protocol::resume::{write_checkpoint, write_verdict, StreamId, Verdict};
use followermaze_protocol::{parse_event, EventKind, Seq, UserId};
use followermaze_verify::{
    run, AuthSecret, CheckpointProblem, Failure, LogLevel, Report, ResumeStats, Transport,
    VerifyConfig,
};
use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Users events name; the clients are users of these.
const USERS: u32 = 10;

/// A checkpoint goes to every connection after every this many events.
const CHECKPOINT_EVERY: Seq = 97;

/// The fault [`Fault::MissingLine`] leaves out this private message to a
/// client (counting those to clients only).
const MISSING_PRIVATE: u64 = 5;

/// Upper bound for any one verifier run in these tests.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What the fake does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing.
    None,
    /// WebSocket: a message that ends in the middle of a line.
    CutLine,
    /// WebSocket: a binary message.
    Binary,
    /// A private message to a client never sent (nor kept for a resume).
    MissingLine,
    /// SSE: an event line whose id is not its sequence number.
    WrongId,
    /// SSE: checkpoints whose CRC-32 covers the lines as `data + "\n"`,
    /// not as the wire says (`data + "\r\n"`, as rebuilt).
    CrcOverLf,
    /// SSE: a chunk without the `\r\n` after its data.
    BrokenChunk,
}

/// How the fake behaves.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// `ws` or `sse`.
    transport: Transport,
    /// What it does wrong.
    fault: Fault,
    /// Reset each connection after every this many lines written on it.
    reset_every: Option<u64>,
    /// Refuse (401) a connection without a token signed with this.
    secret: Option<&'static str>,
    /// At the first event, end every session and close every connection,
    /// as our server does when a source starts a new stream: what a
    /// resumable probe meets on a long-lived server.
    new_stream_closes: bool,
}

impl Options {
    fn correct(transport: Transport) -> Options {
        Options {
            transport,
            fault: Fault::None,
            reset_every: None,
            secret: None,
            new_stream_closes: false,
        }
    }

    fn faulty(transport: Transport, fault: Fault) -> Options {
        Options {
            fault,
            ..Options::correct(transport)
        }
    }
}

/// What a connection's writer is given, in order.
#[derive(Debug)]
enum Out {
    /// The verdict, `#OK|s|seq\r\n`, and its seq.
    Verdict(Vec<u8>, Seq),
    /// An event line and its seq.
    Line(Arc<[u8]>, Seq),
    /// A checkpoint at this position.
    Checkpoint(Seq),
}

/// A session's lines, each with its sequence number, in order.
type Log = Vec<(Seq, Arc<[u8]>)>;

/// Everything behind the one lock.
struct State {
    /// The fake's one stream id.
    stream: StreamId,
    /// The last event routed.
    position: Seq,
    /// Followers of each user.
    followers: HashMap<UserId, HashSet<UserId>>,
    /// Every line of each session (each user that connected), in order.
    sessions: HashMap<UserId, Log>,
    /// Open connections: their user and queue.
    connections: HashMap<u64, (UserId, mpsc::UnboundedSender<Out>)>,
    /// The next connection's id.
    next_id: u64,
    /// Whether the fault has yet to strike.
    fault_pending: bool,
    /// Private messages to clients routed so far.
    privates: u64,
    /// Connections the fake reset.
    resets: u64,
    /// Tokens checked and accepted.
    tokens: u64,
    /// Connections of each user.
    connected: HashMap<UserId, u64>,
    /// Connections of each user to each web listener, by its index.
    listeners: HashMap<(usize, UserId), u64>,
}

impl State {
    /// The users `kind` concerns, the graph updated; `None` for everyone.
    fn recipients(&mut self, kind: EventKind) -> Option<Vec<UserId>> {
        match kind {
            EventKind::Follow { from, to } => {
                self.followers.entry(to).or_default().insert(from);
                Some(vec![to])
            }
            EventKind::Unfollow { from, to } => {
                self.followers.entry(to).or_default().remove(&from);
                Some(Vec::new())
            }
            EventKind::Broadcast => None,
            EventKind::Private { to, .. } => Some(vec![to]),
            EventKind::Status { from } => Some(
                self.followers
                    .get(&from)
                    .map(|followers| followers.iter().copied().collect())
                    .unwrap_or_default(),
            ),
        }
    }

    /// Routes event `seq` to its sessions and their connections, and every
    /// [`CHECKPOINT_EVERY`] events a checkpoint to every connection.
    fn route(&mut self, seq: Seq, kind: EventKind, raw: &[u8], options: Options) {
        let fault = options.fault;
        if seq == 1 && options.new_stream_closes {
            // Each writer writes what it was given, then closes.
            self.connections.clear();
            self.sessions.clear();
        }
        let to = self.recipients(kind);
        self.position = seq;
        let mut users: Vec<UserId> = match to {
            Some(users) => users
                .into_iter()
                .filter(|user| self.sessions.contains_key(user))
                .collect(),
            None => self.sessions.keys().copied().collect(),
        };
        if let EventKind::Private { to, .. } = kind {
            if to <= UserId::from(USERS) && self.sessions.contains_key(&to) {
                self.privates += 1;
                if fault == Fault::MissingLine
                    && self.fault_pending
                    && self.privates == MISSING_PRIVATE
                {
                    self.fault_pending = false;
                    users.clear();
                }
            }
        }
        let line: Arc<[u8]> = Arc::from(raw);
        for user in users {
            self.sessions
                .get_mut(&user)
                .expect("a session")
                .push((seq, line.clone()));
            for (owner, tx) in self.connections.values() {
                if *owner == user {
                    // A writer that has ended is detached right after.
                    let _ = tx.send(Out::Line(line.clone(), seq));
                }
            }
        }
        if seq % CHECKPOINT_EVERY == 0 {
            for (_, tx) in self.connections.values() {
                let _ = tx.send(Out::Checkpoint(seq));
            }
        }
    }

    /// A connection of `user`, resuming `after` this stream's position if
    /// it says so: its verdict and replay are queued at once, live lines
    /// follow.
    fn attach(&mut self, user: UserId, after: Option<Seq>) -> (u64, mpsc::UnboundedReceiver<Out>) {
        *self.connected.entry(user).or_default() += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id;
        self.next_id += 1;
        let log = self.sessions.entry(user).or_default();
        let at = after.unwrap_or(self.position);
        let mut verdict = Vec::new();
        write_verdict(&mut verdict, Verdict::Ok, &self.stream, at);
        let _ = tx.send(Out::Verdict(verdict, at));
        for (seq, line) in log.iter().filter(|(seq, _)| *seq > at) {
            let _ = tx.send(Out::Line(line.clone(), *seq));
        }
        self.connections.insert(id, (user, tx));
        (id, rx)
    }

    /// Whether the fault may strike on a connection of `user` now, and if
    /// so, that it has.
    fn strike(&mut self, user: UserId) -> bool {
        let strikes = self.fault_pending && user <= UserId::from(USERS);
        if strikes {
            self.fault_pending = false;
        }
        strikes
    }
}

/// The running fake: its ports and its state.
struct Fake {
    events: SocketAddr,
    /// The web listener.
    web: SocketAddr,
    /// A second one, serving the same sessions (a cluster's other gateway).
    web2: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Fake {
    async fn start(options: Options) -> Fake {
        let events = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web2 = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let state = Arc::new(Mutex::new(State {
            stream: StreamId::parse(b"fake1").expect("a stream id"),
            position: 0,
            followers: HashMap::new(),
            sessions: HashMap::new(),
            connections: HashMap::new(),
            next_id: 0,
            fault_pending: options.fault != Fault::None,
            privates: 0,
            resets: 0,
            tokens: 0,
            connected: HashMap::new(),
            listeners: HashMap::new(),
        }));
        let addresses = (
            events.local_addr().expect("an address"),
            web.local_addr().expect("an address"),
            web2.local_addr().expect("an address"),
        );
        let source_state = state.clone();
        let source = tokio::spawn(async move {
            while let Ok((stream, _)) = events.accept().await {
                serve_source(stream, &source_state, options).await;
            }
        });
        let mut tasks = vec![source];
        for (index, listener) in [web, web2].into_iter().enumerate() {
            let web_state = state.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let client = serve_client(stream, web_state.clone(), (index, options));
                    tokio::spawn(client);
                }
            }));
        }
        Fake {
            events: addresses.0,
            web: addresses.1,
            web2: addresses.2,
            state,
            tasks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }
}

/// Reads events (after an `#AUTH` line, if any), orders them and routes
/// them.
async fn serve_source(stream: TcpStream, state: &Mutex<State>, options: Options) {
    let mut reader = BufReader::new(stream);
    let mut parked: BTreeMap<Seq, (EventKind, Vec<u8>)> = BTreeMap::new();
    let mut next: Seq = 1;
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok((seq, kind)) = parse_event(&line) else {
            continue;
        };
        parked.insert(seq, (kind, line));
        let mut state = state.lock().expect("not poisoned");
        while let Some((kind, raw)) = parked.remove(&next) {
            state.route(next, kind, &raw, options);
            next += 1;
        }
    }
}

/// The value of `name` in `query` (`a=1&b=2`).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// Whether `query`'s token is one for `user` signed with `secret`, if
/// there is a secret.
fn token_ok(query: &str, user: &str, secret: Option<&str>) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    let token = query_value(query, "token").unwrap_or("");
    Key::new(secret.as_bytes()).check(token.as_bytes(), user) == Ok(())
}

/// One web connection: its handshake, then its writer until it ends.
async fn serve_client(
    stream: TcpStream,
    state: Arc<Mutex<State>>,
    (listener, options): (usize, Options),
) {
    let _ = stream.set_nodelay(true);
    let connection = match options.transport {
        Transport::Ws => ws_handshake(stream, &state, options).await,
        _ => sse_handshake(stream, &state, options).await,
    };
    let Some((link, user, (id, rx))) = connection else {
        return;
    };
    *state
        .lock()
        .expect("not poisoned")
        .listeners
        .entry((listener, user))
        .or_default() += 1;
    let stream_id = state.lock().expect("not poisoned").stream;
    let mut writer = Writer {
        link,
        user,
        stream: stream_id,
        options,
        count: 0,
        crc: crc32fast::Hasher::new(),
        crc_lf: crc32fast::Hasher::new(),
        lines: 0,
        chunks: 0,
        started: false,
    };
    let reset = writer.run(rx, &state).await;
    let mut state = state.lock().expect("not poisoned");
    state.resets += u64::from(reset);
    state.connections.remove(&id);
}

/// The connection of `user` resuming after `after`, if it says so,
/// attached: the server's answer is not out yet, so nothing the client
/// does after it can come first.
fn attach(
    state: &Mutex<State>,
    options: Options,
    user: UserId,
    after: Option<Seq>,
) -> (u64, mpsc::UnboundedReceiver<Out>) {
    let mut state = state.lock().expect("not poisoned");
    if options.secret.is_some() {
        state.tokens += 1;
    }
    state.attach(user, after)
}

/// A connection attached: its id and queue.
type Attached = (u64, mpsc::UnboundedReceiver<Out>);

/// A connection's transport after its handshake.
enum Link {
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Sse(TcpStream),
}

/// The WebSocket upgrade: the user and `after` (with `stream`) from the
/// query; 401 without a good token when there is a secret.
async fn ws_handshake(
    stream: TcpStream,
    state: &Mutex<State>,
    options: Options,
) -> Option<(Link, UserId, Attached)> {
    let mut query = String::new();
    let mut attached = None;
    // The library's callback type: its error is the refusal it sends.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        query = request.uri().query().unwrap_or("").to_owned();
        let user = query_value(&query, "user").unwrap_or("");
        if token_ok(&query, user, options.secret) {
            if let Ok(user) = user.parse() {
                let after = query_value(&query, "after").and_then(|after| after.parse().ok());
                attached = Some((user, attach(state, options, user, after)));
            }
            return Ok(response);
        }
        let refusal: ErrorResponse = tokio_tungstenite::tungstenite::http::Response::builder()
            .status(401)
            .body(Some("bad token".to_owned()))
            .expect("a response");
        Err(refusal)
    };
    let accepted = tokio_tungstenite::accept_hdr_async(stream, callback).await;
    let (user, attached) = attached?;
    match accepted {
        Ok(ws) => Some((Link::Ws(Box::new(ws)), user, attached)),
        Err(_) => {
            state
                .lock()
                .expect("not poisoned")
                .connections
                .remove(&attached.0);
            None
        }
    }
}

/// The SSE request: the user from the query, `after` from
/// `Last-Event-ID: s:after`; 401 without a good token when there is a
/// secret; then the response head.
async fn sse_handshake(
    mut stream: TcpStream,
    state: &Mutex<State>,
    options: Options,
) -> Option<(Link, UserId, Attached)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(&head).ok()?;
    let (_, query) = request.path?.split_once('?')?;
    let user = query_value(query, "user")?;
    if !token_ok(query, user, options.secret) {
        let refusal = "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\n\
                       content-length: 11\r\n\r\nbad token\r\n";
        let _ = stream.write_all(refusal.as_bytes()).await;
        return None;
    }
    let user = user.parse().ok()?;
    let after = request
        .headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("last-event-id"))
        .and_then(|header| std::str::from_utf8(header.value).ok())
        .and_then(|value| value.split_once(':'))
        .and_then(|(_, after)| after.parse().ok());
    let attached = attach(state, options, user, after);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        state
            .lock()
            .expect("not poisoned")
            .connections
            .remove(&attached.0);
        return None;
    }
    Some((Link::Sse(stream), user, attached))
}

/// One connection's writer: what it wrote, for checkpoints and resets.
struct Writer {
    link: Link,
    user: UserId,
    stream: StreamId,
    options: Options,
    /// Event lines written since the verdict.
    count: u64,
    /// Their CRC-32, as the wire says.
    crc: crc32fast::Hasher,
    /// Their CRC-32 with `\n` for `\r\n` ([`Fault::CrcOverLf`]).
    crc_lf: crc32fast::Hasher,
    /// Event lines written, for `reset_every`.
    lines: u64,
    /// SSE chunks written, for their sizes.
    chunks: usize,
    /// Whether the first SSE event (with `retry`) is out.
    started: bool,
}

/// A record to send: its line (terminator included) and position, and
/// whether it is an event line.
struct Record {
    line: Vec<u8>,
    seq: Seq,
    kind: RecordKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordKind {
    Verdict,
    Line,
    Checkpoint,
}

impl Writer {
    /// Writes what is queued, what is ready at once together, until the
    /// queue or the connection ends; returns whether it reset the
    /// connection (`reset_every`).
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Out>, state: &Mutex<State>) -> bool {
        while let Some(first) = rx.recv().await {
            let mut records = Vec::new();
            let mut reset = false;
            let mut next = Some(first);
            while let Some(out) = next.take() {
                let record = self.record(out, state);
                let line = record.kind == RecordKind::Line;
                records.push(record);
                if line
                    && self
                        .options
                        .reset_every
                        .is_some_and(|n| self.lines % n == 0)
                {
                    reset = true;
                    break;
                }
                next = rx.try_recv().ok();
            }
            let sent = match &self.link {
                Link::Ws(_) => self.send_ws(&records, state).await,
                Link::Sse(_) => self.send_sse(&records, state).await,
            };
            if !sent {
                return false;
            }
            if reset {
                let socket = match &self.link {
                    Link::Ws(ws) => ws.get_ref(),
                    Link::Sse(socket) => socket,
                };
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
                return true;
            }
        }
        false
    }

    /// `out` as a record, counted.
    fn record(&mut self, out: Out, state: &Mutex<State>) -> Record {
        match out {
            Out::Verdict(line, seq) => Record {
                line,
                seq,
                kind: RecordKind::Verdict,
            },
            Out::Line(line, seq) => {
                self.count += 1;
                self.lines += 1;
                self.crc.update(&line);
                self.crc_lf.update(&line[..line.len() - 2]);
                self.crc_lf.update(b"\n");
                Record {
                    line: line.to_vec(),
                    seq,
                    kind: RecordKind::Line,
                }
            }
            Out::Checkpoint(seq) => {
                // Over no line, both CRCs are those of nothing.
                let wrong = self.options.fault == Fault::CrcOverLf
                    && self.count > 0
                    && state.lock().expect("not poisoned").strike(self.user);
                let crc = if wrong { &self.crc_lf } else { &self.crc };
                let mut line = Vec::new();
                write_checkpoint(
                    &mut line,
                    &self.stream,
                    seq,
                    self.count,
                    crc.clone().finalize(),
                );
                Record {
                    line,
                    seq,
                    kind: RecordKind::Checkpoint,
                }
            }
        }
    }

    /// Whether the fault `fault` strikes on this batch (it holds a line).
    fn strikes(&self, fault: Fault, records: &[Record], state: &Mutex<State>) -> bool {
        self.options.fault == fault
            && records.iter().any(|record| record.kind == RecordKind::Line)
            && state.lock().expect("not poisoned").strike(self.user)
    }

    /// One text message of the records back to back (the faults: two, the
    /// first ending in the middle of a line; or a binary one).
    async fn send_ws(&mut self, records: &[Record], state: &Mutex<State>) -> bool {
        let payload: Vec<u8> = records
            .iter()
            .flat_map(|record| record.line.clone())
            .collect();
        let text = |bytes: &[u8]| Message::text(String::from_utf8(bytes.to_vec()).expect("ASCII"));
        let messages = if self.strikes(Fault::CutLine, records, state) {
            let first = records
                .iter()
                .position(|record| record.kind == RecordKind::Line)
                .expect("a line");
            let before: usize = records[..first]
                .iter()
                .map(|record| record.line.len())
                .sum();
            let cut = before + records[first].line.len() / 2;
            vec![text(&payload[..cut]), text(&payload[cut..])]
        } else if self.strikes(Fault::Binary, records, state) {
            vec![Message::binary(payload)]
        } else {
            vec![text(&payload)]
        };
        let Link::Ws(ws) = &mut self.link else {
            unreachable!("a WebSocket writer");
        };
        for message in messages {
            if ws.send(message).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The records as events, in chunks of cycling sizes, one write.
    async fn send_sse(&mut self, records: &[Record], state: &Mutex<State>) -> bool {
        let wrong_id = self.strikes(Fault::WrongId, records, state);
        let mut body = Vec::new();
        if !self.started {
            body.extend_from_slice(b"retry: 1000\n");
            self.started = true;
        }
        let mut struck = false;
        for record in records {
            let data = &record.line[..record.line.len() - 2];
            let mut seq = record.seq;
            if wrong_id && !struck && record.kind == RecordKind::Line {
                seq += 1;
                struck = true;
            }
            match record.kind {
                RecordKind::Verdict => body.extend_from_slice(b"event: verdict\n"),
                RecordKind::Checkpoint => body.extend_from_slice(b"event: checkpoint\n"),
                RecordKind::Line => {}
            }
            body.extend_from_slice(format!("id: {}:{seq}\ndata: ", self.stream).as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\n\n");
            if record.kind == RecordKind::Checkpoint {
                body.extend_from_slice(b": keep-alive\n\n");
            }
        }
        let broken = self.strikes(Fault::BrokenChunk, records, state);
        let mut coded = Vec::new();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let size = [1, 3, 7, 64, 4096][self.chunks % 5].min(rest.len());
            self.chunks += 1;
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            coded.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            coded.extend_from_slice(chunk);
            if !(broken && rest.is_empty()) {
                coded.extend_from_slice(b"\r\n");
            }
        }
        let Link::Sse(socket) = &mut self.link else {
            unreachable!("an SSE writer");
        };
        socket.write_all(&coded).await.is_ok()
    }
}

/// A small resumable run over `transport` against `fake`: few users, each
/// with many lines.
fn web_run(fake: &Fake, transport: Transport) -> VerifyConfig {
    VerifyConfig {
        host: "127.0.0.1".into(),
        event_listener_port: fake.events.port(),
        web_port: fake.web.port(),
        transport,
        total_events: 4_000,
        concurrency_level: 4,
        number_of_users: USERS,
        timeout: Duration::from_secs(5),
        max_event_source_batch_size: 20,
        log_interval: Duration::ZERO,
        log_level: LogLevel::Error,
        metrics_port: 0,
        resumable: true,
        ..VerifyConfig::default()
    }
}

async fn verify(config: VerifyConfig) -> Result<Report, Failure> {
    tokio::time::timeout(RUN_LIMIT, run(config))
        .await
        .expect("the verifier finishes within its time limit")
}

fn resume_stats(report: &Report) -> ResumeStats {
    report
        .resume
        .as_ref()
        .expect("a web run is resumable")
        .stats
}

#[tokio::test]
async fn a_correct_web_listener_passes_over_both_transports() {
    for transport in [Transport::Ws, Transport::Sse] {
        let fake = Fake::start(Options::correct(transport)).await;
        let report = verify(web_run(&fake, transport))
            .await
            .unwrap_or_else(|failure| panic!("{transport:?}: {failure}"));
        assert_eq!(report.transport, transport);
        assert!(report.notifications > 500, "{}", report.notifications);
        // One connection each, open before the main stream: every
        // checkpoint reaches every client.
        let stats = resume_stats(&report);
        assert_eq!(stats.connections, 4, "{stats:?}");
        assert!(
            stats.checkpoints >= 4 * (3_000 / CHECKPOINT_EVERY),
            "{stats:?}"
        );
        let text = report.to_string();
        match transport {
            Transport::Sse => {
                assert!(!report.byte_exact());
                assert!(report.banner().contains("SSE: line-exact, not byte-exact"));
                assert!(text.contains("all checked line for line"), "{text}");
            }
            _ => {
                assert!(report.byte_exact());
                assert!(
                    text.contains("all checked byte for byte (the WebSocket"),
                    "{text}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_correct_web_listener_passes_with_its_resets() {
    for transport in [Transport::Ws, Transport::Sse] {
        let fake = Fake::start(Options {
            reset_every: Some(50),
            ..Options::correct(transport)
        })
        .await;
        let report = verify(web_run(&fake, transport))
            .await
            .unwrap_or_else(|failure| panic!("{transport:?}: {failure}"));
        // Every client is owed far more than 50 lines, and nothing else
        // ends a connection: each one's first connection is reset, and it
        // resumes with #OK.
        let stats = resume_stats(&report);
        assert!(fake.lock().resets >= 4, "{}", fake.lock().resets);
        assert!(stats.server_drops >= 4, "{stats:?}");
        assert!(stats.resumes_ok >= 4 && stats.resumes_gap == 0, "{stats:?}");
    }
}

#[tokio::test]
async fn a_correct_web_listener_passes_however_its_clients_drop() {
    for transport in [Transport::Ws, Transport::Sse] {
        let fake = Fake::start(Options {
            reset_every: Some(50),
            ..Options::correct(transport)
        })
        .await;
        // Clean closes (a WebSocket close frame first), resets and mid-line
        // closes, whenever they fall: a correct server passes whatever
        // they hit.
        let config = VerifyConfig {
            killswitch: Duration::from_millis(20),
            ..web_run(&fake, transport)
        };
        let report = verify(config)
            .await
            .unwrap_or_else(|failure| panic!("{transport:?}: {failure}"));
        assert_eq!(resume_stats(&report).resumes_gap, 0);
    }
}

/// The failure of a run over `transport` against a fake with `fault`.
async fn caught(transport: Transport, fault: Fault) -> Failure {
    let fake = Fake::start(Options::faulty(transport, fault)).await;
    let failure = verify(web_run(&fake, transport))
        .await
        .expect_err("the fault is caught");
    assert!(!fake.lock().fault_pending, "the fault struck");
    failure
}

#[tokio::test]
async fn a_websocket_message_that_cuts_a_line_is_caught() {
    let failure = caught(Transport::Ws, Fault::CutLine).await;
    assert!(matches!(failure, Failure::WebWire { .. }), "{failure}");
    assert!(
        failure.to_string().contains("does not end a line"),
        "{failure}"
    );
}

#[tokio::test]
async fn a_binary_websocket_message_is_caught() {
    let failure = caught(Transport::Ws, Fault::Binary).await;
    assert!(matches!(failure, Failure::WebWire { .. }), "{failure}");
    assert!(failure.to_string().contains("binary"), "{failure}");
}

#[tokio::test]
async fn a_missing_line_is_caught_over_both_transports() {
    for transport in [Transport::Ws, Transport::Sse] {
        let failure = caught(transport, Fault::MissingLine).await;
        assert!(
            matches!(failure, Failure::Missing { .. }),
            "{transport:?}: {failure}"
        );
    }
}

#[tokio::test]
async fn an_sse_event_whose_id_is_not_its_line_is_caught() {
    let failure = caught(Transport::Sse, Fault::WrongId).await;
    assert!(matches!(failure, Failure::WebWire { .. }), "{failure}");
    assert!(failure.to_string().contains("its id must be"), "{failure}");
}

#[tokio::test]
async fn an_sse_checkpoint_must_cover_the_lines_as_rebuilt() {
    let failure = caught(Transport::Sse, Fault::CrcOverLf).await;
    assert!(
        matches!(
            failure,
            Failure::BadCheckpoint {
                problem: CheckpointProblem::Crc { .. },
                ..
            }
        ),
        "{failure}"
    );
}

#[tokio::test]
async fn a_broken_chunk_is_caught() {
    let failure = caught(Transport::Sse, Fault::BrokenChunk).await;
    assert!(matches!(failure, Failure::WebWire { .. }), "{failure}");
    assert!(failure.to_string().contains("chunked body"), "{failure}");
}

#[tokio::test]
async fn web_addresses_spread_the_clients_and_each_reconnect_goes_to_the_next() {
    for transport in [Transport::Ws, Transport::Sse] {
        let fake = Fake::start(Options {
            reset_every: Some(50),
            ..Options::correct(transport)
        })
        .await;
        let config = VerifyConfig {
            web_addresses: vec![fake.web.to_string(), fake.web2.to_string()],
            // Not where the clients go.
            web_port: 1,
            ..web_run(&fake, transport)
        };
        let report = verify(config)
            .await
            .unwrap_or_else(|failure| panic!("{transport:?}: {failure}"));
        // Each client's first connection is reset after 50 lines: client
        // i is on listener i mod 2 first, then on the other.
        let state = fake.lock();
        for (index, client) in report.per_client.iter().enumerate() {
            let user = UserId::from(client.user);
            for listener in [index % 2, (index + 1) % 2] {
                assert!(
                    state.listeners.get(&(listener, user)) >= Some(&1),
                    "{transport:?}: client {index} never on listener {listener}: {:?}",
                    state.listeners
                );
            }
        }
    }
}

#[tokio::test]
async fn a_probe_whose_session_a_new_stream_ends_connects_again() {
    for transport in [Transport::Ws, Transport::Sse] {
        let fake = Fake::start(Options {
            new_stream_closes: true,
            ..Options::correct(transport)
        })
        .await;
        verify(web_run(&fake, transport))
            .await
            .unwrap_or_else(|failure| panic!("{transport:?}: {failure}"));
        // Its first connection got its verdict, and was closed by the
        // first broadcast; the second one heard it.
        let probe = UserId::from(USERS + 1);
        assert_eq!(fake.lock().connected.get(&probe), Some(&2), "{transport:?}");
    }
}

#[tokio::test]
async fn web_clients_pass_their_tokens_and_a_refusal_names_its_status() {
    const SECRET: &str = "the web test's secret";
    for transport in [Transport::Ws, Transport::Sse] {
        let fake = Fake::start(Options {
            secret: Some(SECRET),
            reset_every: Some(50),
            ..Options::correct(transport)
        })
        .await;
        let config = VerifyConfig {
            auth_secret: AuthSecret::new(SECRET),
            ..web_run(&fake, transport)
        };
        let report = verify(config.clone())
            .await
            .unwrap_or_else(|failure| panic!("{transport:?}: {failure}"));
        assert!(report.authenticated);
        let stats = resume_stats(&report);
        // The probe, the first connections and every resume: each one's
        // token checked.
        assert!(stats.resumes_ok > 0, "{stats:?}");
        assert!(
            fake.lock().tokens > stats.connections,
            "{} tokens for {} connections",
            fake.lock().tokens,
            stats.connections
        );
        let wrong = VerifyConfig {
            auth_secret: AuthSecret::new("another secret"),
            ..config
        };
        let failure = verify(wrong).await.expect_err("every token refused");
        let text = failure.to_string();
        assert!(
            text.contains("401 Unauthorized: bad token") && !text.contains("another secret"),
            "{transport:?}: {text}"
        );
    }
}
