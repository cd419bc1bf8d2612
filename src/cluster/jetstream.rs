//! The cluster's ordered log: one JetStream stream, its message format, and
//! the object-store bucket holding follower-graph snapshots.
//!
//! A message is a run of consecutive ordered events: its payload is their
//! raw lines concatenated, byte for byte as the source sent them (every
//! line ends in `\n`, so the lines delimit themselves), and its headers say
//! which sequence space it belongs to:
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | `<stream id>-<first event seq>`: JetStream drops a republish of the same message within its duplicate window |
//! | `Nats-Expected-Last-Sequence` | the stream sequence the publisher believes is last: a second publisher fails instead of interleaving |
//! | `Followermaze-Stream` | the stream id resumable clients are given, the same on every gateway |
//! | `Followermaze-New-Stream` | `1` on the first message of a new stream (the follower graph is forgotten first) |

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{parse_event, parse_tagged_at, Seq, Tagged};
use tokio::sync::Notify;

use crate::batch::{BatchEvent, EventRef};
use crate::settings::StreamSettings;

/// Header naming the message's sequence space.
pub(crate) const STREAM_HEADER: &str = "Followermaze-Stream";
/// Header marking the first message of a new stream.
pub(crate) const NEW_STREAM_HEADER: &str = "Followermaze-New-Stream";

/// How long one JetStream API request or publish ack may take before it
/// counts as failed (and is retried after a reconnect).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What a request to NATS was doing when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Connecting to these URLs (`natsUrl`).
    Connect(String),
    /// Creating or updating this stream, with this many replicas.
    CreateStream(String, usize),
    /// Looking this stream up.
    GetStream(String),
    /// Reading this stream's state.
    StreamInfo(String),
    /// Creating this snapshot bucket.
    CreateBucket(String),
    /// Opening this snapshot bucket.
    GetBucket(String),
    /// Creating a consumer of the stream.
    CreateConsumer,
    /// Starting to pull from a consumer.
    Consume,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Connect(url) => write!(f, "connect {url}"),
            Op::CreateStream(name, 1) => write!(f, "create stream {name}"),
            Op::CreateStream(name, replicas) => {
                write!(f, "create stream {name} with {replicas} replicas")
            }
            Op::GetStream(name) => write!(f, "stream {name}"),
            Op::StreamInfo(name) => write!(f, "stream {name} info"),
            Op::CreateBucket(bucket) => write!(f, "create bucket {bucket}"),
            Op::GetBucket(bucket) => write!(f, "bucket {bucket}"),
            Op::CreateConsumer => f.write_str("create consumer"),
            Op::Consume => f.write_str("consume"),
        }
    }
}

/// A request to NATS failed: what it was doing, and what the client said.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub(crate) struct LogError {
    /// What failed.
    pub(crate) op: Op,
    /// The client's error.
    #[source]
    pub(crate) source: async_nats::Error,
}

impl LogError {
    /// A failure of `op`, for `map_err`.
    fn of<E: Into<async_nats::Error>>(op: Op) -> impl FnOnce(E) -> LogError {
        move |source| LogError {
            op,
            source: source.into(),
        }
    }
}

/// A stream message no sequencer of ours wrote, or damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// It has no headers at all.
    #[error("no headers")]
    NoHeaders,
    /// It has no `Followermaze-Stream` header.
    #[error("no Followermaze-Stream header")]
    NoStreamHeader,
    /// Its stream header is not a stream id.
    #[error("bad stream id {0:?}")]
    BadStreamId(String),
    /// A line is not an event.
    #[error("bad line {line:?}: {error}")]
    BadLine {
        /// The line.
        line: Bytes,
        /// Why it is not an event.
        error: String,
    },
    /// Sequence numbers do not increase within it.
    #[error("sequence {0} does not increase")]
    NotIncreasing(u64),
    /// Its payload ends inside a line.
    #[error("payload does not end with a line terminator")]
    Unterminated,
    /// It holds no event.
    #[error("no events")]
    Empty,
}

/// A connection to the cluster's stream and bucket.
#[derive(Clone)]
pub(crate) struct Log {
    /// JetStream API and publishing.
    pub js: jetstream::Context,
    /// The stream's name.
    pub name: String,
    /// The one subject events are published on: `<natsStream>.events`.
    pub subject: String,
    /// The snapshots' object store.
    pub snapshots: object_store::ObjectStore,
    /// Notified (one stored permit) each time the connection to NATS is
    /// made again: a consumer's server-side state may be gone (a restarted
    /// server keeps the stream, not ephemeral consumers), so the gateway
    /// recreates its consumer rather than wait out missed heartbeats.
    pub reconnected: Arc<Notify>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("name", &self.name).finish()
    }
}

