//! Resumable sessions under load, in one process over loopback: how long a
//! reconnecting client waits for its verdict while events keep flowing, and
//! how fast a 1 MiB replay arrives.
//!
//! `cargo bench --bench resume`. A source streams broadcasts at
//! `RESUME_RATE` events/s (default 100,000) the whole time. Then:
//!
//! 1. **Reconnect to verdict**: one resumable client reads for a few
//!    milliseconds, drops, reconnects at once with its position, and times
//!    connect-to-verdict; `RESUME_ROUNDS` times (default 500). Every verdict
//!    must be `#OK` at the client's own position and the stream must stay
//!    gapless, or the bench fails.
//! 2. **Replay of 1 MiB**: the client stays away until 1 MiB of lines it is
//!    owed has been sent, then resumes; times connect to the last replayed
//!    line, `RESUME_REPLAYS` times (default 5).
//!
//! Prints p50/p99/max of (1) and the median of (2).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use followermaze::{Config, Listeners, Stats};
use followermaze_protocol::resume::{parse_control, Control, StreamId, Verdict};
use followermaze_protocol::Seq;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of lines the replay measurement waits for.
const REPLAY_BYTES: u64 = 1 << 20;

/// Every wait gives up after this long (the bench then fails).
const PATIENCE: Duration = Duration::from_secs(20);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A resumable client: position, stream id and its connection.
struct Client {
    stream: Option<StreamId>,
    after: Seq,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// Connects (or resumes) and returns the verdict and the time it took.
    async fn connect(&mut self, port: u16) -> (Verdict, Seq, Duration) {
        let started = Instant::now();
        let mut socket = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        let stream = self.stream.map(|s| s.to_string()).unwrap_or_default();
        let hello = format!("1|{stream}|{}\r\n", self.after);
        socket.write_all(hello.as_bytes()).await.expect("hello");
        let mut conn = BufReader::new(socket);
        let mut line = Vec::new();
        conn.read_until(b'\n', &mut line).await.expect("verdict");
        let elapsed = started.elapsed();
        let Some(Control::Verdict {
            verdict,
            stream,
            seq,
        }) = parse_control(&line)
        else {
            panic!(
                "expected a verdict, got {:?}",
                String::from_utf8_lossy(&line)
            );
        };
        self.stream = Some(stream);
        self.after = seq;
        self.conn = Some(conn);
        (verdict, seq, elapsed)
    }

    /// Reads event lines until the position reaches `until`; returns the
    /// bytes read. Fails on a gap or a repeat.
    async fn read_until(&mut self, until: Seq) -> u64 {
        let conn = self.conn.as_mut().expect("connected");
        let mut line = Vec::new();
        let mut bytes = 0;
        while self.after < until {
            line.clear();
            conn.read_until(b'\n', &mut line).await.expect("line");
            if line.first() == Some(&b'#') {
                continue;
            }
            let end = line.iter().position(|&b| b == b'|').expect("an event line");
            let seq: Seq = std::str::from_utf8(&line[..end]).unwrap().parse().unwrap();
            assert_eq!(seq, self.after + 1, "a gap or a repeat at {seq}");
            self.after = seq;
            bytes += line.len() as u64;
        }
        bytes
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let rate = env_number("RESUME_RATE", 100_000);
        let rounds = env_number("RESUME_ROUNDS", 500) as usize;
        let replays = env_number("RESUME_REPLAYS", 5) as usize;

        let listeners = Listeners {
            events: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            clients: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            web: None,
            metrics: None,
        };
        let event_port = listeners.events.local_addr().expect("addr").port();
        let client_port = listeners.clients.local_addr().expect("addr").port();
        let config = Config {
            summary_interval_secs: 0,
            checkpoint_interval_ms: 0,
            resume_buffer_bytes: 4 << 20,
            max_client_buffer_bytes: 8 << 20,
            ..Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(followermaze::run_with_stats(
            listeners,
            config,
            Arc::new(Stats::default()),
            async move {
                let _ = stopped.await;
            },
        ));

        let mut client = Client {
            stream: None,
            after: 0,
            conn: None,
        };
        client.connect(client_port).await;

        // The source: paced broadcasts in 1 ms chunks until told to stop.
        let sent = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let source = {
            let (sent, done) = (sent.clone(), done.clone());
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(("127.0.0.1", event_port))
                    .await
                    .expect("source");
                let per_tick = (rate / 1000).max(1);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let mut seq = 0u64;
                let mut text = String::new();
                while !done.load(Ordering::Relaxed) {
                    tick.tick().await;
                    text.clear();
                    for _ in 0..per_tick {
                        seq += 1;
                        text.push_str(&format!("{seq}|B\r\n"));
                    }
                    socket.write_all(text.as_bytes()).await.expect("source write");
                    sent.store(seq, Ordering::Relaxed);
                }
            })
        };

        // 1. Reconnect to verdict, under load.
        let mut latencies = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let target = client.after + 50 + (round as u64 * 37) % 400;
            tokio::time::timeout(PATIENCE, client.read_until(target))
                .await
                .expect("lines keep coming");
            let after = client.after;
            client.conn = None;
            let (verdict, seq, elapsed) = client.connect(client_port).await;
            assert_eq!((verdict, seq), (Verdict::Ok, after), "round {round}");
            latencies.push(elapsed);
        }
        latencies.sort();
        println!(
            "reconnect to verdict at {rate} events/s, {rounds} resumes: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3,
        );

        // 2. A 1 MiB replay.
        let mut replay_times = Vec::with_capacity(replays);
        let mut replay_bytes = 0;
        for _ in 0..replays {
            client.conn = None;
            // Wait (off the clock) until 1 MiB of lines has been sent.
            let line_bytes = |seq: Seq| format!("{seq}|B\r\n").len() as u64;
            let mut owed = 0;
            let mut seq = client.after;
            let deadline = Instant::now() + PATIENCE;
            while owed < REPLAY_BYTES {
                assert!(Instant::now() < deadline, "the source stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
                while seq < sent.load(Ordering::Relaxed) && owed < REPLAY_BYTES {
                    seq += 1;
                    owed += line_bytes(seq);
                }
            }
            let started = Instant::now();
            let (verdict, _, _) = client.connect(client_port).await;
            assert_eq!(verdict, Verdict::Ok);
            replay_bytes = tokio::time::timeout(PATIENCE, client.read_until(seq))
                .await
                .expect("the replay arrives");
            replay_times.push(started.elapsed());
        }
        replay_times.sort();
        let median = replay_times[replay_times.len() / 2];
        println!(
            "replay of {:.2} MiB on resume at {rate} events/s: median {:.2} ms over {replays} ({:.0} MB/s)",
            replay_bytes as f64 / (1 << 20) as f64,
            median.as_secs_f64() * 1e3,
            replay_bytes as f64 / median.as_secs_f64() / 1e6,
        );

        done.store(true, Ordering::Relaxed);
        let _ = source.await;
        let _ = stop.send(());
        let _ = server.await;
    });
}
