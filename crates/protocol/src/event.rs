//! The wire protocol, as values: event lines from the source and the user id a
//! client sends first. Pure functions over byte slices; no I/O, no allocation.
//!
//! An event line is `seq|T[|from[|to]]` followed by `\r\n` or `\n`:
//!
//! | line            | meaning                               |
//! |-----------------|---------------------------------------|
//! | `666\|F\|60\|50` | follow: 60 starts following 50        |
//! | `1\|U\|12\|9`    | unfollow: 12 stops following 9        |
//! | `542532\|B`      | broadcast to every connected client   |
//! | `43\|P\|32\|56`  | private message from 32 to 56         |
//! | `634\|S\|32`     | status update of 32, to its followers |
//!
//! Numbers are unsigned decimal ASCII that fit in a `u64`; nothing else (no
//! sign, no spaces) is accepted.

use bytes::Bytes;

/// A user's id, as a client announces it and events name it.
pub type UserId = u64;

/// An event's sequence number. The stream starts at 1 and never wraps in
/// practice (2^64 events at 10M/s is 58,000 years).
pub type Seq = u64;

/// The largest number of decimal digits a `u64` can need; longer fields are
/// rejected before any arithmetic.
const MAX_DIGITS: usize = 20;

/// What an event does, without its sequence number or its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `from` starts following `to`; `to` is notified.
    Follow {
        /// The new follower.
        from: UserId,
        /// The user followed, and notified.
        to: UserId,
    },
    /// `from` stops following `to`; nobody is notified.
    Unfollow {
        /// The follower leaving.
        from: UserId,
        /// The user no longer followed.
        to: UserId,
    },
    /// Every connected client is notified.
    Broadcast,
    /// `to` is notified.
    Private {
        /// The sender.
        from: UserId,
        /// The one recipient, notified.
        to: UserId,
    },
    /// Every current follower of `from` is notified.
    Status {
        /// The author, whose followers are notified.
        from: UserId,
    },
}

/// An event's type: the letter of its line, as one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// `F`: [`EventKind::Follow`].
    Follow = b'F',
    /// `U`: [`EventKind::Unfollow`].
    Unfollow = b'U',
    /// `B`: [`EventKind::Broadcast`].
    Broadcast = b'B',
    /// `P`: [`EventKind::Private`].
    Private = b'P',
    /// `S`: [`EventKind::Status`].
    Status = b'S',
}

/// An [`EventKind`] in the layout the server queues it in: the type as a
/// tag byte and both user ids, `0` where the type has no such field. It
/// is built from a line with no branch on the type ([`parse_tagged_at`]),
/// and beside a sequence number and a line's offset it makes a 32-byte
/// queued event where the enum made 40. Converts to and from
/// [`EventKind`] losslessly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tagged {
    /// The type.
    pub tag: EventType,
    /// The follower, sender or author; `0` for a broadcast.
    pub from: UserId,
    /// The user followed, unfollowed or messaged; `0` for a broadcast or a
    /// status update.
    pub to: UserId,
}

impl From<EventKind> for Tagged {
    #[inline]
    fn from(kind: EventKind) -> Tagged {
        let (tag, from, to) = match kind {
            EventKind::Follow { from, to } => (EventType::Follow, from, to),
            EventKind::Unfollow { from, to } => (EventType::Unfollow, from, to),
            EventKind::Broadcast => (EventType::Broadcast, 0, 0),
            EventKind::Private { from, to } => (EventType::Private, from, to),
            EventKind::Status { from } => (EventType::Status, from, 0),
        };
        Tagged { tag, from, to }
    }
}

impl From<Tagged> for EventKind {
    #[inline]
    fn from(tagged: Tagged) -> EventKind {
        let Tagged { tag, from, to } = tagged;
        match tag {
            EventType::Follow => EventKind::Follow { from, to },
            EventType::Unfollow => EventKind::Unfollow { from, to },
            EventType::Broadcast => EventKind::Broadcast,
            EventType::Private => EventKind::Private { from, to },
            EventType::Status => EventKind::Status { from },
        }
    }
}

/// One event as read from the source: its parsed header and the exact bytes
/// that must be forwarded, terminator included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the stream; decides delivery order.
    pub seq: Seq,
    /// What the event does to the follower graph and who hears of it.
    pub kind: EventKind,
    /// The line exactly as read (`\r\n` or `\n` included), shared with the
    /// read buffer it came from, so forwarding it copies nothing.
    pub raw: Bytes,
}

