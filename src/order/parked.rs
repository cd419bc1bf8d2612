//! An event waiting in the reorder window, with its own copy of its line.
//!
//! The sequencer lets a read's chunk go as soon as the read is placed, so a
//! parked event must not keep (or count a reference on) the chunk its line
//! came from. A line of the usual size (event lines are 10 to 40 bytes) is
//! copied inline, within the ring's slot; a longer one goes to the heap.

use followermaze_protocol::{Seq, Tagged};

use crate::batch::TaggedRef;
use crate::order::reorder::Arrival;

/// Line bytes held inline: the slot is then 80 bytes in all.
const INLINE_BYTES: usize = 46;

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Parked {
    /// Position in the stream.
    pub seq: Seq,
    /// What it does and who hears of it.
    pub tagged: Tagged,
    /// Its line, terminator included.
    line: Line,
}

/// A line's bytes: inline when short enough.
#[derive(Debug)]
enum Line {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Heap(Box<[u8]>),
}

impl Parked {
    /// Event `seq` of `kind`, its line `raw` copied.
    #[inline]
    pub(crate) fn new(seq: Seq, tagged: Tagged, raw: &[u8]) -> Parked {
        let line = if raw.len() <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            copy_short(&mut bytes, raw);
            Line::Inline {
                len: raw.len() as u8,
                bytes,
            }
        } else {
            Line::Heap(raw.into())
        };
        Parked { seq, tagged, line }
    }

    /// Parks event `seq` of `kind` in `slot`, its line `raw` copied there
    /// in place: built on the stack and moved in, its bytes were written at
    /// one width and read back at another, which stalls on store
    /// forwarding (a third of the sequencer's time in the classic profile).
    #[inline]
    pub(crate) fn park(slot: &mut Option<Parked>, seq: Seq, tagged: Tagged, raw: &[u8]) {
        if raw.len() > INLINE_BYTES {
            *slot = Some(Parked::new(seq, tagged, raw));
            return;
        }
        let parked = slot.insert(Parked {
            seq,
            tagged,
            line: Line::Inline {
                len: raw.len() as u8,
                bytes: [0; INLINE_BYTES],
            },
        });
        if let Line::Inline { bytes, .. } = &mut parked.line {
            copy_short(bytes, raw);
        }
    }

    /// The line, terminator included.
    #[inline]
    pub(crate) fn raw(&self) -> &[u8] {
        match &self.line {
            Line::Inline { len, bytes } => &bytes[..*len as usize],
            Line::Heap(bytes) => bytes,
        }
    }
}

/// An arriving event parks as a copy of its line.
impl Arrival<Parked> for TaggedRef<'_> {
    #[inline]
    fn park(self, slot: &mut Option<Parked>) {
        Parked::park(slot, self.seq, self.tagged, self.raw);
    }
}

/// Copies `src` to the front of `dst` (which must hold it) in 8-byte
/// words, the last one overlapping: a line is 10 to 40 bytes, and a call
/// to `memmove` for each, which a variable-length `copy_from_slice`
/// becomes, cost more than the copy.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    if len < 8 {
        dst[..len].copy_from_slice(src);
        return;
    }
    let mut at = 0;
    while at + 8 < len {
        dst[at..at + 8].copy_from_slice(&src[at..at + 8]);
        at += 8;
    }
    dst[len - 8..len].copy_from_slice(&src[len - 8..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use followermaze_protocol::EventKind;

    #[test]
    fn short_and_long_lines_come_back_byte_for_byte() {
        let short = b"12|S|34\r\n";
        let long: Vec<u8> = std::iter::repeat_n(b'7', 200).chain(*b"|B\n").collect();
        for raw in [&short[..], &long[..], &b"\n"[..], &[b'x'; INLINE_BYTES][..]] {
            let parked = Parked::new(1, EventKind::Broadcast.into(), raw);
            assert_eq!(parked.raw(), raw);
        }
        assert!(std::mem::size_of::<Parked>() <= 80);
    }

    #[test]
    fn every_short_length_is_copied_exactly() {
        let src: Vec<u8> = (1..=INLINE_BYTES as u8).collect();
        for len in 0..=INLINE_BYTES {
            let mut dst = [0u8; INLINE_BYTES];
            copy_short(&mut dst, &src[..len]);
            assert_eq!(&dst[..len], &src[..len]);
            assert!(dst[len..].iter().all(|&byte| byte == 0), "{len}");
        }
    }
}
