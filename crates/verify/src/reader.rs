//! One task per client: read in large chunks, cut lines, hand each to the
//! client's [`Checker`], and watch for notifications that are overdue. On a
//! resumable run, also drop the connection now and then, reconnect and
//! resume.
//!
//! A read takes whatever the socket holds (up to [`READ_BUFFER_BYTES`]), so
//! under load one syscall carries many notifications; the clock is read once
//! per read, not per line.
//!
//! # Resumable clients
//!
//! With a [`Resume`], control lines go to the client's [`Session`] and event
//! lines to the checker (their bytes also to the session, for the `#AT`
//! count and CRC-32). A connection ends, short of the final broadcast, in
//! one of two ways, neither a failure:
//!
//! - the client drops it, when its [`DropSchedule`] says: a clean close
//!   (`shutdown`, then close), a reset (`SO_LINGER` 0, then close), or a
//!   close right after reading the first byte of a line;
//! - the server closes or resets it (`faultResetEvery`, or a new stream).
//!
//! Either way, whatever part of a line was buffered is forgotten, the client
//! stays away for its schedule's offline wait, then reconnects at once: a
//! refused or failed attempt is retried with exponential backoff and jitter
//! until `timeout` has passed since the first. The next connection sends
//! `user|stream|after` and the session checks its verdict. A notification
//! owed all the while still times out as on a plain run: being away does not
//! stop the clock (which is why `offlineMs` must be below `timeout`).
//!
//! # Transports
//!
//! The reader reads a [`Connection`], which gives the byte stream a TCP
//! client gets whatever the transport (`transport=ws|sse`: WebSocket text
//! payloads back to back, or lines rebuilt from Server-Sent Events), so
//! everything above holds for web clients too; a web client's every
//! connection is resumable. A server that breaks the web wire fails the run
//! (`Failure::WebWire`), it is not a drop to resume from.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::check::{Checker, Verdict};
use super::config::Transport;
use super::connection::{self, Connection, OpenError, ReadError};
use super::drops::{DropKind, DropSchedule};
use super::expect::Tally;
use super::failure::{ClientRef, Failure, VerdictProblem};
use super::latency::Latencies;
use super::line::quote;
use super::session::{Reconnect, ResumeStats, Session};
use super::shared::Shared;
use followermaze_protocol::resume::is_control;
use followermaze_protocol::Seq;

/// Bytes one read may take. A line longer than this (no `\n` in a full
/// buffer) is reported as malformed: real lines are under 50 bytes.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The least time to wait before re-checking for an overdue notification,
/// so a deadline a few microseconds away does not spin.
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// What a client that got everything reports.
#[derive(Debug)]
pub(crate) struct ReaderOutcome {
    /// Which client.
    pub(crate) client: ClientRef,
    /// What it received of the main stream (and gave up to `#GAP`s).
    pub(crate) tally: Tally,
    /// What it received of the opening broadcasts.
    pub(crate) opening: Tally,
    /// Its latency samples.
    pub(crate) latencies: Latencies,
    /// The first opening broadcast it received.
    pub(crate) first_broadcast: Option<Seq>,
    /// Notification bytes it received, as received: the tallies count
    /// re-terminated lines as the lines they stand for.
    pub(crate) bytes_received: u64,
    /// Notifications whose terminator differed from the one sent (accepted
    /// with `lineEndings=any` only).
    pub(crate) reterminated: u64,
    /// On a resumable run, its drops, resumes and replays.
    pub(crate) resume: Option<ResumeStats>,
}

/// What a resumable client needs beside its checker.
#[derive(Debug)]
pub(crate) struct Resume {
    /// Where clients connect (`clientAddresses`, or the one client port).
    pub(crate) addresses: Arc<[SocketAddr]>,
    /// The index in `addresses` of the current connection's; each reconnect
    /// attempt moves to the next (a cluster's other gateway).
    pub(crate) at: usize,
    /// How it connects.
    pub(crate) transport: Transport,
    /// Its side of the protocol.
    pub(crate) session: Session,
    /// When it drops, for how long, and how it backs off.
    pub(crate) drops: DropSchedule,
}

/// Why a reader stopped early.
enum Stop {
    /// A failure, to record.
    Failed(Failure),
    /// The run is over (another task failed, or it ended).
    Cancelled,
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Stop {
        Stop::Failed(failure)
    }
}

