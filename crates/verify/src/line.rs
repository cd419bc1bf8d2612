//! Events as the verifier generates them, and their exact wire bytes.
//!
//! The inverse of [`followermaze_protocol::parse_event`]: a compact [`Event`] (24
//! bytes, `Copy`, no heap) and the one function that turns it into the line
//! the source sends, so the source and the client checkers can never
//! disagree about what a notification should look like.

use std::sync::Arc;

use followermaze_protocol::Seq;

/// Every line the verifier sends ends with this, as the protocol says.
pub(crate) const TERMINATOR: &[u8] = b"\r\n";

/// The longest line [`format_line`] can produce: a 20-digit sequence, two
/// 10-digit user ids, three separators, a type letter and the terminator.
pub(crate) const MAX_LINE_BYTES: usize = 20 + 10 + 10 + 3 + 1 + TERMINATOR.len();

/// What an event does; the protocol's type letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Kind {
    /// `F`: `from` follows `to`; `to` is notified.
    Follow,
    /// `U`: `from` unfollows `to`; nobody is notified.
    Unfollow,
    /// `B`: everyone connected is notified.
    Broadcast,
    /// `P`: `to` is notified.
    Private,
    /// `S`: the followers of `from` are notified.
    Status,
}

impl Kind {
    /// Every kind, in discriminant order (for per-kind counters).
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Follow,
        Kind::Unfollow,
        Kind::Broadcast,
        Kind::Private,
        Kind::Status,
    ];

    /// The type letter on the wire.
    #[inline]
    pub(crate) fn letter(self) -> u8 {
        match self {
            Kind::Follow => b'F',
            Kind::Unfollow => b'U',
            Kind::Broadcast => b'B',
            Kind::Private => b'P',
            Kind::Status => b'S',
        }
    }

    /// A plural noun for reports ("status updates").
    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Follow => "follows",
            Kind::Unfollow => "unfollows",
            Kind::Broadcast => "broadcasts",
            Kind::Private => "private messages",
            Kind::Status => "status updates",
        }
    }
}

/// One generated event. User ids are `u32`: the verifier numbers its users
/// `1..=numberOfUsers`, and half the width keeps the per-client expectation
/// queues small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Event {
    /// Its sequence number.
    pub(crate) seq: Seq,
    /// Its type.
    pub(crate) kind: Kind,
    /// The acting user (unused by broadcasts, which have none).
    pub(crate) from: u32,
    /// The target user (used by follows, unfollows and private messages).
    pub(crate) to: u32,
}

impl Event {
    /// Broadcast `seq` (a broadcast names no users).
    #[inline]
    pub(crate) fn broadcast(seq: Seq) -> Event {
        Event {
            seq,
            kind: Kind::Broadcast,
            from: 0,
            to: 0,
        }
    }

    /// The protocol module's view of this event, for tests comparing it
    /// with what [`followermaze_protocol::parse_event`] reads back.
    #[cfg(test)]
    pub(crate) fn protocol_kind(&self) -> followermaze_protocol::EventKind {
        use followermaze_protocol::EventKind;
        let (from, to) = (u64::from(self.from), u64::from(self.to));
        match self.kind {
            Kind::Follow => EventKind::Follow { from, to },
            Kind::Unfollow => EventKind::Unfollow { from, to },
            Kind::Broadcast => EventKind::Broadcast,
            Kind::Private => EventKind::Private { from, to },
            Kind::Status => EventKind::Status { from },
        }
    }
}

/// `"00" "01" ... "99"`: two digits per table lookup.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `n` in decimal into `buf` from `at`; returns where it ends. The
/// digits go straight to their place, two at a time, with no intermediate
/// buffer: this runs three times per event on the source's hot path.
#[inline]
fn put_decimal(buf: &mut [u8; MAX_LINE_BYTES], at: usize, mut n: u64) -> usize {
    let end = at + n.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut pos = end;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        pos -= 2;
        buf[pos] = DIGIT_PAIRS[pair];
        buf[pos + 1] = DIGIT_PAIRS[pair + 1];
    }
    if n >= 10 {
        let pair = n as usize * 2;
        buf[pos - 2] = DIGIT_PAIRS[pair];
        buf[pos - 1] = DIGIT_PAIRS[pair + 1];
    } else {
        buf[pos - 1] = b'0' + n as u8;
    }
    end
}

