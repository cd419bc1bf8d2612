//! The reorder buffer: a sliding window over sequence numbers that turns an
//! out-of-order stream into an in-order one.
//!
//! Items are parked in a ring indexed by `seq mod ring_len`; the slot of the
//! next expected sequence is always at `next mod ring_len`, so releasing a
//! contiguous run is a walk along the ring, and an item that arrives in order
//! never touches it. A ring beats a hash map here (see `benches/reorder.rs`):
//! no hashing, no tombstones, and parked items sit in sequence order in
//! memory.
//!
//! The window is bounded: at most `max_window` sequences, from the next
//! expected one, may be parked. The ring starts small and doubles up to that
//! bound only when the disorder of the input needs it, then shrinks back when
//! it empties, so a well-behaved source costs a few KiB, not the bound.
//!
//! No I/O and no clock: what to do about a gap that lasts too long is the
//! caller's decision ([`ReorderBuffer::skip_gap`]); see `gap.rs`.

use followermaze_protocol::Seq;

/// The ring's length when the buffer is created or shrinks back.
const INITIAL_RING_SLOTS: usize = 1024;

/// Once empty, a ring longer than this is given back to the allocator.
const SHRINK_ABOVE_SLOTS: usize = 64 * 1024;

/// Where released items go, in sequence order: a `Vec`, or a consumer
/// that builds its output as items come (the sequencer copies each line
/// straight into the batch it will send).
///
/// An item is released by reference, from its slot (or as it arrived), and
/// only then cleared: moving it out first would copy it through the stack,
/// and for the sequencer's 80-byte parked lines that copy, read back at
/// other widths than it was written, stalled on store forwarding.
pub trait Release<T> {
    /// Takes the next item in sequence order.
    fn release(&mut self, item: &T);
}

impl<T: Clone> Release<T> for Vec<T> {
    #[inline]
    fn release(&mut self, item: &T) {
        self.push(item.clone());
    }
}

/// What arrives to be placed: the item itself, or a cheaper view of it
/// that becomes one only if it has to wait (the sequencer's arriving
/// events name their line in the read's chunk and copy it only to park).
pub trait Arrival<T> {
    /// Stores it in `slot`, which is empty, to be released later.
    fn park(self, slot: &mut Option<T>);
}

impl<T> Arrival<T> for T {
    #[inline]
    fn park(self, slot: &mut Option<T>) {
        *slot = Some(self);
    }
}

/// Where an inserted item went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// It was the next expected item: released at once, with any run of
    /// parked items it unblocked.
    Released,
    /// Parked until the sequences before it arrive or are skipped.
    Parked,
    /// Its sequence was already released or skipped: dropped.
    Late,
    /// An item with its sequence is already parked: dropped.
    Duplicate,
    /// Its sequence is `max_window` or more past the next expected one and
    /// nothing parked could be released to make room: dropped.
    TooFarAhead,
}

/// Counters of what the buffer dropped or skipped since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Items dropped because their sequence had already passed.
    pub late: u64,
    /// Items dropped because their sequence was already parked.
    pub duplicate: u64,
    /// Items dropped because they were beyond the window.
    pub too_far_ahead: u64,
    /// Sequences given up on (never released), by gap skips of any cause.
    pub skipped: u64,
}

/// See the module doc.
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    /// `slots[seq & (len - 1)]` holds the parked item of `seq`, for every
    /// `seq` in `next..next + len`. The length is a power of two.
    slots: Vec<Option<T>>,
    /// The next sequence to release; everything below it is released or
    /// skipped.
    next: Seq,
    /// How many slots hold an item.
    parked: usize,
    /// The highest sequence parked or released so far (0 before any).
    highest: Seq,
    /// At most this many sequences from `next` on may be parked; a power of
    /// two.
    max_window: usize,
    /// What was dropped or skipped.
    stats: ReorderStats,
}

impl<T> ReorderBuffer<T> {
    /// An empty buffer expecting sequence 1, whose window holds at most
    /// `max_window` sequences (rounded up to a power of two).
    pub fn new(max_window: usize) -> Self {
        let max_window = max_window.max(2).next_power_of_two();
        ReorderBuffer {
            slots: empty_ring(INITIAL_RING_SLOTS.min(max_window)),
            next: 1,
            parked: 0,
            highest: 0,
            max_window,
            stats: ReorderStats::default(),
        }
    }

    /// The next sequence the buffer will release.
    pub fn next_expected(&self) -> Seq {
        self.next
    }

