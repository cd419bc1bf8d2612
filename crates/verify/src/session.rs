//! A resumable client's side of the protocol (README, "Resumable sessions"),
//! as the verifier holds a server to it. No I/O: the reader hands it the
//! control lines and the event lines' bytes, and asks it for each
//! connection's handshake (with a token, when the run has credentials:
//! `credentials`).
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use followermaze_protocol::resume::{parse_control, Control, StreamId, Verdict};
use followermaze_protocol::Seq;

use super::check::Checker;
use super::credentials::Credentials;
use super::failure::{CheckpointProblem, ConnectionRef, Failure, VerdictProblem};
use super::hello::{Hello, Start};
use super::line::quote;

/// A `#GAP` is accepted from a client away at least the window less this
/// fraction of it (a tenth).
pub(crate) const WINDOW_TOLERANCE_DIVISOR: u32 = 10;

/// What a session needs to know of the server.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    /// The server's `resumeWindowSecs`.
    pub(crate) window: Duration,
    /// Signs every handshake, when the server requires tokens
    /// (`authSecret`); shared by every session of the run.
    pub(crate) credentials: Option<Arc<Credentials>>,
}

/// How a reconnect came about, for [`Session::hello`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reconnect {
    /// When the connection dropped.
    pub(crate) dropped: Instant,
    /// When the reconnect began (after the offline wait).
    pub(crate) started: Instant,
    /// Events the source had written by the drop.
    pub(crate) written: Seq,
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
    /// Reconnects the server closed before their verdict (refused: an
    /// outage such as our server's `faultOfflineMs`), each retried.
    pub refused: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Time from each drop to the next verdict, summed.
    pub offline: Duration,
}

