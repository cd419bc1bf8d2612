//! Retained lines for resumable sessions: what each session's user was sent
//! (or would have been, while away), kept so a reconnecting client can be
//! given exactly what it missed.
//!
//! Every line concerning at least one session is copied once into an
//! append-only log of 64 KiB chunks, however many sessions it concerns;
//! each session holds references into the log, in sequence order. Two
//! bounds hold at every moment:
//!
//! - **Per session**, its lines' bytes plus [`REF_BYTES`] per reference stay
//!   within `per_session_bytes`: past it, the session's oldest references go
//!   first.
//! - **In total**, the log's line bytes, [`ENTRY_BYTES`] per logged line,
//!   [`REF_BYTES`] per reference and [`SESSION_BYTES`] per session stay
//!   within `total_bytes`: past it, the oldest logged lines go first (down to
//!   7/8 of the bound, so eviction runs in rounds, not per line), and every
//!   session that referenced one drops it.
//!
//! Lines leave the log from its front. One old line that a session still
//! holds would keep every later line in the log, referenced or not, so when
//! at least half the logged lines (and at least [`COMPACT_MIN_DEAD`]) are
//! referenced by no session, the log is **compacted**: the live lines are
//! copied into fresh chunks and every reference renumbered, in time linear
//! in the live lines, which the dead ones outnumber: O(1) per line overall.
//!
//! Each session has a **floor**: no line at or below it can be replayed. It
//! starts at the position the session was opened at and rises to the
//! sequence of the newest line the session lost to a bound. A resume from
//! `after >= floor` is complete; one from below the floor is not, and the
//! caller says so (`#GAP`). After a total-bound round the floor rises to the
//! round's newest evicted line, which may be above the session's own
//! newest lost line: a conservative floor, never an optimistic one.
//!
//! Pure data structure: no I/O, no clocks; the registry decides when
//! sessions open and close.

use std::collections::VecDeque;

use followermaze_protocol::{Seq, UserId};
use hashbrown::HashMap;

use crate::settings::{RetentionLimits, SESSION_BYTES};

/// Size of one chunk of the line log. A line never spans two chunks; a
/// chunk's unused tail (under one line, at most 4 KiB) is the only memory
/// the byte counts leave out.
const CHUNK_BYTES: usize = 64 * 1024;

/// What one logged line costs beside its bytes, for the total bound.
pub(crate) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// What one session's reference to a line costs, for both bounds.
pub(crate) const REF_BYTES: usize = std::mem::size_of::<Ref>();

/// Compaction waits for at least this many unreferenced lines (and for
/// them to be at least half the log), so it runs in rounds, not per line.
const COMPACT_MIN_DEAD: usize = 4096;

/// A total-bound round evicts down to this fraction of the bound (7/8).
const EVICT_TO_EIGHTHS: usize = 7;

/// Asks the CPU to start loading `value`'s cache line. A hint: it changes
/// nothing the program computes, and where there is no such instruction it
/// does nothing.
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program can see and cannot
    // fault; the pointer comes from a reference, so it is valid anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// One logged line.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its sequence number; entries are in strictly increasing order.
    seq: Seq,
    /// The chunk holding its bytes (absolute chunk number).
    chunk: u64,
    /// Where in the chunk its bytes start.
    start: u32,
    /// How many bytes, terminator included.
    len: u32,
    /// How many sessions reference it; at 0 it is dropped once it is the
    /// oldest entry.
    refs: u32,
}

/// A session's reference to a logged line.
#[derive(Debug, Clone, Copy)]
struct Ref {
    /// The entry's absolute id (its index plus `Retention::first_entry`).
    id: u64,
    /// The line's length, kept here so a reference whose entry was evicted
    /// can still be accounted for.
    len: u32,
}

/// One session's retained lines.
#[derive(Debug, Default)]
struct Retained {
    /// References in increasing order of id (and so of sequence).
    refs: VecDeque<Ref>,
    /// Line bytes referenced (each counted once per session).
    line_bytes: usize,
    /// No line at or below this can be replayed.
    floor: Seq,
}