/// Reconnects in a row that did not reach a verdict.
struct Streak {
    /// Attempts that failed: refused, timed out, or closed by the server
    /// before the verdict.
    failures: u32,
    /// When the streak began (the drop of the last connection that had a
    /// verdict): `timeout` bounds it.
    since: Instant,
}

/// How one connection ended.
enum End {
    /// The final broadcast arrived: the client has everything.
    Done,
    /// The client dropped it, this way.
    DroppedByUs(DropKind),
    /// The server closed or reset it.
    DroppedByServer,
}

/// Reads `client`'s notifications until the final broadcast, a failure
/// (recorded in `shared`, and then `None`), or cancellation. `stream` has
/// sent its handshake already; `resume` makes the client resumable.
pub(crate) async fn read_client(
    client: ClientRef,
    stream: Connection,
    checker: Checker,
    shared: Arc<Shared>,
    timeout: Duration,
    resume: Option<Resume>,
) -> Option<ReaderOutcome> {
    let mut reader = Reader {
        checker,
        shared,
        timeout,
        resume,
        buf: vec![0u8; READ_BUFFER_BYTES],
        bytes_received: 0,
    };
    match reader.run(stream).await {
        Ok(()) => {}
        Err(Stop::Failed(failure)) => {
            reader.shared.fail(failure);
            return None;
        }
        Err(Stop::Cancelled) => return None,
    }
    let checker = &reader.checker;
    Some(ReaderOutcome {
        client,
        tally: checker.tally(),
        opening: checker.opening_tally(),
        latencies: checker.latencies().clone(),
        first_broadcast: checker.first_broadcast(),
        bytes_received: reader.bytes_received,
        reterminated: checker.reterminated(),
        resume: reader.resume.map(|resume| *resume.session.stats()),
    })
}

/// One client's reading state.
struct Reader {
    /// Its checker.
    checker: Checker,
    /// The run's shared state.
    shared: Arc<Shared>,
    /// `timeout`.
    timeout: Duration,
    /// Set on a resumable run.
    resume: Option<Resume>,
    /// The read buffer; `buf[..filled]` of the current connection is an
    /// incomplete line.
    buf: Vec<u8>,
    /// Whole lines only, each checked: on success, every notification byte.
    bytes_received: u64,
}

impl Reader {
    /// Reads connection after connection until the final broadcast.
    async fn run(&mut self, mut stream: Connection) -> Result<(), Stop> {
        let mut wait = self.timeout;
        // Connections in a row that ended before their verdict, and when
        // the first of them began: a server that closes every connection at
        // once gets backoff, and `timeout` bounds the whole streak.
        let mut streak = Streak {
            failures: 0,
            since: Instant::now(),
        };
        loop {
            let end = self.read_connection(&mut stream, wait).await?;
            let Some(resume) = self.resume.as_mut() else {
                // Plain connections end only with the final broadcast.
                return Ok(());
            };
            let had_verdict = resume.session.has_verdict();
            let stats = resume.session.stats_mut();
            match end {
                End::Done => return Ok(()),
                End::DroppedByUs(kind) => stats.drops[kind.index()] += 1,
                // Closed before its verdict: refused (an outage, say).
                End::DroppedByServer if !had_verdict => stats.refused += 1,
                End::DroppedByServer => stats.server_drops += 1,
            }
            if let Some(failure) = self.checker.interrupted() {
                return Err(failure.into());
            }
            let dropped = Instant::now();
            if had_verdict {
                streak = Streak {
                    failures: 0,
                    since: dropped,
                };
            } else if matches!(end, End::DroppedByServer) {
                streak.failures += 1;
            }
            let written = self.shared.events_handed.load(Ordering::Acquire);
            drop(stream);
            (stream, wait) = self.reconnect(dropped, written, &mut streak).await?;
        }
    }

