//! One task per client connection: read in large chunks, cut lines, hand
//! each to the client's [`Checker`], and watch for notifications that are
//! overdue.
//!
//! A read takes whatever the socket holds (up to [`READ_BUFFER_BYTES`]), so
//! under load one syscall carries many notifications; the clock is read once
//! per read, not per line.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::check::{Checker, Verdict};
use super::expect::Tally;
use super::failure::{ClientRef, Failure};
use super::latency::Latencies;
use super::shared::Shared;
use followermaze_protocol::Seq;

/// Bytes one read may take. A line longer than this (no `\n` in a full
/// buffer) is reported as malformed: real lines are under 50 bytes.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The least time to wait before re-checking for an overdue notification,
/// so a deadline a few microseconds away does not spin.
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// What a client that got everything reports.
#[derive(Debug)]
pub struct ReaderOutcome {
    /// Which client.
    pub client: ClientRef,
    /// What it received of the main stream.
    pub tally: Tally,
    /// What it received of the opening broadcasts.
    pub opening: Tally,
    /// Its latency samples.
    pub latencies: Latencies,
    /// The first opening broadcast it received.
    pub first_broadcast: Option<Seq>,
    /// Notification bytes it received, as received: the tallies count
    /// re-terminated lines as the lines they stand for.
    pub bytes_received: u64,
    /// Notifications whose terminator differed from the one sent (accepted
    /// with `lineEndings=any` only).
    pub reterminated: u64,
}

/// Reads `client`'s notifications until the final broadcast, a failure
/// (recorded in `shared`, and then `None`), or cancellation.
pub async fn read_client(
    client: ClientRef,
    mut stream: TcpStream,
    mut checker: Checker,
    shared: Arc<Shared>,
    timeout: Duration,
) -> Option<ReaderOutcome> {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut filled = 0;
    let mut wait = timeout;
    let mut done = false;
    // Whole lines only, each checked: on success, every notification byte.
    let mut bytes_received: u64 = 0;
    while !done {
        let read = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return None,
            read = tokio::time::timeout(wait, stream.read(&mut buf[filled..])) => read,
        };
        let n = match read {
            Err(_elapsed) => {
                match checker.overdue(shared.clock.now_us(), timeout) {
                    Ok(next) => wait = next.max(MIN_RECHECK),
                    Err(failure) => {
                        shared.fail(failure);
                        return None;
                    }
                }
                continue;
            }
            Ok(Ok(0)) => {
                shared.fail(checker.closed());
                return None;
            }
            Ok(Ok(n)) => n,
            Ok(Err(error)) => {
                shared.fail(Failure::ClientIo {
                    client,
                    error: error.to_string(),
                });
                return None;
            }
        };
        wait = timeout;
        let now_us = shared.clock.now_us();
        let end = filled + n;
        let mut start = 0;
        let mut lines = 0;
        for newline in memchr::memchr_iter(b'\n', &buf[..end]) {
            let line = &buf[start..newline + 1];
            start = newline + 1;
            lines += 1;
            match checker.check(line, now_us) {
                Ok(Verdict::More) => {}
                // Anything after the final broadcast is checked too (and
                // fails: nothing is owed after it).
                Ok(Verdict::Done) => done = true,
                Err(failure) => {
                    shared.fail(failure);
                    return None;
                }
            }
        }
        shared.notifications.fetch_add(lines, Ordering::Relaxed);
        bytes_received += start as u64;
        shared
            .bytes_received
            .fetch_add(start as u64, Ordering::Relaxed);
        // Lines taken off the queue may be what the source is waiting for.
        shared.wake_source();
        buf.copy_within(start..end, 0);
        filled = end - start;
        if filled == buf.len() {
            shared.fail(checker.malformed(&buf[..filled]));
            return None;
        }
        if done && filled > 0 {
            // Part of a line after the final broadcast: nothing is owed
            // after it, so the check fails and names what came.
            let tail = buf[..filled].to_vec();
            shared.fail(
                checker
                    .check(&tail, now_us)
                    .err()
                    .unwrap_or_else(|| checker.malformed(&tail)),
            );
            return None;
        }
    }
    // Whatever is already buffered after the final broadcast is an extra
    // notification; later ones cannot be told from a late one, and the
    // final broadcast's place at the very end makes them unlikely.
    if let Ok(extra) = stream.try_read(&mut buf) {
        if extra > 0 {
            let extra = buf[..extra].to_vec();
            shared.fail(
                checker
                    .check(&extra, shared.clock.now_us())
                    .err()
                    .unwrap_or_else(|| checker.malformed(&extra)),
            );
            return None;
        }
    }
    Some(ReaderOutcome {
        client,
        tally: checker.tally(),
        opening: checker.opening_tally(),
        latencies: checker.latencies().clone(),
        first_broadcast: checker.first_broadcast(),
        bytes_received,
        reterminated: checker.reterminated(),
    })
}
