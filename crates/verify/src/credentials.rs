//! Signed tokens for every connection the verifier opens, when the server
//! checks them (`authSecret`, the server's variable, read from the same
//! environment). No I/O: the callers write what this module formats.
//!
//! Where each token goes (README, issue 20's "Authentication"):
//! - a client's handshake carries one for its user ([`Credentials::token`]):
//!   over TCP as a fourth field, which only the resumable form has:
//!   `2932||0|<token>\r\n` on a first connection,
//!   `2932|k3j9x0|18842|<token>\r\n` on a resume (`hello` formats them).
//!   That is why `authSecret` makes every client resumable (`config`). A web
//!   client passes it as `?token=`;
//! - an event source's first line, before any event, is `#AUTH|<token>\r\n`
//!   with `sub` = `source` ([`Credentials::source_line`]).
//!
//! Each connection gets a token minted as it connects, valid for
//! [`TOKEN_TTL`]: a reconnect hours into a long run carries a fresh one, so
//! no run is too long for its tokens. The secret itself never leaves the
//! [`Key`], whose `Debug` hides it.

use std::time::{Duration, SystemTime};

use followermaze_protocol::auth::{write_auth_line, Key, SOURCE_SUBJECT};

/// How long each token is valid from when it is minted: generous, so that a
/// verifier and a server whose clocks differ by minutes still agree; every
/// connection mints its own, so a run may last longer.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Mints the verifier's tokens from `authSecret`.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    /// The secret, ready to sign.
    key: Key,
}

impl Credentials {
    /// Credentials signed with `secret` (the bytes of `authSecret`).
    pub(crate) fn new(secret: &[u8]) -> Credentials {
        Credentials {
            key: Key::new(secret),
        }
    }

    /// A token for client `user`'s handshake, valid for [`TOKEN_TTL`]
    /// from now.
    pub(crate) fn token(&self, user: u32) -> String {
        self.mint(&user.to_string())
    }

    /// A token for `subject`, valid for [`TOKEN_TTL`] from now.
    fn mint(&self, subject: &str) -> String {
        self.key.mint(subject, TOKEN_TTL, SystemTime::now())
    }

    /// An event source's first line: `#AUTH|<token>\r\n` for
    /// [`SOURCE_SUBJECT`].
    pub(crate) fn source_line(&self) -> Vec<u8> {
        let mut line = Vec::new();
        write_auth_line(&mut line, &self.mint(SOURCE_SUBJECT));
        line
    }
}

#[cfg(test)]
mod tests {
    use followermaze_protocol::auth::{parse_auth_line, split_token, AuthError};

    use super::*;

    const SECRET: &[u8] = b"the verifier's test secret";

    #[test]
    fn a_handshake_carries_a_token_for_its_user_as_its_fourth_field() {
        let credentials = Credentials::new(SECRET);
        let hello = crate::hello::Hello {
            user: 2932,
            start: crate::hello::Start::First,
            token: Some(credentials.token(2932)),
        }
        .tcp_line();
        assert!(hello.starts_with(b"2932||0|eyJ"), "{hello:?}");
        assert!(hello.ends_with(b"\r\n"));
        assert_eq!(hello.iter().filter(|&&byte| byte == b'|').count(), 3);
        // The server's reading of it: the handshake proper and a token for
        // this user, and for no other.
        let (fields, token) = split_token(&hello);
        assert_eq!(fields, b"2932||0");
        let token = token.expect("a fourth field");
        let key = Key::new(SECRET);
        assert_eq!(key.check(token, "2932"), Ok(()));
        assert_eq!(key.check(token, "2933"), Err(AuthError::WrongSubject));
        assert_eq!(
            key.check(token, SOURCE_SUBJECT),
            Err(AuthError::WrongSubject)
        );
        assert_eq!(
            Key::new(b"another secret").check(token, "2932"),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn the_source_line_is_auth_with_a_source_token() {
        let line = Credentials::new(SECRET).source_line();
        assert!(line.starts_with(b"#AUTH|eyJ"), "{line:?}");
        assert!(line.ends_with(b"\r\n"));
        let token = parse_auth_line(&line).expect("an #AUTH line");
        assert_eq!(Key::new(SECRET).check(token, SOURCE_SUBJECT), Ok(()));
        assert_eq!(
            Key::new(SECRET).check(token, "1"),
            Err(AuthError::WrongSubject)
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let text = format!("{:?}", Credentials::new(SECRET));
        assert!(!text.contains("verifier's test secret"), "{text}");
    }
}
