//! Server memory per idle client: starts the release server binary as a
//! child process, connects 10,000 clients (spread over several 127.x source
//! addresses), proves each is registered by a broadcast reaching it, and
//! reports the growth of the server's RSS per client.
//!
//! The descriptor limit is raised here, in the harness, and inherited by the
//! child; the product never raises it. Run: `cargo bench --bench idle_clients`
//! (`IDLE_CLIENTS=N` to change the count).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

/// Every phase gives up after this long.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid, owned struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = wanted.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let clients: usize = std::env::var("IDLE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    raise_fd_limit(clients as u64 * 2 + 1024);

    let binary = env!("CARGO_BIN_EXE_followermaze");
    let mut server = Command::new(binary)
        .env_clear()
        .env("bindAddress", "127.0.0.1")
        .env("eventListenerPort", "0")
        .env("clientListenerPort", "0")
        .env("metricsPort", "0")
        .env("summaryIntervalSecs", "0")
        .env("logLevel", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server binary");
    let pid = server.id().expect("server pid");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let startup = loop {
        let line = lines
            .next_line()
            .await
            .ok()
            .flatten()
            .expect("server exited");
        if line.contains("followermaze listening") {
            break line;
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |name: &str| -> String {
        let start = startup
            .find(&format!("{name}="))
            .expect("address in startup line")
            + name.len()
            + 1;
        startup[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let (events, client_addr) = (field("events"), field("clients"));
    let client_addr: std::net::SocketAddr = client_addr.parse().expect("client address");

    tokio::time::sleep(Duration::from_millis(200)).await; // let the runtime settle before the baseline
    let baseline = rss_kib(pid);

    let received = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut readers = Vec::with_capacity(clients);
    for index in 0..clients {
        let local = format!("127.0.0.{}:0", 2 + index % 8).parse().unwrap();
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(local).expect("bind a 127.x source address");
        let mut stream = tokio::time::timeout(PHASE_LIMIT, socket.connect(client_addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream
            .write_all(format!("{}\r\n", index + 1).as_bytes())
            .await
            .expect("handshake");
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut byte = [0u8; 64];
            if matches!(stream.read(&mut byte).await, Ok(n) if n > 0) {
                received.fetch_add(1, Ordering::Relaxed);
            }
            // Stay connected, idle, until the harness ends.
            let _ = stream.read(&mut byte).await;
        }));
    }
    let connected_in = started.elapsed();

    // Registration has no acknowledgement: broadcast until all have one.
    let mut source = TcpStream::connect(&events).await.expect("source");
    let mut seq = 0u64;
    let deadline = Instant::now() + PHASE_LIMIT;
    while received.load(Ordering::Relaxed) < clients {
        assert!(Instant::now() < deadline, "clients never all registered");
        seq += 1;
        source
            .write_all(format!("{seq}|B\r\n").as_bytes())
            .await
            .expect("source write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // let writers go idle
    let loaded = rss_kib(pid);
    let per_client = (loaded.saturating_sub(baseline)) as f64 * 1024.0 / clients as f64;
    println!(
        "idle_clients: {clients} clients connected in {:.2} s; server RSS {baseline} KiB -> {loaded} KiB; \
         {per_client:.0} bytes per idle client",
        connected_in.as_secs_f64()
    );
    let _ = server.start_kill();
    for reader in readers {
        reader.abort();
    }
}
