//! Resumable sessions: who has one, how long it lives, what a reconnecting
//! client is told, and the per-connection checkpoint state.
//!
//! The registry owns one [`Sessions`] and calls it at the points where a
//! session's life changes: a resumable connection registers ([`attach`]),
//! ends ([`detach`]), and time passes ([`purge_expired`]). The lines
//! themselves live in [`Retention`]; the registry records into it as it
//! routes, so what a session retains is decided exactly as live delivery is.
//!
//! The verdict rule ([`Sessions::attach`]), in order:
//!
//! 1. No stream id (a first connection): `#OK` at the current position.
//! 2. Another stream id (another process, or an older stream), a position
//!    ahead of the server's, or no session (never opened, or purged):
//!    `#GAP` at the current position, nothing replayed.
//! 3. The session's retained lines reach back to `after`: `#OK` at `after`,
//!    then every retained line above it.
//! 4. Otherwise: `#GAP` at the session's floor, then every retained line
//!    above the floor.
//!
//! In every case the session exists afterwards and retains from then on.
//!
//! [`attach`]: Sessions::attach
//! [`detach`]: Sessions::detach
//! [`purge_expired`]: Sessions::purge_expired

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use followermaze_protocol::resume::{write_checkpoint, write_verdict, StreamId, Verdict};
use followermaze_protocol::{Seq, UserId};
use hashbrown::HashMap;

use crate::resume::retention::{Replayable, Retention};
use crate::settings::{SessionSettings, SESSION_BYTES};

/// One session's life, beside its retained lines.
#[derive(Debug)]
struct Life {
    /// Resumable connections of this user open now.
    open: u32,
    /// When the last one closed (`None` while one is open).
    idle_since: Option<Instant>,
    /// Whether an entry for this user is in `Sessions::idle`: at most one
    /// is, so the purge queue never holds more entries than sessions.
    queued: bool,
}

/// What [`Sessions::attach`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attached {
    /// `#OK` or `#GAP`.
    pub verdict: Verdict,
    /// The verdict's `<seq>`.
    pub seq: Seq,
    /// Whether this connection opened the session.
    pub opened: bool,
}

/// Every session; see the module doc.
#[derive(Debug)]
pub(crate) struct Sessions {
    /// Settings.
    settings: SessionSettings,
    /// The current sequence space's id.
    stream: StreamId,
    /// Retained lines.
    retention: Retention,
    /// Each session's life, by user.
    lives: HashMap<UserId, Life>,
    /// `(when it went idle, user)`, oldest first: the purge order. An entry
    /// is stale if the user reconnected (or went idle again later) since;
    /// [`Sessions::purge_expired`] skips those. Bounded by the number of
    /// detaches within one window, each of which left an idle session.
    idle: VecDeque<(Instant, UserId)>,
}

impl Sessions {
    /// No sessions, a fresh stream id.
    pub(crate) fn new(settings: SessionSettings) -> Sessions {
        Sessions {
            settings,
            stream: new_stream_id(),
            retention: Retention::new(settings.limits),
            lives: HashMap::new(),
            idle: VecDeque::new(),
        }
    }

    /// The current stream id.
    pub(crate) fn stream(&self) -> StreamId {
        self.stream
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The retained lines (for the registry to record into).
    pub(crate) fn retention(&mut self) -> &mut Retention {
        &mut self.retention
    }

    /// Sessions open now.
    pub(crate) fn len(&self) -> usize {
        self.lives.len()
    }

    /// Bytes retained, as the total bound counts them.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retention.retained_bytes()
    }

    /// Lines lost to a retention bound, ever.
    pub(crate) fn evicted(&self) -> u64 {
        self.retention.evicted()
    }

    /// Names the sequence space `stream` (a cluster's, from the sequencer):
    /// if it is not the current id, every session ends as at a new stream.
    /// Returns the users whose sessions ended.
    pub(crate) fn adopt_stream(&mut self, stream: StreamId) -> Vec<UserId> {
        if stream == self.stream {
            return Vec::new();
        }
        let ended = self.new_stream();
        self.stream = stream;
        ended
    }

    /// A new stream begins: a new id, and every session ends (their
    /// positions belong to the old sequence space). Returns the users whose
    /// sessions ended.
    pub(crate) fn new_stream(&mut self) -> Vec<UserId> {
        self.stream = new_stream_id();
        self.retention.clear();
        self.idle.clear();
        self.lives.drain().map(|(user, _)| user).collect()
    }

