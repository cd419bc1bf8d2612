//! Bookkeeping of what each client is owed, in O(1) memory per client.
//!
//! Two independent records, kept on the two sides of the socket:
//!
//! - A [`Tally`] per client: how many notifications, how many bytes, and an
//!   order-sensitive digest of their lines. The source folds in the exact
//!   bytes it wrote for each event a client must hear of; the client's
//!   reader folds in the exact bytes it read. At the end the two must be
//!   equal. Three words per client, however long the run.
//! - A bounded queue of [`Expected`] entries per client, filled by the
//!   source just before it writes the events and drained by the reader as
//!   notifications arrive. Each entry is the event in 24 bytes (three fit in
//!   a cache line, which matters: the source writes one per notification,
//!   and each new line is a transfer between cores); the reader renders it
//!   with the source's own formatter and compares the received line with
//!   it byte for byte, so a divergence is pinned to its sequence number.
//!   The bound ([`queue_capacity`]) also paces the source: it never runs
//!   more than a queue's worth of notifications ahead of the slowest client.

use super::line::{format_line, Event, Kind, MAX_LINE_BYTES};
use followermaze_protocol::Seq;

/// Multipliers for the line hash and the digest (odd 64-bit constants
/// with well-mixed bits, from SplitMix64 and xxHash).
const MIX_A: u64 = 0x9E37_79B9_7F4A_7C15;
/// See [`MIX_A`].
const MIX_B: u64 = 0xC2B2_AE3D_27D4_EB4F;
/// The digest of no lines.
const DIGEST_START: u64 = 0x243F_6A88_85A3_08D3;

/// Entries per client queue unless a batch needs more, or there are so many
/// clients that [`QUEUE_BUDGET_ENTRIES`] runs out first: 96 KiB per client,
/// and at the classic mix several million events of lead.
pub(crate) const DEFAULT_QUEUE_ENTRIES: usize = 4096;

/// Entries all client queues together may hold by default (24 MiB).
pub(crate) const QUEUE_BUDGET_ENTRIES: usize = 1 << 20;

/// The per-client queue length for `clients` clients and batches of up to
/// `max_batch` events: [`DEFAULT_QUEUE_ENTRIES`], less when many clients
/// share [`QUEUE_BUDGET_ENTRIES`], but never less than one batch. A batch
/// can owe one client at most one notification per event, and the source
/// reserves a whole batch's entries at once, so the queue must hold at
/// least one batch or the source could never make progress.
pub(crate) fn queue_capacity(max_batch: u32, clients: usize) -> usize {
    let share = (QUEUE_BUDGET_ENTRIES / clients.max(1)).min(DEFAULT_QUEUE_ENTRIES);
    share.max((max_batch as usize).next_power_of_two())
}

#[inline]
fn mix(x: u64) -> u64 {
    (x ^ (x >> 32)).wrapping_mul(MIX_A).rotate_left(29)
}

/// A 64-bit hash of one line, terminator included. Reads eight bytes at a
/// time (the last word overlaps the one before rather than being padded),
/// so a 20-byte line costs three multiplications; not for adversaries, but
/// a changed, dropped or added byte changes it.
#[inline]
pub(crate) fn line_hash(line: &[u8]) -> u64 {
    let len = line.len();
    let mut hash = (len as u64).wrapping_mul(MIX_B);
    if len >= 8 {
        let mut words = line.chunks_exact(8);
        for word in &mut words {
            let word: [u8; 8] = word.try_into().expect("chunks_exact yields 8 bytes");
            hash = mix(hash ^ u64::from_le_bytes(word));
        }
        if !words.remainder().is_empty() {
            let last: [u8; 8] = line[len - 8..].try_into().expect("len >= 8");
            hash = mix(hash ^ u64::from_le_bytes(last));
        }
    } else {
        let mut word = 0u64;
        for &byte in line {
            word = (word << 8) | u64::from(byte);
        }
        hash = mix(hash ^ word);
    }
    hash ^ (hash >> 29)
}

/// Count, bytes and digest of a client's notifications; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Notifications.
    pub count: u64,
    /// Their bytes, terminators included.
    pub bytes: u64,
    /// An order-sensitive digest of their line hashes: swapping two lines,
    /// dropping one, or changing a byte changes it (up to hash collisions,
    /// which do not matter: the queues compare every line exactly).
    pub digest: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            count: 0,
            bytes: 0,
            digest: DIGEST_START,
        }
    }
}

