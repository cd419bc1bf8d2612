//! A resumable client's side of the protocol (README, "Resumable sessions"),
//! as the verifier holds a server to it. No I/O: the reader hands it the
//! control lines and the event lines' bytes, and asks it for each
//! connection's handshake.
//!
//! Per client it keeps the stream id and the highest position received from
//! control lines (the checker knows the event lines'), so the next handshake
//! says `user|stream|after` with `after` the highest of both; and per
//! connection, the verdict and the count and CRC-32 of the event lines
//! received since it, which every `#AT` must repeat.
//!
//! The rules, each a failure when broken:
//!
//! - The first line of every connection is a verdict; only one per
//!   connection.
//! - A first connection (`user||0`) gets `#OK`; the client is registered at
//!   its `<seq>` ([`Checker::registered_at`]).
//! - Every verdict and checkpoint names the client's stream.
//! - A resume gets `#OK` carrying the client's own `<after>`, or `#GAP` at or
//!   above `<after>`, and `#GAP` only from a client away for the whole
//!   window ([`SessionSettings::window`], less [`WINDOW_TOLERANCE_DIVISOR`]
//!   of it: the server notices a close and handles a handshake a little
//!   after the client does them).
//! - Each `#AT`'s count and CRC-32 are the client's own for this connection,
//!   its `<seq>` is not below the connection's position, and every line
//!   owed at or below it has arrived ([`Checker::checkpoint`]).
//!
//! A session's memory is a few words, however many connections and lines.

use std::time::{Duration, Instant};

use followermaze_protocol::resume::{parse_control, Control, StreamId, Verdict};
use followermaze_protocol::Seq;

use super::check::Checker;
use super::failure::{CheckpointProblem, ConnectionRef, Failure, VerdictProblem};
use super::line::quote;

/// A `#GAP` is accepted from a client away at least the window less this
/// fraction of it (a tenth).
pub const WINDOW_TOLERANCE_DIVISOR: u32 = 10;

/// What a session needs to know of the server.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// The server's `resumeWindowSecs`.
    pub window: Duration,
}

/// How a reconnect came about, for [`Session::hello`].
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    /// When the connection dropped.
    pub dropped: Instant,
    /// When the reconnect began (after the offline wait).
    pub started: Instant,
    /// Events the source had written by the drop.
    pub written: Seq,
}

/// A resumable client's counters, summed over its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeStats {
    /// Connections that sent a handshake.
    pub connections: u64,
    /// Drops the client made itself, by [`super::drops::DropKind::index`].
    pub drops: [u64; 3],
    /// Connections the server ended (a close or a reset), verdict or not.
    pub server_drops: u64,
    /// Resumes answered `#OK`.
    pub resumes_ok: u64,
    /// Resumes answered `#GAP`.
    pub resumes_gap: u64,
    /// Event lines received after a resume that the source had written
    /// before the drop: what the server had to replay (or still had on its
    /// way) rather than send live.
    pub replayed: u64,
    /// Notifications given up to `#GAP` verdicts.
    pub lost_to_gaps: u64,
    /// Failed reconnect attempts that were retried.
    pub retries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Time from each drop to the next verdict, summed.
    pub offline: Duration,
}

