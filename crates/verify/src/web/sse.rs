//! A Server-Sent Events body, read back into the lines a TCP client gets.
//! No I/O: bytes go in as the socket gives them, split anywhere, and
//! rebuilt lines come out.
//!
//! The web listener's wire (web-wire.md) sends each line as one event:
//!
//! ```text
//! retry: 1000
//! event: verdict
//! id: k3j9x0:18000
//! data: #OK|k3j9x0|18000
//!
//! id: k3j9x0:18004
//! data: 18004|P|17|2932
//!
//! event: checkpoint
//! id: k3j9x0:18842
//! data: #AT|k3j9x0|18842|3|1c291ca3
//!
//! : keep-alive
//!
//! ```
//!
//! [`SseParser`] rebuilds `data + "\r\n"` for the verdict, every unnamed
//! event and every checkpoint: the same byte stream a resumable TCP
//! connection gets, which the reader checks like one. The check is
//! line-exact, not byte-exact: how the server framed each line (field
//! order, a space after the colon, comments) is not seen, only each line's
//! content, which the checkpoints' count and CRC-32 cover as rebuilt.
//!
//! It holds the server to the event format the wire fixes, each breach a
//! [`WireError`]: every event with data has exactly one `data` field and an
//! `id`; its name is `verdict` (data `#OK|…`/`#GAP|…`), `checkpoint` (data
//! `#AT|…`) or none (data an event line); the `id` is `<stream>:<seq>`, the
//! stream and position of a control line's own fields, or for an event
//! line the connection's stream (its verdict's) and the line's first
//! field: what a browser's `Last-Event-ID` would resume from. Fields other
//! than `event`, `id`, `data` and `retry` are errors too; comments and
//! empty events are skipped.
//!
//! Lines end in `\n` or `\r\n` (a lone `\r` ends no line here: the wire
//! sends `\n`). Nothing is allocated per line: rebuilt lines go into one
//! buffer, reused, and only a line split across two reads is copied aside.

use super::chunked::Chunked;
use super::WireError;

/// Longest field line (without its terminator) the parser holds while it
/// waits for the rest: a real one is under 100 bytes.
pub(crate) const MAX_FIELD_LINE_BYTES: usize = 64 * 1024;

/// An event's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Name {
    /// No `event` field: an event line.
    #[default]
    Unnamed,
    /// `event: verdict`.
    Verdict,
    /// `event: checkpoint`.
    Checkpoint,
}

/// The event being read: its fields so far.
#[derive(Debug, Clone, Copy, Default)]
struct Event {
    /// Its name.
    name: Name,
    /// Whether it had an `event` field.
    named: bool,
    /// Whether it had an `id` field (its value is in [`SseParser::id`]).
    has_id: bool,
    /// Where its data starts in [`SseParser::out`], once it has a `data`
    /// field.
    data: Option<usize>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// The start of a field line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Rebuilt lines: `out[taken..ready]` are complete events' lines not
    /// yet taken, `out[ready..]` the current event's data so far.
    out: Vec<u8>,
    /// See `out`.
    taken: usize,
    /// See `out`.
    ready: usize,
    /// The current event.
    event: Event,
    /// The current event's `id`.
    id: Vec<u8>,
    /// The stream of this connection's verdict, once it came: event lines'
    /// ids name it.
    stream: Vec<u8>,
}

impl SseParser {
    /// Reads `body`, the next bytes of the event stream.
    pub(crate) fn feed(&mut self, mut body: &[u8]) -> Result<(), WireError> {
        self.compact();
        while let Some(newline) = memchr::memchr(b'\n', body) {
            let (line, rest) = (&body[..newline], &body[newline + 1..]);
            body = rest;
            if self.partial.is_empty() {
                self.field(line)?;
            } else {
                let mut partial = std::mem::take(&mut self.partial);
                partial.extend_from_slice(line);
                let outcome = self.field(&partial);
                partial.clear();
                self.partial = partial;
                outcome?;
            }
        }
        if self.partial.len() + body.len() > MAX_FIELD_LINE_BYTES {
            return Err(WireError::new(format!(
                "an SSE field line longer than {MAX_FIELD_LINE_BYTES} bytes"
            )));
        }
        self.partial.extend_from_slice(body);
        Ok(())
    }

