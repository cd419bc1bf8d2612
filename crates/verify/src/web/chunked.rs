//! HTTP/1.1 chunked transfer coding (RFC 9112, section 7.1), decoded
//! incrementally: bytes go in as the socket gives them, split anywhere, and
//! the body comes out as slices of them, never copied here.
//!
//! ```text
//! 1a;ext=1\r\n            size in hex, optional extensions
//! <26 bytes of body>\r\n
//! 0\r\n                   the last chunk
//! trailer: x\r\n          optional trailer fields
//! \r\n                    the end of the body
//! ```
//!
//! Strict about what it relies on (hex sizes, `\r\n` after a size and
//! after each chunk's data, the empty line that ends the trailer): anything
//! else is a [`WireError`]. Extensions and trailer fields are skipped.

use super::WireError;

/// Most hex digits of a chunk size: 15 keep it below 2^60, far beyond any
/// chunk a server sends.
const MAX_SIZE_DIGITS: u32 = 15;

/// Where the decoder is in the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk size: its value so far and its digits.
    Size { value: u64, digits: u32 },
    /// Skipping a chunk extension, up to the `\r`.
    Extension { value: u64 },
    /// After a size line's `\r`: the `\n`, then that many bytes.
    SizeLf { value: u64 },
    /// In a chunk's data, this many bytes to go.
    Data { left: u64 },
    /// After a chunk's data: its `\r`.
    DataCr,
    /// After a chunk's data and `\r`: its `\n`.
    DataLf,
    /// At the start of a trailer line (or the empty line that ends them).
    TrailerStart,
    /// In a trailer field, up to its `\n`.
    TrailerLine,
    /// After the final empty line's `\r`: its `\n`.
    TrailerLf,
    /// The body is over.
    Done,
}

/// See the module doc.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    /// Where it is.
    state: State,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked {
            state: State::Size {
                value: 0,
                digits: 0,
            },
        }
    }
}