impl Retained {
    /// This session's cost against `per_session_bytes`.
    fn cost(&self) -> usize {
        self.line_bytes + self.refs.len() * REF_BYTES
    }
}

/// What the session of a user can replay after a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replayable {
    /// Every retained line after `after` is there.
    Complete,
    /// Lines at or below this floor (and above `after`) may be lost.
    From(Seq),
}

/// The retained lines of every session; see the module doc.
#[derive(Debug)]
pub(crate) struct Retention {
    /// The two bounds.
    limits: RetentionLimits,
    /// Line bytes, in chunks of [`CHUNK_BYTES`] capacity, oldest first.
    chunks: VecDeque<Vec<u8>>,
    /// Absolute number of `chunks[0]`.
    first_chunk: u64,
    /// An emptied chunk kept for the next one, so a steady stream does not
    /// allocate a chunk per 64 KiB.
    spare: Option<Vec<u8>>,
    /// Logged lines, oldest first.
    entries: VecDeque<Entry>,
    /// Absolute id of `entries[0]`.
    first_entry: u64,
    /// Every session, by user.
    sessions: HashMap<UserId, Retained>,
    /// Line bytes of all entries.
    line_bytes: usize,
    /// References held by all sessions.
    refs: usize,
    /// Entries no session references any more, still in the log (behind a
    /// referenced one); see the module doc on compaction.
    dead: usize,
    /// Compaction waits for this many dead entries ([`COMPACT_MIN_DEAD`];
    /// the tests lower it to compact often).
    compact_min_dead: usize,
    /// Logged lines evicted by the total bound, ever (for metrics).
    evicted_total: u64,
    /// References dropped by the per-session bound, ever (for metrics).
    trimmed_total: u64,
}

impl Retention {
    /// An empty store with `limits`.
    pub(crate) fn new(limits: RetentionLimits) -> Retention {
        Retention {
            limits,
            chunks: VecDeque::new(),
            first_chunk: 0,
            spare: None,
            entries: VecDeque::new(),
            first_entry: 0,
            sessions: HashMap::new(),
            line_bytes: 0,
            refs: 0,
            dead: 0,
            compact_min_dead: COMPACT_MIN_DEAD,
            evicted_total: 0,
            trimmed_total: 0,
        }
    }

    /// Opens a session for `user` retaining lines after `position`, unless
    /// one is open already. Returns whether it is new.
    pub(crate) fn open(&mut self, user: UserId, position: Seq) -> bool {
        if self.sessions.contains_key(&user) {
            return false;
        }
        self.sessions.insert(
            user,
            Retained {
                floor: position,
                ..Retained::default()
            },
        );
        self.enforce_total();
        true
    }