    /// How many items are parked.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// The window bound, in sequences.
    pub fn max_window(&self) -> usize {
        self.max_window
    }

    /// Counters of drops and skips so far.
    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Sequences between the next expected one and the highest seen that
    /// have not arrived: 0 if and only if nothing is parked.
    pub fn missing(&self) -> u64 {
        if self.parked == 0 {
            0
        } else {
            self.highest - self.next + 1 - self.parked as u64
        }
    }

    /// Places `item` by its sequence. Every item this releases, in sequence
    /// order, is pushed onto `released`.
    ///
    /// When `seq` is beyond the window, the oldest gaps are skipped (as by
    /// [`ReorderBuffer::skip_gap`]) until it fits. If it could not fit even
    /// with every gap skipped (it is `max_window` or more past the highest
    /// sequence seen), nothing is skipped and the item is dropped as
    /// [`Placement::TooFarAhead`]: a jump that large is a broken source, not
    /// a lost event, and must not cost the events still being waited for.
    pub fn insert<A: Arrival<T>>(
        &mut self,
        seq: Seq,
        item: A,
        released: &mut (impl Release<T> + Release<A>),
    ) -> Placement {
        if seq < self.next {
            self.stats.late += 1;
            return Placement::Late;
        }
        if seq == self.next {
            self.highest = self.highest.max(seq);
            released.release(&item);
            self.next += 1;
            self.release_ready(released);
            return Placement::Released;
        }
        // Skipping gaps can move the window's start at most to just past the
        // highest parked sequence. If `seq` would not fit even then, it is a
        // corrupt or wildly jumping sequence number: drop it without giving
        // up on anything that is still being waited for.
        let furthest_start = self.next.max(self.highest + 1);
        if seq.saturating_sub(furthest_start) >= self.max_window as u64 {
            self.stats.too_far_ahead += 1;
            return Placement::TooFarAhead;
        }
        while seq - self.next >= self.max_window as u64 && self.parked > 0 {
            self.skip_gap(released);
        }
        if seq < self.next {
            // Skipping moved the window past `seq`'s own slot.
            self.stats.late += 1;
            return Placement::Late;
        }
        if seq == self.next {
            return self.insert(seq, item, released);
        }
        let offset = seq - self.next;
        if offset >= self.max_window as u64 {
            self.stats.too_far_ahead += 1;
            return Placement::TooFarAhead;
        }
        // `offset < max_window <= usize::MAX`, so the cast is lossless.
        let offset = offset as usize;
        if offset >= self.slots.len() {
            self.grow_to_fit(offset);
        }
        let mask = self.slots.len() - 1;
        let slot = &mut self.slots[(seq as usize) & mask];
        if slot.is_some() {
            self.stats.duplicate += 1;
            return Placement::Duplicate;
        }
        item.park(slot);
        self.parked += 1;
        self.highest = self.highest.max(seq);
        Placement::Parked
    }

    /// Gives up on the missing run at the front of the window: moves `next`
    /// to the first parked sequence and releases from there. Returns the
    /// skipped sequences, an empty range if nothing is parked.
    pub fn skip_gap(&mut self, released: &mut impl Release<T>) -> std::ops::Range<Seq> {
        if self.parked == 0 {
            return self.next..self.next;
        }
        let mask = self.slots.len() - 1;
        let first = self.next;
        // Something is parked within `next..next + len`, so this finds it.
        let mut seq = first;
        while self.slots[(seq as usize) & mask].is_none() {
            seq += 1;
        }
        debug_assert!(seq > first, "the front of a gap is empty");
        self.stats.skipped += seq - first;
        self.next = seq;
        self.release_ready(released);
        first..seq
    }

    /// Releases everything parked, in order, skipping every gap; the window
    /// is empty afterwards. Returns how many sequences were skipped.
    pub fn flush(&mut self, released: &mut impl Release<T>) -> u64 {
        let mut skipped = 0;
        while self.parked > 0 {
            let gap = self.skip_gap(released);
            skipped += gap.end - gap.start;
        }
        skipped
    }

    /// Forgets every parked item and expects sequence 1 again (a new stream).
    /// Counters are kept.
    pub fn restart(&mut self) {
        self.slots = empty_ring(INITIAL_RING_SLOTS.min(self.max_window));
        self.next = 1;
        self.parked = 0;
        self.highest = 0;
    }

    /// Forgets every parked item and expects `next` (a restarted cluster
    /// sequencer carries on after what the stream already holds). Counters
    /// are kept.
    pub fn restart_at(&mut self, next: Seq) {
        self.restart();
        self.next = next.max(1);
        self.highest = self.next - 1;
    }