impl Log {
    /// Connects to `natsUrl` and opens the stream and the bucket, creating
    /// them if `create` (the sequencer; a gateway waits for them). Retries
    /// until it succeeds, logging each failure: NATS may start after us.
    pub(crate) async fn open(settings: &StreamSettings, create: bool) -> Log {
        let mut attempt = 0u32;
        loop {
            match Log::try_open(settings, create).await {
                Ok(log) => return log,
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(
                        url = %settings.nats_urls.join(","),
                        stream = %settings.name,
                        attempt,
                        %error,
                        "cannot open the JetStream stream yet; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One attempt of [`Log::open`].
    async fn try_open(settings: &StreamSettings, create: bool) -> Result<Log, LogError> {
        let (js, reconnected) = connect(settings).await?;
        let name = settings.name.clone();
        let subject = format!("{name}.events");
        let bucket = format!("{name}_SNAPSHOTS");
        if create {
            // Say so before changing an existing stream's replicas (JetStream
            // moves or copies its data), or if it cannot be (a lone server).
            if let Ok(stream) = js.get_stream(&name).await {
                let found = stream.cached_info().config.num_replicas;
                replicas_differ(&name, found, settings.replicas, true);
            }
            js.create_or_update_stream(stream_config(settings, &subject))
                .await
                .map_err(LogError::of(Op::CreateStream(
                    name.clone(),
                    settings.replicas,
                )))?;
        } else {
            let stream = js
                .get_stream(&name)
                .await
                .map_err(LogError::of(Op::GetStream(name.clone())))?;
            let found = stream.cached_info().config.num_replicas;
            replicas_differ(&name, found, settings.replicas, false);
        }
        let snapshots = match js.get_object_store(&bucket).await {
            Ok(store) => {
                bucket_replicas(&js, &bucket, settings.replicas, create).await?;
                store
            }
            Err(_) if create => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("followermaze follower-graph snapshots".into()),
                    num_replicas: settings.replicas,
                    ..Default::default()
                })
                .await
                .map_err(LogError::of(Op::CreateBucket(bucket)))?,
            Err(error) => return Err(LogError::of(Op::GetBucket(bucket))(error)),
        };
        Ok(Log {
            js,
            name,
            subject,
            snapshots,
            reconnected,
        })
    }

    /// The stream's handle (for its state and direct reads).
    pub(crate) async fn stream(&self) -> Result<stream::Stream, LogError> {
        self.js
            .get_stream(&self.name)
            .await
            .map_err(LogError::of(Op::GetStream(self.name.clone())))
    }

    /// The sequence of the last message in the stream (0 if empty).
    pub(crate) async fn last_sequence(&self) -> Result<u64, LogError> {
        Ok(self.sequences().await?.1)
    }

    /// The first and last stream sequence the stream holds (first > last
    /// when it holds no message: expired or purged).
    pub(crate) async fn sequences(&self) -> Result<(u64, u64), LogError> {
        let stream = self.stream().await?;
        let info = stream
            .get_info()
            .await
            .map_err(LogError::of(Op::StreamInfo(self.name.clone())))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }
}

/// Logs, as a warning, that stream `name` has `found` replicas where
/// `streamReplicas` says `wanted`; `updating` when this process (the
/// sequencer) is about to change it. Returns whether they differ.
fn replicas_differ(name: &str, found: usize, wanted: usize, updating: bool) -> bool {
    // JetStream reports 0 for a stream created without saying: one copy.
    let found = found.max(1);
    if found == wanted {
        return false;
    }
    if updating {
        tracing::warn!(
            stream = name,
            replicas = found,
            stream_replicas = wanted,
            "the stream exists with num_replicas={found} but streamReplicas={wanted}: changing \
             it to {wanted} (more than 1 needs a NATS cluster of at least as many servers)"
        );
    } else {
        tracing::warn!(
            stream = name,
            replicas = found,
            stream_replicas = wanted,
            "the stream has num_replicas={found} but this gateway's streamReplicas={wanted}: \
             the sequencer sets the replicas; give every role the same streamReplicas"
        );
    }
    true
}

/// The snapshot bucket `bucket` exists: if its replicas differ from
/// `wanted`, says so, and the sequencer (`update`) changes them.
async fn bucket_replicas(
    js: &jetstream::Context,
    bucket: &str,
    wanted: usize,
    update: bool,
) -> Result<(), LogError> {
    // An object store is the stream `OBJ_<bucket>`.
    let name = format!("OBJ_{bucket}");
    let Ok(stream) = js.get_stream(&name).await else {
        return Ok(());
    };
    let info = stream.cached_info();
    if replicas_differ(&name, info.config.num_replicas, wanted, update) && update {
        let mut config = info.config.clone();
        config.num_replicas = wanted;
        js.update_stream(config)
            .await
            .map_err(LogError::of(Op::CreateStream(name, wanted)))?;
    }
    Ok(())
}

/// Connects to `natsUrl`'s servers (the client picks one, and fails over
/// to the others, and to those the cluster announces); the [`Notify`] is
/// notified at each (re)connect.
async fn connect(settings: &StreamSettings) -> Result<(jetstream::Context, Arc<Notify>), LogError> {
    let reconnected = Arc::new(Notify::new());
    let notify = reconnected.clone();
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let notify = notify.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    notify.notify_one();
                }
            }
        })
        .name(settings.client_name.clone())
        // JetStream API requests (stream info, message gets, creating a
        // consumer) take the client's request timeout, not the context's:
        // the default 10 s would stall a failover that long, each time a
        // request goes to a stream whose leader just died.
        .request_timeout(Some(REQUEST_TIMEOUT))
        // Reconnect for ever: an outage is waited out, never fatal.
        .max_reconnects(None)
        .connect(settings.nats_urls.as_slice())
        .await
        .map_err(LogError::of(Op::Connect(settings.nats_urls.join(","))))?;
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .build(client);
    Ok((js, reconnected))
}