/// Why a line is not an event. Each variant names one rule of the grammar so a
/// log line says what was wrong, not just that something was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Nothing between the terminators.
    Empty,
    /// A field the event type needs is absent.
    MissingField,
    /// More fields than the event type takes.
    ExtraField,
    /// A numeric field is empty, not all ASCII digits, or larger than `u64`.
    BadNumber,
    /// The type field is not one of `F`, `U`, `B`, `P`, `S`.
    UnknownType,
}

impl ParseError {
    /// A short, stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::Empty => "empty line",
            ParseError::MissingField => "missing field",
            ParseError::ExtraField => "extra field",
            ParseError::BadNumber => "bad number",
            ParseError::UnknownType => "unknown event type",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ParseError {}

/// Returns `line` without its `\n` or `\r\n` terminator (either may be absent).
#[inline]
pub fn strip_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses an unsigned decimal `u64`: one or more ASCII digits, nothing else.
#[inline]
pub fn parse_decimal(field: &[u8]) -> Result<u64, ParseError> {
    if field.is_empty() || field.len() > MAX_DIGITS {
        return Err(ParseError::BadNumber);
    }
    let mut value: u64 = 0;
    for &byte in field {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(ParseError::BadNumber);
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(ParseError::BadNumber)?;
    }
    Ok(value)
}

/// A cursor over one line, for [`parse_event`]'s single pass.
struct Cursor<'a> {
    /// The line, terminator stripped.
    line: &'a [u8],
    /// The next byte to look at.
    at: usize,
}

impl Cursor<'_> {
    /// Reads a decimal number up to the next byte that is not a digit.
    ///
    /// One pass, no bounds check per digit beyond the slice's own, and no
    /// overflow check for the 19 digits that cannot overflow a `u64`; a
    /// 20-digit run is re-read with checks ([`parse_decimal`]).
    #[inline(always)]
    fn number(&mut self) -> Result<u64, ParseError> {
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(&byte) = self.line.get(self.at) {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
            self.at += 1;
        }
        match self.at - start {
            0 => Err(ParseError::BadNumber),
            1..=19 => Ok(value),
            _ => parse_decimal(&self.line[start..self.at]),
        }
    }

    /// After a field: `Ok(true)` at a `|` (consumed), `Ok(false)` at the
    /// end of the line, and `Err(inside)` at any other byte: the field went
    /// on with something it may not hold.
    #[inline(always)]
    fn separator(&mut self, inside: ParseError) -> Result<bool, ParseError> {
        match self.line.get(self.at) {
            None => Ok(false),
            Some(b'|') => {
                self.at += 1;
                Ok(true)
            }
            Some(_) => Err(inside),
        }
    }

    /// A `|` then a number: a field the event type needs.
    #[inline(always)]
    fn user(&mut self) -> Result<UserId, ParseError> {
        if !self.separator(ParseError::BadNumber)? {
            return Err(ParseError::MissingField);
        }
        self.number()
    }

    /// The end of the line, after the last field the type takes.
    #[inline(always)]
    fn end(&mut self, inside: ParseError) -> Result<(), ParseError> {
        match self.separator(inside)? {
            false => Ok(()),
            true => Err(ParseError::ExtraField),
        }
    }
}

