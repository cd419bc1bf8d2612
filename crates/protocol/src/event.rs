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
    Follow { from: UserId, to: UserId },
    /// `from` stops following `to`; nobody is notified.
    Unfollow { from: UserId, to: UserId },
    /// Every connected client is notified.
    Broadcast,
    /// `to` is notified.
    Private { from: UserId, to: UserId },
    /// Every current follower of `from` is notified.
    Status { from: UserId },
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