    /// A resumable connection of `user` registers, having received up to
    /// `after` of `stream`; the server's position is `position`. Decides the
    /// verdict by the rule in the module doc, appends its line to `out`, and
    /// opens the session if it was not open. The lines owed after the
    /// verdict's `<seq>` come from [`Sessions::replay`].
    pub(crate) fn attach(
        &mut self,
        user: UserId,
        stream: Option<StreamId>,
        after: Seq,
        position: Seq,
        out: &mut Vec<u8>,
    ) -> Attached {
        let existed = self.lives.contains_key(&user);
        let life = self.lives.entry(user).or_insert(Life {
            open: 0,
            idle_since: None,
            queued: false,
        });
        life.open += 1;
        life.idle_since = None;
        let (verdict, seq) = match stream {
            None => (Verdict::Ok, position),
            Some(stream) if stream != self.stream || after > position || !existed => {
                (Verdict::Gap, position)
            }
            Some(_) => match self.retention.replayable(user, after) {
                Some(Replayable::Complete) => (Verdict::Ok, after),
                Some(Replayable::From(floor)) => (Verdict::Gap, floor.min(position)),
                None => (Verdict::Gap, position),
            },
        };
        let opened = self.retention.open(user, position);
        write_verdict(out, verdict, &self.stream, seq);
        Attached {
            verdict,
            seq,
            opened,
        }
    }

    /// Whether `user`'s session can replay everything above `after` (see
    /// [`Sessions::attach`], rule 3).
    pub(crate) fn can_replay(&self, user: UserId, after: Seq) -> bool {
        self.retention.replayable(user, after) == Some(Replayable::Complete)
    }

    /// Opens `user`'s session retaining lines above `position`, idle (as if
    /// its last connection had just closed at `now`), unless it is open.
    /// Returns whether it opened. For a resume from the shared stream: the
    /// lines above `position` are the session's, those below are fetched.
    pub(crate) fn reserve(&mut self, user: UserId, position: Seq, now: Instant) -> bool {
        if !self.lives.contains_key(&user) {
            self.lives.insert(
                user,
                Life {
                    open: 0,
                    idle_since: Some(now),
                    queued: true,
                },
            );
            self.idle.push_back((now, user));
        }
        self.retention.open(user, position)
    }

    /// A resumable connection of `user` registers with its lines in
    /// (`after`, `upto`] fetched from the shared stream of `stream`: if
    /// `stream` is still the current one and the session's retained lines
    /// reach back to `upto`, appends `#OK|<stream>|<after>` to `out`,
    /// counts the connection in the session, and returns `true`; the
    /// caller then stages the fetched lines and
    /// [`Sessions::replay`]`(user, upto)`. Otherwise changes nothing and
    /// returns `false` (then [`Sessions::attach`] decides).
    pub(crate) fn attach_fetched(
        &mut self,
        user: UserId,
        stream: StreamId,
        after: Seq,
        upto: Seq,
        out: &mut Vec<u8>,
    ) -> bool {
        if stream != self.stream || !self.can_replay(user, upto) {
            return false;
        }
        let Some(life) = self.lives.get_mut(&user) else {
            return false;
        };
        life.open += 1;
        life.idle_since = None;
        write_verdict(out, Verdict::Ok, &self.stream, after);
        true
    }

    /// Calls `each` with every retained line of `user` above `after`, in
    /// order.
    pub(crate) fn replay(&self, user: UserId, after: Seq, each: impl FnMut(&[u8])) {
        self.retention.replay(user, after, each);
    }

    /// Whether opening one more session would take the sessions' own cost
    /// past the total retention bound (each costs [`SESSION_BYTES`] even
    /// with no lines), so that the longest-idle one should make room.
    pub(crate) fn is_full(&self) -> bool {
        (self.lives.len() + 1) * SESSION_BYTES > self.settings.limits.total_bytes
    }

    /// Ends the session idle the longest, to make room; returns its user,
    /// or `None` if every session has a connection open.
    pub(crate) fn purge_oldest_idle(&mut self) -> Option<UserId> {
        // Each entry is looked at once or re-queued once with a later time,
        // so this ends within twice the queue's length.
        for _ in 0..2 * self.idle.len() {
            let (_, idle) = self.pop_idle()?;
            if let Some(user) = idle {
                self.lives.remove(&user);
                self.retention.close(user);
                return Some(user);
            }
        }
        None
    }

    /// A resumable connection of `user` ended at `now`.
    pub(crate) fn detach(&mut self, user: UserId, now: Instant) {
        let Some(life) = self.lives.get_mut(&user) else {
            return;
        };
        life.open = life.open.saturating_sub(1);
        if life.open == 0 {
            life.idle_since = Some(now);
            if !life.queued {
                life.queued = true;
                self.idle.push_back((now, user));
            }
        }
    }

