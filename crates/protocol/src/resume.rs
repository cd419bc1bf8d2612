//! The resumable-session wire format: the handshake a client sends, and the
//! control lines (`#OK`, `#GAP`, `#AT`) a server sends back.
//!
//! ```text
//! client: 2932\r\n                  classic: events only, no session
//! client: 2932||0\r\n               resumable, first connection
//! client: 2932|k3j9x0|18842\r\n     resume stream k3j9x0 after position 18842
//! server: #OK|k3j9x0|18842\r\n      every line after 18842 follows, complete
//! server: #GAP|k3j9x0|19000\r\n     lines in (18842, 19000] may be lost
//! server: #AT|k3j9x0|19500|612|8f3a2c1d\r\n
//!         every line <= 19500 was sent; 612 lines since the verdict, CRC-32 8f3a2c1d
//! ```
//!
//! A control line starts with `#`, which no event line can (an event starts
//! with its sequence number's digits). Pure functions: the server formats
//! with them, the verifier and the tests parse with them.

use crate::event::{parse_decimal, strip_terminator, ParseError, Seq, UserId};

/// The longest stream id, in characters.
pub const MAX_STREAM_ID_CHARS: usize = 32;

/// The longest handshake line, terminator included: a 20-digit user id, a
/// 32-character stream id, a 20-digit position, two bars and `\r\n`.
pub const MAX_HELLO_BYTES: usize = 20 + 1 + MAX_STREAM_ID_CHARS + 1 + 20 + 2;

/// Names a sequence space: 1 to 32 characters of `[0-9a-z]`. A server picks
/// a new one at each process start and each new stream, so a position is
/// only ever compared with positions of the same space.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId {
    /// The characters, in `bytes[..len]`; the rest is zero.
    bytes: [u8; MAX_STREAM_ID_CHARS],
    /// How many are used (1..=32).
    len: u8,
}

impl StreamId {
    /// Validates `text` as a stream id.
    pub fn parse(text: &[u8]) -> Result<StreamId, HelloError> {
        if text.is_empty() || text.len() > MAX_STREAM_ID_CHARS {
            return Err(HelloError::BadStream);
        }
        if !text
            .iter()
            .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase())
        {
            return Err(HelloError::BadStream);
        }
        let mut bytes = [0u8; MAX_STREAM_ID_CHARS];
        bytes[..text.len()].copy_from_slice(text);
        Ok(StreamId {
            bytes,
            len: text.len() as u8,
        })
    }

    /// A stream id spelling `value` in base 36 (at most 13 characters).
    pub fn from_u64(mut value: u64) -> StreamId {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut reversed = [0u8; 13];
        let mut len = 0;
        loop {
            reversed[len] = DIGITS[(value % 36) as usize];
            len += 1;
            value /= 36;
            if value == 0 {
                break;
            }
        }
        let mut bytes = [0u8; MAX_STREAM_ID_CHARS];
        for (slot, digit) in bytes.iter_mut().zip(reversed[..len].iter().rev()) {
            *slot = *digit;
        }
        StreamId {
            bytes,
            len: len as u8,
        }
    }

    /// The id's characters.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("a stream id is ASCII by construction")
    }
}

impl std::fmt::Debug for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamId({})", self.as_str())
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// `2932`: events only, no session, never a control line.
    Classic(UserId),
    /// `2932|stream|after`: a session, a verdict first, checkpoints after.
    Resumable {
        /// The user id.
        user: UserId,
        /// The stream the client last heard of; `None` on a first
        /// connection (the field was empty).
        stream: Option<StreamId>,
        /// The highest position the client received from that stream; 0
        /// on a first connection (the field was `0` or empty).
        after: Seq,
    },
}

impl Hello {
    /// The user the connection is for.
    pub fn user(&self) -> UserId {
        match *self {
            Hello::Classic(user) | Hello::Resumable { user, .. } => user,
        }
    }
}

/// Why a handshake line is not a [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    /// The user id is not a number.
    BadUser(ParseError),
    /// Not 1 or 3 `|`-separated fields.
    FieldCount,
    /// The stream id is not 1 to 32 characters of `[0-9a-z]`.
    BadStream,
    /// The position is not a number.
    BadPosition,
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::BadUser(error) => write!(f, "user id: {error}"),
            HelloError::FieldCount => f.write_str("expected `user` or `user|stream|after`"),
            HelloError::BadStream => f.write_str("stream id: expected 1 to 32 of [0-9a-z]"),
            HelloError::BadPosition => f.write_str("position: not an unsigned number"),
        }
    }
}

