//! The cluster roles against a real `nats-server -js` on 127.0.0.1: a
//! sequencer and gateways give each client, byte for byte, what a
//! standalone server gives it, across a sequencer restart, a NATS restart,
//! a gateway started late and a gateway killed (a child process of the
//! server binary, SIGKILLed mid-stream, then restarted); and on a
//! three-node NATS cluster, the stream on three replicas, across the death
//! (SIGKILL) of the nats-server leading the stream.
//!
//! Each test starts its own nats-server (a free port, a fresh store
//! directory), or three routed on 127.0.0.1, and kills them on drop. Without the `nats-server` binary the
//! tests say so and pass: CI installs it (`.ci/run`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{get, wait_until, within, Client, TestServer};
use followermaze::{Config, GatewayListeners, SequencerListeners, Stats};
use followermaze_verify::{LogLevel, VerifyConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Whether nats-server is on PATH (saying so if not; a failure on CI);
/// sets up the tests' log output too.
fn nats_installed() -> bool {
    // `RUST_LOG=followermaze=debug` shows the roles' logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let installed = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        // CI installs it (.ci/run): there, a missing server is a
        // failure, not a skip, or these tests would pass by not running.
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not on PATH, and CI must run the cluster tests"
        );
        eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
    }
    installed
}

/// A nats-server with JetStream, killed (and its store removed) on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    /// Starts one, or `None` (after saying so) if nats-server is not
    /// installed.
    async fn start(name: &str) -> Option<Nats> {
        if !nats_installed() {
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fm-cluster-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut nats = Nats {
            child: None,
            port,
            dir,
        };
        nats.restart().await;
        Some(nats)
    }

    /// (Re)starts the server on the same port and store.
    async fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let address = self.address();
        within("nats-server listening", async {
            while TcpStream::connect(address).await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Stops the server (SIGTERM, as an operator would) and waits for it.
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: `kill` on the pid of a child we spawned and have not
            // reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            within("nats-server exit", async {
                tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .expect("wait task")
            })
            .await
            .expect("nats-server exits");
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A config pointing the cluster roles at this server.
    fn config(&self) -> Config {
        Config {
            nats_url: format!("nats://{}", self.address()),
            metrics_port: 0,
            summary_interval_secs: 0,
            snapshot_interval_secs: 1,
            ..Config::default()
        }
    }

    /// [`Nats::config`] for tests that compare resumable clients' bytes:
    /// no `#AT` checkpoint lines among them.
    fn resumable_config(&self) -> Config {
        Config {
            checkpoint_interval_ms: 0,
            ..self.config()
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    listener.local_addr().expect("bound").port()
}

/// A sequencer on a runtime of its own, so it can be killed: dropping the
/// runtime ends every task at once, sockets closed, nothing drained, as a
/// crash would.
struct SequencerNode {
    events: SocketAddr,
    stats: Arc<Stats>,
    runtime: Option<tokio::runtime::Runtime>,
    /// How `run_sequencer` ended, once it has.
    task: Option<JoinHandle<Result<(), followermaze::ServerError>>>,
}

impl SequencerNode {
    fn start(config: Config) -> SequencerNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let events = listener.local_addr().expect("bound");
        let listener = {
            let _inside = runtime.enter();
            TcpListener::from_std(listener).expect("a tokio listener")
        };
        let stats = Arc::new(Stats::default());
        let listeners = SequencerListeners {
            events: listener,
            metrics: None,
        };
        let task = runtime.spawn(followermaze::run_sequencer(
            listeners,
            config,
            stats.clone(),
            std::future::pending(),
        ));
        SequencerNode {
            events,
            stats,
            runtime: Some(runtime),
            task: Some(task),
        }
    }

    /// Waits for it to stop on its own; returns how it ended.
    async fn ended(&mut self) -> Result<(), followermaze::ServerError> {
        let task = self.task.as_mut().expect("not waited for yet");
        within("sequencer ends", task)
            .await
            .expect("sequencer task")
    }

    /// Ends it abruptly.
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    async fn source(&self) -> TcpStream {
        within("source connect", TcpStream::connect(self.events))
            .await
            .expect("source connects")
    }
}

impl Drop for SequencerNode {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A gateway on the test's runtime.
struct GatewayNode {
    clients: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), followermaze::ServerError>>,
}

impl GatewayNode {
    async fn start(config: Config) -> GatewayNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let clients = listener.local_addr().expect("bound");
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = GatewayListeners {
            clients: listener,
            web: None,
            metrics: None,
        };
        let task = tokio::spawn(followermaze::run_gateway(
            listeners,
            config,
            stats.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        GatewayNode {
            clients,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Connects classic clients for `users`, waiting until each is
    /// registered.
    async fn clients(&self, users: &[u64]) -> Vec<Client> {
        let mut clients = Vec::new();
        for &user in users {
            let before = get(&self.stats.client_connects);
            let mut stream = within("client connect", TcpStream::connect(self.clients))
                .await
                .expect("client connects");
            within("hello", stream.write_all(format!("{user}\r\n").as_bytes()))
                .await
                .expect("hello sent");
            wait_until("client registered", || {
                get(&self.stats.client_connects) > before
            })
            .await;
            clients.push(Client { stream });
        }
        clients
    }

    async fn delivered(&self, n: u64) {
        wait_until("gateway delivered", || {
            get(&self.stats.events_delivered) >= n
        })
        .await;
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("gateway stop", &mut self.task)
            .await
            .expect("gateway task")
            .expect("gateway stops cleanly");
    }
}

/// A gateway as a child process of the server binary, so it can die as a
/// machine does: SIGKILL, nothing drained, connections cut. Killed on drop,
/// so a failing test leaves no process behind; its log (a file, so a full
/// pipe never blocks it) is shown when the test fails.
struct GatewayProcess {
    child: Child,
    /// Where it serves clients.
    clients: SocketAddr,
    /// Its `/metrics` and `/readyz`.
    metrics: SocketAddr,
    /// Its stderr.
    log: PathBuf,
}

impl GatewayProcess {
    /// Starts `role=gateway` against `nats`, serving clients on `clients`
    /// and metrics on `metrics` (loopback ports), with the settings the
    /// in-process gateways of the resume tests use; waits until its
    /// `/readyz` says 200 (snapshot loaded, stream caught up).
    async fn start(
        nats: &Nats,
        name: &str,
        clients: SocketAddr,
        metrics: SocketAddr,
    ) -> GatewayProcess {
        let log =
            std::env::temp_dir().join(format!("fm-cluster-{}-{name}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_followermaze"))
            .env_clear()
            .env("role", "gateway")
            .env("bindAddress", "127.0.0.1")
            .env("clientListenerPort", clients.port().to_string())
            .env("metricsPort", metrics.port().to_string())
            .env("natsUrl", format!("nats://{}", nats.address()))
            .env("checkpointIntervalMs", "0")
            .env("summaryIntervalSecs", "0")
            .env("logLevel", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the server binary starts");
        let mut gateway = GatewayProcess {
            child,
            clients,
            metrics,
            log,
        };
        within("the gateway process to be ready", async {
            loop {
                if let Some(status) = gateway.child.try_wait().expect("the child's status") {
                    panic!("the gateway process exited before it was ready: {status}");
                }
                // Refused until it has bound; 503 until it has caught up.
                if let Ok((200, _)) = http_get(gateway.metrics, "/readyz").await {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        gateway
    }

    /// Its counter or gauge `name` (without the `followermaze_` prefix).
    async fn metric(&self, name: &str) -> u64 {
        let (status, body) = within("/metrics", http_get(self.metrics, "/metrics"))
            .await
            .expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        let prefix = format!("followermaze_{name} ");
        body.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix:?} in {body}"))
    }

    /// Connects classic clients for `users`, waiting until each is
    /// registered.
    async fn clients(&self, users: &[u64]) -> Vec<Client> {
        let mut clients = Vec::new();
        for &user in users {
            let before = self.metric("client_connects_total").await;
            let mut stream = within("client connect", TcpStream::connect(self.clients))
                .await
                .expect("client connects");
            within("hello", stream.write_all(format!("{user}\r\n").as_bytes()))
                .await
                .expect("hello sent");
            within("client registered", async {
                while self.metric("client_connects_total").await <= before {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await;
            clients.push(Client { stream });
        }
        clients
    }

    /// SIGKILL, and reaps it: it is gone when this returns.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("the killed gateway reaped");
    }

    /// SIGTERM, as an operator stops it; returns how it exited.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: `kill` on the pid of a child we spawned and have not
        // reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        within("the gateway process to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().expect("the child's status") {
                    return status;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // Both fail harmlessly if it has been reaped already.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of the gateway process {:?}:\n{log}", self.log);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `GET path` from `address` on a fresh connection: the status and body.
/// An error if nothing listens there (yet).
async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let malformed = || std::io::Error::other(format!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, body.to_owned()))
}

/// Deterministic events 1..=n over users 1..=20: follows, unfollows,
/// broadcasts, private messages and status updates.
fn events(n: u64) -> Vec<String> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (1..=n)
        .map(|seq| {
            let (a, b) = (next() % 20 + 1, next() % 20 + 1);
            match next() % 10 {
                0..=2 => format!("{seq}|F|{a}|{b}\r\n"),
                3 => format!("{seq}|U|{a}|{b}\r\n"),
                4 => format!("{seq}|B\r\n"),
                5 | 6 => format!("{seq}|P|{a}|{b}\r\n"),
                _ => format!("{seq}|S|{a}\r\n"),
            }
        })
        .collect()
}

/// `lines` as a source sends them: in windows of 8, each window reversed
/// (out of order, so the reorder window works as in production).
fn shuffled(lines: &[String]) -> String {
    lines
        .chunks(8)
        .flat_map(|window| window.iter().rev())
        .map(String::as_str)
        .collect()
}

/// Users whose clients the tests connect.
const USERS: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// Events `1..=total` in order (see [`events`]), and what a standalone
/// server sends each of [`USERS`] for them.
async fn events_and_outputs(total: u64) -> (Vec<String>, Vec<String>) {
    let lines = events(total);
    let expected = standalone(&lines.concat(), total).await;
    (lines, expected)
}

/// A sequencer and a gateway on one NATS, the gateway's clients for
/// [`USERS`] connected and a source connected to the sequencer: the
/// cluster most tests start from.
struct Pair {
    sequencer: SequencerNode,
    gateway: GatewayNode,
    clients: Vec<Client>,
    source: TcpStream,
}

impl Pair {
    async fn start(config: Config) -> Pair {
        let sequencer = SequencerNode::start(config.clone());
        let gateway = GatewayNode::start(config).await;
        let clients = gateway.clients(&USERS).await;
        let source = sequencer.source().await;
        Pair {
            sequencer,
            gateway,
            clients,
            source,
        }
    }
}

/// What a standalone server sends each of [`USERS`] for `input`.
async fn standalone(input: &str, total: u64) -> Vec<String> {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for user in USERS {
        clients.push(server.client(user).await);
    }
    let mut source = server.source().await;
    common::send(&mut source, input).await;
    server.delivered(total).await;
    drop(source);
    server.stop().await.expect("standalone stops");
    let mut outputs = Vec::new();
    for client in &mut clients {
        outputs.push(client.read_to_end().await);
    }
    outputs
}

/// Reads exactly `expected`'s length from each client and compares.
async fn expect_all(clients: &mut [Client], expected: &[String], what: &str) {
    for (index, (client, expected)) in clients.iter_mut().zip(expected).enumerate() {
        let mut got = vec![0u8; expected.len()];
        within(what, client.stream.read_exact(&mut got))
            .await
            .expect("client reads");
        assert_eq!(
            String::from_utf8_lossy(&got),
            *expected,
            "{what}: user {}",
            USERS[index]
        );
    }
}

/// After the gateway stopped, nothing more than expected came.
async fn expect_end(clients: &mut [Client]) {
    for client in clients {
        let mut rest = Vec::new();
        within("end of stream", client.stream.read_to_end(&mut rest))
            .await
            .expect("client reads to the end");
        assert!(
            rest.is_empty(),
            "extra bytes: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// The first line a resumable client gets from `gateway`.
async fn verdict(gateway: &GatewayNode, user: u64) -> String {
    let mut stream = TcpStream::connect(gateway.clients).await.expect("connect");
    stream
        .write_all(format!("{user}||0\r\n").as_bytes())
        .await
        .expect("hello");
    let mut line = String::new();
    within("verdict", BufReader::new(stream).read_line(&mut line))
        .await
        .expect("verdict read");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_give_every_client_what_a_standalone_server_gives() {
    let Some(nats) = Nats::start("two").await else {
        return;
    };
    let total = 3_000;
    let input = shuffled(&events(total));
    let expected = standalone(&input, total).await;

    let sequencer = SequencerNode::start(nats.config());
    let first = GatewayNode::start(nats.config()).await;
    let second = GatewayNode::start(nats.config()).await;
    let mut on_first = first.clients(&USERS).await;
    let mut on_second = second.clients(&USERS).await;
    // Every gateway names the stream as the sequencer does.
    let (a, b) = (verdict(&first, 99).await, verdict(&second, 99).await);
    assert!(a.starts_with("#OK|"), "{a}");
    assert_eq!(a.split('|').nth(1), b.split('|').nth(1), "one stream id");

    let mut source = sequencer.source().await;
    common::send(&mut source, &input).await;
    expect_all(&mut on_first, &expected, "first gateway").await;
    expect_all(&mut on_second, &expected, "second gateway").await;
    first.delivered(total).await;
    second.delivered(total).await;
    first.stop().await;
    second.stop().await;
    expect_end(&mut on_first).await;
    expect_end(&mut on_second).await;
    sequencer.kill();
}

/// A message on the stream that no sequencer of ours wrote is counted,
/// logged and skipped, and the gateway applies the next one as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_on_the_stream_is_counted_and_skipped() {
    let Some(nats) = Nats::start("foreign").await else {
        return;
    };
    let total = 1_000;
    let (lines, expected) = events_and_outputs(total).await;
    let mut pair = Pair::start(nats.config()).await;
    common::send(&mut pair.source, &lines.concat()).await;
    expect_all(&mut pair.clients, &expected, "before the foreign messages").await;
    pair.gateway.delivered(total).await;
    let stream_id = verdict(&pair.gateway, 99).await;
    let stream_id = stream_id.split('|').nth(1).expect("#OK|<stream>|...");
    pair.sequencer.kill();

    // Published by hand on the stream's subject: two foreign messages (no
    // headers; our headers around a line that is not an event), then one
    // as a sequencer writes it.
    let config = nats.config();
    let client = within(
        "a NATS client",
        async_nats::connect(config.nats_url.as_str()),
    )
    .await
    .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let subject = format!("{}.events", config.nats_stream);
    let ours = || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Followermaze-Stream", stream_id);
        headers
    };
    let broadcast = format!("{}|B\r\n", total + 1);
    let messages = [
        (async_nats::HeaderMap::new(), "1001|B\r\n".to_owned()),
        (ours(), "not an event\n".to_owned()),
        (ours(), broadcast.clone()),
    ];
    for (headers, payload) in messages {
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .expect("publish");
        within(
            "the publish's ack",
            std::future::IntoFuture::into_future(ack),
        )
        .await
        .expect("stored");
    }
    let broadcasts = vec![broadcast; USERS.len()];
    expect_all(&mut pair.clients, &broadcasts, "after the foreign messages").await;
    pair.gateway.delivered(total + 1).await;
    assert_eq!(get(&pair.gateway.stats.skipped_messages), 2);
    pair.gateway.stop().await;
    expect_end(&mut pair.clients).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_sequencer_carries_on_from_the_stream() {
    let Some(nats) = Nats::start("restart").await else {
        return;
    };
    let total = 4_000;
    let (lines, expected) = events_and_outputs(total).await;

    let mut pair = Pair::start(nats.config()).await;
    common::send(&mut pair.source, &lines[..2_500].concat()).await;
    // At least 1,500 are in the stream; the rest may be anywhere.
    pair.gateway.delivered(1_500).await;
    pair.sequencer.kill();
    drop(pair.source);

    // The source reconnects to the replacement and resends from a point
    // it knows is stored: what the stream already has is dropped as late.
    let second = SequencerNode::start(nats.config());
    let mut source = second.source().await;
    common::send(&mut source, &lines[1_500..].concat()).await;
    expect_all(&mut pair.clients, &expected, "after the sequencer restart").await;
    pair.gateway.delivered(total).await;
    assert_eq!(get(&second.stats.skipped_sequences), 0, "nothing skipped");
    pair.gateway.stop().await;
    expect_end(&mut pair.clients).await;
    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_no_released_event() {
    let Some(mut nats) = Nats::start("nats").await else {
        return;
    };
    let total = 3_000;
    let (lines, expected) = events_and_outputs(total).await;

    let mut pair = Pair::start(nats.config()).await;
    common::send(&mut pair.source, &lines[..1_500].concat()).await;
    pair.gateway.delivered(1_500).await;

    nats.stop().await;
    // Released by the sequencer while NATS is away: held, not lost.
    common::send(&mut pair.source, &lines[1_500..].concat()).await;
    wait_until("sequencer released everything", || {
        get(&pair.sequencer.stats.next_sequence) > total
    })
    .await;
    nats.restart().await;

    expect_all(&mut pair.clients, &expected, "after the NATS restart").await;
    pair.gateway.delivered(total).await;
    pair.gateway.stop().await;
    expect_end(&mut pair.clients).await;
    pair.sequencer.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_gateway_catches_up_from_a_snapshot() {
    let Some(nats) = Nats::start("late").await else {
        return;
    };
    let total = 4_000;
    let (lines, expected) = events_and_outputs(total).await;

    let sequencer = SequencerNode::start(nats.config());
    let early = GatewayNode::start(nats.config()).await;
    let mut source = sequencer.source().await;
    // Several messages, then a snapshot taken after them.
    for chunk in lines[..2_000].chunks(250) {
        common::send(&mut source, &chunk.concat()).await;
        early
            .delivered(chunk.last().map_or(0, |line| seq_of(line)))
            .await;
    }
    let written = get(&sequencer.stats.snapshots_written);
    wait_until("a snapshot after the first half", || {
        get(&sequencer.stats.snapshots_written) > written
    })
    .await;

    let late = GatewayNode::start(nats.config()).await;
    let mut clients = late.clients(&USERS).await;
    assert_eq!(get(&late.stats.snapshots_loaded), 1);
    common::send(&mut source, &lines[2_000..].concat()).await;
    // The late gateway's clients get exactly the second half as a
    // standalone server routes it: status updates reach the followers the
    // first half's follows made, which only the snapshot carried.
    let second_half: Vec<String> = expected
        .iter()
        .map(|output| {
            output
                .split_inclusive('\n')
                .filter(|line| seq_of(line) > 2_000)
                .collect()
        })
        .collect();
    expect_all(&mut clients, &second_half, "late gateway").await;
    late.delivered(total - 2_000).await;
    assert!(
        get(&late.stats.consumed_messages) < get(&early.stats.consumed_messages),
        "the late gateway replayed only what followed its snapshot"
    );
    late.stop().await;
    early.stop().await;
    expect_end(&mut clients).await;
    sequencer.kill();
}

/// No nats-server needed: nothing listens where the sequencer looks for
/// NATS, so it waits (retrying), alive (`/healthz` 200) but not ready
/// (`/readyz` 503), until shutdown, which must end it at once and cleanly,
/// since nothing was accepted that could need a drain.
#[tokio::test]
async fn a_sequencer_still_waiting_for_nats_stops_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_address = metrics.local_addr().expect("bound");
    let config = Config {
        nats_url: format!("nats://127.0.0.1:{}", free_port()),
        metrics_port: 0,
        summary_interval_secs: 0,
        ..Config::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let sequencer = tokio::spawn(followermaze::run_sequencer(
        SequencerListeners {
            events: listener,
            metrics: Some(metrics),
        },
        config,
        Arc::new(Stats::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    let (healthz, _) = within("healthz", http_get(metrics_address, "/healthz"))
        .await
        .expect("the endpoint answers while NATS is awaited");
    let (readyz, _) = within("readyz", http_get(metrics_address, "/readyz"))
        .await
        .expect("the endpoint answers");
    assert_eq!((healthz, readyz), (200, 503));
    stop.send(()).expect("sequencer waits for shutdown");
    within("sequencer stops", sequencer)
        .await
        .expect("sequencer task")
        .expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sequencer_fails_loudly_instead_of_interleaving() {
    let Some(nats) = Nats::start("second").await else {
        return;
    };
    let lines = events(2_100);
    let first = SequencerNode::start(nats.config());
    let gateway = GatewayNode::start(nats.config()).await;
    let mut to_first = first.source().await;
    common::send(&mut to_first, &lines[..1_000].concat()).await;
    gateway.delivered(1_000).await;

    // A second sequencer starts while the first still runs; the first
    // publishes more, so the second's view of the stream's end is stale.
    // (It skips the gap before 2,001 quickly, then publishes.)
    let mut second = SequencerNode::start(Config {
        gap_timeout_min_ms: 50,
        gap_timeout_max_ms: 100,
        ..nats.config()
    });
    wait_until("the second sequencer recovered the stream", || {
        get(&second.stats.next_sequence) == 1_001
    })
    .await;
    let mut to_second = second.source().await;
    common::send(&mut to_first, &lines[1_000..2_000].concat()).await;
    gateway.delivered(2_000).await;
    common::send(&mut to_second, &lines[2_000..].concat()).await;
    let error = second
        .ended()
        .await
        .expect_err("the second sequencer stops");
    // The cause leads the error, named as such; the stop is no panic.
    let message = error.to_string();
    assert!(
        message.starts_with("another sequencer publishes to the stream, so this one stopped: "),
        "says why: {message}"
    );
    assert!(
        message.contains("is not one this sequencer sent"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
    // Nothing of the second reached the gateway: exactly the first's 2,000
    // events, none skipped.
    assert_eq!(get(&gateway.stats.events_delivered), 2_000);
    assert_eq!(get(&gateway.stats.skipped_sequences), 0);
    gateway.stop().await;
    first.kill();
}

/// The sequence number a line starts with.
fn seq_of(line: &str) -> u64 {
    line.split('|')
        .next()
        .and_then(|seq| seq.parse().ok())
        .unwrap_or(0)
}

/// A verifier run's settings: events to `sequencer`, clients spread over
/// `gateways` (`clientAddresses`).
fn verifier_run(sequencer: &SequencerNode, gateways: &[&GatewayNode]) -> VerifyConfig {
    VerifyConfig {
        host: "127.0.0.1".into(),
        event_listener_port: sequencer.events.port(),
        client_addresses: gateways
            .iter()
            .map(|gateway| gateway.clients.to_string())
            .collect(),
        total_events: 20_000,
        concurrency_level: 10,
        timeout: std::time::Duration::from_secs(10),
        log_interval: std::time::Duration::ZERO,
        log_level: LogLevel::Warn,
        ..VerifyConfig::default()
    }
}

/// Runs the verifier under a time limit.
async fn verify(config: VerifyConfig) -> followermaze_verify::Report {
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        followermaze_verify::run(config),
    );
    match run.await {
        Ok(Ok(report)) => report,
        Ok(Err(failure)) => panic!("the verifier failed: {failure}"),
        Err(_) => panic!("the verifier did not finish within 60 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_passes_with_clients_spread_over_two_gateways() {
    let Some(nats) = Nats::start("spread").await else {
        return;
    };
    let sequencer = SequencerNode::start(nats.config());
    let first = GatewayNode::start(nats.config()).await;
    let second = GatewayNode::start(nats.config()).await;
    let report = verify(verifier_run(&sequencer, &[&first, &second])).await;
    assert_eq!(report.clients, 10);
    // Round robin: five clients on each gateway.
    assert_eq!(get(&first.stats.client_connects), 5);
    assert_eq!(get(&second.stats.client_connects), 5);
    first.stop().await;
    second.stop().await;
    sequencer.kill();
}

/// A resumable client's connection to the gateway serving clients at
/// `gateway`: its handshake sent, its verdict read.
async fn resumable(gateway: SocketAddr, hello: &str) -> (Client, String) {
    let mut stream = within("connect", TcpStream::connect(gateway))
        .await
        .expect("connect");
    within("hello", stream.write_all(hello.as_bytes()))
        .await
        .expect("hello sent");
    // The verdict, byte by byte: nothing after it may be consumed here.
    let mut verdict = Vec::new();
    while !verdict.ends_with(b"\n") {
        let byte = within("verdict", stream.read_u8()).await.expect("verdict");
        verdict.push(byte);
    }
    let verdict = String::from_utf8(verdict).expect("an ASCII verdict");
    (Client { stream }, verdict)
}

/// A resumable session for each of `USERS` at `address` (first
/// handshakes, each answered `#OK|<stream>|0`), and the stream id.
async fn open_sessions(address: SocketAddr) -> (Vec<Client>, String) {
    let mut clients = Vec::new();
    let mut stream_id = String::new();
    for user in USERS {
        let (client, verdict) = resumable(address, &format!("{user}||0\r\n")).await;
        let parts: Vec<&str> = verdict.trim_end().split('|').collect();
        assert_eq!((parts[0], parts[2]), ("#OK", "0"), "{verdict}");
        stream_id = parts[1].to_owned();
        clients.push(client);
    }
    (clients, stream_id)
}

/// Resumes each of [`USERS`] at `gateway` in stream `stream_id` after its
/// entry in `afters`, asserting `#OK` at exactly that position.
async fn resume_sessions(gateway: SocketAddr, stream_id: &str, afters: &[u64]) -> Vec<Client> {
    let mut resumed = Vec::new();
    for (user, &after) in USERS.iter().zip(afters) {
        let hello = format!("{user}|{stream_id}|{after}\r\n");
        let (client, verdict) = resumable(gateway, &hello).await;
        assert_eq!(
            verdict,
            format!("#OK|{stream_id}|{after}\r\n"),
            "user {user}"
        );
        resumed.push(client);
    }
    resumed
}

/// What each user is owed on resuming after its entry in `afters`: its
/// expected lines above that, up to `upto`.
fn owed_after(expected: &[String], afters: &[u64], upto: u64) -> Vec<String> {
    expected
        .iter()
        .zip(afters)
        .map(|(output, &after)| between(output, after, upto))
        .collect()
}

/// The lines of `output` with a sequence in (`after`, `upto`].
fn between(output: &str, after: u64, upto: u64) -> String {
    output
        .split_inclusive('\n')
        .filter(|line| (after + 1..=upto).contains(&seq_of(line)))
        .collect()
}

/// Sends `lines` up to event `upto` and waits until each of `clients`
/// (one per [`USERS`]) has exactly what `expected` says of them; returns
/// the last position each received.
async fn first_part(
    clients: &mut [Client],
    source: &mut TcpStream,
    (lines, expected): (&[String], &[String]),
    upto: u64,
) -> Vec<u64> {
    common::send(source, &lines[..upto as usize].concat()).await;
    let received: Vec<String> = expected.iter().map(|o| between(o, 0, upto)).collect();
    expect_all(clients, &received, "first gateway").await;
    received
        .iter()
        .map(|lines| lines.split_inclusive('\n').next_back().map_or(0, seq_of))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_exactly_on_another_gateway_after_its_own_stopped() {
    let Some(nats) = Nats::start("resume").await else {
        return;
    };
    let total = 3_000;
    let (lines, expected) = events_and_outputs(total).await;
    let config = nats.resumable_config();
    let sequencer = SequencerNode::start(config.clone());
    let first = GatewayNode::start(config.clone()).await;
    let second = GatewayNode::start(config.clone()).await;
    let (mut clients, stream_id) = open_sessions(first.clients).await;

    // The first part on the first gateway; each client notes the last
    // position it received.
    let mut source = sequencer.source().await;
    let afters = first_part(&mut clients, &mut source, (&lines, &expected), 1_500).await;
    second.delivered(1_500).await;
    first.stop().await;
    expect_end(&mut clients).await;

    // Events keep flowing while the clients are away.
    common::send(&mut source, &lines[1_500..2_500].concat()).await;
    second.delivered(2_500).await;
    let mut resumed = resume_sessions(second.clients, &stream_id, &afters).await;
    // Exactly what each missed, then live lines.
    common::send(&mut source, &lines[2_500..].concat()).await;
    let owed = owed_after(&expected, &afters, total);
    expect_all(&mut resumed, &owed, "second gateway").await;
    assert_eq!(get(&second.stats.stream_resumes), USERS.len() as u64);
    second.delivered(total).await;
    second.stop().await;
    expect_end(&mut resumed).await;
    sequencer.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_clients_hopping_between_gateways_get_everything_exactly() {
    let Some(nats) = Nats::start("hop").await else {
        return;
    };
    let config = Config {
        checkpoint_interval_ms: 20,
        ..nats.config()
    };
    let sequencer = SequencerNode::start(config.clone());
    let first = GatewayNode::start(config.clone()).await;
    let second = GatewayNode::start(config).await;
    // About a second of stream; each client drops every 25 ms or so and
    // resumes on the other gateway.
    let run = VerifyConfig {
        number_of_users: 10,
        resumable: true,
        rate: 20_000,
        killswitch: std::time::Duration::from_millis(25),
        ..verifier_run(&sequencer, &[&first, &second])
    };
    let report = verify(run).await;
    eprintln!("{report}");
    let stats = report.resume.as_ref().expect("a resumable run").stats;
    let drops: u64 = stats.drops.iter().sum();
    assert!(drops >= 50, "{report}");
    assert_eq!(stats.resumes_gap, 0, "{report}");
    // A client's first resume on the gateway that never served it comes
    // from the stream; from then on both gateways hold a session for it, so
    // later resumes replay locally. How many of those first resumes get
    // their verdict before the client drops again depends on timing (a
    // connection that ended during its fetch is not counted), so only
    // "some" is asserted.
    let from_stream = get(&first.stats.stream_resumes) + get(&second.stats.stream_resumes);
    assert!(from_stream > 0, "{from_stream} from the stream: {report}");
    first.stop().await;
    second.stop().await;
    sequencer.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_the_stream_no_longer_holds_gets_a_gap_and_what_follows() {
    let Some(nats) = Nats::start("trimmed").await else {
        return;
    };
    let total = 3_000;
    let (lines, expected) = events_and_outputs(total).await;
    // A stream of a few messages: the early ones are gone by the resume.
    let config = Config {
        stream_max_bytes: 8 * 1024,
        ..nats.resumable_config()
    };
    let sequencer = SequencerNode::start(config.clone());
    let first = GatewayNode::start(config.clone()).await;
    let second = GatewayNode::start(config).await;
    let user = USERS[0];
    let (mut client, verdict) = resumable(first.clients, &format!("{user}||0\r\n")).await;
    let stream_id = verdict.split('|').nth(1).expect("a stream id").to_owned();
    let mut source = sequencer.source().await;
    // One message per chunk: each is applied before the next is sent.
    for chunk in lines[..2_500].chunks(100) {
        common::send(&mut source, &chunk.concat()).await;
        let last = chunk.last().map_or(0, |line| seq_of(line));
        first.delivered(last).await;
        second.delivered(last).await;
    }
    let received = between(&expected[0], 0, 500);
    let mut got = vec![0u8; received.len()];
    within("first lines", client.stream.read_exact(&mut got))
        .await
        .expect("read");
    let after = received.split_inclusive('\n').next_back().map_or(0, seq_of);
    drop(client);

    let hello = format!("{user}|{stream_id}|{after}\r\n");
    let (mut resumed, verdict) = resumable(second.clients, &hello).await;
    assert_eq!(verdict, format!("#GAP|{stream_id}|2500\r\n"));
    common::send(&mut source, &lines[2_500..].concat()).await;
    let owed = between(&expected[0], 2_500, total);
    let mut got = vec![0u8; owed.len()];
    within("lines after the gap", resumed.stream.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(String::from_utf8_lossy(&got), owed);
    assert_eq!(get(&second.stats.resumes_gap), 1);
    second.delivered(total).await;
    first.stop().await;
    second.stop().await;
    sequencer.kill();
}

/// The position of the newest snapshot in the bucket of `config`'s
/// cluster (0 if none), read as a gateway would choose it.
async fn newest_snapshot_position(config: &Config) -> u64 {
    use futures_util::StreamExt;
    let client = async_nats::connect(config.nats_url.as_str())
        .await
        .expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    let bucket = format!("{}_SNAPSHOTS", config.nats_stream);
    let store = jetstream
        .get_object_store(&bucket)
        .await
        .expect("the bucket");
    let mut list = store.list().await.expect("list");
    let mut newest = (0, 0);
    while let Some(info) = list.next().await {
        let info = info.expect("an object");
        let number = |key: &str| -> u64 {
            info.metadata
                .get(key)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        newest = newest.max((number("stream_seq"), number("position")));
    }
    newest.1
}

/// A gateway started late loads a snapshot taken after every client's
/// position, so its own history starts above them: each resume is planned
/// from an older snapshot kept in the bucket, replayed with the stream,
/// and every client gets `#OK` and exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_a_gateways_own_history_is_served_from_an_older_snapshot() {
    let Some(nats) = Nats::start("deep").await else {
        return;
    };
    let total = 3_000;
    let (lines, expected) = events_and_outputs(total).await;
    let config = nats.resumable_config();
    let sequencer = SequencerNode::start(config.clone());
    let first = GatewayNode::start(config.clone()).await;
    let (mut clients, stream_id) = open_sessions(first.clients).await;
    let mut source = sequencer.source().await;
    let afters = first_part(&mut clients, &mut source, (&lines, &expected), 1_500).await;
    first.stop().await;
    expect_end(&mut clients).await;

    // Events flow on while the clients are away, and a snapshot is taken
    // after them: the late gateway starts from it.
    common::send(&mut source, &lines[1_500..2_500].concat()).await;
    let snapshot_after_the_clients = async {
        while newest_snapshot_position(&config).await < 2_500 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    within("a snapshot at 2500", snapshot_after_the_clients).await;
    let late = GatewayNode::start(config.clone()).await;
    let mut resumed = resume_sessions(late.clients, &stream_id, &afters).await;
    common::send(&mut source, &lines[2_500..].concat()).await;
    let owed = owed_after(&expected, &afters, total);
    expect_all(&mut resumed, &owed, "late gateway").await;
    assert_eq!(get(&late.stats.stream_resumes), USERS.len() as u64);
    assert_eq!(get(&late.stats.resumes_gap), 0);
    late.delivered(total - 2_500).await;
    late.stop().await;
    expect_end(&mut resumed).await;
    sequencer.kill();
}

/// Reads what `client` gets until its connection ends, cleanly or not (a
/// killed gateway's kernel may reset it).
async fn read_until_cut(client: &mut Client) -> String {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    within("the connection to end", async {
        while let Ok(read @ 1..) = client.stream.read(&mut buffer).await {
            got.extend_from_slice(&buffer[..read]);
        }
    })
    .await;
    String::from_utf8(got).expect("ASCII lines")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_clients_resume_on_another_and_it_rejoins_from_a_snapshot() {
    let Some(nats) = Nats::start("kill").await else {
        return;
    };
    let total = 3_500;
    let (lines, expected) = events_and_outputs(total).await;
    // As the child gateway's environment says (`GatewayProcess::start`).
    let config = nats.resumable_config();
    let sequencer = SequencerNode::start(config.clone());
    let survivor = GatewayNode::start(config).await;
    let doomed_clients = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let doomed_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut doomed = GatewayProcess::start(&nats, "doomed", doomed_clients, doomed_metrics).await;
    let (mut clients, stream_id) = open_sessions(doomed.clients).await;

    // The first part, all of it on the doomed gateway.
    let mut source = sequencer.source().await;
    common::send(&mut source, &lines[..1_500].concat()).await;
    let mut received: Vec<String> = expected.iter().map(|o| between(o, 0, 1_500)).collect();
    expect_all(&mut clients, &received, "before the kill").await;

    // Events keep flowing while the gateway dies: 50 at a time, each lot
    // applied by the survivor before the next is sent.
    let flow = {
        let stats = survivor.stats.clone();
        let lines = lines[1_500..2_500].to_vec();
        tokio::spawn(async move {
            for chunk in lines.chunks(50) {
                common::send(&mut source, &chunk.concat()).await;
                let last = chunk.last().map_or(0, |line| seq_of(line));
                wait_until("the survivor applied the chunk", || {
                    get(&stats.events_delivered) >= last
                })
                .await;
            }
            source
        })
    };
    survivor.delivered(2_000).await;
    doomed.kill();
    let written_at_kill = get(&sequencer.stats.snapshots_written);
    // Whatever each client got before its connection was cut is what a
    // standalone server sends, possibly ending mid-line; it resumes after
    // its last whole line.
    let mut afters = Vec::new();
    for (index, client) in clients.iter_mut().enumerate() {
        received[index].push_str(&read_until_cut(client).await);
        assert!(
            expected[index].starts_with(&received[index]),
            "user {}: got {:?}",
            USERS[index],
            received[index]
        );
        let whole = &received[index][..received[index].rfind('\n').map_or(0, |end| end + 1)];
        afters.push(whole.split_inclusive('\n').next_back().map_or(0, seq_of));
    }
    let mut source = within("the flow", flow).await.expect("the flow task");

    // Each resumes on the survivor, which never served it: from the stream.
    let mut resumed = resume_sessions(survivor.clients, &stream_id, &afters).await;
    common::send(&mut source, &lines[2_500..3_000].concat()).await;
    let owed = owed_after(&expected, &afters, 3_000);
    expect_all(&mut resumed, &owed, "resumed on the survivor").await;
    assert_eq!(get(&survivor.stats.stream_resumes), USERS.len() as u64);

    // The killed gateway restarts, from a snapshot taken after it died.
    wait_until("a snapshot after the kill", || {
        get(&sequencer.stats.snapshots_written) > written_at_kill
    })
    .await;
    let mut rejoined =
        GatewayProcess::start(&nats, "rejoined", doomed_clients, doomed_metrics).await;
    assert_eq!(rejoined.metric("snapshots_loaded_total").await, 1);
    let mut fresh = rejoined.clients(&USERS).await;
    common::send(&mut source, &lines[3_000..].concat()).await;
    // Routing the last part right needs the follows of the first parts,
    // which reached the rejoined gateway only through its snapshot.
    let last_part: Vec<String> = expected
        .iter()
        .map(|output| between(output, 3_000, total))
        .collect();
    expect_all(&mut fresh, &last_part, "rejoined gateway").await;
    expect_all(&mut resumed, &last_part, "survivor, live").await;
    assert!(
        rejoined.metric("consumed_messages_total").await < get(&survivor.stats.consumed_messages),
        "the rejoined gateway replayed only what followed its snapshot"
    );

    assert!(rejoined.terminate().await.success(), "a clean exit");
    expect_end(&mut fresh).await;
    survivor.stop().await;
    expect_end(&mut resumed).await;
    sequencer.kill();
}

/// One node of a [`NatsCluster`]: a nats-server process.
struct NatsNode {
    /// Its server name (`-n`), as stream info names a leader.
    name: String,
    child: Option<Child>,
    /// Clients connect here.
    port: u16,
    /// Its `/jsz` and `/varz`.
    monitor: u16,
}

/// Three nats-servers with JetStream, one NATS cluster routed on
/// 127.0.0.1 (ports the test picks, a store each under one directory):
/// killed, and the stores removed, on drop.
struct NatsCluster {
    nodes: Vec<NatsNode>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Starts the three and waits until each knows JetStream's meta leader
    /// (until then JetStream answers nothing); `None` (after saying so) if
    /// nats-server is not installed.
    async fn start(name: &str) -> Option<NatsCluster> {
        if !nats_installed() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("fm-cluster-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Nine distinct ports: all bound at once, then let go.
        let ports: Vec<u16> = {
            let held: Vec<std::net::TcpListener> = (0..9)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0"))
                .collect();
            held.iter()
                .map(|listener| listener.local_addr().expect("bound").port())
                .collect()
        };
        let (clients, rest) = ports.split_at(3);
        let (routes, monitors) = rest.split_at(3);
        let route_urls: Vec<String> = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            dir,
        };
        for index in 0..3 {
            let name = format!("n{index}");
            let child = Command::new("nats-server")
                .args(["-js", "-n", &name, "-a", "127.0.0.1"])
                .args(["-p", &clients[index].to_string()])
                .args(["-m", &monitors[index].to_string()])
                .arg("-sd")
                .arg(cluster.dir.join(&name))
                .args(["--cluster_name", &format!("fm-{}", std::process::id())])
                .args(["--cluster", &route_urls[index]])
                .args(["--routes", &route_urls.join(",")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            cluster.nodes.push(NatsNode {
                name,
                child: Some(child),
                port: clients[index],
                monitor: monitors[index],
            });
        }
        within("every node to know the JetStream meta leader", async {
            for node in &cluster.nodes {
                let monitor = SocketAddr::from(([127, 0, 0, 1], node.monitor));
                loop {
                    if let Ok((200, body)) = http_get(monitor, "/jsz").await {
                        let jsz: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                        if jsz["meta_cluster"]["leader"]
                            .as_str()
                            .is_some_and(|l| !l.is_empty())
                        {
                            break;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        })
        .await;
        Some(cluster)
    }

    /// The three client URLs.
    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect()
    }

    /// A config pointing the cluster roles at all three, the stream and
    /// the snapshot bucket on three replicas.
    fn config(&self) -> Config {
        Config {
            // As `natsUrl` lists them.
            nats_url: self.urls().join(","),
            stream_replicas: 3,
            metrics_port: 0,
            summary_interval_secs: 0,
            snapshot_interval_secs: 1,
            ..Config::default()
        }
    }

    /// The stream `name`'s leader (a node's name) and its replicas,
    /// asking `$JS.API.STREAM.INFO` until the stream exists and has a
    /// leader other than `not` (the one killed).
    async fn stream_leader(
        js: &async_nats::jetstream::Context,
        name: &str,
        not: Option<&str>,
    ) -> (String, usize) {
        loop {
            if let Ok(stream) = js.get_stream(name).await {
                let info = stream.cached_info();
                let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
                if let Some(leader) = leader.filter(|l| !l.is_empty() && Some(l.as_str()) != not) {
                    return (leader, info.config.num_replicas);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs node `name`, and reaps it: gone when this returns.
    fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        let mut child = node.child.take().expect("running");
        child.kill().expect("SIGKILL sent");
        child.wait().expect("the killed nats-server reaped");
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Longer than [`common::PATIENCE`]: a replicated stream's new leader is
/// elected seconds after the old one dies (NATS's election timeout), then
/// the publisher and the consumers find it.
const FAILOVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until `condition`, failing the test after [`FAILOVER_PATIENCE`].
async fn wait_failover(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    if tokio::time::timeout(FAILOVER_PATIENCE, wait).await.is_err() {
        panic!("timed out ({FAILOVER_PATIENCE:?}) waiting for {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_nats_server_dies_and_every_client_still_gets_each_event_once() {
    let Some(mut nats) = NatsCluster::start("raft").await else {
        return;
    };
    let started = std::time::Instant::now();
    let total = 3_500;
    let (lines, expected) = events_and_outputs(total).await;
    let config = Config {
        checkpoint_interval_ms: 0,
        ..nats.config()
    };
    let sequencer = SequencerNode::start(config.clone());
    // Classic clients on one gateway; resumable ones on another, resumed
    // on a third after the kill.
    let gateway = GatewayNode::start(config.clone()).await;
    let origin = GatewayNode::start(config.clone()).await;
    let other = GatewayNode::start(config).await;
    let mut classic = gateway.clients(&USERS).await;
    let (mut sessions, stream_id) = open_sessions(origin.clients).await;

    // The stream is on three replicas, and has a leader.
    let client = within("a NATS client", async_nats::connect(nats.urls()))
        .await
        .expect("the test connects to NATS");
    let js = async_nats::jetstream::new(client);
    let (leader, replicas) = within(
        "the stream's leader",
        NatsCluster::stream_leader(&js, "FOLLOWERMAZE", None),
    )
    .await;
    assert_eq!(replicas, 3);

    // The first part; the resumable clients note their last line, and go.
    let mut source = sequencer.source().await;
    common::send(&mut source, &lines[..1_500].concat()).await;
    let received: Vec<String> = expected.iter().map(|o| between(o, 0, 1_500)).collect();
    expect_all(&mut sessions, &received, "resumable, before the kill").await;
    let afters: Vec<u64> = received
        .iter()
        .map(|lines| lines.split_inclusive('\n').next_back().map_or(0, seq_of))
        .collect();
    drop(sessions);

    // Events keep flowing, 50 at a time, each lot sent once the gateway
    // applied the one before last: one lot is always on its way.
    let flow = {
        let stats = gateway.stats.clone();
        let lines = lines[1_500..3_000].to_vec();
        tokio::spawn(async move {
            let mut applied = 1_500;
            for chunk in lines.chunks(50) {
                common::send(&mut source, &chunk.concat()).await;
                wait_failover("the gateway applied the lot before", || {
                    get(&stats.events_delivered) >= applied
                })
                .await;
                applied = chunk.last().map_or(0, |line| seq_of(line));
            }
            source
        })
    };
    // The kill strikes once 2,000 events are in the stream (the gateway
    // applied them: it sees only what a majority stored).
    gateway.delivered(2_000).await;
    nats.kill(&leader);
    let killed_at = std::time::Instant::now();
    let written_at_kill = get(&sequencer.stats.snapshots_written);
    let mut source = tokio::time::timeout(FAILOVER_PATIENCE, flow)
        .await
        .expect("the flow ends")
        .expect("the flow task");
    wait_failover("the gateway applied everything sent", || {
        get(&gateway.stats.events_delivered) >= 3_000
    })
    .await;
    let failover = killed_at.elapsed();
    let (new_leader, replicas) = tokio::time::timeout(
        FAILOVER_PATIENCE,
        NatsCluster::stream_leader(&js, "FOLLOWERMAZE", Some(&leader)),
    )
    .await
    .expect("a new stream leader");
    assert_ne!(new_leader, leader);
    assert_eq!(replicas, 3);
    // The snapshot bucket, replicated too, takes snapshots again.
    wait_failover("a snapshot after the kill", || {
        get(&sequencer.stats.snapshots_written) > written_at_kill
    })
    .await;
    wait_failover("the other gateway applied everything sent", || {
        get(&other.stats.events_delivered) >= 3_000
    })
    .await;

    // The resumable clients resume on the other gateway, which never
    // served them: their missed lines, before and after the kill, come
    // from the stream's surviving replicas.
    let mut resumed = resume_sessions(other.clients, &stream_id, &afters).await;
    common::send(&mut source, &lines[3_000..].concat()).await;
    let owed = owed_after(&expected, &afters, total);
    expect_all(&mut resumed, &owed, "resumed after the kill").await;
    assert_eq!(get(&other.stats.stream_resumes), USERS.len() as u64);

    // The classic clients, connected throughout: every event once, in
    // order, byte for byte what a standalone server sends.
    expect_all(&mut classic, &expected, "through the kill").await;
    gateway.delivered(total).await;
    other.delivered(total).await;
    assert_eq!(get(&gateway.stats.skipped_sequences), 0);
    assert_eq!(get(&sequencer.stats.skipped_sequences), 0);
    eprintln!(
        "stream leader {leader} killed after 2,000 events; new leader {new_leader}; \
         the gateway applied the rest {failover:?} after the kill; publish failures {}; \
         whole test {:?}",
        get(&sequencer.stats.publish_failures),
        started.elapsed()
    );
    gateway.stop().await;
    origin.stop().await;
    other.stop().await;
    expect_end(&mut classic).await;
    expect_end(&mut resumed).await;
    sequencer.kill();
}