    /// Takes the purge queue's front entry and says what it stands for:
    /// `Some(user)` if that user has been idle since the entry's time
    /// (the entry is spent), `None` otherwise. An entry for a user who
    /// reconnected and went idle again later is queued again with the later
    /// time (behind entries that may be later still: a purge can come
    /// late, never early).
    fn pop_idle(&mut self) -> Option<(Instant, Option<UserId>)> {
        let (since, user) = self.idle.pop_front()?;
        let Some(life) = self.lives.get_mut(&user) else {
            return Some((since, None));
        };
        life.queued = false;
        match life.idle_since {
            Some(idle) if life.open == 0 && idle == since => Some((since, Some(user))),
            Some(idle) if life.open == 0 => {
                life.queued = true;
                self.idle.push_back((idle, user));
                Some((since, None))
            }
            _ => Some((since, None)),
        }
    }

    /// Ends every session idle for the whole window by `now`; returns their
    /// users.
    pub(crate) fn purge_expired(&mut self, now: Instant) -> Vec<UserId> {
        let mut purged = Vec::new();
        while let Some(&(since, _)) = self.idle.front() {
            if now.saturating_duration_since(since) < self.settings.window {
                break;
            }
            if let Some((_, Some(user))) = self.pop_idle() {
                self.lives.remove(&user);
                self.retention.close(user);
                purged.push(user);
            }
        }
        purged
    }

    /// Whether `user` has a session.
    #[cfg(test)]
    fn contains(&self, user: UserId) -> bool {
        self.lives.contains_key(&user)
    }
}

/// A random stream id: 13 base-36 characters from the process's random
/// hash keys mixed with the clock, so two processes (or two streams of one
/// process) practically never share one.
pub(crate) fn new_stream_id() -> StreamId {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    hasher.write_u128(nanos);
    StreamId::from_u64(hasher.finish())
}

/// A resumable connection's running tally, for its checkpoints and its
/// fault-injection resets.
///
/// The tally appends the connection's event lines to its staged buffer
/// itself ([`Tally::push_line`]) and hashes them later, a run at a time
/// ([`Tally::hash_staged`]): crc32fast hashes a run of 64 bytes or more
/// several times faster per byte than one 15-byte line (the per-line
/// hashing was 6.5% of the server's CPU on resumable fan-out). What must
/// hold: from `unhashed` to the buffer's end there are only counted lines,
/// so the buffer is hashed before anything else is appended to it (a
/// checkpoint does so itself) and before it is handed to the writer.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// CRC-32 of every event line sent since the verdict, up to `unhashed`.
    crc: crc32fast::Hasher,
    /// Where in the staged buffer the lines not yet in `crc` begin, if any.
    unhashed: Option<usize>,
    /// How many lines were sent (hashed or not).
    count: u64,
    /// The `<seq>` of the last checkpoint or the verdict.
    checkpointed: Seq,
    /// Reset after this many lines (`u64::MAX`: never).
    reset_after: u64,
}

impl Tally {
    /// A tally starting at the verdict's `seq`.
    pub(crate) fn new(seq: Seq, fault_reset_every: u64) -> Tally {
        Tally {
            crc: crc32fast::Hasher::new(),
            unhashed: None,
            count: 0,
            checkpointed: seq,
            reset_after: match fault_reset_every {
                0 => u64::MAX,
                every => every,
            },
        }
    }

    /// Appends one event line to `staged`, the connection's staged buffer,
    /// and counts it. Returns `true` when fault injection says the
    /// connection is to be reset after it.
    #[inline]
    pub(crate) fn push_line(&mut self, staged: &mut Vec<u8>, line: &[u8]) -> bool {
        self.unhashed.get_or_insert(staged.len());
        staged.extend_from_slice(line);
        self.count += 1;
        self.count >= self.reset_after
    }

    /// Brings the CRC up to the end of `staged`, the buffer
    /// [`Tally::push_line`] appended to: before the buffer takes any other
    /// bytes, or goes to the writer.
    #[inline]
    pub(crate) fn hash_staged(&mut self, staged: &[u8]) {
        if let Some(from) = self.unhashed.take() {
            debug_assert!(from <= staged.len(), "the buffer lost unhashed lines");
            self.crc.update(staged.get(from..).unwrap_or_default());
        }
    }