    /// Moves the contiguous run of parked items starting at `next` out.
    fn release_ready(&mut self, released: &mut impl Release<T>) {
        if self.parked == 0 {
            return;
        }
        let mask = self.slots.len() - 1;
        loop {
            let slot = &mut self.slots[(self.next as usize) & mask];
            let Some(item) = slot.as_ref() else {
                break;
            };
            released.release(item);
            *slot = None;
            self.next += 1;
            self.parked -= 1;
        }
        if self.parked == 0 && self.slots.len() > SHRINK_ABOVE_SLOTS {
            self.slots = empty_ring(INITIAL_RING_SLOTS.min(self.max_window));
        }
    }

    /// Doubles the ring until `offset` from `next` has a slot of its own,
    /// moving parked items to their slots in the longer ring.
    fn grow_to_fit(&mut self, offset: usize) {
        let new_len = (offset + 1).next_power_of_two();
        debug_assert!(new_len <= self.max_window);
        let old = std::mem::replace(&mut self.slots, empty_ring(new_len));
        let old_mask = old.len() - 1;
        let new_mask = new_len - 1;
        for (index, slot) in old.into_iter().enumerate() {
            if let Some(item) = slot {
                // The parked sequence whose old slot is `index`: the one in
                // `next..next + old_len` congruent to it.
                let distance = index.wrapping_sub(self.next as usize) & old_mask;
                let seq = self.next + distance as u64;
                self.slots[(seq as usize) & new_mask] = Some(item);
            }
        }
    }
}

