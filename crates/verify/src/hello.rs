//! A client connection's handshake, as each transport sends it. No I/O:
//! the `connection` module sends what this one formats.
//!
//! One [`Hello`] says who connects (the user), from where (a classic
//! connection, a first resumable one, or a resume after a position of a
//! stream) and with which token, if the server requires them. Each
//! transport spells it its own way:
//!
//! - TCP: one line, `2932\r\n` (classic), `2932||0\r\n` (first),
//!   `2932|k3j9x0|18842\r\n` (resume), with `|<token>` before the
//!   terminator when there is a token ([`Hello::tcp_line`]);
//! - WebSocket: `GET /ws?user=2932[&stream=k3j9x0&after=18842][&token=…]`
//!   ([`Hello::ws_target`]);
//! - Server-Sent Events: `GET /events?user=2932[&token=…]` with the header
//!   `Last-Event-ID: k3j9x0:18842` on a resume ([`Hello::sse_target`],
//!   [`Hello::last_event_id`]).
//!
//! Every web connection is resumable, so a classic `Hello` is spelt there
//! as a first connection. Stream ids are `[0-9a-z]`, user ids and positions
//! decimal, and tokens base64url with dots: nothing in a query needs
//! escaping.

use followermaze_protocol::resume::StreamId;
use followermaze_protocol::Seq;

/// Where a connection starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// A classic connection (`user`): no verdict, no session.
    Classic,
    /// A first resumable connection (`user||0`).
    First,
    /// A resume after position `after` of `stream` (`user|stream|after`).
    After {
        /// The stream of the last control line received.
        stream: StreamId,
        /// The highest position received.
        after: Seq,
    },
}

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The user id.
    pub(crate) user: u32,
    /// Where it starts from.
    pub(crate) start: Start,
    /// A token for the user, when the server requires them.
    pub(crate) token: Option<String>,
}

impl Hello {
    /// The TCP handshake line, terminator included.
    pub(crate) fn tcp_line(&self) -> Vec<u8> {
        let mut line = match self.start {
            // A token needs the resumable form: the fields then say a
            // first connection.
            Start::Classic if self.token.is_none() => self.user.to_string(),
            Start::Classic | Start::First => format!("{}||0", self.user),
            Start::After { stream, after } => format!("{}|{stream}|{after}", self.user),
        }
        .into_bytes();
        if let Some(token) = &self.token {
            line.push(b'|');
            line.extend_from_slice(token.as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        line
    }

    /// The request target of a WebSocket connection: `/ws?user=…`, with
    /// `stream` and `after` on a resume and `token` when there is one.
    pub(crate) fn ws_target(&self) -> String {
        let mut target = format!("/ws?user={}", self.user);
        if let Start::After { stream, after } = self.start {
            target += &format!("&stream={stream}&after={after}");
        }
        self.add_token(&mut target);
        target
    }

    /// The request target of a Server-Sent Events connection:
    /// `/events?user=…`, with `token` when there is one; a resume says
    /// where from in a header ([`Hello::last_event_id`]).
    pub(crate) fn sse_target(&self) -> String {
        let mut target = format!("/events?user={}", self.user);
        self.add_token(&mut target);
        target
    }

    /// The `Last-Event-ID` of a Server-Sent Events resume, `stream:after`;
    /// `None` on a first connection.
    pub(crate) fn last_event_id(&self) -> Option<String> {
        match self.start {
            Start::After { stream, after } => Some(format!("{stream}:{after}")),
            Start::Classic | Start::First => None,
        }
    }

    /// Appends `&token=…` to `target` when there is a token.
    fn add_token(&self, target: &mut String) {
        if let Some(token) = &self.token {
            target.push_str("&token=");
            target.push_str(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(token: Option<&str>) -> Hello {
        Hello {
            user: 2932,
            start: Start::After {
                stream: StreamId::parse(b"k3j9x0").unwrap(),
                after: 18842,
            },
            token: token.map(str::to_owned),
        }
    }

    #[test]
    fn each_transport_spells_a_resume_its_own_way() {
        let hello = resume(None);
        assert_eq!(hello.tcp_line(), b"2932|k3j9x0|18842\r\n");
        assert_eq!(hello.ws_target(), "/ws?user=2932&stream=k3j9x0&after=18842");
        assert_eq!(hello.sse_target(), "/events?user=2932");
        assert_eq!(hello.last_event_id().as_deref(), Some("k3j9x0:18842"));
        let signed = resume(Some("eyJa.b.c"));
        assert_eq!(signed.tcp_line(), b"2932|k3j9x0|18842|eyJa.b.c\r\n");
        assert_eq!(
            signed.ws_target(),
            "/ws?user=2932&stream=k3j9x0&after=18842&token=eyJa.b.c"
        );
        assert_eq!(signed.sse_target(), "/events?user=2932&token=eyJa.b.c");
    }

    #[test]
    fn first_and_classic_connections() {
        let first = Hello {
            user: 7,
            start: Start::First,
            token: None,
        };
        assert_eq!(first.tcp_line(), b"7||0\r\n");
        assert_eq!(first.ws_target(), "/ws?user=7");
        assert_eq!(first.sse_target(), "/events?user=7");
        assert_eq!(first.last_event_id(), None);
        let classic = Hello {
            start: Start::Classic,
            ..first.clone()
        };
        assert_eq!(classic.tcp_line(), b"7\r\n");
        // On the web every connection is resumable: a first one.
        assert_eq!(classic.ws_target(), first.ws_target());
        // A token needs the resumable form.
        let signed = Hello {
            token: Some("t.o.k".into()),
            ..classic
        };
        assert_eq!(signed.tcp_line(), b"7||0|t.o.k\r\n");
    }
}