    /// Rebuilt bytes ready to take.
    pub(crate) fn available(&self) -> usize {
        self.ready - self.taken
    }

    /// Moves up to `buf.len()` rebuilt bytes into `buf`; returns how many.
    pub(crate) fn take(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.available());
        buf[..n].copy_from_slice(&self.out[self.taken..self.taken + n]);
        self.taken += n;
        n
    }

    /// Drops the taken bytes from the front of `out`, once all are taken.
    fn compact(&mut self) {
        if self.taken < self.ready || self.ready == 0 {
            return;
        }
        let ready = self.ready;
        self.out.copy_within(ready.., 0);
        self.out.truncate(self.out.len() - ready);
        if let Some(data) = self.event.data.as_mut() {
            *data -= ready;
        }
        self.taken = 0;
        self.ready = 0;
    }

    /// One field line, its `\n` gone.
    fn field(&mut self, line: &[u8]) -> Result<(), WireError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        // The two fields of every event, as the wire spells them, first:
        // the same as the general case below, without its search.
        if let Some(value) = line.strip_prefix(b"data: ") {
            return self.data(value);
        }
        if let Some(value) = line.strip_prefix(b"id: ") {
            self.id(value);
            return Ok(());
        }
        if line[0] == b':' {
            // A comment (`: keep-alive`).
            return Ok(());
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => return self.data(value),
            b"id" => self.id(value),
            b"event" => {
                self.event.named = true;
                self.event.name = match value {
                    b"verdict" => Name::Verdict,
                    b"checkpoint" => Name::Checkpoint,
                    _ => {
                        return Err(WireError::new(format!(
                            "an SSE event named {}: the wire has verdict, checkpoint and \
                             unnamed events",
                            quoted(value)
                        )))
                    }
                };
            }
            b"retry" => {}
            _ => {
                return Err(WireError::new(format!(
                    "an SSE field {}: the wire has event, id, data and retry",
                    quoted(name)
                )))
            }
        }
        Ok(())
    }

    /// A `data` field's value: the event's line, rebuilt.
    fn data(&mut self, value: &[u8]) -> Result<(), WireError> {
        if self.event.data.is_some() {
            return Err(WireError::new(
                "an SSE event with two data fields (one line per event)".into(),
            ));
        }
        self.event.data = Some(self.out.len());
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// An `id` field's value.
    fn id(&mut self, value: &[u8]) {
        self.id.clear();
        self.id.extend_from_slice(value);
        self.event.has_id = true;
    }

    /// The empty line that ends an event: checks it and makes its line
    /// ready to take.
    fn dispatch(&mut self) -> Result<(), WireError> {
        let event = std::mem::take(&mut self.event);
        let Some(start) = event.data else {
            if event.named || event.has_id {
                return Err(WireError::new(
                    "an SSE event with no data field (one line per event)".into(),
                ));
            }
            // Blank lines, or comments only.
            return Ok(());
        };
        let data = &self.out[start..self.out.len() - 2];
        let control = data.first() == Some(&b'#');
        let fits = match event.name {
            Name::Verdict => data.starts_with(b"#OK|") || data.starts_with(b"#GAP|"),
            Name::Checkpoint => data.starts_with(b"#AT|"),
            Name::Unnamed => !control,
        };
        if !fits {
            return Err(WireError::new(format!(
                "an SSE event {} with data {}",
                match event.name {
                    Name::Verdict => "named verdict",
                    Name::Checkpoint => "named checkpoint",
                    Name::Unnamed => "without a name",
                },
                quoted(data)
            )));
        }
        if !event.has_id {
            return Err(WireError::new(format!(
                "an SSE event with no id, data {}",
                quoted(data)
            )));
        }
        let expected = match control {
            // `#OK|s|seq`, `#GAP|s|seq`, `#AT|s|seq|count|crc`.
            true => {
                let mut fields = data.split(|&byte| byte == b'|').skip(1);
                fields.next().zip(fields.next())
            }
            // An event line's own sequence number is its first field; its
            // stream, the verdict's (none yet: the session fails the line).
            false => {
                let seq = data.split(|&byte| byte == b'|').next().unwrap_or(data);
                (!self.stream.is_empty()).then_some((&self.stream[..], seq))
            }
        };
        if let Some((stream, seq)) = expected {
            let id = &self.id[..];
            let matches = id.len() == stream.len() + 1 + seq.len()
                && id.starts_with(stream)
                && id[stream.len()] == b':'
                && id.ends_with(seq);
            if !matches {
                return Err(WireError::new(format!(
                    "an SSE event with id {} and data {}: its id must be {}:{}",
                    quoted(id),
                    quoted(data),
                    String::from_utf8_lossy(stream),
                    String::from_utf8_lossy(seq)
                )));
            }
            if event.name == Name::Verdict {
                let stream = stream.to_vec();
                self.stream = stream;
            }
        }
        self.ready = self.out.len();
        Ok(())
    }
}