impl std::error::Error for HelloError {}

/// Parses a handshake line (terminator optional): `user` or
/// `user|stream|after`, with `stream` and `after` possibly empty.
pub fn parse_hello(line: &[u8]) -> Result<Hello, HelloError> {
    let line = strip_terminator(line);
    let mut fields = line.split(|&byte| byte == b'|');
    let user = fields.next().unwrap_or_default();
    let user = if user.is_empty() {
        Err(HelloError::BadUser(ParseError::Empty))
    } else {
        parse_decimal(user).map_err(HelloError::BadUser)
    }?;
    let (Some(stream), Some(after), None) = (fields.next(), fields.next(), fields.next()) else {
        return match line.contains(&b'|') {
            false => Ok(Hello::Classic(user)),
            true => Err(HelloError::FieldCount),
        };
    };
    let stream = match stream {
        b"" => None,
        text => Some(StreamId::parse(text)?),
    };
    let after = match after {
        b"" => 0,
        digits => parse_decimal(digits).map_err(|_| HelloError::BadPosition)?,
    };
    Ok(Hello::Resumable {
        user,
        stream,
        after,
    })
}

/// How a resumable connection begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `#OK`: every line after `seq` follows, none missing, none repeated.
    Ok,
    /// `#GAP`: lines in (`after`, `seq`] may be lost; all after `seq` follow.
    Gap,
}

/// A control line, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// `#OK|stream|seq` or `#GAP|stream|seq`.
    Verdict {
        /// Which verdict.
        verdict: Verdict,
        /// The sequence space.
        stream: StreamId,
        /// The position the connection starts after.
        seq: Seq,
    },
    /// `#AT|stream|seq|count|crc32`.
    Checkpoint {
        /// The sequence space.
        stream: StreamId,
        /// Every event line at or below it concerning this user was sent.
        seq: Seq,
        /// Event lines sent on this connection since its verdict.
        count: u64,
        /// CRC-32 (zlib polynomial) of those lines' bytes, in order.
        crc32: u32,
    },
}

/// Appends `#OK|stream|seq\r\n` or `#GAP|stream|seq\r\n` to `out`.
pub fn write_verdict(out: &mut Vec<u8>, verdict: Verdict, stream: &StreamId, seq: Seq) {
    out.extend_from_slice(match verdict {
        Verdict::Ok => b"#OK|",
        Verdict::Gap => b"#GAP|",
    });
    out.extend_from_slice(stream.as_bytes());
    out.push(b'|');
    push_decimal(out, seq);
    out.extend_from_slice(b"\r\n");
}

/// Appends `#AT|stream|seq|count|crc32\r\n` to `out`, the CRC as 8 lowercase
/// hex digits.
pub fn write_checkpoint(out: &mut Vec<u8>, stream: &StreamId, seq: Seq, count: u64, crc32: u32) {
    out.extend_from_slice(b"#AT|");
    out.extend_from_slice(stream.as_bytes());
    out.push(b'|');
    push_decimal(out, seq);
    out.push(b'|');
    push_decimal(out, count);
    out.push(b'|');
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[((crc32 >> (shift * 4)) & 0xf) as usize]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether `line` is a control line rather than an event line.
#[inline]
pub fn is_control(line: &[u8]) -> bool {
    line.first() == Some(&b'#')
}

/// Parses a control line (terminator optional). Returns `None` for anything
/// that is not exactly one of the three shapes.
pub fn parse_control(line: &[u8]) -> Option<Control> {
    let mut fields = strip_terminator(line).split(|&byte| byte == b'|');
    let tag = fields.next()?;
    let stream = StreamId::parse(fields.next()?).ok()?;
    let seq = parse_decimal(fields.next()?).ok()?;
    let control = match tag {
        b"#OK" | b"#GAP" => Control::Verdict {
            verdict: if tag == b"#OK" {
                Verdict::Ok
            } else {
                Verdict::Gap
            },
            stream,
            seq,
        },
        b"#AT" => {
            let count = parse_decimal(fields.next()?).ok()?;
            let hex = fields.next()?;
            if hex.len() != 8
                || !hex
                    .iter()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte))
            {
                return None;
            }
            let crc32 = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            Control::Checkpoint {
                stream,
                seq,
                count,
                crc32,
            }
        }
        _ => return None,
    };
    match fields.next() {
        None => Some(control),
        Some(_) => None,
    }
}

