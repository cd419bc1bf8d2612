//! Checking one client's notifications as they arrive, line by line,
//! against what it is owed. No I/O: the reader hands it lines.
//!
//! A client's stream has two parts. First the *opening*: the source sends
//! broadcasts one at a time until every client has received one, because
//! receiving one is the only sign the protocol gives that a client is
//! registered. A client's first line may be any opening broadcast; from
//! there on it must receive every later one, in order. Then the *main*
//! stream, whose entries the source queues for this client before writing
//! them; it ends with a broadcast of the final sequence number, so every
//! client knows when it has everything.
//!
//! On the first line that differs from what is owed, the checker decides
//! what went wrong. A line for an event owed *later* means the owed one was
//! skipped; one more line tells a late arrival (out of order) from a loss
//! (missing). Anything else is a wrong byte, a repeat, or a notification
//! that was never owed.
//!
//! # Phases
//!
//! Where a client is in its stream is one `Phase`. It moves forward only
//! when a line is accepted, and only in `Checker::advance`, to where the
//! plan says that line sits (an accepted line may skip a phase):
//!
//! ```text
//! Unregistered -> Opening -> Main -> Done
//! ```
//!
//! - `Unregistered`: nothing received; the first line may be any opening
//!   broadcast the source has sent.
//! - `Opening`: owed the next opening broadcast, or, once the plan shows
//!   the opening over, the queue's front (the plan can be fixed after the
//!   client's last opening broadcast arrived).
//! - `Main`: every line is the queue's next entry; the fast path.
//! - `Done`: the final broadcast arrived; nothing more is owed.
//!
//! Beside them, `Diverged` holds a line that came for an event owed later,
//! while one more line (or a timeout, or the close) decides between out of
//! order and missing. It always ends in a failure; the phase then returns
//! to where the last correct line left it.
//!
//! # Resumable connections
//!
//! On a resumable run the reader hands control lines to the client's
//! session (the `session` module, which uses this one) and only event
//! lines here; the session tells the checker what the server's verdicts
//! and checkpoints mean for the queue:
//!
//! - The first verdict `#OK|stream|P` registers the client at `P`
//!   ([`Checker::registered_at`]): nothing at or below `P` is owed on that
//!   connection or any later one, everything above it is, so the first line
//!   must be exactly opening broadcast `P + 1`, not any (that is what a
//!   classic client's first line may be). Its first accepted line marks it
//!   registered for the source's opening, as a classic client's does.
//! - A resume's `#OK` changes nothing here: the queue still holds exactly
//!   what the client has not received (entries are popped only when
//!   received), which is what the server must replay, in order.
//! - `#GAP|stream|G` gives up the lines up to `G` ([`Checker::gap`]): their
//!   entries are popped unreceived, folded into the tally as the source
//!   folded them (so the totals still compare) and counted as lost.
//! - `#AT|stream|S|..` says every line up to `S` was sent
//!   ([`Checker::checkpoint`]): an owed line at or below `S` not received by
//!   then is missing.
//! - A drop with a divergence pending resolves it ([`Checker::interrupted`]):
//!   on one connection lines come in order, so a later line that came before
//!   the owed one is a failure whatever the next connection brings.
//!
//! A control line reaching the checker is on a plain connection, where it
//! must never be (`Failure::ControlOnPlain`).
//!
//! # Terminators
//!
//! With `lineEndings=exact` (the default) a line must be the owed one byte
//! for byte. With `lineEndings=any` a line whose payload is the owed one's
//! but whose terminator is not (`\n` for `\r\n`, or the reverse) counts as
//! received and is counted as *re-terminated*. It is folded into the tally
//! as the owed line it stands for, so the tally still equals the source's
//! (the digest then vouches for the payloads, in order); the bytes actually
//! received are counted by the reader. Either way the first comparison is
//! the exact one, so the fast path costs the same.

use std::sync::Arc;
use std::time::Duration;

use rtrb::Consumer;

use super::config::LineEndings;
use super::expect::{Expected, Tally};
use super::failure::{ByteDiff, ClientRef, Failure, Progress};
use super::latency::Latencies;
use super::line::{leading_seq, quote, Event, LineWriter, LINE_SLOT_BYTES};
use super::shared::{Plan, Shared};
use followermaze_protocol::resume::is_control;
use followermaze_protocol::{parse_event, strip_terminator, EventKind, Seq};

/// What the checker wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// More lines.
    More,
    /// The final broadcast arrived: this client has everything.
    Done,
}

/// What the client is owed next.
#[derive(Debug, Clone, Copy)]
enum Owed {
    /// Any opening broadcast (the client has received nothing yet).
    AnyOpening,
    /// This line.
    Line(Expected),
    /// Nothing is queued yet, or nothing more is owed.
    Nothing,
}

/// Where a client is in its stream; see the module doc.
#[derive(Debug)]
enum Phase {
    /// Nothing received yet: the first line may be any opening broadcast
    /// the source has sent.
    Unregistered,
    /// Registered: owed every later opening broadcast, then the queue's
    /// entries once the plan shows the opening over.
    Opening,
    /// The opening is over: every line is the queue's next entry.
    Main,
    /// A line came for an event owed later; the next one classifies it.
    Diverged(Suspect),
    /// The final broadcast arrived.
    Done,
}