/// `bytes` quoted for a message, cut at 80 bytes.
fn quoted(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(80)];
    let more = if cut.len() < bytes.len() { "…" } else { "" };
    format!("`{}`{more}", String::from_utf8_lossy(cut).escape_debug())
}

/// How an SSE response's body is framed.
#[derive(Debug)]
pub(crate) enum Framing {
    /// `Transfer-Encoding: chunked` (the web listener's).
    Chunked(Chunked),
    /// Neither chunked nor sized: the body runs until the connection closes.
    UntilClose,
}

/// An SSE response's body: its framing, then its events.
#[derive(Debug)]
pub(crate) struct SseBody {
    /// The framing.
    framing: Framing,
    /// The events.
    parser: SseParser,
}

impl SseBody {
    /// A body framed `framing`.
    pub(crate) fn new(framing: Framing) -> SseBody {
        SseBody {
            framing,
            parser: SseParser::default(),
        }
    }

    /// Reads `bytes`, the next bytes of the body as they came off the
    /// socket.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let parser = &mut self.parser;
        match &mut self.framing {
            Framing::Chunked(chunked) => chunked.feed(bytes, &mut |body| parser.feed(body)),
            Framing::UntilClose => parser.feed(bytes),
        }
    }

    /// Whether a chunked body has ended: the server will send no more.
    pub(crate) fn ended(&self) -> bool {
        matches!(&self.framing, Framing::Chunked(chunked) if chunked.is_done())
    }

    /// Rebuilt bytes ready to take.
    pub(crate) fn available(&self) -> usize {
        self.parser.available()
    }

    /// Moves up to `buf.len()` rebuilt bytes into `buf`; returns how many.
    pub(crate) fn take(&mut self, buf: &mut [u8]) -> usize {
        self.parser.take(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire's example, as the web listener sends it.
    const EVENTS: &str = "retry: 1000\nevent: verdict\nid: k3j9x0:18000\ndata: #OK|k3j9x0|18000\n\n\
                          id: k3j9x0:18004\ndata: 18004|P|17|2932\n\n\
                          : keep-alive\n\n\
                          id: k3j9x0:18010\ndata: 18010|B\n\n\
                          event: checkpoint\nid: k3j9x0:18842\ndata: #AT|k3j9x0|18842|2|1c291ca3\n\n";

    /// The lines a TCP client would get.
    const LINES: &str = "#OK|k3j9x0|18000\r\n18004|P|17|2932\r\n18010|B\r\n\
                         #AT|k3j9x0|18842|2|1c291ca3\r\n";

    /// Everything `parser` rebuilds from `input` fed in pieces cut at
    /// `cuts`, taken `take` bytes at a time between feeds.
    fn rebuild(input: &[u8], cuts: &[usize], take: usize) -> Result<Vec<u8>, WireError> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        let mut buf = vec![0u8; take];
        let mut from = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            parser.feed(&input[from..cut])?;
            from = cut;
            loop {
                let n = parser.take(&mut buf);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        Ok(out)
    }

    #[test]
    fn events_rebuild_the_tcp_lines_whatever_the_reads() {
        let input = EVENTS.as_bytes();
        assert_eq!(rebuild(input, &[], 4096).unwrap(), LINES.as_bytes());
        for cut in 0..=input.len() {
            for take in [1, 3, 4096] {
                assert_eq!(
                    rebuild(input, &[cut], take).unwrap(),
                    LINES.as_bytes(),
                    "cut at {cut}, taking {take}"
                );
            }
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(rebuild(input, &every, 1).unwrap(), LINES.as_bytes());
    }

    #[test]
    fn only_whole_events_are_ready() {
        let mut parser = SseParser::default();
        parser
            .feed(b"event: verdict\nid: s:1\ndata: #OK|s|1\n")
            .unwrap();
        assert_eq!(parser.available(), 0, "no empty line yet");
        parser.feed(b"\nid: s:2\ndata: 2|B\n").unwrap();
        assert_eq!(parser.available(), b"#OK|s|1\r\n".len());
        let mut buf = [0u8; 64];
        let n = parser.take(&mut buf);
        assert_eq!(&buf[..n], b"#OK|s|1\r\n");
        parser.feed(b"\n").unwrap();
        let n = parser.take(&mut buf);
        assert_eq!(&buf[..n], b"2|B\r\n");
    }

    #[test]
    fn crlf_field_lines_and_a_value_without_its_space_are_read_as_the_spec_says() {
        let input = b"event:verdict\r\nid:s:1\r\ndata:#OK|s|1\r\n\r\nid: s:2\ndata:2|B\n\n";
        assert_eq!(
            rebuild(input, &[], 64).unwrap(),
            b"#OK|s|1\r\n2|B\r\n".to_vec()
        );
        // One space goes, not two: ` 2|B` is then not the line its id
        // names.
        let input = b"event: verdict\nid: s:1\ndata: #OK|s|1\n\nid: s:2\ndata:  2|B\n\n";
        let error = rebuild(input, &[], 64).unwrap_err().to_string();
        assert!(error.contains("data ` 2|B`"), "{error}");
    }

    #[test]
    fn every_breach_of_the_event_format_is_an_error() {
        let verdict = "event: verdict\nid: s:1\ndata: #OK|s|1\n\n";
        for (events, what) in [
            ("id: s:2\ndata: 2|B\ndata: 3|B\n\n", "two data fields"),
            ("event: verdict\nid: s:1\n\n", "no data field"),
            ("id: s:1\n\n", "no data field"),
            ("event: message\nid: s:2\ndata: 2|B\n\n", "named `message`"),
            ("id: s:2\nname: x\ndata: 2|B\n\n", "field `name`"),
            ("data: 2|B\n\n", "no id"),
            ("id: s:3\ndata: 2|B\n\n", "its id must be s:2"),
            ("id: t:2\ndata: 2|B\n\n", "its id must be s:2"),
            ("id: s2\ndata: 2|B\n\n", "its id must be s:2"),
            ("id: s:2\ndata: #AT|s|2|0|00000000\n\n", "without a name"),
            (
                "event: checkpoint\nid: s:2\ndata: 2|B\n\n",
                "named checkpoint",
            ),
            (
                "event: verdict\nid: s:2\ndata: #AT|s|2|0|0\n\n",
                "named verdict",
            ),
            (
                "event: checkpoint\nid: s:3\ndata: #AT|s|2|0|00000000\n\n",
                "must be s:2",
            ),
        ] {
            let input = format!("{verdict}{events}");
            let error = rebuild(input.as_bytes(), &[], 64).unwrap_err().to_string();
            assert!(error.contains(what), "{events:?}: {error}");
        }
        let error = rebuild(
            "event: verdict\nid: s:5\ndata: #OK|s|1\n\n".as_bytes(),
            &[],
            64,
        )
        .unwrap_err();
        assert!(error.to_string().contains("must be s:1"), "{error}");
        let long = vec![b'x'; MAX_FIELD_LINE_BYTES + 1];
        let error = rebuild(&long, &[], 64).unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    #[test]
    fn a_line_before_any_verdict_is_passed_on_for_the_session_to_fail() {
        assert_eq!(
            rebuild(b"id: s:2\ndata: 2|B\n\n", &[], 64).unwrap(),
            b"2|B\r\n".to_vec()
        );
    }

    /// `EVENTS` in chunks of `size` bytes, chunked-coded.
    fn chunked(events: &[u8], size: usize) -> Vec<u8> {
        let mut coded = Vec::new();
        for chunk in events.chunks(size) {
            coded.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            coded.extend_from_slice(chunk);
            coded.extend_from_slice(b"\r\n");
        }
        coded.extend_from_slice(b"0\r\n\r\n");
        coded
    }

    #[test]
    fn a_chunked_body_split_at_every_byte_boundary_rebuilds_the_same_lines() {
        for size in [1, 7, 40, EVENTS.len()] {
            let coded = chunked(EVENTS.as_bytes(), size);
            for cut in 0..=coded.len() {
                let mut body = SseBody::new(Framing::Chunked(Chunked::default()));
                let mut out = Vec::new();
                let mut buf = [0u8; 5];
                for piece in [&coded[..cut], &coded[cut..]] {
                    body.feed(piece).unwrap();
                    while body.available() > 0 {
                        let n = body.take(&mut buf);
                        out.extend_from_slice(&buf[..n]);
                    }
                }
                assert_eq!(out, LINES.as_bytes(), "chunks of {size}, cut at {cut}");
                assert!(body.ended());
            }
        }
        let mut body = SseBody::new(Framing::UntilClose);
        body.feed(EVENTS.as_bytes()).unwrap();
        assert_eq!(body.available(), LINES.len());
        assert!(!body.ended());
    }

    /// An event stream the wire allows for `seqs` (event lines `seq|B`
    /// after a verdict at 0), each field spelt as `style` says: bit 0, no
    /// space after the colon; bit 1, `\r\n` for `\n`; bit 2, a comment
    /// first; bit 3, the `id` after the `data`.
    fn spelt(seqs: &[u64], styles: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut events = b"retry: 1000\nevent: verdict\nid: s:0\ndata: #OK|s|0\n\n".to_vec();
        let mut lines = b"#OK|s|0\r\n".to_vec();
        for (index, seq) in seqs.iter().enumerate() {
            let style = styles[index % styles.len()];
            let colon = if style & 1 == 1 { ":" } else { ": " };
            let end = if style & 2 == 2 { "\r\n" } else { "\n" };
            if style & 4 == 4 {
                events.extend_from_slice(format!(": keep-alive{end}{end}").as_bytes());
            }
            let id = format!("id{colon}s:{seq}{end}");
            let data = format!("data{colon}{seq}|B{end}");
            let event = match style & 8 {
                0 => format!("{id}{data}{end}"),
                _ => format!("{data}{id}{end}"),
            };
            events.extend_from_slice(event.as_bytes());
            lines.extend_from_slice(format!("{seq}|B\r\n").as_bytes());
        }
        (events, lines)
    }

    proptest::proptest! {
        #[test]
        fn any_spelling_and_any_chunking_and_reads_rebuild_the_lines(
            count in 0usize..40,
            styles in proptest::collection::vec(0u8..16, 1..8),
            chunk in 1usize..50,
            cuts in proptest::collection::vec(0usize..4000, 0..6),
            take in 1usize..64,
        ) {
            let seqs: Vec<u64> = (1..=count as u64).map(|n| n * 7).collect();
            let (events, lines) = spelt(&seqs, &styles);
            let coded = chunked(&events, chunk);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (coded.len() + 1)).collect();
            cuts.sort_unstable();
            let mut body = SseBody::new(Framing::Chunked(Chunked::default()));
            let mut out = Vec::new();
            let mut buf = vec![0u8; take];
            let mut from = 0;
            for &cut in cuts.iter().chain([&coded.len()]) {
                body.feed(&coded[from..cut]).unwrap();
                from = cut;
                while body.available() > 0 {
                    let n = body.take(&mut buf);
                    out.extend_from_slice(&buf[..n]);
                }
            }
            proptest::prop_assert_eq!(out, lines);
            proptest::prop_assert!(body.ended());
        }
    }

    #[test]
    fn a_wrong_event_inside_a_chunked_body_is_an_error() {
        let coded = chunked(
            b"event: verdict\nid: s:1\ndata: #OK|s|1\n\ndata: 2|B\n\n",
            9,
        );
        let mut body = SseBody::new(Framing::Chunked(Chunked::default()));
        let error = body.feed(&coded).unwrap_err();
        assert!(error.to_string().contains("no id"), "{error}");
    }
}