/// Writes `event`'s line, terminator included, at the start of `buf` and
/// returns its length.
#[inline]
pub(crate) fn format_line(event: &Event, buf: &mut [u8; MAX_LINE_BYTES]) -> usize {
    let mut at = put_decimal(buf, 0, event.seq);
    buf[at] = b'|';
    buf[at + 1] = event.kind.letter();
    at += 2;
    match event.kind {
        Kind::Broadcast => {}
        Kind::Status => {
            buf[at] = b'|';
            at = put_decimal(buf, at + 1, u64::from(event.from));
        }
        Kind::Follow | Kind::Unfollow | Kind::Private => {
            buf[at] = b'|';
            at = put_decimal(buf, at + 1, u64::from(event.from));
            buf[at] = b'|';
            at = put_decimal(buf, at + 1, u64::from(event.to));
        }
    }
    buf[at..at + TERMINATOR.len()].copy_from_slice(TERMINATOR);
    at + TERMINATOR.len()
}

/// Room [`LineWriter::write`] needs for one line: the longest line, plus
/// slack for the whole-word stores that may run past its end (bytes past
/// the returned length are scratch, overwritten by the next line).
pub(crate) const LINE_SLOT_BYTES: usize = 64;

/// Bytes of a [`LineWriter`] user entry: `|` and up to 10 digits, with the
/// entry's length in its last byte.
const USER_ENTRY_BYTES: usize = 16;

/// Users whose `|id` the [`LineWriter`] keeps ready: 1 MiB of entries at
/// most; larger ids are formatted digit by digit.
const USER_TABLE_MAX: u32 = 1 << 16;

/// User ids on each kind's line, in [`Kind::ALL`] order: follow,
/// unfollow, broadcast, private, status.
const USER_FIELDS: [u8; 5] = [2, 2, 0, 2, 1];

/// Bytes of a [`LineWriter`] hundreds entry: the digits of `seq / 100` (at
/// most 18), with their count in its last byte.
const HUNDREDS_ENTRY_BYTES: usize = 24;

/// The source's fast formatter: the same bytes as [`format_line`] (the
/// tests compare them), but no division loop per number. Every user id's
/// `|id` is rendered once, up front; a sequence number is the digits of
/// `seq / 100`, rendered once per hundred (a batch spans one or two
/// hundreds, so two are cached), then two digits from [`DIGIT_PAIRS`].
/// Pieces are copied as fixed-size words into a [`LINE_SLOT_BYTES`] slot,
/// which is why the slot is longer than the line.
///
/// A clone shares the table (and starts with the same cache).
#[derive(Debug, Clone)]
pub(crate) struct LineWriter {
    /// `users[id]`: `|id`, its length in the last byte; ids
    /// `0..users.len()`. Shared by clones: the source and every client's
    /// checker read the same table.
    users: Arc<[[u8; USER_ENTRY_BYTES]]>,
    /// The digits of two hundreds (`seq / 100`), slot `hundreds & 1`, with
    /// which hundreds they are (0: none, as sequence numbers under 100 do
    /// not use the cache).
    hundreds: [(u64, [u8; HUNDREDS_ENTRY_BYTES]); 2],
}

impl LineWriter {
    /// A writer with `|id` ready for ids `0..=users` (up to
    /// [`USER_TABLE_MAX`]; larger ones still format, more slowly).
    pub(crate) fn new(users: u32) -> LineWriter {
        let table_end = users.min(USER_TABLE_MAX);
        let users = (0..=table_end)
            .map(|id| {
                let mut scratch = [0u8; MAX_LINE_BYTES];
                scratch[0] = b'|';
                let end = put_decimal(&mut scratch, 1, u64::from(id));
                let mut entry = [0u8; USER_ENTRY_BYTES];
                entry[..end].copy_from_slice(&scratch[..end]);
                entry[USER_ENTRY_BYTES - 1] = end as u8;
                entry
            })
            .collect();
        LineWriter {
            users,
            hundreds: [(0, [0; HUNDREDS_ENTRY_BYTES]); 2],
        }
    }

