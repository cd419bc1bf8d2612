//! The verifier against servers that are right and servers that are wrong,
//! plain and resumable.
//!
//! A verifier that never fails proves nothing, so most of these tests run it
//! against a minimal in-process server with one deliberate fault (a dropped
//! notification, two swapped, a `\n`-only terminator, a duplicate, a stall)
//! and assert the failure names that fault and the event it hit. The same minimal
//! server without a fault must pass, and so must our real server. With
//! `lineEndings=any` the `\n` fault passes too, reported as not byte-exact. Runs are
//! small (a few thousand events) and every await is under a timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use followermaze::graph::router::{Audience, Router};
use followermaze::{Config, Listeners};
use followermaze_protocol::resume::{
    parse_hello, write_checkpoint, write_verdict, Hello, StreamId, Verdict,
};
use followermaze_protocol::{parse_event, parse_user_id, EventKind, Seq, UserId};
use followermaze_verify::{
    run, ByteDiff, CheckpointProblem, ClientRef, ConnectionRef, Failure, LineEndings, LogLevel,
    Profile, Report, ResumeStats, VerdictProblem, VerifyConfig,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Upper bound for any one verifier run in these tests.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A small run's settings against `events` / `clients`.
fn small(events: SocketAddr, clients: SocketAddr) -> VerifyConfig {
    VerifyConfig {
        host: "127.0.0.1".into(),
        event_listener_port: events.port(),
        client_listener_port: clients.port(),
        total_events: 5_000,
        concurrency_level: 20,
        number_of_users: 200,
        random_seed: 666,
        timeout: Duration::from_secs(5),
        max_event_source_batch_size: 100,
        log_interval: Duration::ZERO,
        log_level: LogLevel::Warn,
        profile: Profile::Classic,
        rate: 0,
        // Not whatever may listen on the default port of this machine.
        metrics_port: 0,
        ..VerifyConfig::default()
    }
}

async fn verify(config: VerifyConfig) -> Result<Report, Failure> {
    tokio::time::timeout(RUN_LIMIT, run(config))
        .await
        .expect("the verifier finishes within its time limit")
}

// ---------------------------------------------------------------------------
// A minimal server with an optional fault.

/// What the test server does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing: a correct server.
    None,
    /// Never sends one notification.
    Drop,
    /// Sends one notification after the next one to the same client.
    Swap,
    /// Sends one notification with `\n` instead of `\r\n`.
    BareNewline,
    /// Stops delivering anything from one notification on.
    Stall,
    /// Sends one notification twice.
    Duplicate,
}

/// The fault strikes the notification of this private message (counting
/// only private messages that reach a connected client): well inside the
/// main stream, and to exactly one client, so it is the same event on every
/// run whatever the timing.
const FAULT_AT_PRIVATE: u32 = 20;

/// A client's writer queue. Unbounded: a test server for a few thousand
/// events; nothing here runs long enough for it to matter.
type ClientTx = mpsc::UnboundedSender<Vec<u8>>;

