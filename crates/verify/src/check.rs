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

use std::sync::Arc;
use std::time::Duration;

use rtrb::Consumer;

use super::expect::{Expected, Tally};
use super::failure::{ByteDiff, ClientRef, Failure, Progress};
use super::latency::Latencies;
use super::line::{format_line, leading_seq, quote, Event, Kind, MAX_LINE_BYTES};
use super::shared::{Plan, Shared};
use followermaze_protocol::{parse_event, strip_terminator, EventKind, Seq};

/// What the checker wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
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
    /// Nothing is queued yet.
    Nothing,
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
pub struct Checker {
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
    /// The first opening broadcast received.
    first_broadcast: Option<Seq>,
    /// The last sequence number received correctly (0: none).
    last_seq: Seq,
    /// A divergence being classified.
    suspect: Option<Suspect>,
    /// Set once the opening is over for this client: every line from here
    /// on is the queue's next entry (the fast path).
    in_main: bool,
    /// The plan's final sequence number, once `in_main`.
    final_seq: Seq,
}

/// The opening broadcasts are written one per chunk, starting with chunk 0
/// (sequence 0 is never sent and maps to no chunk).
#[inline]
fn opening_chunk(seq: Seq) -> u32 {
    seq.checked_sub(1)
        .and_then(|chunk| u32::try_from(chunk).ok())
        .unwrap_or(super::expect::UNTIMED)
}

impl Checker {
    /// A checker for `client`, reading its entries from `queue`.
    pub fn new(client: ClientRef, queue: Consumer<Expected>, shared: Arc<Shared>) -> Checker {
        Checker {
            client,
            queue,
            shared,
            plan: None,
            tally: Tally::default(),
            opening: Tally::default(),
            latencies: Latencies::default(),
            first_broadcast: None,
            last_seq: 0,
            suspect: None,
            in_main: false,
            final_seq: Seq::MAX,
        }
    }

    /// What arrived correctly so far of the main stream.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// What arrived correctly of the opening broadcasts.
    pub fn opening_tally(&self) -> Tally {
        self.opening
    }

    /// The latency samples so far.
    pub fn latencies(&self) -> &Latencies {
        &self.latencies
    }

    /// The first opening broadcast this client received.
    pub fn first_broadcast(&self) -> Option<Seq> {
        self.first_broadcast
    }

    #[inline]
    fn plan(&mut self) -> Option<Plan> {
        if self.plan.is_none() {
            self.plan = self.shared.plan();
        }
        self.plan
    }

    fn next_owed(&mut self) -> Owed {
        if self.first_broadcast.is_none() {
            return Owed::AnyOpening;
        }
        match self.plan() {
            Some(plan) if self.last_seq >= plan.opening_end => match self.queue.peek() {
                Ok(front) => Owed::Line(*front),
                Err(_) => Owed::Nothing,
            },
            // Still in the opening: the next broadcast.
            _ => {
                let seq = self.last_seq + 1;
                let broadcast = Event {
                    seq,
                    kind: Kind::Broadcast,
                    from: 0,
                    to: 0,
                };
                Owed::Line(Expected::new(&broadcast, opening_chunk(seq)))
            }
        }
    }

    fn progress(&mut self) -> Progress {
        let queued = self.queue.slots() as u64;
        let opening_left = match self.plan() {
            Some(plan) => plan.opening_end.saturating_sub(self.last_seq),
            None => 0,
        };
        let received = self.tally.count + self.opening.count;
        Progress {
            received,
            owed: received + queued + opening_left,
        }
    }

    /// Checks one complete line (terminator included) received at `now_us`
    /// on the send clock.
    pub fn check(&mut self, line: &[u8], now_us: u64) -> Result<Verdict, Failure> {
        // The fast path, nearly every line: the main stream's next entry,
        // rendered and compared byte for byte. No parsing.
        if self.in_main && self.suspect.is_none() {
            if let Ok(front) = self.queue.peek() {
                let (want, len) = front.render();
                if &want[..len] == line {
                    let (seq, chunk) = (front.seq, front.chunk);
                    // Only this reader pops: the front is still `front`.
                    let _ = self.queue.pop();
                    self.tally.add(line);
                    self.last_seq = seq;
                    self.record_latency(chunk, now_us);
                    return Ok(if seq == self.final_seq {
                        Verdict::Done
                    } else {
                        Verdict::More
                    });
                }
            }
        }
        self.check_slowly(line, now_us)
    }

