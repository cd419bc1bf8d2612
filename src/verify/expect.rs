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
//!   notifications arrive, so each line is compared the moment it arrives
//!   and a divergence is pinned to its sequence number. The bound
//!   ([`queue_capacity`]) also paces the source: it never runs more than a
//!   queue's worth of notifications ahead of the slowest client.

use super::line::{Event, Kind};
use crate::protocol::Seq;

/// FNV-1a parameters (64-bit).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// See [`FNV_OFFSET`].
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Entries per client queue unless a batch needs more: about 100 KiB per
/// client, and at the classic mix several million events of lead.
pub const DEFAULT_QUEUE_ENTRIES: usize = 4096;

/// The per-client queue length for batches of up to `max_batch` events. A
/// batch can owe one client at most one notification per event, and the
/// source reserves a whole batch's entries at once, so the queue must hold
/// at least one batch or the source could never make progress.
pub fn queue_capacity(max_batch: u32) -> usize {
    DEFAULT_QUEUE_ENTRIES.max((max_batch as usize).next_power_of_two())
}

/// The hash of one line (FNV-1a 64, terminator included).
#[inline]
pub fn line_hash(line: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for &byte in line {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
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
            digest: FNV_OFFSET,
        }
    }
}

impl Tally {
    /// Adds one line.
    #[inline]
    pub fn add(&mut self, line: &[u8]) {
        self.add_hashed(line_hash(line), line.len());
    }

    /// Adds one line whose [`line_hash`] is already known (the source hashes
    /// a broadcast once for all its recipients).
    #[inline]
    pub fn add_hashed(&mut self, hash: u64, len: usize) {
        self.count += 1;
        self.bytes += len as u64;
        self.digest = (self.digest ^ hash).wrapping_mul(FNV_PRIME).rotate_left(29);
    }
}

/// A chunk number meaning "no send time recorded" (latency not sampled).
pub const UNTIMED: u32 = u32::MAX;

/// One notification a client is owed, as queued by the source. 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The event's sequence number.
    pub seq: Seq,
    /// Its acting user.
    pub from: u32,
    /// Its target user.
    pub to: u32,
    /// The source chunk that carries it (see [`super::latency::SendClock`]),
    /// or [`UNTIMED`].
    pub chunk: u32,
    /// Its type.
    pub kind: Kind,
}

impl Expected {
    /// The entry for `event`, sent in chunk `chunk`.
    #[inline]
    pub fn new(event: &Event, chunk: u32) -> Expected {
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
    pub fn event(&self) -> Event {
        Event {
            seq: self.seq,
            kind: self.kind,
            from: self.from,
            to: self.to,
        }
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
    fn entries_are_small_and_round_trip() {
        assert_eq!(std::mem::size_of::<Expected>(), 24);
        let event = Event {
            seq: 9,
            kind: Kind::Private,
            from: 3,
            to: 4,
        };
        assert_eq!(Expected::new(&event, 7).event(), event);
        assert_eq!(queue_capacity(100), DEFAULT_QUEUE_ENTRIES);
        assert_eq!(queue_capacity(10_000), 16_384);
    }
}