    /// Reads one connection until the final broadcast or, on a resumable
    /// run, a drop. The first read waits up to `wait` before checking for
    /// an overdue notification.
    async fn read_connection(
        &mut self,
        stream: &mut Connection,
        mut wait: Duration,
    ) -> Result<End, Stop> {
        let resumable = self.resume.is_some();
        let planned = match self.resume.as_mut() {
            Some(resume) => resume.drops.next_drop(),
            None => None,
        };
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let deadline = planned.map_or(far, |(delay, _)| Instant::now() + delay);
        let kill = tokio::time::sleep_until(deadline.into());
        tokio::pin!(kill);
        let mut kill_armed = planned.is_some();
        // One waiter on the run's end for the whole connection, not one
        // registered and removed again (under a lock) every read.
        let cancelled = self.shared.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        // A resumable connection's verdict is due within `timeout`.
        let connected = Instant::now();
        // A mid-line drop waits for the first byte of a line.
        let mut cut = false;
        let mut filled = 0;
        let mut done = false;
        while !done {
            if cut && filled > 0 {
                return Ok(End::DroppedByUs(DropKind::MidLine));
            }
            // When cutting, read one byte: the first of a line.
            let limit = if cut { filled + 1 } else { self.buf.len() };
            let read = tokio::select! {
                biased;
                () = &mut cancelled => return Err(Stop::Cancelled),
                () = &mut kill, if kill_armed => {
                    kill_armed = false;
                    match drop_connection(stream, planned.map(|(_, kind)| kind)).await {
                        Some(end) => return Ok(end),
                        None => {
                            cut = true;
                            continue;
                        }
                    }
                }
                read = tokio::time::timeout(wait, stream.read(&mut self.buf[filled..limit])) => read,
            };
            let n = match read {
                Err(_elapsed) => {
                    wait = self.wait_after_silence(connected)?;
                    continue;
                }
                Ok(Ok(0)) if resumable => return Ok(End::DroppedByServer),
                Ok(Ok(0)) => return Err(self.checker.closed().into()),
                Ok(Err(ReadError::Wire(error))) => return Err(self.wire(error).into()),
                Ok(Err(ReadError::Io(_))) if resumable => return Ok(End::DroppedByServer),
                Ok(Err(ReadError::Io(error))) => {
                    return Err(Failure::ClientIo {
                        client: self.checker.client(),
                        error: error.to_string(),
                    }
                    .into())
                }
                Ok(Ok(n)) => n,
            };
            wait = self.timeout;
            filled = self.take_lines(filled + n, &mut done)?;
        }
        self.check_after_final(stream, filled)?;
        Ok(End::Done)
    }

    /// The failure of a connection whose server broke the web wire.
    fn wire(&self, error: impl std::fmt::Display) -> Failure {
        Failure::WebWire {
            client: self.checker.client(),
            error: error.to_string(),
        }
    }

    /// Nothing arrived within the last wait: fails if a notification is
    /// overdue, or on a resumable connection (opened at `connected`) if its
    /// verdict is. Otherwise returns how long the next read may wait.
    fn wait_after_silence(&mut self, connected: Instant) -> Result<Duration, Failure> {
        let next = self
            .checker
            .overdue(self.shared.clock.now_us(), self.timeout)?;
        let mut wait = next.max(MIN_RECHECK);
        if let Some(resume) = &self.resume {
            if !resume.session.has_verdict() {
                let waited = connected.elapsed();
                if waited >= self.timeout {
                    return Err(Failure::BadVerdict {
                        client: self.checker.client(),
                        problem: VerdictProblem::Never { waited },
                        received: "nothing".into(),
                    });
                }
                wait = wait.min(self.timeout - waited).max(MIN_RECHECK);
            }
        }
        Ok(wait)
    }

    /// Checks the complete lines in `buf[..end]` and moves the incomplete
    /// rest to the start of the buffer; returns its length. Sets `done`
    /// when the final broadcast came.
    fn take_lines(&mut self, end: usize, done: &mut bool) -> Result<usize, Failure> {
        let start = self.lines(end, done)?;
        // Lines taken off the queue may be what the source is waiting for.
        self.shared.wake_source();
        self.buf.copy_within(start..end, 0);
        let filled = end - start;
        if filled == self.buf.len() {
            return Err(self.checker.malformed(&self.buf[..filled]));
        }
        Ok(filled)
    }

