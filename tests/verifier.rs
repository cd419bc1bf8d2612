//! The verifier against servers that are right and servers that are wrong.
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

use followermaze::router::{Audience, Router};
use followermaze::{Config, Listeners};
use followermaze_protocol::{parse_event, parse_user_id, EventKind, Seq, UserId};
use followermaze_verify::{
    run, ByteDiff, Failure, LineEndings, LogLevel, Profile, Report, VerifyConfig,
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
    let sink = tokio::spawn(followermaze_verify::sink::sink(
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
    let events = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addresses = (events.local_addr().unwrap(), clients.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(followermaze::run(
        Listeners {
            events,
            clients,
            metrics: None,
        },
        Config::default(),
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
