//! Bad input, misbehaving clients and limits: none of it may take the server
//! down, stall other clients, or lose valid events. Real server, real TCP.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{get, send, wait_until, within, Client, TestServer};
use followermaze::Config;
use followermaze::DisconnectReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Asserts the server closes `stream` (EOF or reset) without sending data.
async fn expect_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 64];
    match within("server to close the connection", stream.read(&mut byte)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected the connection closed, got {n} bytes"),
    }
}

#[tokio::test]
async fn malformed_source_lines_are_skipped_and_counted() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    let garbage: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"2|X|1|2\r\n",
        b"2|F|1\r\n",
        b"2|F|1|2|3\r\n",
        b"2|B|7\r\n",
        b"abc|B\r\n",
        b"2|P|one|1\r\n",
        b"99999999999999999999999|B\r\n",
        b"2|S|-1\r\n",
        b"2|\xff\xfe|1\r\n",
        b"\xc3\x28|B\r\n",
    ];
    send(&mut source, "1|B\r\n").await;
    for line in garbage {
        source.write_all(line).await.unwrap();
    }
    send(&mut source, "2|B\r\n3|P|4|1\n").await;
    client.expect("1|B\r\n2|B\r\n3|P|4|1\n").await;
    assert_eq!(get(&server.stats.malformed_lines), garbage.len() as u64);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_over_long_line_is_dropped_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    let long = "7".repeat(followermaze::ingest::lines::MAX_LINE_BYTES * 3);
    // Sent in pieces so the reader sees it grow past the limit.
    send(&mut source, "1|B\r\n").await;
    for piece in long.as_bytes().chunks(1000) {
        source.write_all(piece).await.unwrap();
        source.flush().await.unwrap();
    }
    send(&mut source, "|B\r\n2|B\r\n").await;
    client.expect("1|B\r\n2|B\r\n").await;
    assert_eq!(get(&server.stats.oversized_lines), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_source_leaving_mid_line_loses_only_that_line() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut first = server.source().await;
    send(&mut first, "1|B\r\n2|B").await;
    client.expect("1|B\r\n").await;
    drop(first);
    server.sources_gone().await;
    // The half line is not glued to the next connection's bytes.
    let mut second = server.source().await;
    send(&mut second, "\r\n2|B\r\n3|B\r\n").await;
    client.expect("2|B\r\n3|B\r\n").await;
    assert_eq!(get(&server.stats.malformed_lines), 1, "the lone CRLF");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_handshakes_close_only_that_connection() {
    let config = Config {
        handshake_timeout_ms: 200,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut good = server.client(1).await;
    let cases: &[&[u8]] = &[
        b"\r\n",
        b"bob\r\n",
        b"-3\r\n",
        b"123456789012345678901234567890123456789\r\n",
        b"12", // never ends: the deadline closes it
        b"",   // says nothing at all
    ];
    for bytes in cases {
        let mut stream = TcpStream::connect(server.clients).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        expect_closed(&mut stream).await;
    }
    let mut stream = TcpStream::connect(server.clients).await.unwrap();
    stream.write_all(b"5").await.unwrap();
    stream.shutdown().await.unwrap(); // EOF before a newline
    expect_closed(&mut stream).await;
    wait_until("bad handshakes counted", || {
        server.stats.disconnects(DisconnectReason::BadHandshake) == cases.len() as u64 + 1
    })
    .await;
    let mut source = server.source().await;
    send(&mut source, "1|B\r\n").await;
    good.expect("1|B\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn whatever_a_client_sends_after_its_id_is_ignored() {
    let server = TestServer::start().await;
    let mut chatty = server.client(1).await;
    let noise = vec![b'z'; 1 << 20];
    within("client noise", chatty.stream.write_all(&noise))
        .await
        .unwrap();
    wait_until("noise read and dropped", || {
        get(&server.stats.client_bytes_ignored) == noise.len() as u64
    })
    .await;
    let mut source = server.source().await;
    send(&mut source, "1|P|2|1\r\n").await;
    chatty.expect("1|P|2|1\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_nobody_else_waits() {
    // About 4.3 MB of broadcasts: more than the stuck client's bound on
    // pending bytes plus the one buffer its writer may hold, whatever the
    // timing.
    const EVENTS: u64 = 400_000;
    const BOUND: usize = 1 << 20;
    let config = Config {
        max_client_buffer_bytes: BOUND,
        // Keep the kernel from absorbing megabytes before our bound counts.
        client_send_buffer_bytes: 64 * 1024,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;

    // The stuck client: a tiny receive window, and it never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(server.clients).await.unwrap();
    stuck.write_all(b"666\r\n").await.unwrap();
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for user in 1..=3u64 {
        let client = server.client(user).await;
        let received = Arc::new(AtomicU64::new(0));
        progress.push(received.clone());
        readers.push(tokio::spawn(read_all_broadcasts(client, EVENTS, received)));
    }
    wait_until("all four registered", || {
        get(&server.stats.clients_connected) == 4
    })
    .await;

    // Half a bound at a time, each once the healthy clients have all of
    // the previous one: they never fall a bound behind, however slowly
    // this process reads for them, while the stuck client falls behind
    // by everything.
    let mut source = server.source().await;
    let mut text = String::with_capacity(1 << 20);
    for seq in 1..=EVENTS {
        text.push_str(&format!("{seq}|B\r\n"));
        if text.len() > BOUND / 2 || seq == EVENTS {
            send(&mut source, &text).await;
            text.clear();
            wait_until("the healthy clients to keep up", || {
                progress.iter().all(|received| get(received) >= seq)
            })
            .await;
        }
    }

    // The healthy clients stay connected, so the gauge below counts them.
    let mut healthy = Vec::new();
    for reader in readers {
        healthy.push(
            within("a healthy client's full stream", reader)
                .await
                .unwrap(),
        );
    }
    // The reason is counted before the connection's gauge comes down: wait
    // for both.
    wait_until("the stuck client is disconnected", || {
        server.stats.disconnects(DisconnectReason::SlowConsumer) == 1
            && get(&server.stats.clients_connected) == 3
    })
    .await;
    // The stuck client got at most a prefix, then the connection closed.
    let mut prefix = Vec::new();
    let _ = within("stuck client closed", stuck.read_to_end(&mut prefix)).await;
    let expected_prefix: String = (1..=EVENTS).map(|seq| format!("{seq}|B\r\n")).collect();
    assert!(expected_prefix.as_bytes().starts_with(&prefix));
    assert!(prefix.len() < expected_prefix.len());
    drop(healthy);
    server.stop().await.unwrap();
}

/// Reads `1|B\r\n` .. `{events}|B\r\n` in order, comparing as it goes,
/// and publishes how far it got in `received`; returns the client, still
/// connected.
async fn read_all_broadcasts(mut client: Client, events: u64, received: Arc<AtomicU64>) -> Client {
    let mut expected_seq = 1u64;
    let mut line = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while expected_seq <= events {
        let n = client.stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed at sequence {expected_seq}");
        for &byte in &buf[..n] {
            line.push(byte);
            if byte == b'\n' {
                assert_eq!(line, format!("{expected_seq}|B\r\n").as_bytes());
                received.store(expected_seq, Ordering::Relaxed);
                expected_seq += 1;
                line.clear();
            }
        }
    }
    client
}

#[tokio::test]
async fn clients_that_reset_or_half_close_are_cleaned_up() {
    let server = TestServer::start().await;
    let mut steady = server.client(1).await;
    let resetter = server.client(2).await;
    let mut half_closer = server.client(3).await;
    let mut source = server.source().await;
    let burst: String = (1..=20_000).map(|seq| format!("{seq}|B\r\n")).collect();
    send(&mut source, &burst).await;
    // Reset mid-stream.
    // Linger 0 makes close send RST (and does not block, at 0).
    socket2::SockRef::from(&resetter.stream)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(resetter);
    half_closer.stream.shutdown().await.unwrap();
    wait_until("both gone from the registry", || {
        get(&server.stats.clients_connected) == 1
    })
    .await;
    steady.expect(&burst).await;
    send(&mut source, "20001|B\r\n").await;
    steady.expect("20001|B\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let config = Config {
        max_clients: 2,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut first = server.client(1).await;
    let _second = server.client(2).await;
    let mut third = TcpStream::connect(server.clients).await.unwrap();
    expect_closed(&mut third).await;
    assert_eq!(server.stats.disconnects(DisconnectReason::Rejected), 1);
    // A slot frees when a client leaves.
    drop(_second);
    wait_until("slot freed", || get(&server.stats.clients_connected) == 1).await;
    let mut fourth = server.client(4).await;
    let mut source = server.source().await;
    send(&mut source, "1|B\r\n").await;
    first.expect("1|B\r\n").await;
    fourth.expect("1|B\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn random_bytes_on_both_ports_do_not_hurt_the_server() {
    let server = TestServer::start().await;
    let mut good = server.client(1).await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = vec![0u8; 256 * 1024];
    for byte in noise.iter_mut() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        *byte = rng as u8;
    }
    let mut bad_source = server.source().await;
    within("noise to source", bad_source.write_all(&noise))
        .await
        .unwrap();
    drop(bad_source);
    for chunk in noise.chunks(4096).take(20) {
        let mut stream = TcpStream::connect(server.clients).await.unwrap();
        // The server may close before reading it all; that is fine.
        let _ = stream.write_all(chunk).await;
    }
    server.sources_gone().await;
    // Random bytes may contain valid-looking events; a fresh stream from
    // sequence 1 still works because the new source starts over.
    let mut source = server.source().await;
    send(&mut source, "1|P|9|1\r\n").await;
    good.expect("1|P|9|1\r\n").await;
    server.stop().await.unwrap();
}