    /// Appends a checkpoint at `position` to `out`, the staged buffer, if
    /// the position moved since the last one; returns whether it did.
    pub(crate) fn checkpoint(
        &mut self,
        out: &mut Vec<u8>,
        stream: &StreamId,
        position: Seq,
    ) -> bool {
        if position <= self.checkpointed {
            return false;
        }
        self.hash_staged(out);
        self.checkpointed = position;
        write_checkpoint(
            out,
            stream,
            position,
            self.count,
            self.crc.clone().finalize(),
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RetentionLimits;
    use followermaze_protocol::resume::{parse_control, Control};
    use std::time::Duration;

    const SETTINGS: SessionSettings = SessionSettings {
        window: Duration::from_secs(30),
        limits: RetentionLimits {
            per_session_bytes: 1 << 20,
            total_bytes: 1 << 24,
        },
        checkpoint_interval: Duration::from_secs(1),
        fault_reset_every: 0,
        fault_offline: Duration::ZERO,
    };

    /// Attaches and returns the verdict line and the replayed lines.
    fn attach(
        sessions: &mut Sessions,
        user: UserId,
        stream: Option<StreamId>,
        after: Seq,
        position: Seq,
    ) -> (Control, Vec<String>) {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        let attached = sessions.attach(user, stream, after, position, &mut out);
        sessions.replay(user, attached.seq, |line| {
            lines.push(String::from_utf8_lossy(line).into_owned())
        });
        (parse_control(&out).expect("a verdict line"), lines)
    }

    fn verdict(control: Control) -> (Verdict, Seq) {
        match control {
            Control::Verdict { verdict, seq, .. } => (verdict, seq),
            other => panic!("not a verdict: {other:?}"),
        }
    }

    fn record(sessions: &mut Sessions, user: UserId, seqs: std::ops::RangeInclusive<Seq>) {
        for seq in seqs {
            sessions
                .retention()
                .record(user, seq, format!("{seq}|B\r\n").as_bytes());
        }
    }

    #[test]
    fn first_connection_ok_at_the_position_then_an_exact_resume() {
        let mut sessions = Sessions::new(SETTINGS);
        let stream = sessions.stream();
        let (control, lines) = attach(&mut sessions, 7, None, 0, 100);
        assert_eq!(verdict(control), (Verdict::Ok, 100));
        assert!(lines.is_empty());
        record(&mut sessions, 7, 101..=110);
        sessions.detach(7, Instant::now());
        let (control, lines) = attach(&mut sessions, 7, Some(stream), 105, 110);
        assert_eq!(verdict(control), (Verdict::Ok, 105));
        assert_eq!(
            lines,
            (106..=110)
                .map(|s| format!("{s}|B\r\n"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn gaps_for_another_stream_a_position_ahead_and_no_session() {
        let mut sessions = Sessions::new(SETTINGS);
        let stream = sessions.stream();
        let other = StreamId::parse(b"zzz").unwrap();
        let (control, _) = attach(&mut sessions, 1, Some(stream), 50, 100);
        assert_eq!(verdict(control), (Verdict::Gap, 100), "no session yet");
        let (control, _) = attach(&mut sessions, 1, Some(other), 50, 100);
        assert_eq!(verdict(control), (Verdict::Gap, 100), "another stream");
        let (control, _) = attach(&mut sessions, 1, Some(stream), 101, 100);
        assert_eq!(verdict(control), (Verdict::Gap, 100), "ahead of the server");
        let (control, _) = attach(&mut sessions, 1, Some(stream), 100, 100);
        assert_eq!(
            verdict(control),
            (Verdict::Ok, 100),
            "now the session exists"
        );
    }

    #[test]
    fn a_resume_from_below_the_floor_is_a_gap_at_the_floor_with_the_rest() {
        let mut sessions = Sessions::new(SETTINGS);
        let stream = sessions.stream();
        attach(&mut sessions, 1, None, 0, 100);
        record(&mut sessions, 1, 101..=103);
        let (control, lines) = attach(&mut sessions, 1, Some(stream), 90, 103);
        assert_eq!(verdict(control), (Verdict::Gap, 100));
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn a_session_is_purged_a_window_after_its_last_connection() {
        let mut sessions = Sessions::new(SETTINGS);
        let start = Instant::now();
        attach(&mut sessions, 1, None, 0, 0);
        attach(&mut sessions, 1, None, 0, 0);
        sessions.detach(1, start);
        assert!(
            sessions.purge_expired(start + SETTINGS.window).is_empty(),
            "one still open"
        );
        sessions.detach(1, start + Duration::from_secs(1));
        assert!(
            sessions.purge_expired(start + SETTINGS.window).is_empty(),
            "not yet"
        );
        // A reconnect and a new idle period restart the clock.
        attach(&mut sessions, 1, None, 0, 0);
        sessions.detach(1, start + Duration::from_secs(10));
        assert!(sessions
            .purge_expired(start + Duration::from_secs(35))
            .is_empty());
        assert_eq!(
            sessions.purge_expired(start + Duration::from_secs(40)),
            vec![1]
        );
        assert!(!sessions.contains(1));
        assert_eq!(sessions.retained_bytes(), 0);
    }

    #[test]
    fn a_full_house_purges_the_longest_idle_session_first() {
        let mut sessions = Sessions::new(SessionSettings {
            limits: RetentionLimits {
                per_session_bytes: 1 << 10,
                total_bytes: 3 * SESSION_BYTES,
            },
            ..SETTINGS
        });
        let start = Instant::now();
        for user in 1..=3 {
            attach(&mut sessions, user, None, 0, 0);
        }
        assert!(sessions.is_full());
        assert_eq!(sessions.purge_oldest_idle(), None, "all connected");
        sessions.detach(2, start);
        sessions.detach(1, start + Duration::from_secs(1));
        assert_eq!(sessions.purge_oldest_idle(), Some(2));
        assert!(!sessions.is_full());
        assert_eq!(sessions.purge_oldest_idle(), Some(1));
        assert_eq!(sessions.purge_oldest_idle(), None);
    }

    #[test]
    fn a_client_that_keeps_reconnecting_queues_one_purge_entry() {
        let mut sessions = Sessions::new(SETTINGS);
        let start = Instant::now();
        for i in 0..1000 {
            attach(&mut sessions, 1, None, 0, 0);
            sessions.detach(1, start + Duration::from_millis(i));
        }
        assert_eq!(sessions.idle.len(), 1);
        // Idle since the last detach, so purged a window after it.
        let last = start + Duration::from_millis(999);
        assert!(sessions
            .purge_expired(last + SETTINGS.window / 2)
            .is_empty());
        assert!(sessions.purge_expired(start + SETTINGS.window).is_empty());
        assert_eq!(sessions.purge_expired(last + SETTINGS.window), vec![1]);
        assert!(sessions.idle.is_empty());
    }

    #[test]
    fn a_new_stream_ends_every_session_and_changes_the_id() {
        let mut sessions = Sessions::new(SETTINGS);
        let before = sessions.stream();
        attach(&mut sessions, 1, None, 0, 0);
        assert_eq!(sessions.new_stream(), vec![1]);
        assert_ne!(sessions.stream(), before);
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn checkpoints_carry_the_count_and_crc_of_lines_since_the_verdict() {
        let stream = StreamId::parse(b"abc").unwrap();
        let mut tally = Tally::new(10, 0);
        let mut out = Vec::new();
        assert!(
            !tally.checkpoint(&mut out, &stream, 10),
            "position did not move"
        );
        assert!(!tally.push_line(&mut out, b"11|B\r\n"));
        assert!(!tally.push_line(&mut out, b"12|B\r\n"));
        assert!(tally.checkpoint(&mut out, &stream, 12));
        let (lines, checkpoint) = out.split_at(12);
        assert_eq!(lines, b"11|B\r\n12|B\r\n");
        assert_eq!(
            parse_control(checkpoint),
            Some(Control::Checkpoint {
                stream,
                seq: 12,
                count: 2,
                crc32: crc32fast::hash(b"11|B\r\n12|B\r\n"),
            })
        );
    }

    #[test]
    fn the_crc_runs_on_across_flushes_of_the_staged_buffer() {
        let stream = StreamId::parse(b"abc").unwrap();
        let (mut tally, mut staged) = (Tally::new(10, 0), b"#OK|abc|10\r\n".to_vec());
        tally.push_line(&mut staged, b"11|B\r\n");
        tally.push_line(&mut staged, b"12|S|4\r\n");
        // A flush: hashed, then handed to the writer (the verdict with it).
        tally.hash_staged(&staged);
        staged.clear();
        tally.hash_staged(&staged);
        tally.push_line(&mut staged, b"13|B\n");
        assert!(tally.checkpoint(&mut staged, &stream, 13));
        let checkpoint = staged.split_off(b"13|B\n".len());
        assert_eq!(
            parse_control(&checkpoint),
            Some(Control::Checkpoint {
                stream,
                seq: 13,
                count: 3,
                crc32: crc32fast::hash(b"11|B\r\n12|S|4\r\n13|B\n"),
            })
        );
    }

    #[test]
    fn fault_injection_asks_for_a_reset_after_n_lines() {
        let (mut tally, mut out) = (Tally::new(0, 3), Vec::new());
        assert!(!tally.push_line(&mut out, b"1|B\r\n"));
        assert!(!tally.push_line(&mut out, b"2|B\r\n"));
        assert!(tally.push_line(&mut out, b"3|B\r\n"));
    }
}