/// Parses one event line (terminator optional) into its sequence number and
/// kind. Returns an error, and never panics, for anything that is not exactly
/// one of the five event shapes.
///
/// One pass over the bytes: each field is read where it stands, digits
/// converted as they are met, so a 17-byte line costs a few nanoseconds
/// (see `benches/parse.rs`). Each error names the first rule the line
/// breaks, field by field from the left.
pub fn parse_event(line: &[u8]) -> Result<(Seq, EventKind), ParseError> {
    let line = strip_terminator(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut cursor = Cursor { line, at: 0 };
    let seq = cursor.number()?;
    if !cursor.separator(ParseError::BadNumber)? {
        return Err(ParseError::MissingField);
    }
    let kind = match line.get(cursor.at) {
        // `5|`: the type field is there, and empty.
        None => return Err(ParseError::UnknownType),
        Some(&kind) => kind,
    };
    cursor.at += 1;
    let kind = match kind {
        b'F' | b'U' | b'P' => {
            // The type is one byte: anything else before the next `|` makes
            // it an unknown one.
            if !cursor.separator(ParseError::UnknownType)? {
                return Err(ParseError::MissingField);
            }
            let from = cursor.number()?;
            let to = cursor.user()?;
            cursor.end(ParseError::BadNumber)?;
            match kind {
                b'F' => EventKind::Follow { from, to },
                b'U' => EventKind::Unfollow { from, to },
                _ => EventKind::Private { from, to },
            }
        }
        b'S' => {
            if !cursor.separator(ParseError::UnknownType)? {
                return Err(ParseError::MissingField);
            }
            let from = cursor.number()?;
            cursor.end(ParseError::BadNumber)?;
            EventKind::Status { from }
        }
        b'B' => {
            cursor.end(ParseError::UnknownType)?;
            EventKind::Broadcast
        }
        _ => return Err(ParseError::UnknownType),
    };
    Ok((seq, kind))
}

/// Parses a client's handshake line (terminator optional) into its user id.
pub fn parse_user_id(line: &[u8]) -> Result<UserId, ParseError> {
    let line = strip_terminator(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    parse_decimal(line)
}

/// How much of the text [`parse_event_at`] looks at from a line's start:
/// more than the longest line it accepts (51 bytes: three 15-digit numbers,
/// four separators, `\r\n`) plus the eight bytes a word load may see past
/// a number.
const WINDOW: usize = 64;

/// `'0'` in every byte lane: a digit's lane XORed with it holds 0 to 9.
const ZEROS: u64 = u64::from_le_bytes([b'0'; 8]);

/// The top bit of each lane of `digits` (a word XORed with [`ZEROS`]) that
/// does not hold a digit, i.e. whose value is not 0 to 9. Adding 0x76 to a
/// lane's low seven bits sets its top bit exactly when they are 10 or more,
/// and cannot carry into the next lane; a lane whose own top bit was set is
/// kept by the OR.
#[inline(always)]
fn non_digit_lanes(digits: u64) -> u64 {
    const LOW_SEVEN: u64 = u64::from_le_bytes([0x7f; 8]);
    const TO_TOP_BIT: u64 = u64::from_le_bytes([0x76; 8]);
    const TOP_BITS: u64 = u64::from_le_bytes([0x80; 8]);
    (((digits & LOW_SEVEN) + TO_TOP_BIT) | digits) & TOP_BITS
}

/// The number eight digit lanes spell, the first (most significant) digit
/// in the lowest lane: adjacent lanes are combined into 2-, then 4-, then
/// the 8-digit value, three multiplies in all. Every lane must hold 0 to 9.
#[inline(always)]
fn eight_digits(digits: u64) -> u64 {
    // Each 16-bit lane's low byte becomes its two digits' value, 0 to 99.
    let pairs = digits.wrapping_mul(10).wrapping_add(digits >> 8);
    const PAIR: u64 = 0x0000_00ff_0000_00ff;
    // 100 and 10^6 for pairs 0 and 2, 1 and 10^4 for pairs 1 and 3, summed
    // into the top half of the word.
    const HIGH_PAIRS: u64 = 100 + (1_000_000 << 32);
    const LOW_PAIRS: u64 = 1 + (10_000 << 32);
    ((pairs & PAIR)
        .wrapping_mul(HIGH_PAIRS)
        .wrapping_add(((pairs >> 16) & PAIR).wrapping_mul(LOW_PAIRS)))
        >> 32
}

/// The number spelt by the lanes of `digits` below `count` (0 to 8), with
/// no branch: 0 when `count` is 0.
#[inline(always)]
fn leading_digits(digits: u64, count: u32) -> u64 {
    // Shifted up so the digits fill the top lanes, zero lanes (leading zero
    // digits) below them. A count of 0 would shift by 64, which wraps to no
    // shift at all; the mask then clears the result.
    let shifted = digits.wrapping_shl(64 - 8 * count);
    eight_digits(shifted) & 0u64.wrapping_sub(u64::from(count != 0))
}

/// The decimal number at `at` in `window` (0 if none is there) and how
/// many digits it has, eight bytes at a time. A count of 16 means 16 *or
/// more*, with a value not to be used. `at + 16` must be within `window`.
#[inline(always)]
fn number_at(window: &[u8; WINDOW], at: usize) -> (u64, u32) {
    let word = |at: usize| {
        let bytes: [u8; 8] = window[at..at + 8].try_into().unwrap_or_default();
        u64::from_le_bytes(bytes) ^ ZEROS
    };
    let first = word(at);
    let stops = non_digit_lanes(first);
    if stops != 0 {
        let count = stops.trailing_zeros() / 8;
        return (leading_digits(first, count), count);
    }
    // Eight digits and more: a long sequence number.
    let second = word(at + 8);
    let count = non_digit_lanes(second).trailing_zeros().min(64) / 8;
    let value = eight_digits(first)
        .wrapping_mul(10u64.pow(count))
        .wrapping_add(leading_digits(second, count));
    (value, 8 + count)
}

/// How many user fields each event type takes, by type byte; anything
/// else is not a type.
const USER_FIELDS: [u8; 256] = {
    let mut fields = [u8::MAX; 256];
    fields[b'B' as usize] = 0;
    fields[b'S' as usize] = 1;
    fields[b'F' as usize] = 2;
    fields[b'U' as usize] = 2;
    fields[b'P' as usize] = 2;
    fields
};

/// The [`EventType`] of each type byte that [`USER_FIELDS`] admits (and
/// `Broadcast` for the rest, which it does not): a load, not a branch.
const TYPES: [EventType; 256] = {
    let mut types = [EventType::Broadcast; 256];
    types[b'S' as usize] = EventType::Status;
    types[b'F' as usize] = EventType::Follow;
    types[b'U' as usize] = EventType::Unfollow;
    types[b'P' as usize] = EventType::Private;
    types
};

/// Frames and parses the event line that starts at `start` in `text` in
/// one pass, if it is well formed with numbers of at most 15 digits (every
/// line a real source sends): returns where the line ends (after its
/// `\n`), its sequence number and kind. Returns `None` for any other line,
/// and for a line that starts within 64 bytes of the end of `text`: the
/// caller then finds the line's end and reads it with [`parse_event`],
/// which accepts the rest of the grammar and says what is wrong. Whatever
/// this accepts, [`parse_event`] reads the same (property-tested).
///
/// This is [`parse_tagged_at`] with the kind as the enum.
#[inline]
pub fn parse_event_at(text: &[u8], start: usize) -> Option<(usize, Seq, EventKind)> {
    parse_tagged_at(text, start).map(|(end, seq, tagged)| (end, seq, tagged.into()))
}

/// [`parse_event_at`], the kind as [`Tagged`]: the type byte becomes the
/// tag by a table load and the ids are kept or zeroed by the line's
/// shape, so no step branches on the type.
///
/// Why a second reader: this is the server's hottest loop. It loads eight
/// bytes at a time (which may look past the line, never past `text`), and
/// reads every line as one shape, `seq|T` then up to two `|user` fields,
/// checking the type against a table last. So the branches it takes depend
/// on the line being well formed, not on its type, which is random from
/// line to line: branching on the type first, as [`parse_event`] does,
/// mispredicts about every other line and cost half of the parse
/// (`benches/parse.rs`).
#[inline]
pub fn parse_tagged_at(text: &[u8], start: usize) -> Option<(usize, Seq, Tagged)> {
    let window: &[u8; WINDOW] = text
        .get(start..start.checked_add(WINDOW)?)?
        .try_into()
        .ok()?;
    // Every position below is at most 53 (fields of at most 16 digits),
    // and each number's loads end within 16 bytes of its start.
    let (seq, seq_digits) = number_at(window, 0);
    let at = seq_digits as usize;
    let bar = window[at];
    let kind = window[at + 1];
    let at = at + 2;
    let first_bar = window[at] == b'|';
    let (from, from_digits) = number_at(window, at + 1);
    let after_from = at + 1 + from_digits as usize;
    let second_bar = first_bar & (window[after_from] == b'|');
    let (to, to_digits) = number_at(window, after_from + 1);
    let after_to = after_from + 1 + to_digits as usize;
    let end = if second_bar {
        after_to
    } else if first_bar {
        after_from
    } else {
        at
    };
    let carriage_return = window[end] == b'\r';
    let newline = end + usize::from(carriage_return);
    let fields = u8::from(first_bar) + u8::from(second_bar);
    let well_formed = (1..16).contains(&seq_digits)
        & (!first_bar | (1..16).contains(&from_digits))
        & (!second_bar | (1..16).contains(&to_digits))
        & (bar == b'|')
        & (fields == USER_FIELDS[usize::from(kind)])
        & (window[newline] == b'\n');
    if !well_formed {
        return None;
    }
    let tagged = Tagged {
        tag: TYPES[usize::from(kind)],
        from: if first_bar { from } else { 0 },
        to: if second_bar { to } else { 0 },
    };
    Some((start + newline + 1, seq, tagged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_five_event_shapes() {
        assert_eq!(
            parse_event(b"666|F|60|50\r\n"),
            Ok((666, EventKind::Follow { from: 60, to: 50 }))
        );
        assert_eq!(
            parse_event(b"1|U|12|9\n"),
            Ok((1, EventKind::Unfollow { from: 12, to: 9 }))
        );
        assert_eq!(parse_event(b"542532|B"), Ok((542532, EventKind::Broadcast)));
        assert_eq!(
            parse_event(b"43|P|32|56\r\n"),
            Ok((43, EventKind::Private { from: 32, to: 56 }))
        );
        assert_eq!(
            parse_event(b"634|S|32\r\n"),
            Ok((634, EventKind::Status { from: 32 }))
        );
    }

    #[test]
    fn rejects_malformed_lines_with_the_rule_they_break() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"\r\n", ParseError::Empty),
            (b"", ParseError::Empty),
            (b"5|X|1|2", ParseError::UnknownType),
            (b"5|FF|1|2", ParseError::UnknownType),
            (b"5||1|2", ParseError::UnknownType),
            (b"0|", ParseError::UnknownType),
            (b"5", ParseError::MissingField),
            (b"5|F|1", ParseError::MissingField),
            (b"5|S", ParseError::MissingField),
            (b"5|F|1|2|3", ParseError::ExtraField),
            (b"5|B|1", ParseError::ExtraField),
            (b"5|S|1|2", ParseError::ExtraField),
            (b"x|B", ParseError::BadNumber),
            (b"-5|B", ParseError::BadNumber),
            (b"+5|B", ParseError::BadNumber),
            (b" 5|B", ParseError::BadNumber),
            (b"5|S|", ParseError::BadNumber),
            (b"18446744073709551616|B", ParseError::BadNumber),
            (b"123456789012345678901|B", ParseError::BadNumber),
            (b"5|S|3\r\r\n", ParseError::BadNumber),
            (b"5|S|\xff\xfe", ParseError::BadNumber),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_event(line),
                Err(*expected),
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn numbers_of_every_length_at_every_offset() {
        // 1 to 20 digits, as each field, so a number starts at every offset
        // and ends at every lane of the word it is read in, with the line
        // shorter and longer than a word.
        for digits in 1..=20usize {
            let number: String = "12345678909876543210"[..digits].to_string();
            let value: u64 = number.parse().unwrap();
            let cases = [
                (format!("{number}|B\r\n"), (value, EventKind::Broadcast)),
                (
                    format!("{number}|S|7\n"),
                    (value, EventKind::Status { from: 7 }),
                ),
                (
                    format!("1|S|{number}"),
                    (1, EventKind::Status { from: value }),
                ),
                (
                    format!("2|P|{number}|3\r\n"),
                    (2, EventKind::Private { from: value, to: 3 }),
                ),
                (
                    format!("3|F|4|{number}\n"),
                    (3, EventKind::Follow { from: 4, to: value }),
                ),
            ];
            for (line, expected) in cases {
                assert_eq!(parse_event(line.as_bytes()), Ok(expected), "{line:?}");
            }
        }
        // The one-pass reader, on the same lines with text after them: 16
        // digits and more are left to `parse_event`.
        for digits in 1..=20usize {
            let number = &"12345678909876543210"[..digits];
            let value: u64 = number.parse().unwrap();
            for (line, expected) in [
                (format!("{number}|B\r\n"), (value, EventKind::Broadcast)),
                (
                    format!("1|S|{number}\n"),
                    (1, EventKind::Status { from: value }),
                ),
                (
                    format!("3|F|4|{number}\r\n"),
                    (3, EventKind::Follow { from: 4, to: value }),
                ),
            ] {
                let text = format!("{line}{}", "9|B\r\n".repeat(13));
                let read = parse_event_at(text.as_bytes(), 0);
                if digits <= 15 {
                    assert_eq!(read, Some((line.len(), expected.0, expected.1)), "{line:?}");
                } else {
                    assert_eq!(read, None, "{line:?}");
                }
            }
        }
        assert_eq!(parse_event(b"1|B"), Ok((1, EventKind::Broadcast)));
        assert_eq!(
            parse_event(b"0|S|0"),
            Ok((0, EventKind::Status { from: 0 }))
        );
        assert_eq!(
            parse_event(b"00000000000000000000001|B"),
            Err(ParseError::BadNumber)
        );
    }

    #[test]
    fn accepts_the_extremes_of_u64() {
        assert_eq!(
            parse_event(b"18446744073709551615|S|0"),
            Ok((u64::MAX, EventKind::Status { from: 0 }))
        );
    }

    /// The field-by-field parser `parse_event` replaced: split at `|`, then
    /// convert each field. Kept as the reference the fast one must agree
    /// with on every input.
    fn reference(line: &[u8]) -> Result<(Seq, EventKind), ParseError> {
        let line = strip_terminator(line);
        if line.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut fields = line.split(|&byte| byte == b'|');
        let mut next = || fields.next().ok_or(ParseError::MissingField);
        let seq = parse_decimal(next()?)?;
        let kind = next()?;
        let mut user = || -> Result<UserId, ParseError> { parse_decimal(next()?) };
        let kind = match kind {
            b"F" => EventKind::Follow {
                from: user()?,
                to: user()?,
            },
            b"U" => EventKind::Unfollow {
                from: user()?,
                to: user()?,
            },
            b"P" => EventKind::Private {
                from: user()?,
                to: user()?,
            },
            b"S" => EventKind::Status { from: user()? },
            b"B" => EventKind::Broadcast,
            _ => return Err(ParseError::UnknownType),
        };
        match fields.next() {
            None => Ok((seq, kind)),
            Some(_) => Err(ParseError::ExtraField),
        }
    }

    /// The canonical line for a parsed event, for round-trip checks.
    fn canonical(seq: Seq, kind: EventKind) -> String {
        match kind {
            EventKind::Follow { from, to } => format!("{seq}|F|{from}|{to}"),
            EventKind::Unfollow { from, to } => format!("{seq}|U|{from}|{to}"),
            EventKind::Broadcast => format!("{seq}|B"),
            EventKind::Private { from, to } => format!("{seq}|P|{from}|{to}"),
            EventKind::Status { from } => format!("{seq}|S|{from}"),
        }
    }

    fn any_kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(from, to)| EventKind::Follow { from, to }),
            (any::<u64>(), any::<u64>()).prop_map(|(from, to)| EventKind::Unfollow { from, to }),
            Just(EventKind::Broadcast),
            (any::<u64>(), any::<u64>()).prop_map(|(from, to)| EventKind::Private { from, to }),
            any::<u64>().prop_map(|from| EventKind::Status { from }),
        ]
    }

    proptest! {
        /// Fuzzing by property: arbitrary bytes never panic, and whatever
        /// parses means the same after a canonical round trip.
        #[test]
        fn prop_arbitrary_bytes_never_panic(line in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((seq, kind)) = parse_event(&line) {
                prop_assert_eq!(parse_event(canonical(seq, kind).as_bytes()), Ok((seq, kind)));
            }
            if let Ok(user) = parse_user_id(&line) {
                prop_assert_eq!(parse_user_id(user.to_string().as_bytes()), Ok(user));
            }
        }

        /// Near-miss lines (valid alphabet, random shape) exercise every
        /// error path, and the one-pass parser says exactly what the
        /// field-by-field reference says.
        #[test]
        fn prop_near_misses_agree_with_the_reference(line in "[0-9|FUBPSX\\r\\n]{0,40}") {
            prop_assert_eq!(parse_event(line.as_bytes()), reference(line.as_bytes()));
            let _ = parse_user_id(line.as_bytes());
        }

        /// Digits next to the bytes that sit closest to them, in value or
        /// in a lane's top bit (`/` and `:` either side of `0`..`9`, and the
        /// digits with their top bit set), in lines of every length, short
        /// ones included: the word-at-a-time number reader must see exactly
        /// where each number stops.
        #[test]
        fn prop_digits_beside_their_neighbours_agree_with_the_reference(
            line in prop::collection::vec(
                prop::sample::select(&b"0123456789/:|FS\r\n\xb0\xb9\x00"[..]),
                0..32,
            ),
        ) {
            prop_assert_eq!(parse_event(&line), reference(&line));
        }

        #[test]
        fn prop_arbitrary_bytes_agree_with_the_reference(line in prop::collection::vec(any::<u8>(), 0..48)) {
            prop_assert_eq!(parse_event(&line), reference(&line));
        }

        /// Long digit runs, where overflow is decided.
        #[test]
        fn prop_long_numbers_agree_with_the_reference(
            digits in "[0-9]{15,22}",
            kind in "[BFS]",
        ) {
            let line = format!("{digits}|{kind}|{digits}|1");
            prop_assert_eq!(parse_event(line.as_bytes()), reference(line.as_bytes()));
            let line = format!("{digits}|S|{digits}");
            prop_assert_eq!(parse_event(line.as_bytes()), reference(line.as_bytes()));
        }

        /// Every well-formed line with numbers under 10^15 is read by the
        /// one-pass reader (the property below would hold with it always
        /// declining, only slower), ending where its terminator does.
        #[test]
        fn prop_common_lines_are_read_in_one_pass(
            seq in 0..1_000_000_000_000_000u64,
            from in 0..1_000_000_000_000_000u64,
            to in 0..1_000_000_000_000_000u64,
            shape in 0..5u8,
            crlf in any::<bool>(),
        ) {
            let kind = match shape {
                0 => EventKind::Follow { from, to },
                1 => EventKind::Unfollow { from, to },
                2 => EventKind::Broadcast,
                3 => EventKind::Private { from, to },
                _ => EventKind::Status { from },
            };
            let mut line = canonical(seq, kind);
            line.push_str(if crlf { "\r\n" } else { "\n" });
            let text = format!("{line}{}", "7|S|1\n".repeat(11));
            prop_assert_eq!(parse_event_at(text.as_bytes(), 0), Some((line.len(), seq, kind)));
        }

        /// Wherever it starts in near-miss text, whatever the one-pass
        /// reader accepts is one whole line that `parse_event` reads the
        /// same.
        #[test]
        fn prop_one_pass_reads_agree_with_parse_event(
            text in "([0-9]{0,17}\\|?[FUBPSX|]?(\\|[0-9/:]{0,17}){0,3}\r?\r?\n){1,12}",
        ) {
            let text = text.as_bytes();
            for start in 0..text.len() {
                if let Some((end, seq, kind)) = parse_event_at(text, start) {
                    let line = &text[start..end];
                    prop_assert_eq!(line.iter().position(|&byte| byte == b'\n'), Some(line.len() - 1));
                    prop_assert_eq!(parse_event(line), Ok((seq, kind)));
                    // The tagged form is the canonical one: absent ids are 0.
                    let tagged = parse_tagged_at(text, start).map(|(_, _, tagged)| tagged);
                    prop_assert_eq!(tagged, Some(Tagged::from(kind)));
                }
            }
        }

        #[test]
        fn prop_tagged_round_trips(kind in any_kind()) {
            prop_assert_eq!(EventKind::from(Tagged::from(kind)), kind);
        }

        #[test]
        fn prop_every_valid_event_parses(seq in any::<u64>(), kind in any_kind(), crlf in any::<bool>()) {
            let mut line = canonical(seq, kind);
            line.push_str(if crlf { "\r\n" } else { "\n" });
            prop_assert_eq!(parse_event(line.as_bytes()), Ok((seq, kind)));
        }
    }

    #[test]
    fn user_id_handshake() {
        assert_eq!(parse_user_id(b"2932\r\n"), Ok(2932));
        assert_eq!(parse_user_id(b"2932\n"), Ok(2932));
        assert_eq!(parse_user_id(b"\r\n"), Err(ParseError::Empty));
        assert_eq!(parse_user_id(b"abc\r\n"), Err(ParseError::BadNumber));
        assert_eq!(parse_user_id(b"12 34\r\n"), Err(ParseError::BadNumber));
    }
}