    /// After the final broadcast: checks the rest of the buffer
    /// (`buf[..filled]`, part of a line) and whatever `stream` already
    /// holds, neither of which is owed.
    fn check_after_final(&mut self, stream: &mut Connection, filled: usize) -> Result<(), Failure> {
        if filled > 0 {
            // Part of a line after the final broadcast.
            let tail = self.buf[..filled].to_vec();
            self.after_final(&tail)?;
        }
        // Whatever is already buffered after the final broadcast is an extra
        // notification; later ones cannot be told from a late one, and the
        // final broadcast's place at the very end makes them unlikely.
        match stream.read_now(&mut self.buf) {
            Ok(extra) => {
                let extra = self.buf[..extra].to_vec();
                self.after_final(&extra)?;
            }
            Err(ReadError::Wire(error)) => return Err(self.wire(error)),
            Err(ReadError::Io(_)) => {}
        }
        Ok(())
    }

    /// Checks the complete lines in `buf[..end]`; returns where the
    /// incomplete rest starts. Sets `done` when the final broadcast came.
    fn lines(&mut self, end: usize, done: &mut bool) -> Result<usize, Failure> {
        let now_us = self.shared.clock.now_us();
        let (mut start, mut span_start, mut span_lines) = (0, 0, 0);
        let (mut events, mut event_bytes) = (0u64, 0u64);
        for newline in memchr::memchr_iter(b'\n', &self.buf[..end]) {
            let line = &self.buf[start..newline + 1];
            let line_start = start;
            start = newline + 1;
            if let Some(resume) = self.resume.as_mut() {
                if is_control(line) {
                    // The event lines before it count for its checkpoint.
                    let session = &mut resume.session;
                    session.event_lines(&self.buf[span_start..line_start], span_lines);
                    span_start = start;
                    span_lines = 0;
                    let line = &self.buf[line_start..start];
                    let handed = self.shared.events_handed.load(Ordering::Acquire);
                    let now = Instant::now();
                    let latency = session.control(line, &mut self.checker, now, handed)?;
                    if let Some(latency) = latency {
                        self.shared.record_resume(latency);
                    }
                    // A `#GAP` may have given up the final broadcast.
                    *done |= self.checker.done();
                    continue;
                }
                if !resume.session.has_verdict() {
                    return Err(Failure::BadVerdict {
                        client: self.checker.client(),
                        problem: VerdictProblem::NotFirst,
                        received: quote(line),
                    });
                }
                span_lines += 1;
            }
            events += 1;
            event_bytes += line.len() as u64;
            let before = self.checker.last_seq();
            match self.checker.check(line, now_us)? {
                Verdict::More => {}
                // Anything after the final broadcast is checked too (and
                // fails: nothing is owed after it).
                Verdict::Done => *done = true,
            }
            if let Some(resume) = self.resume.as_mut() {
                let seq = self.checker.last_seq();
                if seq != before {
                    resume.session.accepted(seq);
                }
            }
        }
        if let Some(resume) = self.resume.as_mut() {
            resume
                .session
                .event_lines(&self.buf[span_start..start], span_lines);
        }
        self.shared
            .notifications
            .fetch_add(events, Ordering::Relaxed);
        self.bytes_received += event_bytes;
        self.shared
            .bytes_received
            .fetch_add(event_bytes, Ordering::Relaxed);
        Ok(start)
    }

    /// Checks `bytes`, which came after the final broadcast: nothing is owed
    /// after it, so an event line (or part of one) fails and names what
    /// came. On a resumable connection control lines may follow (complete
    /// ones are checked; part of one is the end of the read).
    fn after_final(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let now_us = self.shared.clock.now_us();
        let mut rest = bytes;
        while !rest.is_empty() {
            let cut = memchr::memchr(b'\n', rest).map_or(rest.len(), |newline| newline + 1);
            let (line, tail) = rest.split_at(cut);
            rest = tail;
            if let Some(resume) = self.resume.as_mut() {
                if is_control(line) {
                    if line.ends_with(b"\n") {
                        let handed = self.shared.events_handed.load(Ordering::Acquire);
                        let now = Instant::now();
                        resume
                            .session
                            .control(line, &mut self.checker, now, handed)?;
                    }
                    continue;
                }
            }
            return Err(self
                .checker
                .check(line, now_us)
                .err()
                .unwrap_or_else(|| self.checker.malformed(line)));
        }
        Ok(())
    }