    /// Writes `event`'s line, terminator included, at the start of `slot`
    /// and returns its length; `slot[len..]` is scratch.
    ///
    /// No branch on the kind, which is random: both user entries are
    /// written whatever the kind, and one the kind does not carry counts
    /// for no bytes, so the next piece overwrites it.
    #[inline]
    pub(crate) fn write(&mut self, event: &Event, slot: &mut [u8; LINE_SLOT_BYTES]) -> usize {
        let mut at = self.put_seq(slot, event.seq);
        slot[at] = b'|';
        slot[at + 1] = event.kind.letter();
        at += 2;
        let (Some(from), Some(to)) = (
            self.users.get(event.from as usize),
            self.users.get(event.to as usize),
        ) else {
            return self.write_users_slowly(event, slot, at);
        };
        let fields = USER_FIELDS[event.kind as usize];
        slot[at..at + USER_ENTRY_BYTES].copy_from_slice(from);
        at += usize::from(from[USER_ENTRY_BYTES - 1]) * usize::from(fields >= 1);
        slot[at..at + USER_ENTRY_BYTES].copy_from_slice(to);
        at += usize::from(to[USER_ENTRY_BYTES - 1]) * usize::from(fields >= 2);
        slot[at..at + TERMINATOR.len()].copy_from_slice(TERMINATOR);
        at + TERMINATOR.len()
    }

    /// The rest of [`LineWriter::write`] when a user id is past the table:
    /// the fields from `at` on, and the terminator.
    fn write_users_slowly(
        &self,
        event: &Event,
        slot: &mut [u8; LINE_SLOT_BYTES],
        mut at: usize,
    ) -> usize {
        let fields = USER_FIELDS[event.kind as usize];
        if fields >= 1 {
            at = self.put_user(slot, at, event.from);
        }
        if fields >= 2 {
            at = self.put_user(slot, at, event.to);
        }
        slot[at..at + TERMINATOR.len()].copy_from_slice(TERMINATOR);
        at + TERMINATOR.len()
    }

    /// Writes `seq` at the start of `slot`; returns where it ends.
    #[inline]
    fn put_seq(&mut self, slot: &mut [u8; LINE_SLOT_BYTES], seq: Seq) -> usize {
        let (high, low) = (seq / 100, (seq % 100) as usize * 2);
        if high == 0 {
            if low >= 20 {
                slot[..2].copy_from_slice(&DIGIT_PAIRS[low..low + 2]);
                return 2;
            }
            slot[0] = DIGIT_PAIRS[low + 1];
            return 1;
        }
        let cached = &mut self.hundreds[(high & 1) as usize];
        if cached.0 != high {
            *cached = (high, hundreds_entry(high));
        }
        let entry = &cached.1;
        let at = usize::from(entry[HUNDREDS_ENTRY_BYTES - 1]);
        slot[..HUNDREDS_ENTRY_BYTES].copy_from_slice(entry);
        slot[at..at + 2].copy_from_slice(&DIGIT_PAIRS[low..low + 2]);
        at + 2
    }

    /// Writes `|user` at `at` in `slot`; returns where it ends.
    #[inline]
    fn put_user(&self, slot: &mut [u8; LINE_SLOT_BYTES], at: usize, user: u32) -> usize {
        match self.users.get(user as usize) {
            Some(entry) => {
                slot[at..at + USER_ENTRY_BYTES].copy_from_slice(entry);
                at + usize::from(entry[USER_ENTRY_BYTES - 1])
            }
            None => {
                let mut scratch = [0u8; MAX_LINE_BYTES];
                scratch[0] = b'|';
                let end = put_decimal(&mut scratch, 1, u64::from(user));
                slot[at..at + end].copy_from_slice(&scratch[..end]);
                at + end
            }
        }
    }
}

