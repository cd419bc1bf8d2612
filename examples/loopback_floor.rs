//! The paced floor: what the least a server can do costs on this machine.
//!
//! Issue 22 asks for ≤ 300 ns of server CPU per event at `rate=100000`.
//! This program measures what the kernel alone charges a server for the
//! same traffic, with no parsing, ordering or routing at all: a relay
//! thread makes one blocking `read` per source write and one `send` per
//! client owed something from that read, exactly the system calls our
//! server makes (it makes one `epoll_wait` more per read), and nothing
//! else. The relay's own CPU time (`/proc/thread-self/schedstat`, exact
//! nanoseconds) divided by the events is the floor; the server cannot go
//! below it without fewer reads or fewer sends, that is without delaying
//! notifications.
//!
//! The traffic copies the verifier's paced run: the source writes batches
//! of 1..=100 events of ~21 bytes and sleeps until each is due at `rate`;
//! each event is owed to one of `clients` clients with probability
//! `notify_ppm` per million (the classic mix reaches 100 connected clients
//! out of 1,000 users about 5.6% of the time), and each client owed
//! anything from a read gets one write. The clients are threads that read
//! and discard.
//!
//! ```sh
//! cargo run --release --example loopback_floor -- [events] [rate] [clients] [notify_ppm]
//! ```
//! Defaults: 1000000 100000 100 56000. Loopback only; it stops by itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// One event line's length, about the verifier's classic average.
const LINE: &[u8] = b"1234567|P|123|456\r\n";

fn main() -> std::io::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("arguments are numbers: events rate clients notify_ppm")
        })
        .collect();
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (events, rate, clients, notify_ppm) = (
        arg(0, 1_000_000),
        arg(1, 100_000),
        arg(2, 100) as usize,
        arg(3, 56_000),
    );

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let source = std::thread::spawn(move || paced_source(address, events, rate));
    let (mut from_source, _) = listener.accept()?;
    let mut to_clients = Vec::with_capacity(clients);
    let mut readers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = TcpStream::connect(address)?;
        readers.push(std::thread::spawn(move || drain(client)));
        let (accepted, _) = listener.accept()?;
        accepted.set_nodelay(true)?;
        to_clients.push(accepted);
    }

    let started_ns = thread_cpu_ns();
    let (mut reads, mut sends, mut seen) = (0u64, 0u64, 0u64);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut owed = vec![0usize; clients];
    let mut touched = Vec::with_capacity(clients);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    loop {
        let n = from_source.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        reads += 1;
        for _ in buffer[..n].iter().filter(|&&b| b == b'\n') {
            seen += 1;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng % 1_000_000 < notify_ppm {
                let client = (rng >> 32) as usize % clients;
                if owed[client] == 0 {
                    touched.push(client);
                }
                owed[client] += LINE.len();
            }
        }
        for client in touched.drain(..) {
            to_clients[client].write_all(&buffer[..owed[client].min(n)])?;
            owed[client] = 0;
            sends += 1;
        }
    }
    let cpu_ns = thread_cpu_ns() - started_ns;
    let switches = thread_switches();
    drop(to_clients);
    source.join().expect("the source thread")?;
    for reader in readers {
        reader.join().expect("a client thread")?;
    }
    println!(
        "events={seen} reads={reads} sends={sends} relay_cpu={:.3}s per_event={:.0}ns \
         per_read={:.1}us {switches}",
        cpu_ns as f64 / 1e9,
        cpu_ns as f64 / seen.max(1) as f64,
        cpu_ns as f64 / reads.max(1) as f64 / 1e3,
    );
    Ok(())
}

/// Writes `events` lines to `address` in batches of 1..=100, each sent
/// when due at `rate` events per second.
fn paced_source(address: std::net::SocketAddr, events: u64, rate: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut batch = Vec::with_capacity(100 * LINE.len());
    let started = Instant::now();
    let (mut sent, mut rng) = (0u64, 0x2545_F491_4F6C_DD1Du64);
    while sent < events {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = (1 + rng % 100).min(events - sent);
        batch.clear();
        for _ in 0..size {
            batch.extend_from_slice(LINE);
        }
        stream.write_all(&batch)?;
        sent += size;
        let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    Ok(())
}

/// Reads and discards until the relay closes.
fn drain(mut client: TcpStream) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    while client.read(&mut buffer)? > 0 {}
    Ok(())
}

/// This thread's CPU time so far, in nanoseconds (the scheduler's exact
/// count, not the tick-sampled `utime + stime`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// This thread's context switches, as `/proc` names them.
fn thread_switches() -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("ctxt_switches"))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(""))
        .collect::<Vec<_>>()
        .join(" ")
}