    /// How many sessions are open.
    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes held, as the total bound counts them.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.line_bytes
            + self.entries.len() * ENTRY_BYTES
            + self.refs * REF_BYTES
            + self.sessions.len() * SESSION_BYTES
    }

    /// Lines and references lost to a bound, ever.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted_total + self.trimmed_total
    }

    /// Records that `line`, event `seq`, concerns `user`'s session. Calls
    /// must come in sequence order; all sessions a line concerns are
    /// recorded before the next line, so the line is logged once.
    ///
    /// Does nothing if `user` has no session.
    pub(crate) fn record(&mut self, user: UserId, seq: Seq, line: &[u8]) {
        let Some(session) = self.sessions.get_mut(&user) else {
            return;
        };
        let id = match self.entries.back_mut() {
            Some(last) if last.seq == seq => {
                last.refs += 1;
                self.first_entry + self.entries.len() as u64 - 1
            }
            last => {
                debug_assert!(last.map_or(true, |last| last.seq < seq), "lines in order");
                Self::log(
                    &mut self.chunks,
                    &self.first_chunk,
                    &mut self.spare,
                    &mut self.entries,
                    seq,
                    line,
                );
                self.line_bytes += line.len();
                self.first_entry + self.entries.len() as u64 - 1
            }
        };
        let len = line.len() as u32;
        session.refs.push_back(Ref { id, len });
        session.line_bytes += line.len();
        self.refs += 1;
        while session.cost() > self.limits.per_session_bytes {
            let Some(oldest) = session.refs.pop_front() else {
                break;
            };
            session.line_bytes -= oldest.len as usize;
            self.refs -= 1;
            self.trimmed_total += 1;
            let entry = &mut self.entries[(oldest.id - self.first_entry) as usize];
            session.floor = session.floor.max(entry.seq);
            entry.refs -= 1;
            if entry.refs == 0 {
                self.dead += 1;
            }
            // The session's next trim reads its next-oldest entry, far back
            // in a log that other sessions' lines have pushed out of cache
            // by then: start loading it now. (The load of `entry` above was
            // half of the resumable fan-out profile's `stage`.)
            let next = session.refs.front().and_then(|next| {
                let index = next.id.checked_sub(self.first_entry)?;
                self.entries.get(usize::try_from(index).ok()?)
            });
            if let Some(entry) = next {
                prefetch(entry);
            }
        }
        self.drop_unreferenced_front();
        self.compact_if_mostly_dead();
        if self.retained_bytes() > self.limits.total_bytes {
            self.enforce_total();
        }
    }

    /// Copies `line` into the chunk log and appends its entry.
    fn log(
        chunks: &mut VecDeque<Vec<u8>>,
        first_chunk: &u64,
        spare: &mut Option<Vec<u8>>,
        entries: &mut VecDeque<Entry>,
        seq: Seq,
        line: &[u8],
    ) {
        let fits = chunks
            .back()
            .is_some_and(|chunk| chunk.len() + line.len() <= chunk.capacity());
        if !fits {
            let mut chunk = spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES.max(line.len())));
            chunk.clear();
            if chunk.capacity() < line.len() {
                chunk.reserve_exact(line.len());
            }
            chunks.push_back(chunk);
        }
        let chunk_no = *first_chunk + chunks.len() as u64 - 1;
        let chunk = chunks.back_mut().expect("a chunk was just ensured");
        let start = chunk.len() as u32;
        chunk.extend_from_slice(line);
        entries.push_back(Entry {
            seq,
            chunk: chunk_no,
            start,
            len: line.len() as u32,
            refs: 1,
        });
    }

    /// Whether `user`'s retained lines after `after` are complete, or from
    /// which floor on they are. `None` if `user` has no session.
    pub(crate) fn replayable(&self, user: UserId, after: Seq) -> Option<Replayable> {
        let session = self.sessions.get(&user)?;
        Some(if after >= session.floor {
            Replayable::Complete
        } else {
            Replayable::From(session.floor)
        })
    }

    /// Calls `each` with every retained line of `user` whose sequence is
    /// above `after`, in order, terminator included.
    pub(crate) fn replay(&self, user: UserId, after: Seq, mut each: impl FnMut(&[u8])) {
        let Some(session) = self.sessions.get(&user) else {
            return;
        };
        let seq_of = |r: &Ref| self.entries[(r.id - self.first_entry) as usize].seq;
        let start = session.refs.partition_point(|r| seq_of(r) <= after);
        for r in session.refs.range(start..) {
            let entry = &self.entries[(r.id - self.first_entry) as usize];
            let chunk = &self.chunks[(entry.chunk - self.first_chunk) as usize];
            let start = entry.start as usize;
            each(&chunk[start..start + entry.len as usize]);
        }
    }

    /// Ends `user`'s session and releases its lines.
    pub(crate) fn close(&mut self, user: UserId) {
        let Some(session) = self.sessions.remove(&user) else {
            return;
        };
        for r in &session.refs {
            let entry = &mut self.entries[(r.id - self.first_entry) as usize];
            entry.refs -= 1;
            if entry.refs == 0 {
                self.dead += 1;
            }
        }
        self.refs -= session.refs.len();
        self.drop_unreferenced_front();
        self.compact_if_mostly_dead();
    }

    /// Ends every session (a new stream: old positions mean nothing).
    pub(crate) fn clear(&mut self) {
        self.sessions.clear();
        self.entries.clear();
        self.first_entry = 0;
        self.chunks.clear();
        self.first_chunk = 0;
        self.line_bytes = 0;
        self.refs = 0;
        self.dead = 0;
    }

    /// Drops the oldest entries while no session references them.
    fn drop_unreferenced_front(&mut self) {
        while let Some(front) = self.entries.front() {
            if front.refs > 0 {
                break;
            }
            self.pop_entry();
            self.dead -= 1;
        }
    }

    /// Compacts the log when unreferenced lines are at least half of it;
    /// see the module doc.
    fn compact_if_mostly_dead(&mut self) {
        if self.dead < self.compact_min_dead || self.dead * 2 < self.entries.len() {
            return;
        }
        // Fresh ids and chunk numbers after every old one, so ids keep
        // increasing with sequence numbers.
        let old_first = self.first_entry;
        let base = old_first + self.entries.len() as u64;
        let mut chunks = VecDeque::new();
        let first_chunk = self.first_chunk + self.chunks.len() as u64;
        let mut entries = VecDeque::with_capacity(self.entries.len() - self.dead);
        let mut renumbered = vec![u64::MAX; self.entries.len()];
        let mut line_bytes = 0;
        let mut spare = self.spare.take();
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.refs == 0 {
                continue;
            }
            let chunk = &self.chunks[(entry.chunk - self.first_chunk) as usize];
            let start = entry.start as usize;
            let line = &chunk[start..start + entry.len as usize];
            renumbered[index] = base + entries.len() as u64;
            Self::log(
                &mut chunks,
                &first_chunk,
                &mut spare,
                &mut entries,
                entry.seq,
                line,
            );
            if let Some(copied) = entries.back_mut() {
                copied.refs = entry.refs;
            }
            line_bytes += line.len();
        }
        for session in self.sessions.values_mut() {
            for r in session.refs.iter_mut() {
                r.id = renumbered[(r.id - old_first) as usize];
                debug_assert_ne!(r.id, u64::MAX, "a referenced entry survives compaction");
            }
        }
        self.entries = entries;
        self.chunks = chunks;
        self.first_entry = base;
        self.first_chunk = first_chunk;
        self.spare = spare;
        self.line_bytes = line_bytes;
        self.dead = 0;
    }

    /// Removes the oldest entry, and its chunk once no entry lives in it.
    fn pop_entry(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.first_entry += 1;
        self.line_bytes -= entry.len as usize;
        let live_chunk = self.entries.front().map_or(u64::MAX, |next| next.chunk);
        // Chunks before the oldest live entry's hold nothing live; an
        // empty log keeps none (chunk numbers carry on from `first_chunk`).
        while self.first_chunk < live_chunk {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.spare = Some(chunk);
            self.first_chunk += 1;
        }
        Some(entry)
    }

    /// Evicts the oldest entries until the total is at 7/8 of its bound,
    /// then has every session drop its references to them.
    fn enforce_total(&mut self) {
        let target = self.limits.total_bytes / 8 * EVICT_TO_EIGHTHS;
        if self.retained_bytes() <= self.limits.total_bytes {
            return;
        }
        let mut through: Option<Seq> = None;
        while self.retained_bytes() > target {
            let Some(entry) = self.entries.front().copied() else {
                break;
            };
            // Its references come off below; count them off now so the
            // loop sees what will remain.
            self.refs -= entry.refs as usize;
            if entry.refs == 0 {
                self.dead -= 1;
            }
            self.pop_entry();
            self.evicted_total += 1;
            through = Some(entry.seq);
        }
        let Some(through) = through else {
            return;
        };
        let first = self.first_entry;
        for session in self.sessions.values_mut() {
            let mut dropped = false;
            while let Some(oldest) = session.refs.front() {
                if oldest.id >= first {
                    break;
                }
                session.line_bytes -= oldest.len as usize;
                session.refs.pop_front();
                dropped = true;
            }
            if dropped {
                session.floor = session.floor.max(through);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROOMY: RetentionLimits = RetentionLimits {
        per_session_bytes: 1 << 20,
        total_bytes: 1 << 24,
    };

    fn line(seq: Seq) -> Vec<u8> {
        format!("{seq}|B\r\n").into_bytes()
    }

    fn replayed(retention: &Retention, user: UserId, after: Seq) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        retention.replay(user, after, |line| out.push(line.to_vec()));
        out
    }

    #[test]
    fn a_line_for_many_sessions_is_logged_once() {
        let mut retention = Retention::new(ROOMY);
        for user in 1..=3 {
            assert!(retention.open(user, 0));
        }
        assert!(!retention.open(1, 5), "already open");
        for seq in 1..=10 {
            for user in 1..=3 {
                retention.record(user, seq, &line(seq));
            }
        }
        assert_eq!(retention.entries.len(), 10);
        assert_eq!(retention.refs, 30);
        let all: Vec<Vec<u8>> = (1..=10).map(line).collect();
        assert_eq!(replayed(&retention, 2, 0), all);
        assert_eq!(replayed(&retention, 2, 7), all[7..].to_vec());
        assert_eq!(replayed(&retention, 2, 10), Vec::<Vec<u8>>::new());
        assert_eq!(retention.replayable(2, 0), Some(Replayable::Complete));
        assert_eq!(retention.replayable(9, 0), None);
    }

    #[test]
    fn recording_for_a_user_without_a_session_does_nothing() {
        let mut retention = Retention::new(ROOMY);
        retention.record(7, 1, b"1|B\r\n");
        assert_eq!(retention.retained_bytes(), 0);
    }

    #[test]
    fn the_floor_starts_at_the_opening_position() {
        let mut retention = Retention::new(ROOMY);
        retention.open(1, 500);
        assert_eq!(retention.replayable(1, 499), Some(Replayable::From(500)));
        assert_eq!(retention.replayable(1, 500), Some(Replayable::Complete));
    }

    #[test]
    fn the_per_session_bound_drops_the_oldest_and_raises_the_floor() {
        let line_cost = line(100).len() + REF_BYTES;
        let mut retention = Retention::new(RetentionLimits {
            per_session_bytes: 10 * line_cost,
            ..ROOMY
        });
        retention.open(1, 99);
        retention.open(2, 99);
        for seq in 100..120 {
            retention.record(1, seq, &line(seq));
            if seq % 2 == 0 {
                retention.record(2, seq, &line(seq));
            }
        }
        // Session 1 keeps its newest 10; session 2 (half as many) all.
        assert_eq!(replayed(&retention, 1, 0).len(), 10);
        assert_eq!(retention.replayable(1, 109), Some(Replayable::Complete));
        assert_eq!(retention.replayable(1, 108), Some(Replayable::From(109)));
        assert_eq!(replayed(&retention, 2, 99).len(), 10);
        assert_eq!(retention.replayable(2, 99), Some(Replayable::Complete));
        assert!(retention.evicted() > 0);
    }

    #[test]
    fn the_total_bound_evicts_the_oldest_lines_from_every_session() {
        let mut retention = Retention::new(RetentionLimits {
            per_session_bytes: 1 << 20,
            total_bytes: 4096,
        });
        retention.open(1, 0);
        retention.open(2, 0);
        for seq in 1..=1000 {
            retention.record(1, seq, &line(seq));
            retention.record(2, seq, &line(seq));
            assert!(retention.retained_bytes() <= 4096, "at {seq}");
        }
        let kept = replayed(&retention, 1, 0);
        assert!(!kept.is_empty() && kept.len() < 1000);
        assert_eq!(kept.last(), Some(&line(1000)));
        let Some(Replayable::From(floor)) = retention.replayable(1, 0) else {
            panic!("lines were evicted");
        };
        // Everything above the floor is there, in order.
        let expected: Vec<Vec<u8>> = (floor + 1..=1000).map(line).collect();
        assert_eq!(replayed(&retention, 1, floor), expected);
        assert_eq!(replayed(&retention, 2, floor), expected);
    }

    #[test]
    fn closing_releases_lines_and_chunks() {
        let mut retention = Retention::new(ROOMY);
        retention.open(1, 0);
        let long = vec![b'x'; 3000];
        for seq in 1..=100 {
            retention.record(1, seq, &long);
        }
        assert!(retention.chunks.len() > 1);
        retention.close(1);
        assert_eq!(retention.retained_bytes(), 0);
        assert!(retention.entries.is_empty());
        assert!(retention.chunks.is_empty());
        // And it keeps working afterwards.
        retention.open(2, 100);
        retention.record(2, 101, &line(101));
        assert_eq!(replayed(&retention, 2, 100), vec![line(101)]);
    }

    #[test]
    fn one_old_line_does_not_keep_the_whole_log() {
        let line_cost = line(1).len() + REF_BYTES;
        let mut retention = Retention::new(RetentionLimits {
            per_session_bytes: 64 * line_cost,
            total_bytes: 1 << 30,
        });
        // A quiet session holds line 1 for ever; a busy one trims its own.
        retention.open(1, 0);
        retention.open(2, 0);
        retention.record(1, 1, &line(1));
        retention.record(2, 1, &line(1));
        for seq in 2..=200_000 {
            retention.record(2, seq, &line(seq));
            assert!(
                retention.entries.len() <= 2 * COMPACT_MIN_DEAD + 200,
                "at {seq}"
            );
        }
        assert_eq!(replayed(&retention, 1, 0), vec![line(1)]);
        assert_eq!(replayed(&retention, 2, 199_990).len(), 10);
        assert!(
            retention.retained_bytes() < 1 << 20,
            "{}",
            retention.retained_bytes()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open(UserId),
        Close(UserId),
        /// The next event, recorded for these users.
        Line(Vec<UserId>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..4u64).prop_map(Op::Open),
            1 => (0..4u64).prop_map(Op::Close),
            8 => proptest::collection::vec(0..4u64, 0..4).prop_map(Op::Line),
        ]
    }

    proptest! {
        /// Against a model that keeps every line of every session: what
        /// is replayed above the floor is exactly the model's lines above
        /// it, and the bounds hold after every step.
        #[test]
        fn prop_replay_matches_a_model(
            ops in proptest::collection::vec(op(), 1..300),
            per_session in 200usize..2000,
            total in 500usize..6000,
        ) {
            let limits = RetentionLimits { per_session_bytes: per_session, total_bytes: total };
            let mut retention = Retention::new(limits);
            // Compact often, so renumbering is checked too.
            retention.compact_min_dead = 2;
            let mut model: HashMap<UserId, Vec<(Seq, Vec<u8>)>> = HashMap::new();
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Open(user) => {
                        let new = retention.open(user, seq);
                        prop_assert_eq!(new, !model.contains_key(&user));
                        model.entry(user).or_default();
                    }
                    Op::Close(user) => {
                        retention.close(user);
                        model.remove(&user);
                    }
                    Op::Line(mut users) => {
                        seq += 1;
                        users.sort_unstable();
                        users.dedup();
                        let bytes = format!("{seq}|P|{}|x\r\n", "y".repeat(seq as usize % 7));
                        for user in users {
                            retention.record(user, seq, bytes.as_bytes());
                            if let Some(lines) = model.get_mut(&user) {
                                lines.push((seq, bytes.clone().into_bytes()));
                            }
                        }
                    }
                }
                prop_assert!(retention.retained_bytes() <= total.max(retention.sessions() * SESSION_BYTES));
                for (&user, lines) in &model {
                    let session = &retention.sessions[&user];
                    prop_assert!(session.cost() <= per_session);
                    let floor = match retention.replayable(user, 0) {
                        Some(Replayable::Complete) => 0,
                        Some(Replayable::From(floor)) => floor,
                        None => unreachable!("the model and the store agree on sessions"),
                    };
                    let expected: Vec<Vec<u8>> = lines
                        .iter()
                        .filter(|(s, _)| *s > floor)
                        .map(|(_, l)| l.clone())
                        .collect();
                    prop_assert_eq!(replayed(&retention, user, floor), expected);
                }
            }
        }
    }
}