impl ResumeStats {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &ResumeStats) {
        self.connections += other.connections;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops) {
            *mine += theirs;
        }
        self.server_drops += other.server_drops;
        self.resumes_ok += other.resumes_ok;
        self.resumes_gap += other.resumes_gap;
        self.replayed += other.replayed;
        self.lost_to_gaps += other.lost_to_gaps;
        self.retries += other.retries;
        self.checkpoints += other.checkpoints;
        self.offline += other.offline;
    }

    /// Resumes, either verdict.
    pub fn resumes(&self) -> u64 {
        self.resumes_ok + self.resumes_gap
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct Session {
    /// The user id.
    user: u32,
    /// The server's settings.
    settings: SessionSettings,
    /// The stream of the last control line; `None` until a first verdict.
    stream: Option<StreamId>,
    /// The highest `<seq>` of a control line received.
    control_high: Seq,
    /// The connection now, for failures.
    connection: ConnectionRef,
    /// Whether this connection is a resume (it sent a stream id).
    resuming: bool,
    /// When the client's last connection dropped, until a verdict ends its
    /// absence; `None` while it has a connection with a verdict (and
    /// before its first).
    away: Option<Instant>,
    /// When this connection's reconnect began (after the offline wait), if
    /// it is a reconnect.
    reconnected: Option<Instant>,
    /// Event lines received on this connection since its verdict.
    count: u64,
    /// Their CRC-32.
    crc: crc32fast::Hasher,
    /// Lines at or below this, received on this connection, count as
    /// replayed; 0 once a later one came (sequences only rise).
    replay_mark: Seq,
    /// The counters.
    stats: ResumeStats,
}

impl Session {
    /// A session for `user` that has not connected yet.
    pub fn new(user: u32, settings: SessionSettings) -> Session {
        Session {
            user,
            settings,
            stream: None,
            control_high: 0,
            connection: ConnectionRef {
                number: 0,
                after: None,
                verdict: None,
            },
            resuming: false,
            away: None,
            reconnected: None,
            count: 0,
            crc: crc32fast::Hasher::new(),
            replay_mark: 0,
            stats: ResumeStats::default(),
        }
    }

    /// Starts a connection: returns its handshake, after `last_seq`, the
    /// highest event position received (the checker's). For a reconnect,
    /// `reconnect` says when the connection dropped, when the reconnect
    /// began, and how many events the source had written at the drop:
    /// lines up to those that arrive on this connection count as replayed.
    pub fn hello(&mut self, last_seq: Seq, reconnect: Option<Reconnect>) -> Vec<u8> {
        self.connection.number += 1;
        self.connection.verdict = None;
        self.stats.connections += 1;
        self.count = 0;
        self.crc = crc32fast::Hasher::new();
        self.reconnected = reconnect.map(|reconnect| reconnect.started);
        self.replay_mark = 0;
        if let Some(reconnect) = reconnect {
            // A connection that dropped before its verdict does not end the
            // absence: it began at the first drop.
            self.away = self.away.or(Some(reconnect.dropped));
            self.replay_mark = reconnect.written;
        }
        match self.stream {
            None => {
                self.resuming = false;
                self.connection.after = None;
                format!("{}||0\r\n", self.user).into_bytes()
            }
            Some(stream) => {
                let after = last_seq.max(self.control_high);
                self.resuming = true;
                self.connection.after = Some(after);
                format!("{}|{stream}|{after}\r\n", self.user).into_bytes()
            }
        }
    }

    /// The connection now, for failures.
    pub fn connection(&self) -> ConnectionRef {
        self.connection
    }

    /// Whether this connection's verdict has arrived.
    pub fn has_verdict(&self) -> bool {
        self.connection.verdict.is_some()
    }

    /// The counters so far.
    pub fn stats(&self) -> &ResumeStats {
        &self.stats
    }

    /// The counters, to add drops and retries to.
    pub fn stats_mut(&mut self) -> &mut ResumeStats {
        &mut self.stats
    }

    /// Counts `lines` event lines received on this connection, `bytes`
    /// being all of them back to back, terminators included.
    #[inline]
    pub fn event_lines(&mut self, bytes: &[u8], lines: u64) {
        self.crc.update(bytes);
        self.count += lines;
    }

    /// An event line at `seq` was accepted by the checker.
    #[inline]
    pub fn accepted(&mut self, seq: Seq) {
        if self.replay_mark > 0 {
            if seq <= self.replay_mark {
                self.stats.replayed += 1;
            } else {
                self.replay_mark = 0;
            }
        }
    }

    /// Checks control line `line` against the rules (see the module doc)
    /// and tells `checker` what it means. `now` is when it was read, and
    /// `handed` the last sequence number the source had written by then (no
    /// position can be beyond it). Returns, for a resume's verdict, the time
    /// from the start of the reconnect to it.
    pub fn control(
        &mut self,
        line: &[u8],
        checker: &mut Checker,
        now: Instant,
        handed: Seq,
    ) -> Result<Option<Duration>, Failure> {
        let Some(control) = parse_control(line) else {
            return Err(Failure::MalformedControl {
                client: checker.client(),
                received: quote(line),
            });
        };
        match control {
            Control::Verdict {
                verdict,
                stream,
                seq,
            } => self.verdict(line, checker, (now, handed), (verdict, stream, seq)),
            Control::Checkpoint {
                stream,
                seq,
                count,
                crc32,
            } => {
                if seq > handed {
                    return Err(Failure::BadCheckpoint {
                        client: checker.client(),
                        problem: CheckpointProblem::Ahead { handed },
                        received: quote(line),
                    });
                }
                self.checkpoint(line, checker, stream, seq, (count, crc32))?;
                Ok(None)
            }
        }
    }

    /// A verdict `(verdict, stream, seq)`, line `line`, read at `now` with
    /// the source at `handed`.
    fn verdict(
        &mut self,
        line: &[u8],
        checker: &mut Checker,
        (now, handed): (Instant, Seq),
        (verdict, stream, seq): (Verdict, StreamId, Seq),
    ) -> Result<Option<Duration>, Failure> {
        let fail = |checker: &Checker, problem| {
            Err(Failure::BadVerdict {
                client: checker.client(),
                problem,
                received: quote(line),
            })
        };
        if self.has_verdict() {
            return fail(checker, VerdictProblem::Again);
        }
        self.connection.verdict = Some((verdict, seq));
        checker.set_connection(Some(self.connection));
        if let Some(expected) = self.stream.filter(|&expected| expected != stream) {
            return fail(checker, VerdictProblem::OtherStream { expected });
        }
        if seq > handed {
            return fail(checker, VerdictProblem::Ahead { handed });
        }
        let away = self
            .away
            .take()
            .map(|dropped| now.saturating_duration_since(dropped));
        self.stats.offline += away.unwrap_or_default();
        self.control_high = self.control_high.max(seq);
        if !self.resuming {
            if verdict == Verdict::Gap {
                return fail(checker, VerdictProblem::GapOnFirst);
            }
            self.stream = Some(stream);
            checker.registered_at(seq);
            return Ok(None);
        }
        let after = self.connection.after.unwrap_or(0);
        match verdict {
            Verdict::Ok if seq != after => {
                return fail(checker, VerdictProblem::NotAtAfter { after })
            }
            Verdict::Ok => self.stats.resumes_ok += 1,
            Verdict::Gap => {
                let offline = away.unwrap_or_default();
                let window = self.settings.window;
                if offline < window - window / WINDOW_TOLERANCE_DIVISOR {
                    return fail(checker, VerdictProblem::EarlyGap { offline, window });
                }
                if seq < after {
                    return fail(checker, VerdictProblem::GapBehind { after });
                }
                self.stats.resumes_gap += 1;
                self.stats.lost_to_gaps += checker.gap(seq);
            }
        }
        Ok(self
            .reconnected
            .map(|started| now.saturating_duration_since(started)))
    }

    /// A checkpoint `#AT|stream|seq|count|crc32`, line `line`.
    fn checkpoint(
        &mut self,
        line: &[u8],
        checker: &mut Checker,
        stream: StreamId,
        seq: Seq,
        (count, crc32): (u64, u32),
    ) -> Result<(), Failure> {
        let fail = |checker: &Checker, problem| {
            Err(Failure::BadCheckpoint {
                client: checker.client(),
                problem,
                received: quote(line),
            })
        };
        let Some((_, verdict_seq)) = self.connection.verdict else {
            return fail(checker, CheckpointProblem::BeforeVerdict);
        };
        if let Some(expected) = self.stream.filter(|&expected| expected != stream) {
            return fail(checker, CheckpointProblem::OtherStream { expected });
        }
        if count != self.count {
            let counted = self.count;
            return fail(checker, CheckpointProblem::Count { counted });
        }
        let computed = self.crc.clone().finalize();
        if crc32 != computed {
            return fail(checker, CheckpointProblem::Crc { computed });
        }
        let position = verdict_seq.max(checker.last_seq());
        if seq < position {
            return fail(checker, CheckpointProblem::Behind { position });
        }
        checker.checkpoint(seq, line)?;
        self.stats.checkpoints += 1;
        self.control_high = self.control_high.max(seq);
        Ok(())
    }
}