/// The stream as the sequencer creates (or updates) it.
fn stream_config(settings: &StreamSettings, subject: &str) -> stream::Config {
    let age = settings.max_age;
    stream::Config {
        name: settings.name.clone(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        discard: stream::DiscardPolicy::Old,
        max_age: age,
        max_bytes: match settings.max_bytes {
            0 => -1,
            bytes => i64::try_from(bytes).unwrap_or(i64::MAX),
        },
        // JetStream refuses a window longer than max_age (0 = none).
        duplicate_window: if age.is_zero() {
            Duration::from_secs(120)
        } else {
            age.min(Duration::from_secs(120))
        },
        ..Default::default()
    }
}

/// A message's sequence space, and whether a new stream begins with it.
pub(crate) fn decode_headers(headers: Option<&HeaderMap>) -> Result<(StreamId, bool), DecodeError> {
    let headers = headers.ok_or(DecodeError::NoHeaders)?;
    let stream = headers
        .get(STREAM_HEADER)
        .ok_or(DecodeError::NoStreamHeader)?;
    let stream = StreamId::parse(stream.as_str().as_bytes())
        .map_err(|_| DecodeError::BadStreamId(stream.as_str().to_owned()))?;
    let new_stream = headers
        .get(NEW_STREAM_HEADER)
        .is_some_and(|value| value.as_str() == "1");
    Ok((stream, new_stream))
}

/// Frames and parses a payload's lines, calling `each(seq, kind, start,
/// end)` for each line `payload[start..end]` in order. Fails, saying why,
/// on a payload no sequencer of ours wrote: a line that is not an event,
/// an unterminated tail, sequence numbers not increasing, or no line at
/// all. The common line is framed and parsed in one pass
/// ([`parse_tagged_at`]); a line it does not take (a long one near the
/// end, or a bad one) is read the careful way to say why.
fn for_each_line(
    payload: &Bytes,
    mut each: impl FnMut(Seq, Tagged, usize, usize),
) -> Result<(), DecodeError> {
    let (mut start, mut last) = (0, None);
    while start < payload.len() {
        let (end, seq, kind) = match parse_tagged_at(payload, start) {
            Some(parsed) => parsed,
            None => {
                let end = memchr::memchr(b'\n', &payload[start..])
                    .map(|at| start + at + 1)
                    .ok_or(DecodeError::Unterminated)?;
                let (seq, kind) =
                    parse_event(&payload[start..end]).map_err(|error| DecodeError::BadLine {
                        line: payload.slice(start..end),
                        error: format!("{error:?}"),
                    })?;
                (end, seq, kind.into())
            }
        };
        if last.is_some_and(|last| last >= seq) {
            return Err(DecodeError::NotIncreasing(seq));
        }
        last = Some(seq);
        each(seq, kind, start, end);
        start = end;
    }
    match last {
        Some(_) => Ok(()),
        None => Err(DecodeError::Empty),
    }
}

/// Decodes a payload's events into `events` (cleared first), each line
/// borrowed from `payload`: for a reader that keeps few of the lines (a
/// resume's fetch, a sequencer's recovery). See [`for_each_line`] for what
/// is refused.
pub(crate) fn decode_borrowed<'a>(
    payload: &'a Bytes,
    events: &mut Vec<EventRef<'a>>,
) -> Result<(), DecodeError> {
    events.clear();
    for_each_line(payload, |seq, kind, start, end| {
        events.push(EventRef {
            seq,
            kind: kind.into(),
            raw: &payload[start..end],
        })
    })
}

