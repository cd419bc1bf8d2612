//! The metrics endpoint end to end: the real server on 127.0.0.1:0, a known
//! stream in, then `/metrics` and `/healthz` scraped over real HTTP.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{allow_open_files, get, send, wait_until, within, TestServer};
use followermaze::DisconnectReason;
use followermaze::{Config, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Sends `requests` (raw HTTP/1.1, the last one closing) on one connection
/// and returns everything the server answered.
async fn exchange(address: SocketAddr, requests: &str) -> String {
    let mut stream = within("metrics connect", TcpStream::connect(address))
        .await
        .unwrap();
    within("request write", stream.write_all(requests.as_bytes()))
        .await
        .unwrap();
    let mut response = Vec::new();
    within("response", stream.read_to_end(&mut response))
        .await
        .unwrap();
    String::from_utf8(response).expect("a text response")
}

/// `GET path` on a fresh connection; returns the status and the body.
async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let response = exchange(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, body.to_owned())
}

/// The samples of a text exposition, keyed by name and labels as written.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            (key.to_owned(), value)
        })
        .collect()
}

/// The value of `key` in `samples` (as an integer: every one we check is).
fn value(samples: &HashMap<String, f64>, key: &str) -> u64 {
    let value = *samples
        .get(&format!("followermaze_{key}"))
        .unwrap_or_else(|| panic!("no sample followermaze_{key}"));
    assert_eq!(value.fract(), 0.0, "{key} = {value}");
    value as u64
}