/// The running test server.
struct TestServer {
    events: SocketAddr,
    clients: SocketAddr,
    /// The sequence number the fault hit, once it has.
    faulted: Arc<Mutex<Option<Seq>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn test_server(fault: Fault) -> TestServer {
    let event_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer {
        events: event_listener.local_addr().unwrap(),
        clients: client_listener.local_addr().unwrap(),
        faulted: Arc::new(Mutex::new(None)),
        tasks: tokio::task::JoinSet::new(),
    };
    let registry: Arc<Mutex<HashMap<UserId, Vec<ClientTx>>>> = Arc::default();
    let mut server = server;
    let clients = registry.clone();
    server.tasks.spawn(async move {
        while let Ok((stream, _)) = client_listener.accept().await {
            tokio::spawn(serve_client(stream, clients.clone()));
        }
    });
    let faulted = server.faulted.clone();
    server.tasks.spawn(async move {
        if let Ok((stream, _)) = event_listener.accept().await {
            serve_source(stream, registry, fault, faulted).await;
        }
    });
    server
}

async fn serve_client(stream: TcpStream, registry: Arc<Mutex<HashMap<UserId, Vec<ClientTx>>>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_secs(5), reader.read_until(b'\n', &mut line)).await
    else {
        return;
    };
    let Ok(user) = parse_user_id(&line) else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    registry.lock().unwrap().entry(user).or_default().push(tx);
    while let Some(bytes) = rx.recv().await {
        if write.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Reads events, orders them, routes them with the real router, and sends
/// each line to its audience, applying `fault` once.
async fn serve_source(
    stream: TcpStream,
    registry: Arc<Mutex<HashMap<UserId, Vec<ClientTx>>>>,
    fault: Fault,
    faulted: Arc<Mutex<Option<Seq>>>,
) {
    let mut reader = BufReader::new(stream);
    let mut parked: BTreeMap<Seq, (EventKind, Vec<u8>)> = BTreeMap::new();
    let mut next: Seq = 1;
    let mut router = Router::new(usize::MAX);
    let mut privates = 0u32;
    let mut held: Option<(ClientTx, Vec<u8>)> = None;
    let mut stalled = false;
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
        while let Some((kind, raw)) = parked.remove(&next) {
            let seq = next;
            next += 1;
            let clients = registry.lock().unwrap();
            let audience: Vec<ClientTx> = match router.apply(kind).audience {
                Audience::Nobody => Vec::new(),
                Audience::User(user) => clients.get(&user).cloned().unwrap_or_default(),
                Audience::Everyone => clients.values().flatten().cloned().collect(),
                Audience::Followers(author) => router
                    .followers(author)
                    .filter_map(|user| clients.get(&user))
                    .flatten()
                    .cloned()
                    .collect(),
            };
            drop(clients);
            let strike = matches!(kind, EventKind::Private { .. }) && !audience.is_empty() && {
                privates += 1;
                privates == FAULT_AT_PRIVATE
            };
            if strike {
                *faulted.lock().unwrap() = Some(seq);
            }
            for tx in audience {
                if stalled {
                    continue;
                }
                let mut bytes = raw.clone();
                if strike {
                    match fault {
                        Fault::None => {}
                        Fault::Drop => continue,
                        Fault::BareNewline => {
                            bytes.truncate(bytes.len() - 2);
                            bytes.push(b'\n');
                        }
                        Fault::Swap => {
                            held = Some((tx, bytes));
                            continue;
                        }
                        Fault::Stall => {
                            stalled = true;
                            continue;
                        }
                        Fault::Duplicate => {
                            let _ = tx.send(bytes.clone());
                        }
                    }
                }
                let _ = tx.send(bytes);
                if let Some((target, late)) = held.take() {
                    if target.same_channel(&tx) {
                        let _ = target.send(late);
                    } else {
                        held = Some((target, late));
                    }
                }
            }
        }
    }
}

fn faulted_seq(server: &TestServer) -> Seq {
    server
        .faulted
        .lock()
        .unwrap()
        .expect("the fault struck during the run")
}

// ---------------------------------------------------------------------------
// The verifier fails when it should, and says why.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_minimal_server_passes() {
    let server = test_server(Fault::None).await;
    let report = verify(small(server.events, server.clients))
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(report.events, 5_000);
    assert_eq!(report.clients, 20);
    assert!(report.notifications > 0);
    let _ = faulted_seq(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_notification_is_caught() {
    let server = test_server(Fault::Drop).await;
    let failure = verify(small(server.events, server.clients))
        .await
        .expect_err("a dropped notification must fail the run");
    eprintln!("caught: {failure}");
    let dropped = faulted_seq(&server);
    assert!(
        matches!(failure, Failure::Missing { seq, .. } if seq == dropped),
        "dropped event {dropped}, got: {failure}"
    );
    assert!(failure.to_string().contains(&format!("event {dropped}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_swapped_notifications_are_caught() {
    let server = test_server(Fault::Swap).await;
    let failure = verify(small(server.events, server.clients))
        .await
        .expect_err("swapped notifications must fail the run");
    eprintln!("caught: {failure}");
    let held = faulted_seq(&server);
    assert!(
        matches!(failure, Failure::OutOfOrder { expected_seq, received_seq, .. }
            if expected_seq == held && received_seq > held),
        "held back event {held}, got: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_newline_terminator_is_caught() {
    let server = test_server(Fault::BareNewline).await;
    let failure = verify(small(server.events, server.clients))
        .await
        .expect_err("a changed terminator must fail the run");
    eprintln!("caught: {failure}");
    let changed = faulted_seq(&server);
    assert!(
        matches!(failure, Failure::WrongBytes { seq, diff: ByteDiff::Terminator, .. } if seq == changed),
        "changed event {changed}, got: {failure}"
    );
    assert!(failure.to_string().contains("terminator"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_newline_passes_with_any_line_endings_but_not_as_byte_exact() {
    let server = test_server(Fault::BareNewline).await;
    let mut config = small(server.events, server.clients);
    config.line_endings = LineEndings::Any;
    let report = verify(config)
        .await
        .unwrap_or_else(|failure| panic!("only a terminator differed: {failure}"));
    let _ = faulted_seq(&server);
    // The fault strikes one private message, to a user with one connection.
    assert_eq!(report.reterminated, 1, "{report}");
    assert!(!report.byte_exact());
    let said = "not byte-exact: 1 notification re-terminated";
    assert!(report.banner().contains(said), "{}", report.banner());
    assert!(report.to_string().contains(said), "{report}");
    let per_client: u64 = report.per_client.iter().map(|client| client.bytes).sum();
    assert_eq!(per_client, report.notification_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_notification_is_caught() {
    let server = test_server(Fault::Duplicate).await;
    let failure = verify(small(server.events, server.clients))
        .await
        .expect_err("a duplicate must fail the run");
    eprintln!("caught: {failure}");
    let doubled = faulted_seq(&server);
    assert!(
        matches!(failure, Failure::Unexpected { seq, repeated: true, .. } if seq == doubled),
        "doubled event {doubled}, got: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_delivering_times_out() {
    let server = test_server(Fault::Stall).await;
    let mut config = small(server.events, server.clients);
    config.timeout = Duration::from_millis(1000);
    let failure = verify(config)
        .await
        .expect_err("a stalled server must fail the run");
    eprintln!("caught: {failure}");
    let stalled = faulted_seq(&server);
    assert!(
        matches!(failure, Failure::Timeout { seq, .. } if seq >= stalled),
        "stalled at event {stalled}, got: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_a_server_never_registers_are_named() {
    // The sink accepts everything and delivers nothing.
    let events = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = small(events.local_addr().unwrap(), clients.local_addr().unwrap());
    config.timeout = Duration::from_millis(300);
    let sink = tokio::spawn(followermaze_verify::sink(
        events,
        clients,
        Duration::from_secs(10),
    ));
    let failure = verify(config).await.expect_err("nobody is registered");
    assert!(
        matches!(
            failure,
            Failure::NotRegistered {
                registered: 0,
                clients: 20,
                ..
            }
        ),
        "{failure}"
    );
    let sunk = tokio::time::timeout(Duration::from_secs(10), sink)
        .await
        .expect("the sink ends when the source closes")
        .expect("the sink task does not panic")
        .expect("the sink saw the source");
    assert!(sunk.bytes > 0);
    assert_eq!(sunk.clients, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_reported_with_the_address() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let failure = verify(small(closed, closed))
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(
            failure,
            Failure::NotListening {
                variable: "eventListenerPort",
                ..
            }
        ),
        "{failure}"
    );
    assert!(
        failure.to_string().contains(&closed.to_string()),
        "{failure}"
    );
}

// ---------------------------------------------------------------------------
// A minimal resumable server, correct or with one fault.
//
// It speaks the protocol of README "Resumable sessions" as simply as it can:
// every line concerning a session's user is kept for good (a test run is a
// few thousand events), so a resume is always complete; verdicts, replays
// and live lines are queued under one lock, so nothing is lost or repeated
// at the switch from replay to live; a checkpoint goes to every resumable
// connection every few events, its count and CRC-32 kept by the connection's
// writer over exactly what it wrote. Optionally it resets each resumable
// connection after a number of lines (like the server's `faultResetEvery`),
// forgets sessions as soon as their window is over, or breaks one rule.
//
// A fault that strikes on a resume must strike on every run, however fast
// the build and however loaded the machine: a test whose fault never struck
// passes for the wrong reason. So, until it has struck, the server paces
// itself on the real conditions the fault needs, never on time:
// - when a resumable connection is reset, the source holds the next event
//   until that client has resumed (with [`ResumeFault::OkAfterLoss`], only
//   once the client is owed [`OK_AFTER_LOSS_REPLAY`] lines, and its resume
//   waits for them), so the resume comes while the stream still has lines
//   to come, with a replay of known size;
// - the fault strikes (or arms) on the first resume where it can, and stays
//   pending until it has;
// - the connection it strikes on is never reset by the server, so the
//   client reads what the fault did (a reset could drop it in flight, and
//   the next resume would replay the lines and undo the fault).

/// What the resumable test server does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumeFault {
    /// Nothing: a correct server.
    None,
    /// On one resume, also resends the last line at or below the client's
    /// `<after>`: one line too many at the boundary.
    ReplayOneTooMany,
    /// On one resume, leaves out the first live line after the replay.
    DropFirstLive,
    /// On one resume, answers `#OK` but leaves out the replay's first line.
    OkAfterLoss,
    /// Every checkpoint carries a wrong CRC-32.
    WrongCrc,
    /// Sends its checkpoints to classic connections too.
    ControlToPlain,
}

impl ResumeFault {
    /// Whether it strikes on one resume (and the server paces itself until
    /// it has); the others strike on every checkpoint.
    fn on_a_resume(self) -> bool {
        matches!(
            self,
            ResumeFault::ReplayOneTooMany | ResumeFault::DropFirstLive | ResumeFault::OkAfterLoss
        )
    }

    /// Lines a resume's replay must hold for this fault to strike on it:
    /// `OkAfterLoss` leaves out the first and the second shows the loss on
    /// the same connection at once.
    fn replay_needed(self) -> usize {
        match self {
            ResumeFault::OkAfterLoss => OK_AFTER_LOSS_REPLAY,
            _ => 0,
        }
    }
}

/// Lines `OkAfterLoss` needs in the replay it strikes on: the one it leaves
/// out and one after it.
const OK_AFTER_LOSS_REPLAY: usize = 2;

/// How the resumable test server behaves.
#[derive(Debug, Clone, Copy)]
struct ResumeOptions {
    /// The fault, if any.
    fault: ResumeFault,
    /// Reset a resumable connection after each this many event lines.
    reset_every: Option<u64>,
    /// How long a session outlives its last connection.
    window: Duration,
    /// A checkpoint every this many events applied.
    checkpoint_every: u64,
}

impl ResumeOptions {
    /// A correct server: no fault, no resets, a 30 s window.
    fn correct() -> ResumeOptions {
        ResumeOptions {
            fault: ResumeFault::None,
            reset_every: None,
            window: Duration::from_secs(30),
            checkpoint_every: 97,
        }
    }
}

/// What one connection's writer is given, in order.
enum Out {
    /// A verdict, written as is.
    Verdict(Vec<u8>),
    /// An event line, counted for the checkpoints.
    Line(Vec<u8>),
    /// A checkpoint at this position.
    Checkpoint(Seq),
    /// Reset the connection (`SO_LINGER` 0) once everything before it is
    /// written.
    Reset,
}

/// A connection, as the router sees it.
struct FakeConn {
    /// Tells it apart from the user's other connections.
    id: u64,
    /// Its writer's queue (unbounded: a test server, a few thousand events).
    tx: mpsc::UnboundedSender<Out>,
    /// Whether it sent the resumable handshake.
    resumable: bool,
    /// Reset it after this many event lines; `None`: never (a classic
    /// connection, or the one a fault struck on).
    reset_after: Option<u64>,
    /// Event lines queued to it, replay included.
    lines: u64,
    /// Its reset is queued: it is given nothing more.
    closing: bool,
    /// `DropFirstLive`: leave out the next live line.
    drop_next_live: bool,
}

impl FakeConn {
    /// A connection that is reset after `reset_after` lines, if any.
    fn new(
        id: u64,
        tx: mpsc::UnboundedSender<Out>,
        resumable: bool,
        reset_after: Option<u64>,
    ) -> FakeConn {
        FakeConn {
            id,
            tx,
            resumable,
            reset_after,
            lines: 0,
            closing: false,
            drop_next_live: false,
        }
    }

    /// Queues event line `line`, then its reset if that was its last line.
    /// Returns whether it did reset (nothing queued once it is closing).
    fn send_line(&mut self, line: &[u8]) -> bool {
        if self.closing {
            return false;
        }
        let _ = self.tx.send(Out::Line(line.to_vec()));
        self.lines += 1;
        if self
            .reset_after
            .is_some_and(|every| self.lines % every == 0)
        {
            let _ = self.tx.send(Out::Reset);
            self.closing = true;
        }
        self.closing
    }
}

/// A user's session: every line since it opened.
struct FakeSession {
    /// The lines, in sequence order.
    lines: Vec<(Seq, Vec<u8>)>,
    /// Resumable connections open now.
    open: u32,
    /// When the last one closed.
    idle_since: Option<std::time::Instant>,
    /// The position it was opened at.
    opened_at: Seq,
    /// Lines applied since the server reset one of its connections, until
    /// the next handshake; `None` while the client is not away.
    away: Option<usize>,
}

/// Everything behind the one lock: routing, verdicts and replays all take
/// it, so a connection switches from replay to live between two events.
struct FakeState {
    /// How it behaves.
    options: ResumeOptions,
    /// Its one stream id (it never starts another).
    stream: StreamId,
    /// The last sequence applied.
    position: Seq,
    /// Sessions by user, open or within their window.
    sessions: HashMap<UserId, FakeSession>,
    /// Connections by user, classic and resumable.
    conns: HashMap<UserId, Vec<FakeConn>>,
    /// The next connection id.
    next_id: u64,
    /// The sequence number the fault hit, once it has.
    struck: Option<Seq>,
    /// `DropFirstLive`: a connection is armed.
    armed: bool,
    /// Resumes answered `#OK`.
    resumes_ok: u64,
    /// Resumes answered `#GAP`.
    resumes_gap: u64,
    /// Connections reset after `reset_every` lines.
    resets: u64,
}

impl FakeState {
    /// A server at position 0 with no session.
    fn new(options: ResumeOptions) -> FakeState {
        FakeState {
            options,
            stream: StreamId::from_u64(0x5eed),
            position: 0,
            sessions: HashMap::new(),
            conns: HashMap::new(),
            next_id: 0,
            struck: None,
            armed: false,
            resumes_ok: 0,
            resumes_gap: 0,
            resets: 0,
        }
    }

    /// Whether a fault that strikes on a resume has yet to strike (or, for
    /// `DropFirstLive`, to arm): the server paces itself until it has.
    fn fault_pending(&self) -> bool {
        self.options.fault.on_a_resume() && self.struck.is_none() && !self.armed
    }

    /// Whether the source must hold the next event: the fault is pending
    /// and a client the server reset is owed what the fault needs, so its
    /// resume must come before the stream moves on.
    fn source_held(&self) -> bool {
        let needed = self.options.fault.replay_needed();
        self.fault_pending()
            && self
                .sessions
                .values()
                .any(|session| session.away.is_some_and(|lines| lines >= needed))
    }

    /// Whether `user`'s handshake (`stream`, `after`) may be answered now:
    /// while the fault is pending, a resume waits until its session holds
    /// the replay the fault needs.
    fn resume_ready(&self, user: UserId, stream: Option<StreamId>, after: Seq) -> bool {
        let needed = self.options.fault.replay_needed();
        if !self.fault_pending() || stream.is_none() || needed == 0 {
            return true;
        }
        self.sessions.get(&user).map_or(true, |session| {
            session.lines.iter().filter(|(seq, _)| *seq > after).count() >= needed
        })
    }

    /// Forgets `user`'s session if its window is over.
    fn expire(&mut self, user: UserId) {
        let window = self.options.window;
        if let Some(session) = self.sessions.get(&user) {
            let over = session.open == 0
                && session
                    .idle_since
                    .is_some_and(|since| since.elapsed() >= window);
            if over {
                self.sessions.remove(&user);
            }
        }
    }

    /// A classic handshake: the connection registered for live lines.
    fn attach_classic(&mut self, user: UserId, id: u64, tx: mpsc::UnboundedSender<Out>) {
        let conn = FakeConn::new(id, tx, false, None);
        self.conns.entry(user).or_default().push(conn);
    }

    /// A resumable handshake: the verdict rule, the replay, and the
    /// connection registered for live lines, all at once.
    fn attach(
        &mut self,
        user: UserId,
        stream: Option<StreamId>,
        after: Seq,
        id: u64,
        tx: mpsc::UnboundedSender<Out>,
    ) {
        self.expire(user);
        let position = self.position;
        let existed = self.sessions.contains_key(&user);
        let session = self.sessions.entry(user).or_insert(FakeSession {
            lines: Vec::new(),
            open: 0,
            idle_since: None,
            opened_at: position,
            away: None,
        });
        session.open += 1;
        session.idle_since = None;
        session.away = None;
        let (verdict, seq) = match stream {
            None => (Verdict::Ok, position),
            Some(stream) if stream != self.stream || after > position || !existed => {
                (Verdict::Gap, position)
            }
            Some(_) => (Verdict::Ok, after),
        };
        let resume = stream.is_some();
        match (resume, verdict) {
            (true, Verdict::Ok) => self.resumes_ok += 1,
            (true, Verdict::Gap) => self.resumes_gap += 1,
            (false, _) => {}
        }
        let mut line = Vec::new();
        write_verdict(&mut line, verdict, &self.stream, seq);
        let _ = tx.send(Out::Verdict(line));
        let mut conn = FakeConn::new(id, tx, true, self.options.reset_every);
        let pending = resume && verdict == Verdict::Ok && self.fault_pending();
        let session = &self.sessions[&user];
        let replay: Vec<&(Seq, Vec<u8>)> = session.lines.iter().filter(|(s, _)| *s > seq).collect();
        let mut skip = None;
        match self.options.fault {
            ResumeFault::ReplayOneTooMany if pending => {
                let boundary = session
                    .lines
                    .iter()
                    .rev()
                    .find(|(s, _)| *s <= after && *s > session.opened_at);
                if let Some((s, line)) = boundary {
                    self.struck = Some(*s);
                    conn.send_line(line);
                }
            }
            ResumeFault::OkAfterLoss if pending && replay.len() >= OK_AFTER_LOSS_REPLAY => {
                skip = Some(replay[0].0);
                self.struck = skip;
            }
            ResumeFault::DropFirstLive if pending => {
                conn.drop_next_live = true;
                self.armed = true;
            }
            _ => {}
        }
        if pending && !self.fault_pending() {
            // Struck or armed here: no reset may take it back.
            conn.reset_after = None;
        }
        let mut reset = false;
        for (s, line) in replay {
            if Some(*s) != skip && conn.send_line(line) {
                reset = true;
                break;
            }
        }
        if reset {
            // Reset within its replay: away again, owed the rest.
            if let Some(session) = self.sessions.get_mut(&user) {
                session.away = Some(0);
            }
        }
        self.conns.entry(user).or_default().push(conn);
    }

    /// Connection `id` of `user` ended.
    fn detach(&mut self, user: UserId, id: u64) {
        let Some(conns) = self.conns.get_mut(&user) else {
            return;
        };
        let Some(index) = conns.iter().position(|conn| conn.id == id) else {
            return;
        };
        let conn = conns.swap_remove(index);
        if conn.drop_next_live {
            // Armed, never struck: let a later resume try again.
            self.armed = false;
        }
        if conn.resumable {
            if let Some(session) = self.sessions.get_mut(&user) {
                session.open -= 1;
                if session.open == 0 {
                    session.idle_since = Some(std::time::Instant::now());
                }
            }
        }
    }

    /// Applies event `seq` (line `raw`) for `recipients` (`None`: everyone).
    fn route(&mut self, seq: Seq, raw: &[u8], recipients: Option<Vec<UserId>>) {
        self.position = seq;
        let users: Vec<UserId> = match recipients {
            Some(users) => users,
            None => self
                .sessions
                .keys()
                .chain(self.conns.keys())
                .copied()
                .collect::<std::collections::HashSet<_>>()
                .into_iter()
                .collect(),
        };
        for user in users {
            self.expire(user);
            let mut session = self.sessions.get_mut(&user);
            if let Some(session) = session.as_mut() {
                session.lines.push((seq, raw.to_vec()));
                if let Some(lines) = session.away.as_mut() {
                    *lines += 1;
                }
            }
            for conn in self.conns.get_mut(&user).into_iter().flatten() {
                if conn.drop_next_live {
                    conn.drop_next_live = false;
                    self.struck = Some(seq);
                    continue;
                }
                if conn.send_line(raw) {
                    // Away from the next line on.
                    if let Some(session) = session.as_mut() {
                        session.away = Some(0);
                    }
                }
            }
        }
        if seq % self.options.checkpoint_every == 0 {
            let to_plain = self.options.fault == ResumeFault::ControlToPlain;
            for conn in self.conns.values().flatten() {
                if !conn.closing && (conn.resumable || to_plain) {
                    let _ = conn.tx.send(Out::Checkpoint(seq));
                }
            }
        }
    }
}

/// The resumable test server's state and the signal that it changed: the
/// source and waiting resumes wait on it (see the section comment).
struct FakeShared {
    /// Everything behind the one lock.
    state: Mutex<FakeState>,
    /// Notified after every event applied and every handshake and close.
    changed: tokio::sync::Notify,
}

impl FakeShared {
    /// The state, locked.
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Waits until `ready` holds of the state: checked now and after each
    /// change, never on a timer.
    async fn wait_until(&self, ready: impl Fn(&FakeState) -> bool) {
        loop {
            // Registered before the check, so a change between the check
            // and the wait still wakes it.
            let changed = self.changed.notified();
            if ready(&self.lock()) {
                return;
            }
            changed.await;
        }
    }

    /// Tells whoever waits that the state changed.
    fn announce(&self) {
        self.changed.notify_waiters();
    }
}

/// The running resumable test server.
struct ResumableServer {
    /// Its event port.
    events: SocketAddr,
    /// Its client port.
    clients: SocketAddr,
    /// Its state, for the figures and the fault's record.
    shared: Arc<FakeShared>,
    /// Its accept loops; aborted when it is dropped.
    tasks: tokio::task::JoinSet<()>,
}

impl Drop for ResumableServer {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

impl ResumableServer {
    async fn start(options: ResumeOptions) -> ResumableServer {
        let event_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(FakeShared {
            state: Mutex::new(FakeState::new(options)),
            changed: tokio::sync::Notify::new(),
        });
        let mut server = ResumableServer {
            events: event_listener.local_addr().unwrap(),
            clients: client_listener.local_addr().unwrap(),
            shared: shared.clone(),
            tasks: tokio::task::JoinSet::new(),
        };
        let clients = shared.clone();
        server.tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = client_listener.accept().await {
                connections.spawn(serve_resumable_client(stream, clients.clone()));
            }
        });
        server.tasks.spawn(async move {
            if let Ok((stream, _)) = event_listener.accept().await {
                serve_resumable_source(stream, shared).await;
            }
        });
        server
    }

    /// The sequence number the fault hit.
    fn struck(&self) -> Seq {
        self.shared
            .lock()
            .struck
            .expect("the fault struck during the run")
    }

    /// Resumes answered `#OK` and `#GAP`, and connections reset.
    fn counts(&self) -> (u64, u64, u64) {
        let state = self.shared.lock();
        (state.resumes_ok, state.resumes_gap, state.resets)
    }
}

/// The users the real router says `kind` concerns; `None` for everyone.
fn recipients(router: &mut Router, kind: EventKind) -> Option<Vec<UserId>> {
    match router.apply(kind).audience {
        Audience::Nobody => Some(Vec::new()),
        Audience::User(user) => Some(vec![user]),
        Audience::Everyone => None,
        Audience::Followers(author) => Some(router.followers(author).collect()),
    }
}

/// Reads events, orders them and routes them with the real router, holding
/// the next event while the state says so (see the section comment).
async fn serve_resumable_source(stream: TcpStream, shared: Arc<FakeShared>) {
    let mut reader = BufReader::new(stream);
    let mut parked: BTreeMap<Seq, (EventKind, Vec<u8>)> = BTreeMap::new();
    let mut next: Seq = 1;
    let mut router = Router::new(usize::MAX);
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
        while let Some((kind, raw)) = parked.remove(&next) {
            shared.wait_until(|state| !state.source_held()).await;
            let to = recipients(&mut router, kind);
            shared.lock().route(next, &raw, to);
            shared.announce();
            next += 1;
        }
    }
}

/// One client connection: its handshake, then its writer until it ends.
async fn serve_resumable_client(mut stream: TcpStream, shared: Arc<FakeShared>) {
    let mut hello = Vec::new();
    let mut byte = [0u8; 1];
    while !hello.ends_with(b"\n") {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) => hello.push(byte[0]),
            _ => return,
        }
    }
    let Ok(hello) = parse_hello(&hello) else {
        return;
    };
    if let Hello::Resumable {
        user,
        stream,
        after,
    } = hello
    {
        shared
            .wait_until(|state| state.resume_ready(user, stream, after))
            .await;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (id, stream_id, options) = {
        let mut state = shared.lock();
        let id = state.next_id;
        state.next_id += 1;
        match hello {
            Hello::Classic(user) => state.attach_classic(user, id, tx),
            Hello::Resumable {
                user,
                stream,
                after,
            } => state.attach(user, stream, after, id, tx),
        }
        (id, state.stream, state.options)
    };
    shared.announce();
    let reset = write_connection(&mut stream, rx, stream_id, options).await;
    let mut state = shared.lock();
    if reset {
        state.resets += 1;
    }
    state.detach(hello.user(), id);
    drop(state);
    shared.announce();
}

/// Writes what the router queues, batching what is ready into one write;
/// returns whether it reset the connection ([`Out::Reset`]).
async fn write_connection(
    stream: &mut TcpStream,
    mut rx: mpsc::UnboundedReceiver<Out>,
    stream_id: StreamId,
    options: ResumeOptions,
) -> bool {
    let mut count = 0u64;
    let mut crc = crc32fast::Hasher::new();
    let mut bytes = Vec::new();
    while let Some(first) = rx.recv().await {
        bytes.clear();
        let mut next = Some(first);
        let mut reset = false;
        while let Some(out) = next.take() {
            match out {
                Out::Verdict(line) => bytes.extend_from_slice(&line),
                Out::Line(line) => {
                    crc.update(&line);
                    count += 1;
                    bytes.extend_from_slice(&line);
                }
                Out::Checkpoint(seq) => {
                    let mut value = crc.clone().finalize();
                    if options.fault == ResumeFault::WrongCrc {
                        value ^= 1;
                    }
                    write_checkpoint(&mut bytes, &stream_id, seq, count, value);
                }
                Out::Reset => reset = true,
            }
            if !reset {
                next = rx.try_recv().ok();
            }
        }
        if stream.write_all(&bytes).await.is_err() {
            return false;
        }
        if reset {
            let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
            return true;
        }
    }
    false
}

/// A resumable run's settings against `server`: few users, each with many
/// lines, so every client resumes often.
fn resumable_run(server: &ResumableServer) -> VerifyConfig {
    VerifyConfig {
        total_events: 20_000,
        concurrency_level: 10,
        number_of_users: 10,
        resumable: true,
        ..small(server.events, server.clients)
    }
}

/// The run's resume figures.
fn resume_stats(report: &Report) -> ResumeStats {
    report
        .resume
        .as_ref()
        .expect("a resumable run reports its resumes")
        .stats
}

// ---------------------------------------------------------------------------
// Resumable runs: a correct server passes however its clients drop, and a
// wrong one is caught with the rule it broke.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_resumable_server_passes_with_the_killswitch() {
    let server = ResumableServer::start(ResumeOptions::correct()).await;
    let mut config = resumable_run(&server);
    // About a second of stream, a drop every 20 ms per client.
    config.rate = 20_000;
    config.killswitch = Duration::from_millis(20);
    let report = verify(config)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let stats = resume_stats(&report);
    eprintln!("{report}");
    let own: u64 = stats.drops.iter().sum();
    assert!(own >= 50, "{report}");
    for kind in followermaze_verify::DropKind::ALL {
        assert!(stats.drops[kind.index()] > 0, "no {kind:?}: {report}");
    }
    // Every drop reconnected and resumed with #OK (but a drop that came
    // before its connection's verdict, which reconnects as a first
    // connection again): none by the server, no window over.
    assert_eq!(stats.server_drops, 0);
    assert!(stats.connections > own, "{report}");
    assert!(
        stats.resumes_ok <= own && stats.resumes_ok > own / 2,
        "{report}"
    );
    assert_eq!(stats.resumes_gap, 0);
    let (ok, gap, _) = server.counts();
    assert!(ok >= stats.resumes_ok && gap == 0, "{ok} {gap}: {report}");
    assert!(stats.checkpoints > 0, "{report}");
    let latency = report.resume.as_ref().unwrap().verdict_latency.unwrap();
    assert_eq!(latency.samples, stats.resumes());
    assert!(report.to_string().contains("resumes:"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_resumable_server_that_resets_connections_passes() {
    let server = ResumableServer::start(ResumeOptions {
        reset_every: Some(50),
        ..ResumeOptions::correct()
    })
    .await;
    let mut config = resumable_run(&server);
    config.killswitch = Duration::from_millis(30);
    config.offline = Duration::from_millis(3);
    let report = verify(config)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let stats = resume_stats(&report);
    eprintln!("{report}");
    // A reset of a connection the client was dropping itself, or had done
    // with, is not one it saw.
    let (ok, gap, resets) = server.counts();
    assert!(stats.server_drops >= 100, "{report}");
    assert!(stats.server_drops <= resets, "{resets} resets: {report}");
    assert!(stats.resumes_ok <= ok && gap == 0, "{ok} {gap}: {report}");
    assert!(stats.resumes_ok >= stats.server_drops, "{report}");
    assert_eq!(stats.resumes_gap, 0);
    // The lines in flight at each reset came again.
    assert!(stats.replayed > 0, "{report}");
    assert!(stats.offline > Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_after_the_window_are_accepted_and_counted() {
    // Sessions forgotten as soon as they close, on both sides.
    let server = ResumableServer::start(ResumeOptions {
        window: Duration::ZERO,
        reset_every: Some(40),
        ..ResumeOptions::correct()
    })
    .await;
    let mut config = resumable_run(&server);
    config.resume_window = Duration::ZERO;
    config.rate = 40_000;
    let report = verify(config)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let stats = resume_stats(&report);
    eprintln!("{report}");
    let (ok, gap, _) = server.counts();
    assert!(ok == 0 && stats.resumes_ok == 0, "{report}");
    assert!(
        stats.resumes_gap > 0 && stats.resumes_gap <= gap,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_within_the_window_is_caught() {
    let server = ResumableServer::start(ResumeOptions {
        window: Duration::ZERO,
        reset_every: Some(40),
        ..ResumeOptions::correct()
    })
    .await;
    let failure = verify(resumable_run(&server))
        .await
        .expect_err("a session forgotten within the window must fail the run");
    eprintln!("caught: {failure}");
    assert!(
        matches!(
            failure,
            Failure::BadVerdict {
                problem: VerdictProblem::EarlyGap { .. },
                client: ClientRef {
                    connection: Some(ConnectionRef {
                        after: Some(_),
                        verdict: Some((Verdict::Gap, _)),
                        ..
                    }),
                    ..
                },
                ..
            }
        ),
        "{failure}"
    );
    assert_eq!(failure.reason(), "wrong resume verdict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_too_many_at_the_resume_boundary_is_caught() {
    let server = ResumableServer::start(ResumeOptions {
        fault: ResumeFault::ReplayOneTooMany,
        reset_every: Some(50),
        ..ResumeOptions::correct()
    })
    .await;
    let failure = verify(resumable_run(&server))
        .await
        .expect_err("a repeated line must fail the run");
    eprintln!("caught: {failure}");
    let repeated = server.struck();
    assert!(
        matches!(failure, Failure::Unexpected { seq, repeated: true, .. } if seq == repeated),
        "repeated event {repeated}, got: {failure}"
    );
    // The failure names the connection, its <after> and its verdict.
    let connection = failure.client().and_then(|client| client.connection);
    assert!(
        matches!(connection, Some(ConnectionRef { number, after: Some(after), verdict: Some((Verdict::Ok, ok)) })
            if number > 1 && after == ok && after >= repeated),
        "{failure}"
    );
    let text = failure.to_string();
    assert!(
        text.contains("resumed after") && text.contains("got #OK"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_live_line_after_a_replay_dropped_is_caught() {
    let server = ResumableServer::start(ResumeOptions {
        fault: ResumeFault::DropFirstLive,
        reset_every: Some(50),
        ..ResumeOptions::correct()
    })
    .await;
    let failure = verify(resumable_run(&server))
        .await
        .expect_err("a dropped live line must fail the run");
    eprintln!("caught: {failure}");
    let dropped = server.struck();
    assert!(
        matches!(failure, Failure::Missing { seq, .. } if seq == dropped),
        "dropped event {dropped}, got: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_after_losing_lines_is_caught() {
    let server = ResumableServer::start(ResumeOptions {
        fault: ResumeFault::OkAfterLoss,
        reset_every: Some(50),
        ..ResumeOptions::correct()
    })
    .await;
    let failure = verify(resumable_run(&server))
        .await
        .expect_err("#OK after a loss must fail the run");
    eprintln!("caught: {failure}");
    let lost = server.struck();
    assert!(
        matches!(failure, Failure::Missing { seq, client: ClientRef { connection: Some(ConnectionRef { verdict: Some((Verdict::Ok, _)), .. }), .. }, .. } if seq == lost),
        "lost event {lost}, got: {failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checkpoint_crc_is_caught() {
    let server = ResumableServer::start(ResumeOptions {
        fault: ResumeFault::WrongCrc,
        ..ResumeOptions::correct()
    })
    .await;
    let failure = verify(resumable_run(&server))
        .await
        .expect_err("a wrong CRC must fail the run");
    eprintln!("caught: {failure}");
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
    assert_eq!(failure.reason(), "wrong checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_line_to_a_plain_client_is_caught() {
    let server = ResumableServer::start(ResumeOptions {
        fault: ResumeFault::ControlToPlain,
        ..ResumeOptions::correct()
    })
    .await;
    let mut config = resumable_run(&server);
    config.resumable = false;
    let failure = verify(config)
        .await
        .expect_err("a # line to a plain client must fail the run");
    eprintln!("caught: {failure}");
    assert!(
        matches!(failure, Failure::ControlOnPlain { ref received, .. } if received.contains("#AT|")),
        "{failure}"
    );
    assert_eq!(failure.reason(), "control line on a plain connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_run_against_the_resumable_server_passes() {
    // Classic clients get event lines only: the same server, no faults.
    let server = ResumableServer::start(ResumeOptions::correct()).await;
    let mut config = resumable_run(&server);
    config.resumable = false;
    let report = verify(config)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(report.resume.is_none());
}

// ---------------------------------------------------------------------------
// Determinism: the same seed is the same byte stream on the wire.

/// Runs the verifier with no clients against a server that records the
/// event stream; returns the bytes.
async fn recorded_stream(seed: u64, events: u64) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = small(listener.local_addr().unwrap(), unused.local_addr().unwrap());
    config.concurrency_level = 0;
    config.number_of_users = 50;
    config.total_events = events;
    config.random_seed = seed;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes).await;
            let _ = tx.send(bytes);
        }
    });
    let report = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.events, events);
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the source closes at the end")
        .expect("the recorder ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_stream_on_the_wire() {
    let a = recorded_stream(666, 20_000).await;
    let b = recorded_stream(666, 20_000).await;
    assert!(a == b, "two runs with seed 666 sent different bytes");
    let c = recorded_stream(667, 20_000).await;
    assert!(a != c, "seeds 666 and 667 sent the same bytes");

    // Every line is an event, the sequence numbers are exactly 1..=N, and
    // no event is more than one batch away from its place.
    let mut seen = vec![false; 20_001];
    let mut max_so_far = 0;
    for (position, line) in a.split_inclusive(|&b| b == b'\n').enumerate() {
        assert!(line.ends_with(b"\r\n"));
        let (seq, _) = parse_event(line).expect("a valid event line");
        assert!(
            !std::mem::replace(&mut seen[seq as usize], true),
            "{seq} twice"
        );
        max_so_far = max_so_far.max(seq);
        assert!(
            max_so_far <= position as u64 + 100,
            "shuffled beyond a batch"
        );
    }
    assert!(seen[1..].iter().all(|&s| s));
    assert!(a.ends_with(b"\r\n") && parse_event(b"20000|B\r\n").is_ok());
}

// ---------------------------------------------------------------------------
// Our real server passes.

/// Our server on port 0, stopped when the sender is dropped or fired.
async fn real_server() -> (SocketAddr, SocketAddr, oneshot::Sender<()>) {
    real_server_with(Config::default()).await
}

/// Our server with `config`, on port 0, stopped like [`real_server`]'s.
async fn real_server_with(config: Config) -> (SocketAddr, SocketAddr, oneshot::Sender<()>) {
    let events = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addresses = (events.local_addr().unwrap(), clients.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(followermaze::run(
        Listeners {
            events,
            clients,
            web: None,
            metrics: None,
        },
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    (addresses.0, addresses.1, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_passes_classic_then_fanout_runs() {
    let (events, clients, _stop) = real_server().await;
    let mut config = small(events, clients);
    config.total_events = 30_000;
    config.concurrency_level = 50;
    config.number_of_users = 500;
    let classic = verify(config.clone())
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(classic.events, 30_000);
    assert!(classic.latency.is_some());
    // A second run against the same server: it must recognise the new
    // stream (sequence back at 1) and forget the old graph.
    config.profile = Profile::Fanout;
    config.random_seed = 7;
    let fanout = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    assert!(fanout.notifications > classic.notifications);
}

/// With `metricsPort` naming our server's endpoint, the report gives the
/// server's CPU time over the run, per event and per notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_gives_our_servers_cpu_per_event_from_its_metrics() {
    let events = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = small(events.local_addr().unwrap(), clients.local_addr().unwrap());
    let endpoint = metrics.local_addr().unwrap();
    config.metrics_port = endpoint.port();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(followermaze::run(
        Listeners {
            events,
            clients,
            web: None,
            metrics: Some(metrics),
        },
        followermaze::Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let report = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    let server = report.server.clone().expect("our server's figures");
    assert_eq!(server.endpoint, endpoint.to_string());
    // The server counts CPU time in clock ticks (10 ms on Linux), and this
    // small run in an optimized build can take less than one: the figure
    // may be 0, never negative (the arithmetic is `server_usage`'s tests').
    assert!(
        server.cpu_seconds >= 0.0 && server.cpu_seconds.is_finite(),
        "{server:?}"
    );
    assert!(server.resident_max_bytes.is_some_and(|peak| peak > 0));
    let text = report.to_string();
    assert!(text.contains("\nserver:        "), "{text}");
    assert!(text.contains(" ns per event, "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_is_byte_exact_with_any_line_endings() {
    let (events, clients, _stop) = real_server().await;
    let mut config = small(events, clients);
    config.line_endings = LineEndings::Any;
    let report = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.reterminated, 0, "{report}");
    assert!(report.byte_exact());
    assert!(
        !report.banner().contains("byte-exact"),
        "{}",
        report.banner()
    );
    assert!(report.to_string().contains("all checked byte for byte"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_passes_with_several_connections_per_user() {
    let (events, clients, _stop) = real_server().await;
    let mut config = small(events, clients);
    config.concurrency_level = 30;
    config.number_of_users = 10;
    let report = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(report.clients, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_passes_a_paced_run_with_small_batches() {
    let (events, clients, _stop) = real_server().await;
    let mut config = small(events, clients);
    config.total_events = 3_000;
    config.rate = 30_000;
    config.max_event_source_batch_size = 3;
    let report = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    // Pacing is a floor on the time taken, never a ceiling: no upper bound.
    assert!(report.send_time >= Duration::from_millis(90), "{report}");
}

/// A resumable run against our server: few users with many lines each.
fn resumable_against(events: SocketAddr, clients: SocketAddr) -> VerifyConfig {
    VerifyConfig {
        total_events: 20_000,
        concurrency_level: 10,
        number_of_users: 10,
        resumable: true,
        ..small(events, clients)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_resumes_every_drop_exactly() {
    let (events, clients, _stop) = real_server_with(Config {
        checkpoint_interval_ms: 20,
        ..Config::default()
    })
    .await;
    let mut config = resumable_against(events, clients);
    // About a second of stream, a drop every 25 ms per client.
    config.rate = 20_000;
    config.killswitch = Duration::from_millis(25);
    let report = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    eprintln!("{report}");
    let stats = resume_stats(&report);
    let own: u64 = stats.drops.iter().sum();
    assert!(own >= 50 && stats.resumes_ok > own / 2, "{report}");
    assert_eq!(stats.resumes_gap, 0, "{report}");
    assert!(stats.checkpoints > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_passes_with_its_own_resets_and_back_to_back_runs() {
    let (events, clients, _stop) = real_server_with(Config {
        fault_reset_every: 40,
        checkpoint_interval_ms: 20,
        ..Config::default()
    })
    .await;
    let mut config = resumable_against(events, clients);
    config.killswitch = Duration::from_millis(30);
    config.offline = Duration::from_millis(2);
    let first = verify(config.clone())
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    eprintln!("{first}");
    let stats = resume_stats(&first);
    assert!(stats.server_drops >= 100, "{first}");
    assert_eq!(stats.resumes_gap, 0, "{first}");
    // A second run on the same server: its probe starts the new stream
    // before the clients connect, so their first verdicts are of it.
    config.random_seed = 7;
    let second = verify(config).await.unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(resume_stats(&second).resumes_gap, 0, "{second}");
}
