//! Signed tokens end to end (`authSecret`): the real server on 127.0.0.1:0,
//! real TCP, tokens minted as `followermaze token` mints them. Every
//! listener refuses a missing or bad token, counted by reason, and a good
//! one gets the same service as ever; without a secret the classic
//! protocol is unchanged.

mod common;

use std::time::{Duration, SystemTime};

use common::{get, send, wait_until, within, TestServer};
use followermaze::Config;
use followermaze_protocol::auth::{write_auth_line, AuthError, Key, SOURCE_SUBJECT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "the secret of tests/auth.rs";

/// A server with `authSecret` set.
async fn server() -> TestServer {
    let config = Config::from_vars([("authSecret".to_owned(), SECRET.to_owned())])
        .expect("a valid configuration");
    TestServer::start_with(config).await
}

fn key() -> Key {
    Key::new(SECRET.as_bytes())
}

/// A token for `subject` from `key`, valid an hour from `now`.
fn token(key: &Key, subject: &str, now: SystemTime) -> String {
    key.mint(subject, Duration::from_secs(3600), now)
}

/// Sends `handshake` as a client and returns everything the server sent
/// until it closed the connection (nothing, for a refusal).
async fn refused_client(server: &TestServer, handshake: &str) -> String {
    let mut stream = within("client connect", TcpStream::connect(server.clients))
        .await
        .unwrap();
    within("handshake", stream.write_all(handshake.as_bytes()))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = within("the server closes it", stream.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_client_with_a_good_token_is_served_as_ever() {
    let server = server().await;
    let before = get(&server.stats.client_connects);
    let mut client = within("client connect", TcpStream::connect(server.clients))
        .await
        .unwrap();
    let handshake = format!("7|||{}\r\n", token(&key(), "7", SystemTime::now()));
    client.write_all(handshake.as_bytes()).await.unwrap();
    wait_until("registration", || {
        get(&server.stats.client_connects) > before
    })
    .await;
    let mut source = server.source().await;
    let mut first = Vec::new();
    write_auth_line(
        &mut first,
        &token(&key(), SOURCE_SUBJECT, SystemTime::now()),
    );
    send(&mut source, std::str::from_utf8(&first).unwrap()).await;
    send(&mut source, "1|P|3|7\r\n2|B\r\n").await;
    let mut verdict = [0u8; 4];
    within("verdict", client.read_exact(&mut verdict))
        .await
        .unwrap();
    assert_eq!(&verdict, b"#OK|", "a first connection's verdict");
    let mut rest = String::new();
    while !rest.ends_with("2|B\r\n") {
        let mut byte = [0u8; 1];
        within("events", client.read_exact(&mut byte))
            .await
            .unwrap();
        rest.push(byte[0] as char);
    }
    assert!(rest.ends_with("\r\n1|P|3|7\r\n2|B\r\n"), "{rest:?}");
    let refusals = &server.stats.client_auth_refusals;
    assert!(refusals.iter().all(|counter| get(counter) == 0));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn clients_with_missing_or_bad_tokens_are_closed_without_a_reply_and_counted() {
    let server = server().await;
    let now = SystemTime::now();
    let forged = token(&Key::new(b"not the secret"), "7", now);
    let expired = key().mint(
        "7",
        Duration::from_secs(60),
        now - Duration::from_secs(3600),
    );
    let cases = [
        ("7\r\n".to_owned(), AuthError::Missing),
        ("7||\r\n".to_owned(), AuthError::Missing),
        (
            format!("7|||{}\r\n", token(&key(), "8", now)),
            AuthError::WrongSubject,
        ),
        (format!("7|||{forged}\r\n"), AuthError::BadSignature),
        (format!("7|||{expired}\r\n"), AuthError::Expired),
        ("7|||not-a-token\r\n".to_owned(), AuthError::Malformed),
    ];
    for (handshake, reason) in cases {
        let counter = &server.stats.client_auth_refusals[reason.index()];
        let before = get(counter);
        assert_eq!(
            refused_client(&server, &handshake).await,
            "",
            "{handshake:?}"
        );
        wait_until(reason.as_str(), || get(counter) > before).await;
    }
    assert_eq!(
        get(&server.stats.client_connects),
        0,
        "nobody was registered"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_source_must_authenticate_before_a_single_event_is_read() {
    let server = server().await;
    let client_token = token(&key(), "3", SystemTime::now());
    let mut user_token_line = Vec::new();
    write_auth_line(&mut user_token_line, &client_token);
    let cases = [
        ("1|B\r\n".to_owned(), AuthError::Missing),
        (
            String::from_utf8(user_token_line).unwrap(),
            AuthError::WrongSubject,
        ),
        ("#AUTH|garbage\r\n".to_owned(), AuthError::Malformed),
    ];
    for (first_line, reason) in cases {
        let counter = &server.stats.source_auth_refusals[reason.index()];
        let before = get(counter);
        let mut source = server.source().await;
        // The refused source's events must never be read.
        send(&mut source, &format!("{first_line}2|B\r\n")).await;
        let mut rest = Vec::new();
        let _ = within("the server closes it", source.read_to_end(&mut rest)).await;
        wait_until(reason.as_str(), || get(counter) > before).await;
    }
    assert_eq!(get(&server.stats.events_received), 0, "no event was read");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_secret_a_four_field_handshake_stays_a_bad_handshake() {
    let server = TestServer::start().await;
    let handshake = format!("7|||{}\r\n", token(&key(), "7", SystemTime::now()));
    assert_eq!(refused_client(&server, &handshake).await, "");
    let bad = followermaze::DisconnectReason::BadHandshake;
    wait_until("bad handshake", || server.stats.disconnects(bad) == 1).await;
    // And a source's #AUTH line is a malformed event line, nothing more.
    let mut source = server.source().await;
    send(&mut source, "#AUTH|x\r\n1|B\r\n").await;
    server.delivered(1).await;
    assert_eq!(get(&server.stats.malformed_lines), 1);
    server.stop().await.unwrap();
}

/// The verifier, given the server's secret, signs its source and every
/// client, first connections and resumes alike: the whole run passes, and
/// nothing was refused. The server resets each client after every 10 of
/// its lines (`faultResetEvery`), so resumes happen whatever the build's
/// speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_passes_with_tokens_and_resumes() {
    use followermaze_verify::{run, AuthSecret, LogLevel, Profile, VerifyConfig};
    let config = Config::from_vars([
        ("authSecret".to_owned(), SECRET.to_owned()),
        ("faultResetEvery".to_owned(), "10".to_owned()),
    ])
    .expect("a valid configuration");
    let server = TestServer::start_with(config).await;
    let config = VerifyConfig {
        host: "127.0.0.1".into(),
        event_listener_port: server.events.port(),
        client_listener_port: server.clients.port(),
        total_events: 20_000,
        concurrency_level: 20,
        number_of_users: 200,
        random_seed: 7,
        timeout: Duration::from_secs(5),
        max_event_source_batch_size: 100,
        log_interval: Duration::ZERO,
        log_level: LogLevel::Warn,
        profile: Profile::Classic,
        metrics_port: 0,
        auth_secret: AuthSecret::new(SECRET),
        resumable: true,
        ..VerifyConfig::default()
    };
    let report = within("the verifier run", run(config)).await;
    let report = report.unwrap_or_else(|failure| panic!("{failure}"));
    let resumes = report.resume.as_ref().expect("a resumable run");
    assert!(resumes.stats.server_drops > 0, "{report}");
    assert!(resumes.stats.resumes_ok > 0, "{report}");
    for counters in [
        &server.stats.client_auth_refusals,
        &server.stats.source_auth_refusals,
    ] {
        assert!(counters.iter().all(|counter| get(counter) == 0));
    }
    server.stop().await.unwrap();
}