impl ResumeStats {
    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: &ResumeStats) {
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
        self.refused += other.refused;
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
pub(crate) struct Session {
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
    pub(crate) fn new(user: u32, settings: SessionSettings) -> Session {
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
    /// highest event position received (the checker's), with a fresh token
    /// for the user if the settings have credentials. For a reconnect,
    /// `reconnect` says when the connection dropped, when the reconnect
    /// began, and how many events the source had written at the drop:
    /// lines up to those that arrive on this connection count as replayed.
    pub(crate) fn hello(&mut self, last_seq: Seq, reconnect: Option<Reconnect>) -> Hello {
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
        let start = match self.stream {
            None => {
                self.resuming = false;
                self.connection.after = None;
                Start::First
            }
            Some(stream) => {
                let after = last_seq.max(self.control_high);
                self.resuming = true;
                self.connection.after = Some(after);
                Start::After { stream, after }
            }
        };
        Hello {
            user: self.user,
            start,
            token: self
                .settings
                .credentials
                .as_ref()
                .map(|credentials| credentials.token(self.user)),
        }
    }

    /// The connection now, for failures.
    pub(crate) fn connection(&self) -> ConnectionRef {
        self.connection
    }

    /// Whether this connection's verdict has arrived.
    pub(crate) fn has_verdict(&self) -> bool {
        self.connection.verdict.is_some()
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> &ResumeStats {
        &self.stats
    }

    /// The counters, to add drops and retries to.
    pub(crate) fn stats_mut(&mut self) -> &mut ResumeStats {
        &mut self.stats
    }

    /// Counts `lines` event lines received on this connection, `bytes`
    /// being all of them back to back, terminators included.
    #[inline]
    pub(crate) fn event_lines(&mut self, bytes: &[u8], lines: u64) {
        self.crc.update(bytes);
        self.count += lines;
    }

    /// An event line at `seq` was accepted by the checker.
    #[inline]
    pub(crate) fn accepted(&mut self, seq: Seq) {
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
    pub(crate) fn control(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::LineEndings;
    use crate::expect::Expected;
    use crate::failure::ClientRef;
    use crate::line::{Event, Kind};
    use crate::shared::{Plan, Shared};
    use followermaze_protocol::resume::{write_checkpoint, write_verdict};

    const WINDOW: Duration = Duration::from_secs(1);

    fn stream() -> StreamId {
        StreamId::parse(b"k3j9x0").unwrap()
    }

    /// A session of user 42 and its checker, the opening `1..=4`, then
    /// private messages `main` to user 42 and the final broadcast 20.
    fn setup(main: &[Seq]) -> (Session, Checker) {
        let shared = Arc::new(Shared::default());
        shared.set_plan(Plan {
            opening_end: 4,
            final_seq: 20,
        });
        let (mut producer, consumer) = rtrb::RingBuffer::new(16);
        for &seq in main {
            let event = Event {
                seq,
                kind: Kind::Private,
                from: 7,
                to: 42,
            };
            producer.push(Expected::new(&event, 0)).unwrap();
        }
        let checker = Checker::new(
            ClientRef::new(0, 42),
            consumer,
            shared,
            LineEndings::Exact,
            crate::line::LineWriter::new(100),
        );
        let settings = SessionSettings {
            window: WINDOW,
            credentials: None,
        };
        (Session::new(42, settings), checker)
    }

    fn verdict(verdict: Verdict, seq: Seq) -> Vec<u8> {
        let mut line = Vec::new();
        write_verdict(&mut line, verdict, &stream(), seq);
        line
    }

    fn checkpoint(seq: Seq, count: u64, crc32: u32) -> Vec<u8> {
        let mut line = Vec::new();
        write_checkpoint(&mut line, &stream(), seq, count, crc32);
        line
    }

    /// Feeds `line` as the reader would, the source at 1000.
    fn control(
        session: &mut Session,
        checker: &mut Checker,
        line: &[u8],
    ) -> Result<Option<Duration>, Failure> {
        session.control(line, checker, Instant::now(), 1000)
    }

    /// An event line as received: counted, then checked.
    fn event(session: &mut Session, checker: &mut Checker, line: &[u8]) {
        session.event_lines(line, 1);
        checker.check(line, 0).unwrap();
        session.accepted(checker.last_seq());
    }

    /// A drop `away` ago, then a reconnect now.
    fn reconnect(away: Duration, written: Seq) -> Option<Reconnect> {
        let now = Instant::now();
        Some(Reconnect {
            dropped: now - away,
            started: now,
            written,
        })
    }

    /// A connected session registered at `at`.
    fn registered(main: &[Seq], at: Seq) -> (Session, Checker) {
        let (mut session, mut checker) = setup(main);
        assert_eq!(session.hello(0, None).tcp_line(), b"42||0\r\n");
        control(&mut session, &mut checker, &verdict(Verdict::Ok, at)).unwrap();
        (session, checker)
    }

    #[test]
    fn handshakes_resume_after_the_highest_position_received() {
        let (mut session, mut checker) = registered(&[6, 9], 2);
        assert_eq!(checker.last_seq(), 2);
        // A drop before any line: resume after the verdict's position.
        let hello = session.hello(checker.last_seq(), reconnect(Duration::ZERO, 2));
        assert_eq!(hello.tcp_line(), b"42|k3j9x0|2\r\n");
        control(&mut session, &mut checker, &verdict(Verdict::Ok, 2)).unwrap();
        event(&mut session, &mut checker, b"3|B\r\n");
        let hello = session.hello(checker.last_seq(), reconnect(Duration::ZERO, 3));
        assert_eq!(hello.tcp_line(), b"42|k3j9x0|3\r\n");
        control(&mut session, &mut checker, &verdict(Verdict::Ok, 3)).unwrap();
        event(&mut session, &mut checker, b"4|B\r\n");
        // A checkpoint above the last line is the highest position.
        let crc = crc32fast::hash(b"4|B\r\n");
        control(&mut session, &mut checker, &checkpoint(5, 1, crc)).unwrap();
        let hello = session.hello(checker.last_seq(), reconnect(Duration::ZERO, 5));
        assert_eq!(hello.tcp_line(), b"42|k3j9x0|5\r\n");
        assert_eq!(session.connection().number, 4);
        assert_eq!(session.connection().after, Some(5));
    }

    #[test]
    fn with_credentials_every_handshake_ends_in_a_token_for_its_user() {
        use followermaze_protocol::auth::{split_token, Key};
        const SECRET: &[u8] = b"the session test's secret";
        let (_, mut checker) = setup(&[6]);
        let settings = SessionSettings {
            window: WINDOW,
            credentials: Some(Arc::new(Credentials::new(SECRET))),
        };
        let mut session = Session::new(42, settings);
        let key = Key::new(SECRET);
        let first = session.hello(0, None).tcp_line();
        assert!(first.starts_with(b"42||0|eyJ") && first.ends_with(b"\r\n"));
        let (fields, token) = split_token(&first);
        assert_eq!(fields, b"42||0");
        assert_eq!(key.check(token.expect("a token"), "42"), Ok(()));
        control(&mut session, &mut checker, &verdict(Verdict::Ok, 2)).unwrap();
        let resume = session
            .hello(checker.last_seq(), reconnect(Duration::ZERO, 2))
            .tcp_line();
        assert!(resume.ends_with(b"\r\n"));
        let (fields, token) = split_token(&resume);
        assert_eq!(fields, b"42|k3j9x0|2");
        assert_eq!(key.check(token.expect("a token"), "42"), Ok(()));
        // The session reads the fields, not the token: the resume is one.
        assert_eq!(session.connection().after, Some(2));
    }

    #[test]
    fn the_verdict_comes_first_once_and_a_first_connection_gets_ok() {
        let (mut session, mut checker) = setup(&[]);
        session.hello(0, None);
        let failure = control(&mut session, &mut checker, &verdict(Verdict::Gap, 3)).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadVerdict {
                    problem: VerdictProblem::GapOnFirst,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut session, mut checker) = setup(&[]);
        session.hello(0, None);
        let failure = control(&mut session, &mut checker, &checkpoint(3, 0, 0)).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadCheckpoint {
                    problem: CheckpointProblem::BeforeVerdict,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut session, mut checker) = registered(&[], 2);
        let failure = control(&mut session, &mut checker, &verdict(Verdict::Ok, 2)).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadVerdict {
                    problem: VerdictProblem::Again,
                    ..
                }
            ),
            "{failure}"
        );
        let failure = control(&mut session, &mut checker, b"#NO|k3j9x0|2\r\n").unwrap_err();
        assert!(
            matches!(failure, Failure::MalformedControl { .. }),
            "{failure}"
        );
    }

    #[test]
    fn a_resume_gets_ok_at_its_own_after() {
        let (mut session, mut checker) = registered(&[6, 9], 2);
        event(&mut session, &mut checker, b"3|B\r\n");
        session.hello(checker.last_seq(), reconnect(Duration::ZERO, 3));
        let failure = control(&mut session, &mut checker, &verdict(Verdict::Ok, 2)).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadVerdict {
                    problem: VerdictProblem::NotAtAfter { after: 3 },
                    client: ClientRef {
                        connection: Some(crate::failure::ConnectionRef {
                            number: 2,
                            after: Some(3),
                            verdict: Some((Verdict::Ok, 2)),
                        }),
                        ..
                    },
                    ..
                }
            ),
            "{failure}"
        );
        let text = failure.to_string();
        assert!(
            text.contains("on connection 2 (resumed after 3, got #OK 2)"),
            "{text}"
        );
    }

    #[test]
    fn a_gap_is_accepted_only_after_the_window_and_gives_up_the_lines() {
        let (mut session, mut checker) = registered(&[6, 9, 12], 4);
        session.hello(4, reconnect(WINDOW / 2, 4));
        let failure = control(&mut session, &mut checker, &verdict(Verdict::Gap, 9)).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadVerdict {
                    problem: VerdictProblem::EarlyGap { .. },
                    ..
                }
            ),
            "{failure}"
        );

        let (mut session, mut checker) = registered(&[6, 9, 12], 4);
        // Away the window less its tolerance: accepted.
        session.hello(4, reconnect(WINDOW - WINDOW / 10, 4));
        control(&mut session, &mut checker, &verdict(Verdict::Gap, 9)).unwrap();
        assert_eq!(session.stats().resumes_gap, 1);
        assert_eq!(session.stats().lost_to_gaps, 2);
        assert!(session.stats().offline >= WINDOW - WINDOW / 10);
        event(&mut session, &mut checker, b"12|P|7|42\r\n");
        assert_eq!(checker.last_seq(), 12);

        let (mut session, mut checker) = registered(&[6, 9], 4);
        session.event_lines(b"", 0);
        event(&mut session, &mut checker, b"6|P|7|42\r\n");
        session.hello(6, reconnect(WINDOW * 2, 6));
        let failure = control(&mut session, &mut checker, &verdict(Verdict::Gap, 5)).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadVerdict {
                    problem: VerdictProblem::GapBehind { after: 6 },
                    ..
                }
            ),
            "{failure}"
        );
    }

    #[test]
    fn verdicts_and_checkpoints_name_the_clients_stream_and_a_reached_position() {
        let (mut session, mut checker) = registered(&[], 2);
        let mut other = Vec::new();
        write_checkpoint(&mut other, &StreamId::parse(b"zz").unwrap(), 3, 0, 0);
        let failure = control(&mut session, &mut checker, &other).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadCheckpoint {
                    problem: CheckpointProblem::OtherStream { .. },
                    ..
                }
            ),
            "{failure}"
        );
        let (mut session, mut checker) = registered(&[], 2);
        let failure = session
            .control(&checkpoint(3, 0, 0), &mut checker, Instant::now(), 2)
            .unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadCheckpoint {
                    problem: CheckpointProblem::Ahead { handed: 2 },
                    ..
                }
            ),
            "{failure}"
        );
        let (mut session, mut checker) = setup(&[]);
        session.hello(0, None);
        let failure = session
            .control(&verdict(Verdict::Ok, 7), &mut checker, Instant::now(), 6)
            .unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::BadVerdict {
                    problem: VerdictProblem::Ahead { handed: 6 },
                    ..
                }
            ),
            "{failure}"
        );
    }

    #[test]
    fn checkpoints_carry_this_connections_count_and_crc() {
        let lines: &[&[u8]] = &[b"3|B\r\n", b"4|B\r\n", b"6|P|7|42\r\n"];
        let mut crc = crc32fast::Hasher::new();
        let (mut session, mut checker) = registered(&[6, 9], 2);
        for line in lines {
            event(&mut session, &mut checker, line);
            crc.update(line);
        }
        let crc = crc.finalize();
        for (line, problem) in [
            (
                checkpoint(6, 2, crc),
                CheckpointProblem::Count { counted: 3 },
            ),
            (
                checkpoint(6, 3, crc ^ 1),
                CheckpointProblem::Crc { computed: crc },
            ),
            (
                checkpoint(5, 3, crc),
                CheckpointProblem::Behind { position: 6 },
            ),
        ] {
            let failure = control(&mut session, &mut checker, &line).unwrap_err();
            assert!(
                matches!(failure, Failure::BadCheckpoint { problem: got, .. } if got == problem),
                "{failure}"
            );
        }
        control(&mut session, &mut checker, &checkpoint(8, 3, crc)).unwrap();
        assert_eq!(session.stats().checkpoints, 1);
        // A checkpoint past an owed line that did not come: missing.
        let failure = control(&mut session, &mut checker, &checkpoint(9, 3, crc)).unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 9, .. }),
            "{failure}"
        );
        // A new connection counts afresh.
        session.hello(checker.last_seq(), reconnect(Duration::ZERO, 9));
        control(&mut session, &mut checker, &verdict(Verdict::Ok, 8)).unwrap();
        control(&mut session, &mut checker, &checkpoint(8, 0, 0)).unwrap();
    }

    #[test]
    fn lines_written_before_the_drop_count_as_replayed() {
        let (mut session, mut checker) = registered(&[6, 9, 12], 4);
        session.hello(4, reconnect(Duration::ZERO, 9));
        control(&mut session, &mut checker, &verdict(Verdict::Ok, 4)).unwrap();
        for line in [&b"6|P|7|42\r\n"[..], b"9|P|7|42\r\n", b"12|P|7|42\r\n"] {
            event(&mut session, &mut checker, line);
        }
        assert_eq!(session.stats().replayed, 2);
        assert_eq!(session.stats().resumes(), 1);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_control_lines_never_panic(
            lines in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..48), 1..6),
        ) {
            let (mut session, mut checker) = registered(&[6, 9], 2);
            for (index, mut line) in lines.into_iter().enumerate() {
                line.insert(0, b'#');
                if index % 2 == 1 {
                    session.hello(checker.last_seq(), reconnect(Duration::ZERO, 9));
                }
                let _ = control(&mut session, &mut checker, &line);
            }
        }
    }

    #[test]
    fn a_resume_reports_its_time_from_reconnect_to_verdict() {
        let (mut session, mut checker) = registered(&[], 2);
        let dropped = Instant::now();
        let started = dropped + Duration::from_millis(5);
        session.hello(
            2,
            Some(Reconnect {
                dropped,
                started,
                written: 2,
            }),
        );
        let latency = session
            .control(
                &verdict(Verdict::Ok, 2),
                &mut checker,
                started + Duration::from_millis(3),
                9,
            )
            .unwrap();
        assert_eq!(latency, Some(Duration::from_millis(3)));
        assert_eq!(session.stats().offline, Duration::from_millis(8));
    }
}