    /// Everything but the fast path: the opening, and classifying a line
    /// that differs.
    fn check_slowly(&mut self, line: &[u8], now_us: u64) -> Result<Verdict, Failure> {
        if let Some(suspect) = self.suspect.take() {
            return Err(self.resolve(suspect, leading_seq(line)));
        }
        let Some(seq) = leading_seq(line) else {
            return Err(Failure::Malformed {
                client: self.client,
                received: quote(line),
                progress: self.progress(),
            });
        };
        match self.next_owed() {
            Owed::AnyOpening => {
                let opening = Event {
                    seq,
                    kind: Kind::Broadcast,
                    from: 0,
                    to: 0,
                };
                let mut want = [0u8; MAX_LINE_BYTES];
                let len = format_line(&opening, &mut want);
                // Only a broadcast the source has sent: opening broadcast
                // `seq` is chunk `seq - 1`, stamped before it is written.
                let sent = seq >= 1
                    && match self.plan() {
                        Some(plan) => seq <= plan.opening_end,
                        None => self.shared.clock.sent_at(opening_chunk(seq)).is_some(),
                    };
                let is_broadcast =
                    parse_event(line).map(|(_, kind)| kind) == Ok(EventKind::Broadcast);
                if !sent || !is_broadcast {
                    return Err(self.mismatch(seq, line, None));
                }
                if line != &want[..len] {
                    return Err(self.wrong_bytes(seq, &want[..len], line));
                }
                self.first_broadcast = Some(seq);
                self.accept(line, seq, opening_chunk(seq), now_us);
                self.shared.mark_registered(self.client.index);
                Ok(Verdict::More)
            }
            Owed::Line(owed) if owed.seq == seq => {
                let (want, len) = owed.render();
                if line != &want[..len] {
                    return Err(self.wrong_bytes(seq, &want[..len], line));
                }
                let from_queue = matches!(self.plan, Some(plan) if seq > plan.opening_end);
                if from_queue {
                    // The entry peeked above is still at the front: only
                    // this reader pops.
                    let _ = self.queue.pop();
                }
                self.accept(line, seq, owed.chunk, now_us);
                match self.plan {
                    Some(plan) if seq == plan.final_seq => Ok(Verdict::Done),
                    _ => Ok(Verdict::More),
                }
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
                    self.suspect = Some(suspect);
                    return Ok(Verdict::More);
                }
                Err(self.mismatch(seq, line, Some(owed)))
            }
            Owed::Nothing => Err(self.mismatch(seq, line, None)),
        }
    }

    /// Counts a correct line (slow path).
    fn accept(&mut self, line: &[u8], seq: Seq, chunk: u32, now_us: u64) {
        match self.plan {
            Some(plan) if seq > plan.opening_end => self.tally.add(line),
            _ => self.opening.add(line),
        }
        self.last_seq = seq;
        self.record_latency(chunk, now_us);
        if let Some(plan) = self.plan {
            if seq >= plan.opening_end {
                // From here on every line comes from the queue.
                self.in_main = true;
                self.final_seq = plan.final_seq;
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
            plan => {
                let sent = match plan {
                    Some(plan) => seq <= plan.opening_end,
                    None => self.shared.clock.sent_at(opening_chunk(seq)).is_some(),
                };
                sent && parse_event(line).map(|(_, kind)| kind) == Ok(EventKind::Broadcast)
            }
        }
    }

    /// The failure for bytes that cannot be a notification (a line longer
    /// than any event, or a fragment).
    pub fn malformed(&mut self, bytes: &[u8]) -> Failure {
        Failure::Malformed {
            client: self.client,
            received: quote(bytes),
            progress: self.progress(),
        }
    }

    /// The right event with the wrong bytes.
    fn wrong_bytes(&mut self, seq: Seq, want: &[u8], line: &[u8]) -> Failure {
        let diff = if strip_terminator(line) == strip_terminator(want) {
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
            return Failure::Malformed {
                client: self.client,
                received: quote(line),
                progress: self.progress(),
            };
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
    pub fn overdue(&mut self, now_us: u64, timeout: Duration) -> Result<Duration, Failure> {
        let owed = match &self.suspect {
            Some(suspect) => suspect.missing,
            None => match self.next_owed() {
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
        if let Some(suspect) = self.suspect.take() {
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
    pub fn closed(&mut self) -> Failure {
        if let Some(suspect) = self.suspect.take() {
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
    use crate::line::push_line;

    const CLIENT: ClientRef = ClientRef { index: 3, user: 42 };

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
        (Checker::new(CLIENT, consumer, shared), lines)
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
        let mut bare = lines[0].clone();
        bare.remove(bare.len() - 2);
        let failure = checker.check(&bare, 0).unwrap_err();
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
        let mut checker = Checker::new(CLIENT, consumer, shared.clone());
        assert!(checker.check(b"1|B\r\n", 0).is_err());
        let mut checker = Checker::new(CLIENT, rtrb::RingBuffer::new(4).1, shared.clone());
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