/// How a received line compares with the line owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// Byte for byte.
    Exact,
    /// The same payload under another terminator, with `lineEndings=any`.
    Reterminated,
    /// Anything else: not this line.
    Differs,
}

/// Whether two lines are the same once their terminators (`\r\n` or
/// `\n`) are set aside.
#[inline]
fn same_payload(a: &[u8], b: &[u8]) -> bool {
    strip_terminator(a) == strip_terminator(b)
}

/// A divergence waiting for one more line to be classified.
#[derive(Debug)]
struct Suspect {
    /// The owed notification that did not come.
    missing: Expected,
    /// The sequence number that came in its place.
    early_seq: Seq,
    /// That line, quoted.
    early_line: String,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Checker {
    /// Who this is, for failures.
    client: ClientRef,
    /// Main-stream entries, queued by the source.
    queue: Consumer<Expected>,
    /// Shared plan, clock and counters.
    shared: Arc<Shared>,
    /// The plan, cached once known.
    plan: Option<Plan>,
    /// What arrived correctly of the main stream; compared at the end with
    /// the source's tally of what it sent for this client.
    tally: Tally,
    /// What arrived correctly of the opening.
    opening: Tally,
    /// Send-to-receive times.
    latencies: Latencies,
    /// How terminators are judged.
    line_endings: LineEndings,
    /// Lines accepted only because their terminator was not judged (always
    /// 0 with [`LineEndings::Exact`]).
    reterminated: u64,
    /// Where the client is in its stream.
    phase: Phase,
    /// The first line received (an opening broadcast): `Some` once one was
    /// accepted; a classic client is past `Unregistered` exactly then, a
    /// resumable one from its first verdict on. Kept apart from the phase
    /// because failures and the report still need it once the client is
    /// further on.
    first_broadcast: Option<Seq>,
    /// The last sequence number received correctly (0: none), or the
    /// position a resumable verdict put the client at, if higher: nothing
    /// at or below it is owed any more.
    last_seq: Seq,
    /// Main-stream entries given up to a `#GAP` (folded into `tally`).
    lost: u64,
    /// Renders the owed line on the fast path: the source's formatter, one
    /// table of user ids shared by every checker; the same bytes as
    /// [`Expected::render`].
    writer: LineWriter,
}

/// The opening broadcasts are written one per chunk, starting with chunk 0
/// (sequence 0 is never sent and maps to no chunk).
#[inline]
fn opening_chunk(seq: Seq) -> u32 {
    seq.checked_sub(1)
        .and_then(|chunk| u32::try_from(chunk).ok())
        .unwrap_or(super::expect::UNTIMED)
}

/// Opening broadcast `seq` as an expectation, timed by its chunk.
fn opening_entry(seq: Seq) -> Expected {
    Expected::new(&Event::broadcast(seq), opening_chunk(seq))
}

/// Whether `line` parses as a broadcast.
fn is_broadcast(line: &[u8]) -> bool {
    parse_event(line).map(|(_, kind)| kind) == Ok(EventKind::Broadcast)
}

impl Checker {
    /// A checker for `client`, reading its entries from `queue`, judging
    /// terminators as `line_endings` says, rendering owed lines with
    /// `writer`.
    pub(crate) fn new(
        client: ClientRef,
        queue: Consumer<Expected>,
        shared: Arc<Shared>,
        line_endings: LineEndings,
        writer: LineWriter,
    ) -> Checker {
        Checker {
            client,
            queue,
            shared,
            plan: None,
            tally: Tally::default(),
            opening: Tally::default(),
            latencies: Latencies::default(),
            line_endings,
            reterminated: 0,
            phase: Phase::Unregistered,
            first_broadcast: None,
            last_seq: 0,
            lost: 0,
            writer,
        }
    }

    /// Who this is, with the connection failures should name.
    pub(crate) fn client(&self) -> ClientRef {
        self.client
    }

    /// Names `connection` in the failures from now on.
    pub(crate) fn set_connection(&mut self, connection: Option<super::failure::ConnectionRef>) {
        self.client.connection = connection;
    }