/// The digits of `high` (non-zero, at most 18 digits), their count in the
/// last byte.
fn hundreds_entry(high: u64) -> [u8; HUNDREDS_ENTRY_BYTES] {
    let mut scratch = [0u8; MAX_LINE_BYTES];
    let end = put_decimal(&mut scratch, 0, high);
    let mut entry = [0u8; HUNDREDS_ENTRY_BYTES];
    entry[..end].copy_from_slice(&scratch[..end]);
    entry[HUNDREDS_ENTRY_BYTES - 1] = end as u8;
    entry
}

/// Appends `event`'s line to `out` and returns its length (for tests: the
/// source formats straight into its buffer with [`format_line`]).
#[cfg(test)]
pub(crate) fn push_line(event: &Event, out: &mut Vec<u8>) -> usize {
    let mut line = [0u8; MAX_LINE_BYTES];
    let len = format_line(event, &mut line);
    out.extend_from_slice(&line[..len]);
    len
}

/// The sequence number at the start of a received line (the digits before
/// the first `|`), or `None` if there is none. Cheaper than a full parse for
/// the fast path, where the bytes are then compared whole anyway.
#[inline]
pub(crate) fn leading_seq(line: &[u8]) -> Option<Seq> {
    let bar = memchr::memchr(b'|', line)?;
    followermaze_protocol::parse_decimal(&line[..bar]).ok()
}

