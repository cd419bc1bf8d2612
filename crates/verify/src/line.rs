//! Events as the verifier generates them, and their exact wire bytes.
//!
//! The inverse of [`followermaze_protocol::parse_event`]: a compact [`Event`] (24
//! bytes, `Copy`, no heap) and the one function that turns it into the line
//! the source sends, so the source and the client checkers can never
//! disagree about what a notification should look like.

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

    proptest! {
        #[test]
        fn lines_match_the_obvious_formatting(seq: u64, kind in 0usize..5, from: u32, to: u32) {
            let event = Event { seq, kind: Kind::ALL[kind], from, to };
            let letter = event.kind.letter() as char;
            let obvious = match event.kind {
                Kind::Broadcast => format!("{seq}|{letter}\r\n"),
                Kind::Status => format!("{seq}|{letter}|{from}\r\n"),
                _ => format!("{seq}|{letter}|{from}|{to}\r\n"),
            };
            prop_assert_eq!(String::from_utf8(line(event)).unwrap(), obvious);
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