/// Decodes a payload's events as a batch's events, each naming its line by
/// offset into `payload`, so the payload itself becomes the batch's line
/// buffer ([`OrderedBatch::over`](crate::batch::OrderedBatch::over)): the
/// live gateway's path, with no copy and no reference count per line. See
/// [`for_each_line`] for what is refused.
pub(crate) fn decode_batch_events(payload: &Bytes) -> Result<Vec<BatchEvent>, DecodeError> {
    // Sized exactly (a count of terminators costs a fraction of the parse):
    // the events wait in the registry's queue at their capacity.
    let mut events = Vec::with_capacity(memchr::memchr_iter(b'\n', payload).count());
    for_each_line(payload, |seq, kind, start, end| {
        events.push(BatchEvent::new(seq, kind, start, end - start))
    })?;
    Ok(events)
}

/// The headers of a message starting a run at `first_seq` of `stream`,
/// expected to follow stream message `expected_last`.
pub(crate) fn headers(
    stream: StreamId,
    new_stream: bool,
    first_seq: u64,
    expected_last: u64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}-{first_seq}", stream.as_str()).as_str(),
    );
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        expected_last.to_string().as_str(),
    );
    headers.insert(STREAM_HEADER, stream.as_str());
    if new_stream {
        headers.insert(NEW_STREAM_HEADER, "1");
    }
    headers
}

impl Log {
    /// An ordered consumer of the stream from stream sequence `start` on
    /// (the first retained one if `start` is older). It fetches at most
    /// 500 messages ahead (async-nats's batch), so at most ~32 MiB of
    /// 64 KiB messages wait in it; the caller's pace is the back-pressure.
    pub(crate) async fn consume_from(
        &self,
        start: u64,
    ) -> Result<jetstream::consumer::pull::Ordered, LogError> {
        use jetstream::consumer::{pull, DeliverPolicy};
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(LogError::of(Op::CreateConsumer))?;
        consumer.messages().await.map_err(LogError::of(Op::Consume))
    }

    /// A plain (not ordered) pull consumer of the stream from stream
    /// sequence `start` on, for bounded reads: a replay at start-up, a
    /// resume's fetch. async-nats's ordered consumer recreates itself after
    /// a missed heartbeat from the last message it delivered, and from
    /// sequence 1 if it delivered none yet; on a busy machine that made a
    /// read of a range start over at the stream's beginning. This one never
    /// moves its start; the server drops it `READ_IDLE` after its last
    /// fetch.
    pub(crate) async fn read_from(
        &self,
        start: u64,
    ) -> Result<jetstream::consumer::pull::Stream, LogError> {
        use jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        let stream = self.stream().await?;
        let config = pull::Config {
            filter_subject: self.subject.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: READ_IDLE,
            ..Default::default()
        };
        // A replicated stream places the consumer on one of its servers,
        // for a while (tens of seconds) the one that just died too: NATS
        // does not know yet, and that creation goes unanswered. Another
        // attempt may land elsewhere, so each is short.
        let mut attempt = 1;
        let consumer = loop {
            let create = stream.create_consumer(config.clone());
            let error = match tokio::time::timeout(CREATE_PATIENCE, create).await {
                Ok(Ok(consumer)) => break consumer,
                Ok(Err(error)) => async_nats::Error::from(error),
                Err(elapsed) => async_nats::Error::from(elapsed),
            };
            if attempt == CREATE_ATTEMPTS {
                return Err(LogError::of(Op::CreateConsumer)(error));
            }
            tracing::info!(%error, attempt, start, "creating a stream reader failed; trying again");
            attempt += 1;
        };
        consumer
            .stream()
            .max_messages_per_batch(READ_BATCH_MESSAGES)
            .max_bytes_per_batch(READ_BATCH_BYTES)
            .messages()
            .await
            .map_err(LogError::of(Op::Consume))
    }
}

/// Attempts at creating a [`Log::read_from`] consumer, each bounded by
/// [`CREATE_PATIENCE`]: together within a resume's 10 s. (An abandoned
/// creation that succeeds late leaves a consumer the server drops after
/// [`READ_IDLE`].)
const CREATE_ATTEMPTS: u32 = 8;