/// A short printable rendering of a line for failure messages: escapes
/// `\r`, `\n` and anything not printable, and cuts long lines.
pub(crate) fn quote(line: &[u8]) -> String {
    const SHOWN: usize = 64;
    let shown = &line[..line.len().min(SHOWN)];
    let mut text = String::with_capacity(shown.len() + 8);
    text.push('`');
    text.push_str(&String::from_utf8_lossy(shown).escape_debug().to_string());
    if line.len() > SHOWN {
        text.push('…');
    }
    text.push('`');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use followermaze_protocol::parse_event;
    use proptest::prelude::*;

    fn line(event: Event) -> Vec<u8> {
        let mut out = Vec::new();
        push_line(&event, &mut out);
        out
    }

    #[test]
    fn formats_the_five_shapes() {
        let event = |seq, kind, from, to| Event {
            seq,
            kind,
            from,
            to,
        };
        assert_eq!(line(event(666, Kind::Follow, 60, 50)), b"666|F|60|50\r\n");
        assert_eq!(line(event(1, Kind::Unfollow, 12, 9)), b"1|U|12|9\r\n");
        assert_eq!(line(event(542532, Kind::Broadcast, 7, 8)), b"542532|B\r\n");
        assert_eq!(line(event(43, Kind::Private, 32, 56)), b"43|P|32|56\r\n");
        assert_eq!(line(event(634, Kind::Status, 32, 1)), b"634|S|32\r\n");
    }

    #[test]
    fn decimal_edges() {
        for n in [0, 9, 10, 99, 100, 101, 999, 1000, 123456789, u64::MAX] {
            let event = Event {
                seq: n,
                kind: Kind::Broadcast,
                from: 0,
                to: 0,
            };
            assert_eq!(line(event), format!("{n}|B\r\n").into_bytes());
        }
    }

    #[test]
    fn the_longest_line_fits() {
        let event = Event {
            seq: u64::MAX,
            kind: Kind::Follow,
            from: u32::MAX,
            to: u32::MAX,
        };
        assert_eq!(line(event).len(), MAX_LINE_BYTES);
    }

    #[test]
    fn leading_seq_and_quote() {
        assert_eq!(leading_seq(b"12|B\r\n"), Some(12));
        assert_eq!(leading_seq(b"12B\r\n"), None);
        assert_eq!(leading_seq(b"x|B\r\n"), None);
        assert_eq!(quote(b"1|B\r\n"), "`1|B\\r\\n`");
    }

    /// `writer`'s line for `event`, from a slot full of stale bytes.
    fn written(writer: &mut LineWriter, event: Event) -> Vec<u8> {
        let mut slot = [0xA5u8; LINE_SLOT_BYTES];
        let len = writer.write(&event, &mut slot);
        slot[..len].to_vec()
    }

    /// The obvious line for `event`, by `format!`.
    fn obvious(event: Event) -> String {
        let (seq, letter, from, to) =
            (event.seq, event.kind.letter() as char, event.from, event.to);
        match event.kind {
            Kind::Broadcast => format!("{seq}|{letter}\r\n"),
            Kind::Status => format!("{seq}|{letter}|{from}\r\n"),
            _ => format!("{seq}|{letter}|{from}|{to}\r\n"),
        }
    }

    #[test]
    fn the_writer_matches_format_at_the_edges() {
        let numbers = [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            199,
            200,
            999,
            1000,
            9_999,
            10_000,
            65_535,
            65_536,
            65_537,
            99_999,
            100_000,
            123_456_789,
            u64::from(u32::MAX),
            10_000_000_000_000_000_000,
            u64::MAX - 1,
            u64::MAX,
        ];
        for users in [1, 1000, USER_TABLE_MAX, u32::MAX] {
            let mut writer = LineWriter::new(users);
            for &seq in &numbers {
                for &user in &numbers {
                    let user = u32::try_from(user).unwrap_or(u32::MAX);
                    for kind in Kind::ALL {
                        let event = Event {
                            seq,
                            kind,
                            from: user,
                            to: user,
                        };
                        let line = written(&mut writer, event);
                        assert_eq!(String::from_utf8(line.clone()).unwrap(), obvious(event));
                        let mut reference = [0u8; MAX_LINE_BYTES];
                        let len = format_line(&event, &mut reference);
                        assert_eq!(line, &reference[..len]);
                    }
                }
            }
        }
    }

    #[test]
    fn the_writer_matches_format_across_hundreds_in_any_order() {
        // Consecutive runs, a shuffled batch spanning two hundreds, and
        // hundreds that share a cache slot, one after another.
        let mut writer = LineWriter::new(1000);
        let mut seqs: Vec<u64> = (0..2_000).collect();
        seqs.extend([150, 350, 150, 550, 149, 151, 250, 99, 100, 1_000_050, 50]);
        let mut rng = crate::rng::Rng::new(7);
        let mut batch: Vec<u64> = (9_950..10_050).collect();
        for i in (1..batch.len()).rev() {
            batch.swap(i, rng.below(i as u64 + 1) as usize);
        }
        seqs.extend(batch);
        for seq in seqs {
            let event = Event {
                seq,
                kind: Kind::Follow,
                from: 12,
                to: 345,
            };
            assert_eq!(
                String::from_utf8(written(&mut writer, event)).unwrap(),
                obvious(event)
            );
        }
    }

    proptest! {
        #[test]
        fn lines_match_the_obvious_formatting(seq: u64, kind in 0usize..5, from: u32, to: u32) {
            let event = Event { seq, kind: Kind::ALL[kind], from, to };
            prop_assert_eq!(String::from_utf8(line(event)).unwrap(), obvious(event));
        }

        #[test]
        fn the_writer_matches_the_obvious_formatting(
            users in 1u32..70_000,
            events in proptest::collection::vec((any::<u64>(), 0usize..5, any::<u32>(), any::<u32>()), 1..50),
            small in any::<bool>(),
        ) {
            let mut writer = LineWriter::new(users);
            for (seq, kind, from, to) in events {
                // Small numbers too: they take the tables' paths.
                let (seq, from, to) = if small {
                    (seq % 100_000, from % 80_000, to % 80_000)
                } else {
                    (seq, from, to)
                };
                let event = Event { seq, kind: Kind::ALL[kind], from, to };
                prop_assert_eq!(String::from_utf8(written(&mut writer, event)).unwrap(), obvious(event));
            }
        }

        #[test]
        fn every_formatted_line_parses_back(seq in 1u64.., kind in 0usize..5, from: u32, to: u32) {
            let event = Event { seq, kind: Kind::ALL[kind], from, to };
            let bytes = line(event);
            prop_assert!(bytes.ends_with(TERMINATOR));
            prop_assert_eq!(parse_event(&bytes), Ok((seq, event.protocol_kind())));
            prop_assert_eq!(leading_seq(&bytes), Some(seq));
        }
    }
}