    /// After a drop at `dropped` (the source having written up to
    /// `written` by then): stays away for the schedule's offline wait, then
    /// reconnects and sends the resume handshake. A failed attempt (and a
    /// connection the server closed before its verdict, counted in
    /// `streak`) is retried with backoff, for up to `timeout` since the
    /// streak began. Returns the connection and how long its first read may
    /// wait before a notification is overdue.
    async fn reconnect(
        &mut self,
        dropped: Instant,
        written: Seq,
        streak: &mut Streak,
    ) -> Result<(Connection, Duration), Stop> {
        let resume = self
            .resume
            .as_mut()
            .expect("only a resumable client reconnects");
        let (checker, shared, timeout) = (&mut self.checker, &self.shared, self.timeout);
        let mut pause = resume.drops.offline();
        if streak.failures > 0 {
            pause = pause.max(resume.drops.backoff(streak.failures));
        }
        if !pause.is_zero() {
            pause_unless_cancelled(shared, pause).await?;
        }
        let started = Instant::now();
        let mut error = String::from("the server closed the connection before its verdict");
        loop {
            let waited = streak.since.elapsed();
            if waited >= timeout {
                return Err(Failure::Reconnect {
                    client: checker.client(),
                    attempts: streak.failures,
                    waited,
                    error,
                }
                .into());
            }
            // A notification owed all this while fails as it would online.
            let wait = checker
                .overdue(shared.clock.now_us(), timeout)?
                .max(MIN_RECHECK);
            resume.at = (resume.at + 1) % resume.addresses.len();
            let address = resume.addresses[resume.at];
            let (session, transport) = (&mut resume.session, resume.transport);
            let attempt = async {
                let socket = connection::connect(address).await?;
                let reconnect = Reconnect {
                    dropped,
                    started,
                    written,
                };
                let hello = session.hello(checker.last_seq(), Some(reconnect));
                checker.set_connection(Some(session.connection()));
                connection::handshake(transport, socket, address, &hello).await
            };
            let remaining = (timeout - waited).max(MIN_RECHECK);
            let result = tokio::select! {
                () = shared.cancel.cancelled() => return Err(Stop::Cancelled),
                result = tokio::time::timeout(remaining, attempt) => result,
            };
            error = match judge_attempt(result.ok(), checker.client(), streak)? {
                Ok(stream) => return Ok((stream, wait)),
                Err(retry_because) => retry_because,
            };
            streak.failures += 1;
            resume.session.stats_mut().retries += 1;
            pause_unless_cancelled(shared, resume.drops.backoff(streak.failures)).await?;
        }
    }
}

/// What one reconnect attempt's outcome (`None`: it timed out) means for
/// `client`: the connection; a failure no further attempt can change (the
/// client fails now, not after `timeout`); or why to try again.
fn judge_attempt(
    outcome: Option<Result<Connection, OpenError>>,
    client: ClientRef,
    streak: &Streak,
) -> Result<Result<Connection, String>, Stop> {
    match outcome {
        Some(Ok(stream)) => Ok(Ok(stream)),
        Some(Err(OpenError::Wire(error))) => Err(Failure::WebWire {
            client,
            error: error.to_string(),
        }
        .into()),
        // A refusal that another attempt will not change (a token refused,
        // say): no use waiting for `timeout`.
        Some(Err(error)) if !error.is_transient() => Err(Failure::Reconnect {
            client,
            attempts: streak.failures + 1,
            waited: streak.since.elapsed(),
            error: error.to_string(),
        }
        .into()),
        Some(Err(error)) => Ok(Err(error.to_string())),
        None => Ok(Err("connection timed out".to_owned())),
    }
}

/// Drops `stream` the way `kind` says, its time having come: a clean close
/// (on a WebSocket, with a close frame first) or a reset (RST, on any
/// transport), and the connection's end; `None` for a mid-line drop, which
/// waits for the first byte of a line.
async fn drop_connection(stream: &mut Connection, kind: Option<DropKind>) -> Option<End> {
    match kind {
        Some(DropKind::Close) => {
            stream.close().await;
            Some(End::DroppedByUs(DropKind::Close))
        }
        Some(DropKind::Reset) => {
            stream.reset();
            Some(End::DroppedByUs(DropKind::Reset))
        }
        Some(DropKind::MidLine) | None => None,
    }
}

/// Sleeps for `pause`, unless the run is cancelled first.
async fn pause_unless_cancelled(shared: &Shared, pause: Duration) -> Result<(), Stop> {
    tokio::select! {
        () = shared.cancel.cancelled() => Err(Stop::Cancelled),
        () = tokio::time::sleep(pause) => Ok(()),
    }
}
