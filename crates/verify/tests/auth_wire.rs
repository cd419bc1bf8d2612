//! What the verifier sends when the server requires tokens (`authSecret`),
//! read off the wire by a stand-in server that records the source's first
//! bytes and every client handshake. The stand-in answers only the probe
//! (with the broadcast it waits for), so each run ends in a failure once it
//! has sent what these tests read; the real server's side is tested in the
//! root crate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use followermaze_protocol::auth::{parse_auth_line, split_token, Key, SOURCE_SUBJECT};
use followermaze_verify::{run, AuthSecret, LogLevel, VerifyConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "the wire test's secret";

/// Users events name; the probe is the one after them.
const USERS: u32 = 10;

/// Longest any one await of these tests may take.
const LIMIT: Duration = Duration::from_secs(10);

/// What the stand-in server received.
#[derive(Default)]
struct Received {
    /// The event source's first bytes.
    source: Vec<u8>,
    /// Every client connection's first line, in arrival order.
    handshakes: Vec<Vec<u8>>,
}

/// Runs the verifier (`resumable`, with `secret` as its `authSecret`)
/// against a stand-in server and returns what it received.
async fn received_by_stand_in(resumable: bool, secret: Option<&str>) -> Received {
    let events = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clients = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = small_run(&events, &clients, resumable, secret);
    let received = Arc::new(Mutex::new(Received::default()));
    let source = tokio::spawn(record_source(events, received.clone()));
    let handshakes = tokio::spawn(record_handshakes(clients, received.clone()));
    let outcome = tokio::time::timeout(LIMIT, run(config))
        .await
        .expect("the run ends within its timeouts");
    assert!(outcome.is_err(), "the stand-in answers no client");
    source.abort();
    handshakes.abort();
    let mut received = received.lock().expect("not poisoned");
    std::mem::take(&mut *received)
}

/// A short run against `events` and `clients` (`resumable`, with `secret`
/// as its `authSecret`).
fn small_run(
    events: &TcpListener,
    clients: &TcpListener,
    resumable: bool,
    secret: Option<&str>,
) -> VerifyConfig {
    VerifyConfig {
        event_listener_port: port(events),
        client_listener_port: port(clients),
        total_events: 100,
        concurrency_level: 3,
        number_of_users: USERS,
        timeout: Duration::from_millis(500),
        log_interval: Duration::ZERO,
        log_level: LogLevel::Error,
        metrics_port: 0,
        resumable,
        auth_secret: secret.and_then(AuthSecret::new),
        ..VerifyConfig::default()
    }
}

fn port(listener: &TcpListener) -> u16 {
    listener
        .local_addr()
        .map(|a: SocketAddr| a.port())
        .expect("a port")
}

/// Records what the one event source sends until it closes.
async fn record_source(events: TcpListener, received: Arc<Mutex<Received>>) {
    let Ok((mut source, _)) = events.accept().await else {
        return;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = source.read(&mut buf).await {
        received
            .lock()
            .expect("not poisoned")
            .source
            .extend_from_slice(&buf[..n]);
    }
}

/// Records every client connection's first line; answers the probe's with
/// the first opening broadcast, so the run goes on to connect its clients.
async fn record_handshakes(clients: TcpListener, received: Arc<Mutex<Received>>) {
    let mut held: Vec<BufReader<TcpStream>> = Vec::new();
    while let Ok((client, _)) = clients.accept().await {
        let mut client = BufReader::new(client);
        let mut line = Vec::new();
        if client.read_until(b'\n', &mut line).await.is_err() {
            continue;
        }
        if line.starts_with(format!("{}|", USERS + 1).as_bytes())
            || line == format!("{}\r\n", USERS + 1).as_bytes()
        {
            let _ = client.get_mut().write_all(b"1|B\r\n").await;
        }
        received.lock().expect("not poisoned").handshakes.push(line);
        // Kept open, so the clients wait for a verdict that never comes.
        held.push(client);
    }
}

/// The first line of `bytes` and the rest.
fn first_line(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |at| at + 1);
    bytes.split_at(end)
}

#[tokio::test]
async fn with_auth_secret_the_source_and_every_handshake_carry_tokens() {
    let received = received_by_stand_in(true, Some(SECRET)).await;
    let key = Key::new(SECRET.as_bytes());

    let (auth, rest) = first_line(&received.source);
    assert!(auth.starts_with(b"#AUTH|eyJ") && auth.ends_with(b"\r\n"));
    let token = parse_auth_line(auth).expect("the source's first line is #AUTH");
    assert_eq!(key.check(token, SOURCE_SUBJECT), Ok(()));
    assert!(rest.starts_with(b"1|B\r\n"), "then the first broadcast");

    // The probe and three clients at least (a client the stand-in leaves
    // without a verdict may reconnect): each a first connection,
    // `user||0|<token>`, with a token for that user.
    assert!(received.handshakes.len() >= 4, "{:?}", received.handshakes);
    for hello in &received.handshakes {
        assert!(hello.ends_with(b"\r\n"), "{hello:?}");
        let (fields, token) = split_token(hello);
        let user = fields
            .strip_suffix(b"||0")
            .unwrap_or_else(|| panic!("not a first resumable handshake: {hello:?}"));
        let user = std::str::from_utf8(user).expect("a decimal user id");
        assert_eq!(
            key.check(token.expect("a token"), user),
            Ok(()),
            "{hello:?}"
        );
    }
    let probe = format!("{}||0|", USERS + 1);
    assert!(received.handshakes[0].starts_with(probe.as_bytes()));
}

#[tokio::test]
async fn without_auth_secret_nothing_changes() {
    let received = received_by_stand_in(true, None).await;
    assert!(received.source.starts_with(b"1|B\r\n"));
    assert!(!received.handshakes.is_empty());
    for hello in &received.handshakes {
        let text = String::from_utf8_lossy(hello);
        let fields = text.trim_end().split('|').count();
        let expected = if text.starts_with(&format!("{}", USERS + 1)) {
            1
        } else {
            3
        };
        assert_eq!(fields, expected, "{text:?}");
        assert!(text.ends_with("||0\r\n") || fields == 1, "{text:?}");
    }

    let received = received_by_stand_in(false, None).await;
    assert!(received.source.starts_with(b"1|B\r\n"));
    for hello in &received.handshakes {
        let text = String::from_utf8_lossy(hello);
        assert!(!text.contains('|') && text.ends_with("\r\n"), "{text:?}");
    }
}

#[tokio::test]
async fn a_server_that_closes_without_a_reply_is_said_to_maybe_refuse_the_token() {
    let events = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clients = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = small_run(
        &events,
        &clients,
        true,
        Some("a secret the server does not have"),
    );
    // A server that refuses every token: each connection read, then closed.
    let refuse = |listener: TcpListener| async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut line = [0u8; 1024];
            let _ = stream.read(&mut line).await;
        }
    };
    let refusing = (tokio::spawn(refuse(events)), tokio::spawn(refuse(clients)));
    let failure = tokio::time::timeout(LIMIT, run(config))
        .await
        .expect("the run ends within its timeouts")
        .expect_err("every connection was closed");
    refusing.0.abort();
    refusing.1.abort();
    let text = failure.to_string();
    assert!(text.contains("authSecret is set"), "{text}");
    assert!(!text.contains("the server does not have"), "{text}");
}