fn empty_ring<T>(len: usize) -> Vec<Option<T>> {
    debug_assert!(len.is_power_of_two());
    std::iter::repeat_with(|| None).take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn insert_all(buffer: &mut ReorderBuffer<u64>, seqs: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &seq in seqs {
            buffer.insert(seq, seq, &mut out);
        }
        out
    }

    #[test]
    fn releases_in_order_whatever_the_arrival_order() {
        let mut buffer = ReorderBuffer::new(16);
        assert_eq!(insert_all(&mut buffer, &[3, 2, 5]), Vec::<u64>::new());
        assert_eq!(buffer.parked(), 3);
        assert_eq!(buffer.missing(), 2);
        assert_eq!(insert_all(&mut buffer, &[1]), vec![1, 2, 3]);
        assert_eq!(insert_all(&mut buffer, &[4]), vec![4, 5]);
        assert_eq!(buffer.next_expected(), 6);
        assert_eq!(buffer.parked(), 0);
    }

    #[test]
    fn drops_and_counts_duplicates_and_late_items() {
        let mut buffer = ReorderBuffer::new(16);
        let mut out = Vec::new();
        assert_eq!(buffer.insert(3, 3, &mut out), Placement::Parked);
        assert_eq!(buffer.insert(3, 33, &mut out), Placement::Duplicate);
        assert_eq!(buffer.insert(1, 1, &mut out), Placement::Released);
        assert_eq!(buffer.insert(1, 11, &mut out), Placement::Late);
        assert_eq!(buffer.insert(0, 0, &mut out), Placement::Late);
        assert_eq!(out, vec![1]);
        let stats = buffer.stats();
        assert_eq!((stats.late, stats.duplicate), (2, 1));
    }

    #[test]
    fn skip_gap_gives_up_on_the_front_run_only() {
        let mut buffer = ReorderBuffer::new(16);
        let mut out = insert_all(&mut buffer, &[4, 5, 8]);
        assert_eq!(buffer.skip_gap(&mut out), 1..4);
        assert_eq!(out, vec![4, 5]);
        assert_eq!(buffer.next_expected(), 6);
        assert_eq!(buffer.insert(2, 2, &mut out), Placement::Late);
        assert_eq!(buffer.skip_gap(&mut out), 6..8);
        assert_eq!(out, vec![4, 5, 8]);
        assert_eq!(buffer.skip_gap(&mut out), 9..9);
        assert_eq!(buffer.stats().skipped, 5);
    }

    #[test]
    fn a_full_window_skips_its_oldest_gap_to_make_room() {
        let mut buffer = ReorderBuffer::new(8);
        // 1 is lost; 2..=8 fill the window.
        let out = insert_all(&mut buffer, &[2, 3, 4, 5, 6, 7, 8]);
        assert!(out.is_empty());
        // 9 is 8 past `next` = 1: the window is full, so 1 is given up.
        let out = insert_all(&mut buffer, &[9]);
        assert_eq!(out, (2..=9).collect::<Vec<_>>());
        assert_eq!(buffer.stats().skipped, 1);
    }

    #[test]
    fn a_jump_beyond_an_empty_window_is_dropped() {
        let mut buffer = ReorderBuffer::new(8);
        let mut out = Vec::new();
        assert_eq!(buffer.insert(1_000, 0, &mut out), Placement::TooFarAhead);
        assert_eq!(buffer.next_expected(), 1);
        assert_eq!(buffer.stats().too_far_ahead, 1);
    }

    #[test]
    fn a_wild_jump_does_not_skip_the_gaps_being_waited_for() {
        let mut buffer = ReorderBuffer::new(8);
        let mut out = insert_all(&mut buffer, &[2, 3]);
        assert_eq!(
            buffer.insert(1_000_000, 0, &mut out),
            Placement::TooFarAhead
        );
        assert!(out.is_empty(), "nothing released: {out:?}");
        assert_eq!(insert_all(&mut buffer, &[1]), vec![1, 2, 3]);
        assert_eq!(buffer.stats().skipped, 0);
    }

    #[test]
    fn grows_past_its_initial_ring_and_shrinks_back() {
        let mut buffer = ReorderBuffer::new(1 << 20);
        let seqs: Vec<u64> = (2..=200_000).rev().collect();
        assert!(insert_all(&mut buffer, &seqs).is_empty());
        assert!(buffer.slots.len() >= 200_000);
        let out = insert_all(&mut buffer, &[1]);
        assert_eq!(out, (1..=200_000).collect::<Vec<_>>());
        assert_eq!(buffer.slots.len(), INITIAL_RING_SLOTS);
    }

    #[test]
    fn flush_and_restart() {
        let mut buffer = ReorderBuffer::new(64);
        let mut out = insert_all(&mut buffer, &[3, 7, 5]);
        assert_eq!(buffer.flush(&mut out), 4);
        assert_eq!(out, vec![3, 5, 7]);
        buffer.restart();
        assert_eq!(insert_all(&mut buffer, &[2, 1]), vec![1, 2]);
    }

    /// The naive model: collect everything, sort, release the contiguous
    /// prefix starting at 1.
    fn sort_and_release(seqs: &[u64]) -> Vec<u64> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted
            .into_iter()
            .enumerate()
            .take_while(|(index, seq)| *seq == *index as u64 + 1)
            .map(|(_, seq)| seq)
            .collect()
    }

    proptest! {
        #[test]
        fn prop_reorder_matches_sort(
            len in 0u64..3000,
            batch in 1usize..300,
            seed in any::<u64>(),
            cuts in prop::collection::vec(1usize..500, 1..20),
        ) {
            // A shuffled-within-batches permutation of 1..=len, like the
            // verifier sends, fed in random chunks.
            let mut seqs: Vec<u64> = (1..=len).collect();
            let mut rng = seed | 1;
            for chunk in seqs.chunks_mut(batch) {
                for i in (1..chunk.len()).rev() {
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                    chunk.swap(i, (rng % (i as u64 + 1)) as usize);
                }
            }
            let mut buffer = ReorderBuffer::new(4096);
            let mut out = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= seqs.len() { break; }
                let end = (at + cut).min(seqs.len());
                for &seq in &seqs[at..end] {
                    buffer.insert(seq, seq, &mut out);
                }
                at = end;
            }
            prop_assert_eq!(out, sort_and_release(&seqs));
            prop_assert_eq!(buffer.parked(), 0);
        }

        #[test]
        fn prop_any_input_releases_strictly_increasing(
            seqs in prop::collection::vec(0u64..400, 0..600),
            window in 1usize..64,
        ) {
            let mut buffer = ReorderBuffer::new(window);
            let mut out = Vec::new();
            for &seq in &seqs {
                buffer.insert(seq, seq, &mut out);
            }
            buffer.flush(&mut out);
            prop_assert!(out.windows(2).all(|pair| pair[0] < pair[1]));
            let mut distinct: Vec<u64> = seqs.iter().copied().filter(|s| *s > 0).collect();
            distinct.sort_unstable();
            distinct.dedup();
            // Nothing is released that was not inserted.
            prop_assert!(out.iter().all(|seq| distinct.binary_search(seq).is_ok()));
            let stats = buffer.stats();
            // Every insert is accounted for exactly once.
            prop_assert_eq!(
                out.len() as u64 + stats.late + stats.duplicate + stats.too_far_ahead,
                seqs.len() as u64
            );
        }
    }
}