impl Tally {
    /// Adds one line.
    #[inline]
    pub(crate) fn add(&mut self, line: &[u8]) {
        self.add_hashed(line_hash(line), line.len());
    }

    /// Adds one line whose [`line_hash`] is already known (the source hashes
    /// a broadcast once for all its recipients).
    #[inline]
    pub(crate) fn add_hashed(&mut self, hash: u64, len: usize) {
        self.count += 1;
        self.bytes += len as u64;
        self.digest = (self.digest ^ hash).wrapping_mul(MIX_B).rotate_left(31);
    }
}

/// A chunk number meaning "no send time recorded" (latency not sampled).
pub(crate) const UNTIMED: u32 = u32::MAX;

/// One notification a client is owed, as queued by the source. 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    /// The event's sequence number.
    pub(crate) seq: Seq,
    /// Its acting user.
    from: u32,
    /// Its target user.
    to: u32,
    /// The source chunk that carries it (see [`super::latency::SendClock`]),
    /// or [`UNTIMED`].
    pub(crate) chunk: u32,
    /// Its type.
    kind: Kind,
}

impl Expected {
    /// The entry for `event`, sent in chunk `chunk`.
    #[inline]
    pub(crate) fn new(event: &Event, chunk: u32) -> Expected {
        Expected {
            seq: event.seq,
            from: event.from,
            to: event.to,
            chunk,
            kind: event.kind,
        }
    }

    /// The event this entry stands for.
    #[inline]
    pub(crate) fn event(&self) -> Event {
        Event {
            seq: self.seq,
            kind: self.kind,
            from: self.from,
            to: self.to,
        }
    }

    /// The line the source wrote for it, `&buf[..len]`: by
    /// [`format_line`], whose bytes the source's [`super::line::LineWriter`]
    /// matches (the checker's fast path renders with one of those).
    #[inline]
    pub(crate) fn render(&self) -> ([u8; MAX_LINE_BYTES], usize) {
        let mut buf = [0u8; MAX_LINE_BYTES];
        let len = format_line(&self.event(), &mut buf);
        (buf, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(lines: &[&[u8]]) -> Tally {
        let mut tally = Tally::default();
        for line in lines {
            tally.add(line);
        }
        tally
    }

    #[test]
    fn the_digest_sees_order_loss_and_bytes() {
        let base = tally(&[b"1|B\r\n", b"2|B\r\n", b"3|B\r\n"]);
        assert_eq!(base, tally(&[b"1|B\r\n", b"2|B\r\n", b"3|B\r\n"]));
        assert_ne!(
            base.digest,
            tally(&[b"2|B\r\n", b"1|B\r\n", b"3|B\r\n"]).digest
        );
        assert_ne!(base.digest, tally(&[b"1|B\r\n", b"3|B\r\n"]).digest);
        assert_ne!(
            base.digest,
            tally(&[b"1|B\r\n", b"2|B\n", b"3|B\r\n"]).digest
        );
        assert_eq!(base.count, 3);
        assert_eq!(base.bytes, 15);
    }

    #[test]
    fn entries_are_small_and_render_their_line() {
        assert_eq!(std::mem::size_of::<Expected>(), 24);
        let event = Event {
            seq: 9,
            kind: Kind::Private,
            from: 3,
            to: 4,
        };
        let entry = Expected::new(&event, 7);
        assert_eq!(entry.event(), event);
        let (line, len) = entry.render();
        assert_eq!(&line[..len], b"9|P|3|4\r\n");
    }

    #[test]
    fn queues_hold_a_batch_within_a_budget() {
        assert_eq!(queue_capacity(100, 100), DEFAULT_QUEUE_ENTRIES);
        assert_eq!(queue_capacity(10_000, 100), 16_384);
        assert_eq!(queue_capacity(100, 10_000), 128);
        assert_eq!(queue_capacity(1, 1_000_000), 1);
    }

    #[test]
    fn the_line_hash_sees_every_byte() {
        let line = b"1234567|F|123|456\r\n";
        let base = line_hash(line);
        for i in 0..line.len() {
            let mut changed = line.to_vec();
            changed[i] ^= 1;
            assert_ne!(line_hash(&changed), base, "byte {i}");
        }
        assert_ne!(line_hash(b"1|B\r\n"), line_hash(b"1|B\n"));
        assert_ne!(line_hash(b""), line_hash(b"\0"));
    }
}