impl Chunked {
    /// Whether the last chunk and its trailer have been read: the body is
    /// complete.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, the next bytes of the coding, handing each piece of
    /// body it holds to `body` in order. Bytes after the end of the body
    /// are a [`WireError`], as is any error `body` returns.
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        body: &mut impl FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        while !input.is_empty() {
            if let State::Data { left } = self.state {
                let take = usize::try_from(left).map_or(input.len(), |left| left.min(input.len()));
                let (data, rest) = input.split_at(take);
                input = rest;
                let left = left - take as u64;
                self.state = match left {
                    0 => State::DataCr,
                    _ => State::Data { left },
                };
                body(data)?;
                continue;
            }
            self.state = self.step(input[0])?;
            input = &input[1..];
        }
        Ok(())
    }

    /// The state after framing byte `byte` (any state but `Data`).
    fn step(&self, byte: u8) -> Result<State, WireError> {
        let wrong = |what: &str| {
            Err(WireError::new(format!(
                "chunked body: {what}, got {:?}",
                char::from(byte)
            )))
        };
        match (self.state, byte) {
            (State::Size { value, digits }, _) if byte.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return wrong("a chunk size of more than 15 hex digits");
                }
                let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
                Ok(State::Size {
                    value: value * 16 + digit,
                    digits: digits + 1,
                })
            }
            (State::Size { digits: 0, .. }, _) => wrong("expected a chunk size in hex"),
            (State::Size { value, .. }, b';' | b' ' | b'\t') => Ok(State::Extension { value }),
            (State::Size { value, .. } | State::Extension { value }, b'\r') => {
                Ok(State::SizeLf { value })
            }
            (State::Size { .. }, _) => wrong("expected a hex digit or \\r after a chunk size"),
            (State::Extension { .. }, b'\n') => {
                wrong("expected \\r before \\n after a chunk extension")
            }
            (State::Extension { value }, _) => Ok(State::Extension { value }),
            (State::SizeLf { value: 0 }, b'\n') => Ok(State::TrailerStart),
            (State::SizeLf { value }, b'\n') => Ok(State::Data { left: value }),
            (State::SizeLf { .. }, _) => wrong("expected \\n after a chunk size's \\r"),
            (State::DataCr, b'\r') => Ok(State::DataLf),
            (State::DataCr, _) => wrong("expected \\r\\n after a chunk's data"),
            (State::DataLf, b'\n') => Ok(State::Size {
                value: 0,
                digits: 0,
            }),
            (State::DataLf, _) => wrong("expected \\n after a chunk's data and \\r"),
            (State::TrailerStart, b'\r') => Ok(State::TrailerLf),
            (State::TrailerStart | State::TrailerLine, b'\n') => Ok(State::TrailerStart),
            (State::TrailerStart | State::TrailerLine, _) => Ok(State::TrailerLine),
            (State::TrailerLf, b'\n') => Ok(State::Done),
            (State::TrailerLf, _) => wrong("expected \\n ending the chunked body"),
            (State::Done, _) => wrong("bytes after the end of the chunked body"),
            (State::Data { .. }, _) => unreachable!("data is taken whole, not a byte at a time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces cut at `cuts`; returns the body and
    /// whether it ended.
    fn decode(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), WireError> {
        let mut decoder = Chunked::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            decoder.feed(&input[from..cut], &mut |piece| {
                out.extend_from_slice(piece);
                Ok(())
            })?;
            from = cut;
        }
        Ok((out, decoder.is_done()))
    }

    const CODED: &[u8] = b"5\r\nhello\r\n1A;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n\
                           0\r\nx-trailer: 1\r\n\r\n";
    const BODY: &[u8] = b"helloabcdefghijklmnopqrstuvwxyz";

    #[test]
    fn a_body_split_at_every_byte_boundary_decodes_the_same() {
        assert_eq!(decode(CODED, &[]).unwrap(), (BODY.to_vec(), true));
        for cut in 0..=CODED.len() {
            assert_eq!(
                decode(CODED, &[cut]).unwrap(),
                (BODY.to_vec(), true),
                "cut at {cut}"
            );
            for second in cut..=CODED.len() {
                assert_eq!(
                    decode(CODED, &[cut, second]).unwrap().0,
                    BODY,
                    "cuts at {cut}, {second}"
                );
            }
        }
        // One byte at a time.
        let every: Vec<usize> = (1..CODED.len()).collect();
        assert_eq!(decode(CODED, &every).unwrap(), (BODY.to_vec(), true));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (body, done) = decode(b"5\r\nhel", &[]).unwrap();
        assert_eq!((body.as_slice(), done), (&b"hel"[..], false));
        let (_, done) = decode(b"5\r\nhello\r\n0\r\n", &[]).unwrap();
        assert!(!done, "the last chunk without the empty line");
        let (body, done) = decode(b"0\r\n\r\n", &[]).unwrap();
        assert!(body.is_empty() && done);
    }

    #[test]
    fn broken_framing_is_an_error_naming_what_was_expected() {
        for (input, what) in [
            (&b"\r\n"[..], "expected a chunk size"),
            (b"5x\r\n", "expected a hex digit"),
            (b"5\rx", "expected \\n after a chunk size"),
            (b"2\r\nhiX", "expected \\r\\n after a chunk's data"),
            (b"2\r\nhi\rX", "expected \\n after a chunk's data"),
            (b"0\r\n\rX", "expected \\n ending"),
            (b"0\r\n\r\n1", "bytes after the end"),
            (b"1234567890abcdef\r\n", "more than 15 hex digits"),
            (b"5;a\n", "expected \\r before \\n"),
        ] {
            let error = decode(input, &[]).unwrap_err().to_string();
            assert!(error.contains(what), "{input:?}: {error}");
        }
    }

    #[test]
    fn an_error_from_the_body_stops_the_decoding() {
        let mut decoder = Chunked::default();
        let error = decoder
            .feed(b"2\r\nhi\r\n", &mut |_| Err(WireError::new("no".into())))
            .unwrap_err();
        assert_eq!(error.to_string(), "no");
    }
}
