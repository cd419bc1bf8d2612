//! Signed connection tokens: an HS256 JWT whose `sub` names who may connect
//! (a user id in decimal, or [`SOURCE_SUBJECT`] for an event source) and
//! whose `exp` bounds until when, checked with [`LEEWAY_SECS`] of leeway.
//!
//! Where tokens travel, when the server has a secret (`authSecret`):
//! - a TCP client's handshake carries one as a fourth field,
//!   `<user>|<stream>|<after>|<token>` ([`split_token`]);
//! - an event source's first line is `#AUTH|<token>` ([`parse_auth_line`]).
//!
//! Minting and checking live together so the server, the verifier and the
//! `followermaze token` command agree on the claims; the tokens themselves
//! are plain JWTs any library reads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::event::strip_terminator;

/// The `sub` of an event source's token.
pub const SOURCE_SUBJECT: &str = "source";

/// How far past its `exp` a token is still accepted (clock skew).
pub const LEEWAY_SECS: u64 = 60;

/// Most bytes of a token the server reads; a longer one is malformed.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// What an event source's first line starts with.
pub const AUTH_PREFIX: &[u8] = b"#AUTH|";

/// The claims we sign and check.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Who may connect: a user id in decimal, or `source`.
    sub: String,
    /// Seconds since the Unix epoch after which the token is refused.
    exp: u64,
}

/// Why a token was refused. Each is counted apart, as the metric label
/// [`AuthError::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token where one is required.
    Missing,
    /// Not a JWT of ours: undecodable, another algorithm, no `sub` or
    /// `exp`, or longer than [`MAX_TOKEN_BYTES`].
    Malformed,
    /// Signed with another secret.
    BadSignature,
    /// Past its `exp` (and the leeway).
    Expired,
    /// Signed for someone else.
    WrongSubject,
}

impl AuthError {
    /// Every reason, in the order metrics list them.
    pub const ALL: [AuthError; 5] = [
        AuthError::Missing,
        AuthError::Malformed,
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::WrongSubject,
    ];

    /// The reason as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::WrongSubject => "wrong_subject",
        }
    }

    /// This reason's index in [`AuthError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for AuthError {}

/// A shared secret, ready to mint and check tokens.
#[derive(Clone)]
pub struct Key {
    /// Signs.
    encoding: EncodingKey,
    /// Checks.
    decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

impl Key {
    /// The key of `secret` (the bytes of `authSecret`).
    pub fn new(secret: &[u8]) -> Key {
        Key {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for `subject`, valid for `ttl` from `now`.
    pub fn mint(&self, subject: &str, ttl: Duration, now: SystemTime) -> String {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            sub: subject.to_owned(),
            exp: (since_epoch + ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of two fields cannot fail")
    }

    /// Checks that `token` is ours, unexpired, and for `subject`.
    pub fn check(&self, token: &[u8], subject: &str) -> Result<(), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let token = std::str::from_utf8(token).map_err(|_| AuthError::Malformed)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Malformed,
            })?
            .claims;
        if claims.sub != subject {
            return Err(AuthError::WrongSubject);
        }
        Ok(())
    }
}

/// Splits a client's handshake line into the handshake proper and its
/// token: `2932|||eyJ…` gives `2932||` and `eyJ…`; a line with fewer than
/// four fields has no token.
pub fn split_token(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    let line = strip_terminator(line);
    let bars: Vec<usize> = line
        .iter()
        .enumerate()
        .filter(|(_, &byte)| byte == b'|')
        .map(|(at, _)| at)
        .take(3)
        .collect();
    match bars.as_slice() {
        [_, _, third] => (&line[..*third], Some(&line[third + 1..])),
        _ => (line, None),
    }
}

/// The token of an event source's first line, `#AUTH|<token>`; `None` if
/// the line is not one.
pub fn parse_auth_line(line: &[u8]) -> Option<&[u8]> {
    strip_terminator(line).strip_prefix(AUTH_PREFIX)
}

/// Appends an event source's first line for `token`.
pub fn write_auth_line(out: &mut Vec<u8>, token: &str) {
    out.extend_from_slice(AUTH_PREFIX);
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"a secret of the test")
    }

    #[test]
    fn a_token_checks_for_its_subject_only() {
        let token = key().mint("2932", Duration::from_secs(60), SystemTime::now());
        assert_eq!(key().check(token.as_bytes(), "2932"), Ok(()));
        assert_eq!(
            key().check(token.as_bytes(), "2933"),
            Err(AuthError::WrongSubject)
        );
        let source = key().mint(SOURCE_SUBJECT, Duration::from_secs(60), SystemTime::now());
        assert_eq!(key().check(source.as_bytes(), SOURCE_SUBJECT), Ok(()));
    }

    #[test]
    fn bad_tokens_are_refused_by_reason() {
        let now = SystemTime::now();
        let other = Key::new(b"another secret");
        let forged = other.mint("1", Duration::from_secs(60), now);
        assert_eq!(
            key().check(forged.as_bytes(), "1"),
            Err(AuthError::BadSignature)
        );
        let old = now - Duration::from_secs(3600);
        let expired = key().mint("1", Duration::from_secs(60), old);
        assert_eq!(
            key().check(expired.as_bytes(), "1"),
            Err(AuthError::Expired)
        );
        // Within the leeway: still accepted.
        let recent = key().mint("1", Duration::ZERO, now - Duration::from_secs(30));
        assert_eq!(key().check(recent.as_bytes(), "1"), Ok(()));
        assert_eq!(key().check(b"", "1"), Err(AuthError::Missing));
        assert_eq!(key().check(b"not.a.jwt", "1"), Err(AuthError::Malformed));
        assert_eq!(
            key().check(&[b'a'; MAX_TOKEN_BYTES + 1], "1"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn the_token_is_the_fourth_field() {
        assert_eq!(
            split_token(b"2932|||tok\r\n"),
            (&b"2932||"[..], Some(&b"tok"[..]))
        );
        assert_eq!(
            split_token(b"1|s|5|t|x"),
            (&b"1|s|5"[..], Some(&b"t|x"[..]))
        );
        assert_eq!(split_token(b"2932\n"), (&b"2932"[..], None));
        assert_eq!(split_token(b"1|s|5"), (&b"1|s|5"[..], None));
        assert_eq!(parse_auth_line(b"#AUTH|tok\r\n"), Some(&b"tok"[..]));
        assert_eq!(parse_auth_line(b"1|B\r\n"), None);
        let mut line = Vec::new();
        write_auth_line(&mut line, "tok");
        assert_eq!(line, b"#AUTH|tok\r\n");
    }
}