/// Appends `value` in decimal.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream(text: &str) -> StreamId {
        StreamId::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn classic_and_resumable_handshakes() {
        assert_eq!(parse_hello(b"2932\r\n"), Ok(Hello::Classic(2932)));
        assert_eq!(parse_hello(b"2932\n"), Ok(Hello::Classic(2932)));
        assert_eq!(
            parse_hello(b"2932||0\r\n"),
            Ok(Hello::Resumable {
                user: 2932,
                stream: None,
                after: 0
            })
        );
        assert_eq!(
            parse_hello(b"2932||\r\n"),
            Ok(Hello::Resumable {
                user: 2932,
                stream: None,
                after: 0
            })
        );
        assert_eq!(
            parse_hello(b"2932|k3j9x0|18842\r\n"),
            Ok(Hello::Resumable {
                user: 2932,
                stream: Some(stream("k3j9x0")),
                after: 18842
            })
        );
    }

    #[test]
    fn bad_handshakes_say_what_is_wrong() {
        assert_eq!(parse_hello(b"2932|x\r\n"), Err(HelloError::FieldCount));
        assert_eq!(parse_hello(b"2932|a|1|2\r\n"), Err(HelloError::FieldCount));
        assert_eq!(parse_hello(b"2932|ABC|1\r\n"), Err(HelloError::BadStream));
        assert_eq!(parse_hello(b"2932||-1\r\n"), Err(HelloError::BadPosition));
        let long = format!("1|{}|1\r\n", "a".repeat(33));
        assert_eq!(parse_hello(long.as_bytes()), Err(HelloError::BadStream));
        assert!(matches!(parse_hello(b"\r\n"), Err(HelloError::BadUser(_))));
        assert!(matches!(
            parse_hello(b"|a|1\r\n"),
            Err(HelloError::BadUser(_))
        ));
        assert!(matches!(
            parse_hello(b"x||0\r\n"),
            Err(HelloError::BadUser(_))
        ));
    }

    #[test]
    fn control_lines_round_trip() {
        let id = stream("k3j9x0");
        let mut out = Vec::new();
        write_verdict(&mut out, Verdict::Ok, &id, 18842);
        assert_eq!(out, b"#OK|k3j9x0|18842\r\n");
        out.clear();
        write_verdict(&mut out, Verdict::Gap, &id, 0);
        assert_eq!(out, b"#GAP|k3j9x0|0\r\n");
        assert_eq!(
            parse_control(&out),
            Some(Control::Verdict {
                verdict: Verdict::Gap,
                stream: id,
                seq: 0
            })
        );
        out.clear();
        write_checkpoint(&mut out, &id, 19500, 612, 0x08f3_a2c1);
        assert_eq!(out, b"#AT|k3j9x0|19500|612|08f3a2c1\r\n");
        assert_eq!(
            parse_control(&out),
            Some(Control::Checkpoint {
                stream: id,
                seq: 19500,
                count: 612,
                crc32: 0x08f3_a2c1
            })
        );
        assert!(is_control(&out) && !is_control(b"12|B\r\n"));
        for bad in [
            &b"#AT|k|1|2|ABCDEF01"[..],
            b"#AT|k|1|2|abc",
            b"#OK|k|1|2",
            b"#NO|k|1",
            b"#OK||1",
        ] {
            assert_eq!(parse_control(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn stream_ids_from_numbers_are_valid_and_distinct() {
        assert_eq!(StreamId::from_u64(0).as_str(), "0");
        assert_eq!(StreamId::from_u64(35).as_str(), "z");
        assert_eq!(StreamId::from_u64(36).as_str(), "10");
        let max = StreamId::from_u64(u64::MAX);
        assert_eq!(max.as_str().len(), 13);
        assert_eq!(StreamId::parse(max.as_bytes()), Ok(max));
    }

    proptest! {
        #[test]
        fn prop_hello_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = parse_hello(&bytes);
            let _ = parse_control(&bytes);
        }

        #[test]
        fn prop_resumable_hello_round_trips(
            user in any::<u64>(),
            id in any::<u64>(),
            after in any::<u64>(),
        ) {
            let stream = StreamId::from_u64(id);
            let line = format!("{user}|{stream}|{after}\r\n");
            prop_assert!(line.len() <= MAX_HELLO_BYTES);
            prop_assert_eq!(
                parse_hello(line.as_bytes()),
                Ok(Hello::Resumable { user, stream: Some(stream), after })
            );
        }
    }
}
