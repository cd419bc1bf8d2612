//! Running out of file descriptors: the accept loop must back off, not crash
//! or spin, and recover when descriptors free up. Its own test binary,
//! because it lowers the whole process's descriptor limit.

mod common;

use std::time::Instant;

use common::{get, send, wait_until, TestServer};
use followermaze::ACCEPT_BACKOFF;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

fn set_soft_fd_limit(limit: u64) -> u64 {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid, owned struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut current), 0);
        let lowered = libc::rlimit {
            rlim_cur: limit,
            rlim_max: current.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
    }
    current.rlim_cur
}

#[tokio::test]
async fn out_of_descriptors_backs_off_and_recovers() {
    let server = TestServer::start().await;
    let mut first = server.client(1).await;

    // Room for a few more connections, then none.
    let original = set_soft_fd_limit(open_descriptors() + 6);
    let mut extra = Vec::new();
    loop {
        match TcpStream::connect(server.clients).await {
            Ok(stream) => extra.push(stream),
            Err(_) => break, // our own side ran out: the limit is reached
        }
        if get(&server.stats.accept_errors) > 0 {
            break;
        }
        assert!(extra.len() < 100, "the descriptor limit did not bite");
    }
    wait_until("accept to fail for lack of descriptors", || {
        get(&server.stats.accept_errors) > 0
    })
    .await;
    let started = Instant::now();
    let errors_before = get(&server.stats.accept_errors);

    // While starved, the server keeps serving the client it has.
    let mut source = loop {
        // The source needs a descriptor on each side; free some first.
        drop(extra.pop());
        if let Ok(stream) = TcpStream::connect(server.events).await {
            break stream;
        }
    };
    set_soft_fd_limit(original);
    drop(extra);
    send(&mut source, "1|B\r\n").await;
    first.expect("1|B\r\n").await;

    // Descriptors are back: new clients are accepted again.
    let mut late = server.client(2).await;
    send(&mut source, "2|B\r\n").await;
    late.expect("2|B\r\n").await;
    first.expect("2|B\r\n").await;

    // Backing off means about one failed accept per pause, not thousands.
    let errors = get(&server.stats.accept_errors) - errors_before;
    let pauses = started.elapsed().as_millis() / ACCEPT_BACKOFF.as_millis() + 2;
    assert!(
        u128::from(errors) <= pauses,
        "{errors} accept errors in {} ms",
        started.elapsed().as_millis()
    );
    let _ = source.shutdown().await;
    server.stop().await.unwrap();
}