    /// The highest position received: the last line's sequence number, or
    /// the position a verdict put the client at.
    pub(crate) fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// Whether the final broadcast has arrived (or was given up to a
    /// `#GAP`): nothing more is owed.
    pub(crate) fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Main-stream notifications given up to `#GAP` verdicts (the run
    /// counts them from [`Checker::gap`]'s answers; the tests ask here).
    #[cfg(test)]
    pub(crate) fn lost(&self) -> u64 {
        self.lost
    }

    /// A first resumable verdict `#OK|stream|seq`: from now on exactly the
    /// lines above `seq` are owed (see the module doc). Does nothing once
    /// the client has a position.
    pub(crate) fn registered_at(&mut self, seq: Seq) {
        if matches!(self.phase, Phase::Unregistered) {
            self.plan();
            self.last_seq = seq;
            self.phase = self.phase_after(seq);
        }
    }

    /// A `#GAP|stream|seq` verdict: every line up to `seq` not yet received
    /// is given up. Returns how many main-stream entries that was.
    pub(crate) fn gap(&mut self, seq: Seq) -> u64 {
        let mut lost = 0;
        while let Ok(front) = self.queue.peek() {
            if front.seq > seq {
                break;
            }
            let (want, len) = front.render();
            self.tally.add(&want[..len]);
            // Only this reader pops: the front is still `front`.
            let _ = self.queue.pop();
            lost += 1;
        }
        self.lost += lost;
        if seq > self.last_seq {
            self.plan();
            self.last_seq = seq;
            self.phase = self.phase_after(seq);
        }
        lost
    }

    /// A checkpoint `line` saying every line up to `seq` was sent: fails if
    /// one owed at or below it has not arrived.
    pub(crate) fn checkpoint(&mut self, seq: Seq, line: &[u8]) -> Result<(), Failure> {
        if let Some(suspect) = self.take_suspect() {
            return Err(self.resolve(suspect, None));
        }
        match self.next_owed() {
            Owed::Line(owed) if owed.seq <= seq => {
                let (want, len) = owed.render();
                Err(Failure::Missing {
                    client: self.client,
                    seq: owed.seq,
                    expected: quote(&want[..len]),
                    instead: Some(format!("checkpoint {}", quote(line))),
                    progress: self.progress(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The connection dropped: a pending divergence is a failure now (see
    /// the module doc).
    pub(crate) fn interrupted(&mut self) -> Option<Failure> {
        let suspect = self.take_suspect()?;
        Some(self.resolve(suspect, None))
    }

    /// What arrived correctly so far of the main stream.
    pub(crate) fn tally(&self) -> Tally {
        self.tally
    }

    /// What arrived correctly of the opening broadcasts.
    pub(crate) fn opening_tally(&self) -> Tally {
        self.opening
    }

    /// The latency samples so far.
    pub(crate) fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// The first opening broadcast this client received.
    pub(crate) fn first_broadcast(&self) -> Option<Seq> {
        self.first_broadcast
    }

    /// Notifications so far whose payload matched but whose terminator did
    /// not (counted with [`LineEndings::Any`] only).
    pub(crate) fn reterminated(&self) -> u64 {
        self.reterminated
    }

    /// How `line` compares with `want`, the owed line. The exact comparison
    /// comes first: it is the only one the fast path pays for.
    #[inline]
    fn compare(&self, want: &[u8], line: &[u8]) -> Match {
        if line == want {
            Match::Exact
        } else if self.line_endings == LineEndings::Any
            && line.ends_with(b"\n")
            && same_payload(want, line)
        {
            Match::Reterminated
        } else {
            Match::Differs
        }
    }

    #[inline]
    fn plan(&mut self) -> Option<Plan> {
        if self.plan.is_none() {
            self.plan = self.shared.plan();
        }
        self.plan
    }

    fn next_owed(&mut self) -> Owed {
        match self.phase {
            Phase::Unregistered => return Owed::AnyOpening,
            // The final broadcast is the last entry of every queue.
            Phase::Done => return Owed::Nothing,
            Phase::Opening | Phase::Main | Phase::Diverged(_) => {}
        }
        match self.plan() {
            Some(plan) if self.last_seq >= plan.opening_end => match self.queue.peek() {
                Ok(front) => Owed::Line(*front),
                Err(_) => Owed::Nothing,
            },
            // Still in the opening: the next broadcast.
            _ => Owed::Line(opening_entry(self.last_seq + 1)),
        }
    }

    /// Whether the source has sent opening broadcast `seq`: one up to the
    /// plan's last, or before the plan is known, one whose chunk (`seq - 1`,
    /// stamped before it is written) was stamped.
    fn opening_sent(&mut self, seq: Seq) -> bool {
        seq >= 1
            && match self.plan() {
                Some(plan) => seq <= plan.opening_end,
                None => self.shared.clock.sent_at(opening_chunk(seq)).is_some(),
            }
    }

    fn progress(&mut self) -> Progress {
        let queued = self.queue.slots() as u64;
        let opening_left = match self.plan() {
            Some(plan) => plan.opening_end.saturating_sub(self.last_seq),
            None => 0,
        };
        let received = self.tally.count + self.opening.count - self.lost;
        Progress {
            received,
            owed: received + queued + opening_left,
        }
    }

    /// Checks one complete line (terminator included) received at `now_us`
    /// on the send clock.
    pub(crate) fn check(&mut self, line: &[u8], now_us: u64) -> Result<Verdict, Failure> {
        // The fast path, nearly every line: the main stream's next entry,
        // rendered and compared byte for byte. No parsing.
        if matches!(self.phase, Phase::Main) {
            if let Ok(front) = self.queue.peek() {
                let mut want = [0u8; LINE_SLOT_BYTES];
                let len = self.writer.write(&front.event(), &mut want);
                let matched = self.compare(&want[..len], line);
                if matched != Match::Differs {
                    let (seq, chunk) = (front.seq, front.chunk);
                    // Only this reader pops: the front is still `front`.
                    let _ = self.queue.pop();
                    return Ok(self.accept(&want[..len], matched, seq, chunk, now_us));
                }
            }
        }
        self.check_slowly(line, now_us)
    }

    /// Everything but the fast path: the opening, and classifying a line
    /// that differs.
    fn check_slowly(&mut self, line: &[u8], now_us: u64) -> Result<Verdict, Failure> {
        if is_control(line) {
            // A resumable connection's control lines never get here.
            return Err(Failure::ControlOnPlain {
                client: self.client,
                received: quote(line),
                progress: self.progress(),
            });
        }
        if let Some(suspect) = self.take_suspect() {
            return Err(self.resolve(suspect, leading_seq(line)));
        }
        let Some(seq) = leading_seq(line) else {
            return Err(self.malformed(line));
        };
        match self.next_owed() {
            Owed::AnyOpening => {
                // Only a broadcast the source has sent.
                if !self.opening_sent(seq) || !is_broadcast(line) {
                    return Err(self.mismatch(seq, line, None));
                }
                let (want, len) = opening_entry(seq).render();
                let matched = self.compare(&want[..len], line);
                if matched == Match::Differs {
                    return Err(self.wrong_bytes(seq, &want[..len], line));
                }
                Ok(self.accept(&want[..len], matched, seq, opening_chunk(seq), now_us))
            }
            Owed::Line(owed) if owed.seq == seq => {
                let (want, len) = owed.render();
                let matched = self.compare(&want[..len], line);
                if matched == Match::Differs {
                    return Err(self.wrong_bytes(seq, &want[..len], line));
                }
                let from_queue = matches!(self.plan, Some(plan) if seq > plan.opening_end);
                if from_queue {
                    // The entry peeked above is still at the front: only
                    // this reader pops.
                    let _ = self.queue.pop();
                }
                Ok(self.accept(&want[..len], matched, seq, owed.chunk, now_us))
            }
            Owed::Line(owed) => {
                if self.owed_later(seq, line) {
                    let final_seq = self.plan.map(|plan| plan.final_seq);
                    let suspect = Suspect {
                        missing: owed,
                        early_seq: seq,
                        early_line: quote(line),
                    };
                    if final_seq == Some(seq) {
                        // Nothing can follow the final broadcast.
                        return Err(self.resolve(suspect, None));
                    }
                    self.phase = Phase::Diverged(suspect);
                    return Ok(Verdict::More);
                }
                Err(self.mismatch(seq, line, Some(owed)))
            }
            Owed::Nothing => Err(self.mismatch(seq, line, None)),
        }
    }

    /// Counts a line that matched `owed_line`, the owed line (`matched`
    /// says how), and moves the phase on. The tally takes the owed line: a
    /// re-terminated line stands for it (see the module doc).
    #[inline]
    fn accept(
        &mut self,
        owed_line: &[u8],
        matched: Match,
        seq: Seq,
        chunk: u32,
        now_us: u64,
    ) -> Verdict {
        debug_assert_ne!(matched, Match::Differs, "only a matching line is accepted");
        match self.plan {
            Some(plan) if seq > plan.opening_end => self.tally.add(owed_line),
            _ => self.opening.add(owed_line),
        }
        if matched == Match::Reterminated {
            self.reterminated += 1;
        }
        self.last_seq = seq;
        self.record_latency(chunk, now_us);
        let verdict = self.advance(seq);
        if self.first_broadcast.is_none() {
            // The first line received: registered, for the source's opening.
            self.first_broadcast = Some(seq);
            self.shared.mark_registered(self.client.index);
        }
        verdict
    }

    /// The one forward transition: into the phase that follows an accepted
    /// `seq`. Says whether the client now has everything.
    #[inline]
    fn advance(&mut self, seq: Seq) -> Verdict {
        self.phase = self.phase_after(seq);
        if matches!(self.phase, Phase::Done) {
            Verdict::Done
        } else {
            Verdict::More
        }
    }

    /// The phase once `seq` has been received correctly, as far as the
    /// plan (if known yet) tells.
    #[inline]
    fn phase_after(&self, seq: Seq) -> Phase {
        match self.plan {
            Some(plan) if seq >= plan.final_seq => Phase::Done,
            // From here on every line comes from the queue.
            Some(plan) if seq >= plan.opening_end => Phase::Main,
            _ => Phase::Opening,
        }
    }

    /// Leaves `Diverged`, if that is the phase, for where the last correct
    /// line left the client, and returns the divergence to classify.
    fn take_suspect(&mut self) -> Option<Suspect> {
        let resumed = self.phase_after(self.last_seq);
        match std::mem::replace(&mut self.phase, resumed) {
            Phase::Diverged(suspect) => Some(suspect),
            other => {
                self.phase = other;
                None
            }
        }
    }

    #[inline]
    fn record_latency(&mut self, chunk: u32, now_us: u64) {
        if let Some(sent) = self.shared.clock.sent_at(chunk) {
            self.latencies.record(now_us.saturating_sub(sent));
        }
    }

    /// Whether `seq` (line `line`) is owed after the current front.
    fn owed_later(&mut self, seq: Seq, line: &[u8]) -> bool {
        if seq <= self.last_seq {
            return false;
        }
        match self.plan() {
            Some(plan) if seq > plan.opening_end => {
                let Ok(chunk) = self.queue.read_chunk(self.queue.slots()) else {
                    return false;
                };
                let (a, b) = chunk.as_slices();
                // Dropping the chunk without committing leaves every entry
                // queued.
                a.iter().chain(b).any(|entry| entry.seq == seq)
            }
            // An opening broadcast still to come, if it was sent at all.
            _ => self.opening_sent(seq) && is_broadcast(line),
        }
    }

    /// The failure for bytes that cannot be a notification (a line longer
    /// than any event, or a fragment).
    pub(crate) fn malformed(&mut self, bytes: &[u8]) -> Failure {
        Failure::Malformed {
            client: self.client,
            received: quote(bytes),
            progress: self.progress(),
        }
    }

    /// The right event with the wrong bytes.
    fn wrong_bytes(&mut self, seq: Seq, want: &[u8], line: &[u8]) -> Failure {
        let diff = if same_payload(want, line) {
            ByteDiff::Terminator
        } else {
            ByteDiff::Content
        };
        Failure::WrongBytes {
            client: self.client,
            seq,
            diff,
            expected: quote(want),
            received: quote(line),
            progress: self.progress(),
        }
    }

    /// A line for `seq` that is neither owed now nor later.
    fn mismatch(&mut self, seq: Seq, line: &[u8], owed: Option<Expected>) -> Failure {
        if parse_event(line).is_err() {
            return self.malformed(line);
        }
        let expected = owed.map(|owed| {
            let (want, len) = owed.render();
            format!("event {} {}", owed.seq, quote(&want[..len]))
        });
        Failure::Unexpected {
            client: self.client,
            seq,
            // Received before: between the first line and the last one.
            repeated: self.first_broadcast.is_some_and(|first| seq >= first)
                && seq <= self.last_seq,
            received: quote(line),
            expected,
            progress: self.progress(),
        }
    }

    /// Classifies a divergence given the sequence number of the line after
    /// it (`None`: there will be none).
    fn resolve(&mut self, suspect: Suspect, next: Option<Seq>) -> Failure {
        let progress = self.progress();
        if next == Some(suspect.missing.seq) {
            return Failure::OutOfOrder {
                client: self.client,
                expected_seq: suspect.missing.seq,
                received_seq: suspect.early_seq,
                progress,
            };
        }
        let (want, len) = suspect.missing.render();
        Failure::Missing {
            client: self.client,
            seq: suspect.missing.seq,
            expected: quote(&want[..len]),
            instead: Some(format!(
                "event {} {}",
                suspect.early_seq, suspect.early_line
            )),
            progress,
        }
    }

    /// Called when nothing arrived for a while: fails if the notification
    /// owed next was sent more than `timeout` ago. Otherwise returns how
    /// long to wait before asking again.
    pub(crate) fn overdue(&mut self, now_us: u64, timeout: Duration) -> Result<Duration, Failure> {
        let owed = match &self.phase {
            Phase::Diverged(suspect) => suspect.missing,
            _ => match self.next_owed() {
                Owed::Line(owed) => owed,
                // Nothing owed (or the opening, which the source times).
                Owed::AnyOpening | Owed::Nothing => return Ok(timeout),
            },
        };
        let Some(sent) = self.shared.clock.sent_at(owed.chunk) else {
            // Queued but not yet written: the clock starts at the write.
            return Ok(timeout);
        };
        let waited = Duration::from_micros(now_us.saturating_sub(sent));
        if waited < timeout {
            return Ok(timeout - waited);
        }
        if let Some(suspect) = self.take_suspect() {
            return Err(self.resolve(suspect, None));
        }
        let (want, len) = owed.render();
        Err(Failure::Timeout {
            client: self.client,
            seq: owed.seq,
            expected: quote(&want[..len]),
            waited,
            progress: self.progress(),
        })
    }

    /// The failure to report when the server closes the connection before
    /// the final broadcast.
    pub(crate) fn closed(&mut self) -> Failure {
        if let Some(suspect) = self.take_suspect() {
            return self.resolve(suspect, None);
        }
        let next = match self.next_owed() {
            Owed::Line(owed) => Some(owed.seq),
            Owed::AnyOpening | Owed::Nothing => None,
        };
        Failure::Disconnected {
            client: self.client,
            next,
            progress: self.progress(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::{push_line, Kind};

    const CLIENT: ClientRef = ClientRef::new(3, 42);

    /// The checkers' writer: a table short of user 42, so both of its
    /// paths render owed lines.
    fn writer() -> LineWriter {
        LineWriter::new(10)
    }

    /// A checker of [`CLIENT`] reading `consumer`, in the run `shared`
    /// describes, held to exact terminators.
    fn checker_on(consumer: rtrb::Consumer<Expected>, shared: Arc<Shared>) -> Checker {
        Checker::new(CLIENT, consumer, shared, LineEndings::Exact, writer())
    }

    /// A checker whose opening was broadcasts 1..=`opening_end`, with
    /// `main` queued (each as a private message to user 42), final at
    /// `final_seq`.
    fn setup(opening_end: Seq, main: &[Seq], final_seq: Seq) -> (Checker, Vec<Vec<u8>>) {
        let shared = Arc::new(Shared::default());
        let (mut producer, consumer) = rtrb::RingBuffer::new(64);
        shared.set_plan(Plan {
            opening_end,
            final_seq,
        });
        let mut lines = Vec::new();
        for &seq in main {
            let kind = if seq == final_seq {
                Kind::Broadcast
            } else {
                Kind::Private
            };
            let event = Event {
                seq,
                kind,
                from: 7,
                to: 42,
            };
            producer.push(Expected::new(&event, 0)).unwrap();
            let mut line = Vec::new();
            push_line(&event, &mut line);
            lines.push(line);
        }
        // What is queued stays queued when the producer goes.
        drop(producer);
        (checker_on(consumer, shared), lines)
    }

    fn opening(seq: Seq) -> Vec<u8> {
        format!("{seq}|B\r\n").into_bytes()
    }

    #[test]
    fn a_correct_stream_is_done_at_the_final_broadcast() {
        let (mut checker, lines) = setup(5, &[6, 9, 12], 12);
        for seq in 3..=5 {
            assert_eq!(checker.check(&opening(seq), 0), Ok(Verdict::More));
        }
        assert_eq!(checker.first_broadcast(), Some(3));
        assert_eq!(checker.check(&lines[0], 0), Ok(Verdict::More));
        assert_eq!(checker.check(&lines[1], 0), Ok(Verdict::More));
        assert_eq!(checker.check(&lines[2], 0), Ok(Verdict::Done));
        assert_eq!(checker.tally().count, 3);
        assert_eq!(checker.opening_tally().count, 3);
    }

    #[test]
    fn the_phase_moves_forward_with_accepted_lines_only() {
        // The plan is fixed only after the client's last opening broadcast
        // arrived: the first main-stream line still leads to the fast path.
        let shared = Arc::new(Shared::default());
        let (mut producer, consumer) = rtrb::RingBuffer::new(8);
        let mut checker = checker_on(consumer, shared.clone());
        assert!(matches!(checker.phase, Phase::Unregistered));
        shared.clock.stamp(0);
        shared.clock.stamp(1);
        assert_eq!(checker.check(&opening(1), 0), Ok(Verdict::More));
        assert!(matches!(checker.phase, Phase::Opening));
        assert_eq!(checker.check(&opening(2), 0), Ok(Verdict::More));
        assert!(matches!(checker.phase, Phase::Opening));
        shared.set_plan(Plan {
            opening_end: 2,
            final_seq: 6,
        });
        let mut lines = Vec::new();
        for (seq, kind) in [
            (3, Kind::Private),
            (4, Kind::Private),
            (5, Kind::Private),
            (6, Kind::Broadcast),
        ] {
            let event = Event {
                seq,
                kind,
                from: 7,
                to: 42,
            };
            producer.push(Expected::new(&event, 0)).unwrap();
            let mut line = Vec::new();
            push_line(&event, &mut line);
            lines.push(line);
        }
        assert_eq!(checker.check(&lines[0], 0), Ok(Verdict::More));
        assert!(matches!(checker.phase, Phase::Main));
        // A divergence ends in a failure and leaves the phase where the
        // last correct line put it.
        assert_eq!(checker.check(&lines[2], 0), Ok(Verdict::More));
        assert!(matches!(checker.phase, Phase::Diverged(_)));
        assert!(matches!(
            checker.check(&lines[1], 0),
            Err(Failure::OutOfOrder { .. })
        ));
        assert!(matches!(checker.phase, Phase::Main));
        for line in &lines[1..3] {
            assert_eq!(checker.check(line, 0), Ok(Verdict::More));
        }
        assert_eq!(checker.check(&lines[3], 0), Ok(Verdict::Done));
        assert!(matches!(checker.phase, Phase::Done));
        assert!(matches!(
            checker.check(&lines[3], 0),
            Err(Failure::Unexpected { repeated: true, .. })
        ));
    }

    #[test]
    fn a_later_line_then_another_means_missing() {
        let (mut checker, lines) = setup(1, &[6, 9, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        assert_eq!(checker.check(&lines[1], 0), Ok(Verdict::More));
        let failure = checker.check(&lines[2], 0).unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 6, .. }),
            "{failure}"
        );
    }

    #[test]
    fn a_later_line_then_the_owed_one_means_out_of_order() {
        let (mut checker, lines) = setup(1, &[6, 9, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        checker.check(&lines[1], 0).unwrap();
        let failure = checker.check(&lines[0], 0).unwrap_err();
        assert_eq!(
            failure,
            Failure::OutOfOrder {
                client: CLIENT,
                expected_seq: 6,
                received_seq: 9,
                progress: Progress {
                    received: 1,
                    owed: 4
                }
            }
        );
    }

    #[test]
    fn the_final_broadcast_early_means_missing_at_once() {
        let (mut checker, lines) = setup(1, &[6, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        let failure = checker.check(&lines[1], 0).unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 6, .. }),
            "{failure}"
        );
    }

    #[test]
    fn a_changed_terminator_is_named() {
        let (mut checker, lines) = setup(1, &[6, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        let failure = checker.check(&bare(&lines[0]), 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::WrongBytes {
                    seq: 6,
                    diff: ByteDiff::Terminator,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut checker, _) = setup(3, &[6], 6);
        let failure = checker.check(b"2|B\n", 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::WrongBytes {
                    diff: ByteDiff::Terminator,
                    ..
                }
            ),
            "{failure}"
        );
    }

    /// `line` with `\n` for its `\r\n`.
    fn bare(line: &[u8]) -> Vec<u8> {
        let mut bare = line.to_vec();
        bare.remove(bare.len() - 2);
        bare
    }

    #[test]
    fn with_any_line_endings_a_bare_newline_counts_as_the_line_it_stands_for() {
        let (mut exact, lines) = setup(2, &[6, 9, 12], 12);
        let (mut any, _) = setup(2, &[6, 9, 12], 12);
        any.line_endings = LineEndings::Any;
        let stream: Vec<Vec<u8>> = [opening(1), opening(2)].into_iter().chain(lines).collect();
        for (index, line) in stream.iter().enumerate() {
            let verdict = if index + 1 == stream.len() {
                Verdict::Done
            } else {
                Verdict::More
            };
            assert_eq!(exact.check(line, 0), Ok(verdict));
            // Every other line re-terminated: the first opening broadcast,
            // a private message and the final broadcast.
            let received = if index % 2 == 0 {
                bare(line)
            } else {
                line.clone()
            };
            assert_eq!(any.check(&received, 0), Ok(verdict), "line {index}");
        }
        assert_eq!(any.reterminated(), 3);
        assert_eq!(exact.reterminated(), 0);
        // The tallies are the owed lines': they still equal the source's.
        assert_eq!(any.tally(), exact.tally());
        assert_eq!(any.opening_tally(), exact.opening_tally());
    }

    #[test]
    fn with_any_line_endings_only_the_terminator_may_differ() {
        let (mut checker, lines) = setup(1, &[6, 12], 12);
        checker.line_endings = LineEndings::Any;
        checker.check(&opening(1), 0).unwrap();
        let mut changed = bare(&lines[0]);
        let last_digit = changed.len() - 2;
        changed[last_digit] = b'3';
        let failure = checker.check(&changed, 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::WrongBytes {
                    seq: 6,
                    diff: ByteDiff::Content,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut checker, lines) = setup(1, &[6, 12], 12);
        checker.line_endings = LineEndings::Any;
        checker.check(&opening(1), 0).unwrap();
        let mut doubled = lines[0].clone();
        doubled.insert(doubled.len() - 2, b'\r');
        assert!(checker.check(&doubled, 0).is_err());
        assert_eq!(checker.reterminated(), 0);
    }

    #[test]
    fn repeats_strangers_and_garbage() {
        let (mut checker, lines) = setup(1, &[6, 9, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        checker.check(&lines[0], 0).unwrap();
        let failure = checker.check(&lines[0], 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::Unexpected {
                    seq: 6,
                    repeated: true,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut checker, _) = setup(1, &[6, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        let failure = checker.check(b"7|P|1|42\r\n", 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::Unexpected {
                    seq: 7,
                    repeated: false,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut checker, _) = setup(1, &[6, 12], 12);
        let failure = checker.check(b"hello\r\n", 0).unwrap_err();
        assert!(matches!(failure, Failure::Malformed { .. }), "{failure}");
        let (mut checker, _) = setup(1, &[6, 12], 12);
        let failure = checker.check(b"3|S|9\r\n", 0).unwrap_err();
        assert!(
            matches!(failure, Failure::Unexpected { seq: 3, .. }),
            "{failure}"
        );
    }

    #[test]
    fn an_opening_broadcast_never_sent_is_not_owed() {
        for line in [&b"0|B\r\n"[..], b"99|B\r\n", b"18446744073709551615|B\r\n"] {
            let (mut checker, _) = setup(4, &[6, 12], 12);
            let failure = checker.check(line, 0).unwrap_err();
            assert!(
                matches!(
                    failure,
                    Failure::Unexpected {
                        repeated: false,
                        ..
                    }
                ),
                "{failure}"
            );
        }
        // Before the plan is known, "sent" means "its chunk was stamped".
        let shared = Arc::new(Shared::default());
        let (_producer, consumer) = rtrb::RingBuffer::new(4);
        let mut checker = checker_on(consumer, shared.clone());
        assert!(checker.check(b"1|B\r\n", 0).is_err());
        let mut checker = checker_on(rtrb::RingBuffer::new(4).1, shared.clone());
        shared.clock.stamp(0);
        assert_eq!(checker.check(b"1|B\r\n", 0), Ok(Verdict::More));
    }

    #[test]
    fn a_missing_opening_broadcast_is_caught() {
        let (mut checker, lines) = setup(4, &[6, 12], 12);
        checker.check(&opening(2), 0).unwrap();
        checker.check(&opening(4), 0).unwrap();
        let failure = checker.check(&lines[0], 0).unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 3, .. }),
            "{failure}"
        );
    }

    #[test]
    fn a_resumable_client_is_owed_exactly_what_follows_its_verdict() {
        // Registered at 2: broadcast 3 first, not any, and nothing at or
        // below 2 (which it never had: not owed, not a repeat).
        let (mut checker, lines) = setup(4, &[6, 12], 12);
        checker.registered_at(2);
        let failure = checker.check(&opening(2), 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::Unexpected {
                    seq: 2,
                    repeated: false,
                    ..
                }
            ),
            "{failure}"
        );
        let (mut checker, lines_again) = setup(4, &[6, 12], 12);
        checker.registered_at(2);
        assert_eq!(checker.check(&opening(4), 0), Ok(Verdict::More));
        let failure = checker.check(&lines_again[0], 0).unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 3, .. }),
            "{failure}"
        );
        let (mut checker, _) = setup(4, &[6, 12], 12);
        checker.registered_at(2);
        for seq in 3..=4 {
            assert_eq!(checker.check(&opening(seq), 0), Ok(Verdict::More));
        }
        assert_eq!(checker.first_broadcast(), Some(3));
        assert_eq!(checker.check(&lines[0], 0), Ok(Verdict::More));
        // A line at or below the position, received before: a repeat.
        let failure = checker.check(&opening(4), 0).unwrap_err();
        assert!(
            matches!(
                failure,
                Failure::Unexpected {
                    seq: 4,
                    repeated: true,
                    ..
                }
            ),
            "{failure}"
        );
    }

    #[test]
    fn a_gap_gives_up_the_lines_up_to_its_position_and_keeps_the_totals() {
        let (mut reference, lines) = setup(1, &[6, 9, 12, 15], 15);
        let (mut checker, _) = setup(1, &[6, 9, 12, 15], 15);
        for checker in [&mut reference, &mut checker] {
            checker.registered_at(0);
            checker.check(&opening(1), 0).unwrap();
        }
        for line in &lines {
            reference.check(line, 0).unwrap();
        }
        checker.check(&lines[0], 0).unwrap();
        assert_eq!(checker.gap(10), 1, "9 given up; 6 was received");
        assert_eq!(checker.last_seq(), 10);
        assert_eq!(checker.check(&lines[2], 0), Ok(Verdict::More));
        assert_eq!(checker.check(&lines[3], 0), Ok(Verdict::Done));
        assert_eq!(checker.lost(), 1);
        // Lost lines are folded as the source folded them.
        assert_eq!(checker.tally(), reference.tally());
        // A gap that gives up the final broadcast leaves nothing owed.
        let (mut checker, _) = setup(1, &[6, 12], 12);
        checker.registered_at(1);
        assert_eq!(checker.gap(12), 2);
        assert!(checker.done());
    }

    #[test]
    fn a_checkpoint_past_an_owed_line_means_it_is_missing() {
        let (mut checker, lines) = setup(1, &[6, 9, 12], 12);
        checker.registered_at(1);
        assert_eq!(checker.checkpoint(5, b"#AT|s|5|0|00000000\r\n"), Ok(()));
        checker.check(&lines[0], 0).unwrap();
        assert_eq!(checker.checkpoint(8, b"#AT|s|8|1|00000000\r\n"), Ok(()));
        let failure = checker
            .checkpoint(9, b"#AT|s|9|1|00000000\r\n")
            .unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 9, ref instead, .. }
                if instead.as_deref().is_some_and(|text| text.contains("#AT|s|9"))),
            "{failure}"
        );
        // Before the plan, the next opening broadcast is owed.
        let shared = Arc::new(Shared::default());
        let (_producer, consumer) = rtrb::RingBuffer::new(4);
        let mut checker = checker_on(consumer, shared);
        checker.registered_at(3);
        let failure = checker
            .checkpoint(4, b"#AT|s|4|0|00000000\r\n")
            .unwrap_err();
        assert!(
            matches!(failure, Failure::Missing { seq: 4, .. }),
            "{failure}"
        );
    }

    #[test]
    fn a_drop_with_a_divergence_pending_is_a_failure() {
        let (mut checker, lines) = setup(1, &[6, 9, 12], 12);
        checker.registered_at(0);
        assert_eq!(checker.interrupted(), None);
        checker.check(&opening(1), 0).unwrap();
        assert_eq!(checker.check(&lines[1], 0), Ok(Verdict::More));
        let failure = checker
            .interrupted()
            .expect("a line came before the owed one");
        assert!(
            matches!(failure, Failure::Missing { seq: 6, .. }),
            "{failure}"
        );
    }

    #[test]
    fn a_control_line_on_a_plain_connection_fails() {
        let (mut checker, _) = setup(1, &[6, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        let failure = checker.check(b"#AT|s|5|0|00000000\r\n", 0).unwrap_err();
        assert!(
            matches!(failure, Failure::ControlOnPlain { ref received, .. } if received.contains("#AT")),
            "{failure}"
        );
        let (mut checker, _) = setup(1, &[6, 12], 12);
        let failure = checker.check(b"#OK|s|0\r\n", 0).unwrap_err();
        assert_eq!(failure.reason(), "control line on a plain connection");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            lines in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..60), 1..8),
            opened in 0u64..4,
        ) {
            let (mut checker, good) = setup(3, &[6, 9, 12], 12);
            for seq in 1..=opened {
                let _ = checker.check(&opening(seq), 0);
            }
            let _ = checker.check(&good[0], 0);
            for line in &lines {
                let _ = checker.check(line, 0);
            }
            let _ = checker.overdue(u64::MAX, Duration::from_millis(1));
            let _ = checker.closed();
        }

        #[test]
        fn resumable_positions_in_any_order_never_panic(
            steps in proptest::collection::vec((0u8..4, 0u64..16), 1..12),
        ) {
            let (mut checker, good) = setup(3, &[6, 9, 12], 12);
            checker.registered_at(1);
            for (step, seq) in steps {
                match step {
                    0 => { let _ = checker.gap(seq); }
                    1 => { let _ = checker.checkpoint(seq, b"#AT|s|1|0|00000000\r\n"); }
                    2 => { let _ = checker.interrupted(); }
                    _ => { let _ = checker.check(&good[seq as usize % good.len()], 0); }
                }
            }
            let _ = checker.overdue(u64::MAX, Duration::from_millis(1));
        }
    }

    #[test]
    fn overdue_only_after_the_timeout_from_the_send() {
        let (mut checker, _) = setup(1, &[6, 12], 12);
        checker.check(&opening(1), 0).unwrap();
        let timeout = Duration::from_millis(100);
        // Chunk 0 not stamped: nothing is overdue.
        assert_eq!(checker.overdue(1_000_000, timeout), Ok(timeout));
        checker.shared.clock.stamp(0);
        let sent = checker.shared.clock.sent_at(0).unwrap();
        assert_eq!(
            checker.overdue(sent + 40_000, timeout),
            Ok(Duration::from_millis(60))
        );
        let failure = checker.overdue(sent + 100_000, timeout).unwrap_err();
        assert!(
            matches!(failure, Failure::Timeout { seq: 6, .. }),
            "{failure}"
        );
    }
}