#[tokio::test]
async fn scraped_counters_match_what_was_sent() {
    let config = Config {
        gap_timeout_min_ms: 10,
        gap_timeout_max_ms: 50,
        ..Config::default()
    };
    let (server, metrics) = TestServer::start_with_metrics(config).await;
    let mut alice = server.client(1).await;
    let mut bob = server.client(2).await;
    let mut source = server.source().await;

    // 5 parks until 3 and 4 come, and its copy is a duplicate; the second 1
    // is late; one line is garbage; 6 never comes, so 7 waits for the gap
    // to be skipped.
    send(
        &mut source,
        "1|F|1|2\n2|B\n5|B\n5|B\n3|P|2|1\n4|S|2\n1|B\nnot an event\n7|B\n",
    )
    .await;
    let to_alice = "2|B\n3|P|2|1\n4|S|2\n5|B\n7|B\n";
    let to_bob = "1|F|1|2\n2|B\n5|B\n7|B\n";
    alice.expect(to_alice).await;
    bob.expect(to_bob).await;
    let bytes = (to_alice.len() + to_bob.len()) as u64;
    // A writer counts its bytes, then records the batch's latency.
    wait_until("all bytes counted", || {
        get(&server.stats.bytes_written) == bytes
    })
    .await;
    wait_until("latency recorded for both clients", || {
        server.stats.latency.counts().iter().sum::<u64>() >= 2
    })
    .await;

    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let samples = samples(&body);
    let expected = [
        ("events_received_total", 8),
        ("events_delivered_total", 6),
        ("notifications_sent_total", 9),
        ("client_written_bytes_total", bytes),
        ("malformed_lines_total", 1),
        ("oversized_lines_total", 0),
        ("duplicate_events_total", 1),
        ("late_events_total", 1),
        ("too_far_events_total", 0),
        ("skipped_sequences_total", 1),
        ("source_connections_total", 1),
        ("accept_errors_total", 0),
        ("client_connects_total", 2),
        ("connected_clients", 2),
        ("connected_sources", 1),
        ("reorder_window_events", 0),
        ("next_expected_sequence", 8),
    ];
    for (key, expected) in expected {
        assert_eq!(value(&samples, key), expected, "{key}");
    }
    for reason in DisconnectReason::ALL {
        let key = format!("client_disconnects_total{{reason=\"{}\"}}", reason.as_str());
        assert_eq!(value(&samples, &key), 0, "{key}");
    }
    assert!(value(&samples, "client_writes_total") >= 2);
    let samples_count = value(&samples, "delivery_latency_seconds_count");
    let recorded = server.stats.latency.counts().iter().sum::<u64>();
    assert!((2..=recorded).contains(&samples_count), "{samples_count}");
    assert_eq!(
        value(&samples, "delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        samples_count
    );
    // The process's own figures (the test process is the server's).
    if cfg!(target_os = "linux") {
        let process = |name: &str| -> f64 {
            let line = body
                .lines()
                .find(|line| line.split(' ').next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} in {body}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(process("process_cpu_seconds_total") > 0.0);
        let (now, peak) = (
            process("process_resident_memory_bytes"),
            process("process_resident_memory_max_bytes"),
        );
        assert!(now > 0.0 && peak >= now, "{now} {peak}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn disconnects_are_counted_by_reason() {
    let (server, metrics) = TestServer::start_with_metrics(Config::default()).await;
    let alice = server.client(1).await;
    drop(alice);
    let mut stranger = within("client connect", TcpStream::connect(server.clients))
        .await
        .unwrap();
    within("bad handshake", stranger.write_all(b"hello\n"))
        .await
        .unwrap();
    wait_until("both disconnects counted", || {
        server.stats.disconnects(DisconnectReason::Normal) == 1
            && server.stats.disconnects(DisconnectReason::BadHandshake) == 1
    })
    .await;
    let (_, body) = http_get(metrics, "/metrics").await;
    let samples = samples(&body);
    let reason = |reason: &str| {
        value(
            &samples,
            &format!("client_disconnects_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(reason("normal"), 1);
    assert_eq!(reason("bad_handshake"), 1);
    assert_eq!(reason("slow_consumer"), 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn healthz_is_200_and_other_paths_are_404() {
    let (server, metrics) = TestServer::start_with_metrics(Config::default()).await;
    assert_eq!(
        http_get(metrics, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(http_get(metrics, "/nope").await.0, 404);
    assert_eq!(http_get(metrics, "/metrics?x=1").await.0, 200);

    // Scrapers keep connections alive: two requests on one connection.
    let both = exchange(
        metrics,
        "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n\
         GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    assert!(both.contains("# TYPE followermaze_events_received_total counter"));

    server.stop().await.unwrap();
    let refused = within("refused connect", TcpStream::connect(metrics)).await;
    assert!(refused.is_err(), "the endpoint closes with the server");
}

#[tokio::test]
async fn healthz_is_503_once_shutdown_stops_the_pipeline() {
    // A client that never reads holds the writers' drain open; the metrics
    // endpoint stops only after it, so it answers while the accept loops,
    // the sequencer and the registry have already ended.
    let config = Config {
        client_send_buffer_bytes: 64 * 1024,
        // Longer than any wait here: the test ends the drain itself.
        drain_timeout_ms: 600_000,
        ..Config::default()
    };
    let (mut server, metrics) = TestServer::start_with_metrics(config).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = within("client connect", socket.connect(server.clients))
        .await
        .unwrap();
    within("handshake", stuck.write_all(b"1\r\n"))
        .await
        .unwrap();
    wait_until("client registered", || {
        get(&server.stats.clients_connected) == 1
    })
    .await;
    // About 1 MiB: far more than the sockets buffer, under the client's
    // 4 MiB bound, so its writer is left blocked with bytes to send.
    const EVENTS: u64 = 100_000;
    let text: String = (1..=EVENTS).map(|seq| format!("{seq}|B\r\n")).collect();
    let mut source = server.source().await;
    send(&mut source, &text).await;
    drop(source);
    server.delivered(EVENTS).await;
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);

    server.request_stop();
    within("healthz to report the stopped pipeline", async {
        while http_get(metrics, "/healthz").await != (503, "unavailable\n".to_owned()) {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(
        http_get(metrics, "/metrics").await.0,
        200,
        "the numbers can still be read during the drain"
    );
    // Closing the stuck client fails its writer's last write: the drain ends.
    drop(stuck);
    server.stop().await.unwrap();
}

fn local_config(metrics_port: u16) -> Config {
    Config {
        bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        event_listener_port: 0,
        client_listener_port: 0,
        metrics_port,
        ..Config::default()
    }
}

#[tokio::test]
async fn a_busy_metrics_port_is_a_bind_error_naming_it() {
    let taken = within("bind", TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = within("bind", Listeners::bind(&local_config(port)))
        .await
        .unwrap_err();
    assert_eq!(error.variable, "metricsPort");
    assert!(error.to_string().contains("(metricsPort)"), "{error}");
}

#[tokio::test]
async fn metrics_port_zero_turns_the_endpoint_off() {
    let listeners = within("bind", Listeners::bind(&local_config(0)))
        .await
        .unwrap();
    assert!(listeners.metrics.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_cannot_lock_the_endpoint_out() {
    // 1,000 idle connections and 20 half-sent requests on this side, as
    // many accepted on the server's, and the rest of the test's sockets.
    allow_open_files(2400);
    let (server, metrics) = TestServer::start_with_metrics(Config::default()).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            within("idle connect", TcpStream::connect(metrics))
                .await
                .unwrap(),
        );
    }
    let mut half_sent = Vec::new();
    for _ in 0..20 {
        let mut stream = within("connect", TcpStream::connect(metrics))
            .await
            .unwrap();
        within(
            "half a request",
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHo"),
        )
        .await
        .unwrap();
        half_sent.push(stream);
    }
    // Before, 16 idle connections held every slot for up to a minute and
    // this waited for them (longer than `within` allows).
    assert_eq!(
        http_get(metrics, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    // The endpoint closes them itself: an idle one after its idle deadline,
    // a half-sent one after its header deadline (with a 408 or nothing).
    for mut stream in [idle.swap_remove(0), half_sent.swap_remove(0)] {
        let mut rest = Vec::new();
        let read = within("the server closes it", stream.read_to_end(&mut rest)).await;
        let text = String::from_utf8_lossy(&rest);
        assert!(read.is_err() || !text.contains("200 OK"), "{text}");
    }
    server.stop().await.unwrap();
}
