//! The little HTTP/1.1 an SSE client needs: its request, and the head of
//! the response (parsed with `httparse`). No I/O.

use super::chunked::Chunked;
use super::sse::Framing;
use super::WireError;

/// Most bytes a response head (status line and headers) may take: the
/// server's own limit for requests is 8 KiB.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields a response head may have.
const MAX_HEADERS: usize = 32;

/// The request for `target` on `host` (`host:port`), with `Last-Event-ID:
/// last_event_id` when resuming.
pub(crate) fn sse_request(host: &str, target: &str, last_event_id: Option<&str>) -> Vec<u8> {
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n"
    );
    if let Some(id) = last_event_id {
        request += &format!("Last-Event-ID: {id}\r\n");
    }
    request += "\r\n";
    request.into_bytes()
}

/// A response's status line and the headers that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The status code.
    pub(crate) status: u16,
    /// Its reason phrase.
    pub(crate) reason: String,
    /// `Content-Type`, if any.
    pub(crate) content_type: Option<String>,
    /// Whether `Transfer-Encoding` ends in `chunked`.
    pub(crate) chunked: bool,
    /// `Content-Length`, if any (and valid).
    pub(crate) content_length: Option<usize>,
}

impl Head {
    /// Whether this is the event stream the client asked for: `200` with
    /// `Content-Type: text/event-stream`.
    pub(crate) fn check_event_stream(&self) -> Result<(), WireError> {
        let is_events = self.content_type.as_deref().is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        if !is_events {
            return Err(WireError::new(format!(
                "a 200 response with Content-Type {:?}, not text/event-stream",
                self.content_type.as_deref().unwrap_or("(none)")
            )));
        }
        Ok(())
    }

    /// How the body is framed.
    pub(crate) fn framing(&self) -> Framing {
        match self.chunked {
            true => Framing::Chunked(Chunked::default()),
            false => Framing::UntilClose,
        }
    }
}

/// Parses the response head at the start of `bytes`: `Ok(None)` if it is
/// not complete yet, else the head and how many bytes it took. A head over
/// [`MAX_HEAD_BYTES`] or not HTTP is a [`WireError`].
pub(crate) fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response
        .parse(bytes)
        .map_err(|error| WireError::new(format!("not an HTTP/1.1 response head: {error}")))?;
    let length = match parsed {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial if bytes.len() >= MAX_HEAD_BYTES => {
            return Err(WireError::new(format!(
                "a response head longer than {MAX_HEAD_BYTES} bytes"
            )))
        }
        httparse::Status::Partial => return Ok(None),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| String::from_utf8_lossy(header.value).trim().to_owned())
    };
    let head = Head {
        status: response.code.unwrap_or(0),
        reason: response.reason.unwrap_or("").to_owned(),
        content_type: header("content-type"),
        chunked: header("transfer-encoding").is_some_and(|coding| {
            coding
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        }),
        content_length: header("content-length").and_then(|value| value.parse().ok()),
    };
    Ok(Some((head, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_asks_for_events_and_resumes_with_last_event_id() {
        let request = sse_request("127.0.0.1:9080", "/events?user=7", None);
        assert_eq!(
            request,
            b"GET /events?user=7 HTTP/1.1\r\nHost: 127.0.0.1:9080\r\nAccept: \
              text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        );
        let request = sse_request("h:1", "/events?user=7", Some("k3:18"));
        let text = String::from_utf8(request).unwrap();
        assert!(
            text.ends_with("Cache-Control: no-cache\r\nLast-Event-ID: k3:18\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_head_is_parsed_once_complete() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                      Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n5\r\n";
        let end = bytes.len() - 3;
        for cut in 0..end {
            assert_eq!(parse_head(&bytes[..cut]).unwrap(), None, "{cut}");
        }
        let (head, length) = parse_head(bytes).unwrap().unwrap();
        assert_eq!(length, end);
        assert_eq!((head.status, head.reason.as_str()), (200, "OK"));
        assert!(head.chunked);
        assert_eq!(head.check_event_stream(), Ok(()));
        assert!(matches!(head.framing(), Framing::Chunked(_)));
    }

    #[test]
    fn a_refusal_is_read_with_its_length_and_a_wrong_type_or_head_is_an_error() {
        let bytes = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\n\
                      content-length: 14\r\n\r\nbad token\r\n";
        let (head, _) = parse_head(bytes).unwrap().unwrap();
        assert_eq!((head.status, head.content_length), (401, Some(14)));
        assert!(!head.chunked);
        let error = head.check_event_stream().unwrap_err().to_string();
        assert!(
            error.contains("\"text/plain\", not text/event-stream"),
            "{error}"
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let long = [
            b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
            &[b'a'; MAX_HEAD_BYTES],
        ]
        .concat();
        let error = parse_head(&long).unwrap_err().to_string();
        assert!(error.contains("longer than"), "{error}");
    }
}