/// How long one attempt at creating a [`Log::read_from`] consumer may
/// take (it takes milliseconds when its server is alive).
const CREATE_PATIENCE: Duration = Duration::from_secs(1);

/// How long the server keeps an idle [`Log::read_from`] consumer.
const READ_IDLE: Duration = Duration::from_secs(30);

/// Most bytes one [`Log::read_from`] pull asks for. The client asks for the
/// next pull when half is consumed, so at most ~1.5× this is on its way per
/// read. It must hold: every read at once (the fetcher's, plus a live
/// consumer's ~48 MiB) stays well under nats-server's per-connection
/// `max_pending` (64 MiB), or the server drops the whole connection as a
/// slow consumer (seen with async-nats's unbounded default: 8 fetches of
/// 200 × 64 KiB messages during a burst of resumes).
const READ_BATCH_BYTES: usize = 2 << 20;

/// Most messages one [`Log::read_from`] pull asks for (when messages are
/// small, at a slow source, the byte bound is not what limits).
const READ_BATCH_MESSAGES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::OrderedBatch;
    use followermaze_protocol::EventKind;

    #[test]
    fn a_message_decodes_to_its_headers_and_its_lines_byte_for_byte() {
        let stream = StreamId::parse(b"abc").unwrap();
        let headers = headers(stream, true, 7, 3);
        assert_eq!(decode_headers(Some(&headers)).unwrap(), (stream, true));
        let payload = Bytes::from_static(b"7|F|1|2\r\n8|B\n10|S|1\r\n");
        let mut events = Vec::new();
        decode_borrowed(&payload, &mut events).unwrap();
        let raws: Vec<&[u8]> = events.iter().map(|e| e.raw).collect();
        assert_eq!(raws, [&b"7|F|1|2\r\n"[..], b"8|B\n", b"10|S|1\r\n"]);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [7, 8, 10]);
    }

    /// Every line a payload may carry, short ones (the one-pass parse) and
    /// long ones near the end (the careful one), in both terminators.
    fn mixed_payload() -> Bytes {
        let mut text = String::new();
        for seq in 1..200u64 {
            text.push_str(&match seq % 5 {
                0 => format!("{seq}|F|{}|{}\r\n", seq * 7, seq * 3),
                1 => format!("{seq}|U|1|123456789012345678\n"),
                2 => format!("{seq}|B\n"),
                3 => format!("{seq}|P|4|5\r\n"),
                _ => format!("{seq}|S|{}\n", seq % 13),
            });
        }
        Bytes::from(text)
    }

    #[test]
    fn both_decodes_read_each_line_as_the_careful_parser_does() {
        let payload = mixed_payload();
        let expected: Vec<(u64, EventKind, &[u8])> = payload
            .split_inclusive(|&byte| byte == b'\n')
            .map(|line| {
                let (seq, kind) = parse_event(line).unwrap();
                (seq, kind, line)
            })
            .collect();
        let mut borrowed = Vec::new();
        decode_borrowed(&payload, &mut borrowed).unwrap();
        let borrowed: Vec<(u64, EventKind, &[u8])> =
            borrowed.iter().map(|e| (e.seq, e.kind, e.raw)).collect();
        assert_eq!(borrowed, expected);
        // The batch's events name their lines in the payload itself.
        let events = decode_batch_events(&payload).unwrap();
        assert_eq!(events.capacity(), expected.len(), "sized exactly");
        let batch = OrderedBatch::over(events, payload.clone(), std::time::Instant::now());
        let batched: Vec<(u64, EventKind, &[u8])> =
            batch.events().map(|e| (e.seq, e.kind, e.raw)).collect();
        assert_eq!(batched, expected);
    }

    #[test]
    fn foreign_or_damaged_messages_are_refused() {
        let stream = StreamId::parse(b"abc").unwrap();
        assert!(decode_headers(Some(&headers(stream, false, 1, 0))).is_ok());
        assert!(matches!(decode_headers(None), Err(DecodeError::NoHeaders)));
        assert!(matches!(
            decode_headers(Some(&HeaderMap::new())),
            Err(DecodeError::NoStreamHeader)
        ));
        for bad in [&b"1|B\n2|B"[..], b"2|B\n1|B\n", b"x\n", b""] {
            let payload = Bytes::copy_from_slice(bad);
            let mut events = Vec::new();
            assert!(decode_borrowed(&payload, &mut events).is_err(), "{bad:?}");
            assert!(decode_batch_events(&payload).is_err(), "{bad:?}");
        }
    }
}
