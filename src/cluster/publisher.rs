//! The sequencer role's batch sink: appends the ordered batches to the
//! JetStream stream, in order, with nothing released ever lost.
//!
//! - **Messages**: consecutive batches are packed into one message of at
//!   most [`MAX_MESSAGE_BYTES`] of lines (the lines' raw bytes back to
//!   back; see [`crate::cluster::jetstream`]), sent when full, when
//!   [`MAX_LINGER`] has passed since its first event, or when a new stream
//!   begins (its first message carries the mark).
//! - **Window**: at most [`PUBLISH_WINDOW`] messages await their ack. While
//!   it is full the publisher stops taking batches, its bounded queue from
//!   the sequencer fills, the sequencer stops reading, and the sources' TCP
//!   windows close: back-pressure, never buffering without bound.
//! - **Failure**: a failed publish or ack (NATS slow, down, restarting) is
//!   logged and counted; the publisher then waits for NATS, reads which of
//!   its messages the stream did store, and republishes the rest. Messages
//!   are acked in order, so "stored" is a prefix of the window.
//! - **One writer**: every message expects the stream's last sequence
//!   (`Nats-Expected-Last-Sequence`). If another sequencer wrote to the
//!   stream, ours fail, the stream holds a message that is not ours, and
//!   this publisher stops with an error instead of interleaving.
//! - **Graph**: the publisher applies the follows and unfollows of each
//!   acked message to its own [`Router`], so the graph is always the state
//!   after a known stream sequence, and every `snapshotIntervalSecs` it
//!   writes that as a snapshot for gateways to start from.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::{Bytes, BytesMut};
use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{EventKind, Seq};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::batch::OrderedBatch;
use crate::cluster::jetstream::{self, DecodeError, Log, LogError};
use crate::cluster::snapshots::{self, Mark, SnapshotError};
use crate::graph::router::Router;
use crate::graph::snapshot;
use crate::ops::stats::{LogThrottle, Stats};
use crate::resume::session::new_stream_id;

/// Batches that may wait between the sequencer and the publisher; like
/// the registry's queue (each batch at most ~230 KiB).
pub(crate) const PUBLISH_QUEUE: usize = 8;

/// Lines' bytes in one message, at most (one line over it closes it): big
/// enough that a message carries thousands of events, small enough to stay
/// far below NATS's 1 MiB default `max_payload`.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest an event waits for its message to fill before it is sent.
pub(crate) const MAX_LINGER: Duration = Duration::from_millis(1);

/// Messages awaiting their ack, at most: ~4 MiB of payload in flight.
pub(crate) const PUBLISH_WINDOW: usize = 64;

/// First and longest wait before retrying after a NATS failure.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the publisher recovered from the stream at start.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The follower graph after `stream_seq`.
    pub graph: Router,
    /// The stream's last message (0: empty).
    pub stream_seq: u64,
    /// The last event sequence the stream holds (0: none): the sequencer
    /// carries on after it.
    pub position: Seq,
    /// The sequence space's id (a fresh one if the stream is empty).
    pub stream: StreamId,
}

/// Why start-up recovery could not tell where the stream stands.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoverError {
    /// The latest snapshot could not be read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A request to NATS failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Retention dropped everything after the snapshot.
    #[error(
        "the stream holds no message after the latest snapshot (snapshot at stream sequence \
         {snapshot_seq}, stream at {last}, all expired or purged): cannot tell where the \
         sequence stands; restore the stream or start a new one (delete stream {stream})"
    )]
    Expired {
        /// The snapshot's stream sequence.
        snapshot_seq: u64,
        /// The stream's last sequence.
        last: u64,
        /// The stream's name.
        stream: String,
    },
    /// The replay's consumer failed.
    #[error("replay: {0}")]
    Replay(#[source] async_nats::Error),
    /// The replay's consumer ended.
    #[error("replay: the consumer ended")]
    ConsumerEnded,
    /// The next message of the replay did not come.
    #[error(
        "replay: no message within {REPLAY_PATIENCE:?} after stream sequence {after} (the \
         stream holds up to {last})"
    )]
    Late {
        /// The last stream sequence replayed.
        after: u64,
        /// The stream's last sequence.
        last: u64,
    },
    /// A message is not one of ours.
    #[error("stream message {seq}: {source}")]
    Decode {
        /// Its stream sequence.
        seq: u64,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
}

/// Reads the latest snapshot, then replays the stream after it up to its
/// last message: the state a restarted sequencer carries on from.
pub(crate) async fn recover(log: &Log, max_edges: usize) -> Result<Recovered, RecoverError> {
    let mut state = match snapshots::load(log, max_edges).await? {
        Some(snapshot) => Recovered {
            graph: snapshot.graph,
            stream_seq: snapshot.stream_seq,
            position: snapshot.position,
            stream: snapshot.stream,
        },
        None => Recovered {
            graph: Router::new(max_edges),
            stream_seq: 0,
            position: 0,
            stream: new_stream_id(),
        },
    };
    let (first, last) = log.sequences().await?;
    if last > state.stream_seq {
        if first > last {
            // Retention dropped everything after the snapshot: the position
            // and the graph since are unknowable. Fail loudly rather than
            // publish from a wrong position.
            return Err(RecoverError::Expired {
                snapshot_seq: state.stream_seq,
                last,
                stream: log.name.clone(),
            });
        }
        let from = (state.stream_seq + 1).max(first);
        if from > state.stream_seq + 1 {
            tracing::error!(
                snapshot_stream_seq = state.stream_seq,
                first_retained = first,
                "the stream no longer holds every message after the latest snapshot: \
                 follows and unfollows in between are missing from the graph"
            );
        }
        let mut messages = log.read_from(from).await?;
        replay(&mut state, &mut messages, last).await?;
    }
    Ok(state)
}

/// Applies the stream's messages from `messages` to `state` up to stream
/// sequence `last`: the follows and unfollows to the graph, and where the
/// stream stands.
async fn replay(
    state: &mut Recovered,
    messages: &mut async_nats::jetstream::consumer::pull::Stream,
    last: u64,
) -> Result<(), RecoverError> {
    while state.stream_seq < last {
        let next = tokio::time::timeout(REPLAY_PATIENCE, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => return Err(RecoverError::Replay(error.into())),
            Ok(None) => return Err(RecoverError::ConsumerEnded),
            Err(_) => {
                let after = state.stream_seq;
                return Err(RecoverError::Late { after, last });
            }
        };
        let stream_seq = message
            .info()
            .map_err(RecoverError::Replay)?
            .stream_sequence;
        let decode_error = |source| RecoverError::Decode {
            seq: stream_seq,
            source,
        };
        let (stream, new_stream) =
            jetstream::decode_headers(message.headers.as_ref()).map_err(decode_error)?;
        let mut events = Vec::new();
        jetstream::decode_borrowed(&message.payload, &mut events).map_err(decode_error)?;
        if new_stream {
            state.graph.clear();
        }
        for event in &events {
            if matches!(
                event.kind,
                EventKind::Follow { .. } | EventKind::Unfollow { .. }
            ) {
                state.graph.apply(event.kind);
            }
        }
        state.stream = stream;
        state.position = events.last().map_or(state.position, |e| e.seq);
        state.stream_seq = stream_seq;
    }
    Ok(())
}

/// How long start-up recovery waits for the next message of its replay
/// before it gives up with an error instead of hanging.
const REPLAY_PATIENCE: Duration = Duration::from_secs(10);

/// A publish's acknowledgement, awaited in order.
type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A message built, sent, or awaiting its ack.
struct Outgoing {
    /// Its lines.
    payload: Bytes,
    /// Its headers' inputs: the space, its first event, the new-stream mark.
    stream: StreamId,
    first_seq: Seq,
    new_stream: bool,
    /// Its last event: the position once it is stored.
    last_seq: Seq,
    /// Its follows and unfollows, applied to the graph once it is stored.
    edges: Vec<EventKind>,
    /// The stream sequence it must follow (sent as the expected last).
    expected_last: u64,
    /// `Nats-Msg-Id`, to recognise it in the stream after a failure.
    id: String,
    /// The ack, while one is awaited.
    ack: Option<AckFuture>,
}

/// The message being filled.
struct Building {
    /// Lines so far.
    payload: BytesMut,
    /// Follows and unfollows so far.
    edges: Vec<EventKind>,
    /// First and last event, `None` while empty.
    first_seq: Option<Seq>,
    last_seq: Seq,
    /// Whether a new stream begins with it.
    new_stream: bool,
    /// When it must be sent at the latest.
    deadline: Instant,
}

/// See the module doc.
pub(crate) struct Publisher {
    /// Batches in, from the sequencer.
    inbox: mpsc::Receiver<OrderedBatch>,
    /// The stream.
    log: Log,
    /// The current sequence space.
    stream: StreamId,
    /// The message being filled.
    building: Building,
    /// Sent messages, oldest first, awaiting acks (at most
    /// [`PUBLISH_WINDOW`]).
    in_flight: VecDeque<Outgoing>,
    /// The stream sequence the next message will get minus one.
    next_expected_last: u64,
    /// The graph after `graph_seq`, the last acked message, ...
    graph: Router,
    graph_seq: u64,
    /// ... and that message's sequence space: what a snapshot names.
    /// `stream` runs ahead of it while a new stream's first message is
    /// unacknowledged, and a snapshot naming the new id with the old
    /// stream's graph and position would mislead every gateway loading it.
    graph_stream: StreamId,
    /// The last event sequence stored.
    position: Seq,
    /// The stream sequence of the last snapshot written.
    snapshot_seq: Option<u64>,
    /// When snapshots are written, and how many are kept.
    snapshot_policy: SnapshotPolicy,
    /// A snapshot being written, at most one at a time; it answers with the
    /// stream sequence it saved, or `None` if the save failed.
    snapshot_task: Option<tokio::task::JoinHandle<Option<u64>>>,
    /// Counters.
    stats: Arc<Stats>,
    /// Rate limit for failure warnings.
    failure_log: LogThrottle,
}

/// The stream holds a message this publisher did not write: another
/// sequencer is publishing.
#[derive(Debug)]
pub(crate) struct AnotherWriter(pub String);

/// When the publisher writes snapshots, and how many the bucket keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotPolicy {
    /// Between two snapshots (`snapshotIntervalSecs`).
    pub every: Duration,
    /// Snapshots kept: enough for a resume from a window back
    /// ([`snapshots::kept_for`]).
    pub kept: usize,
}

impl Publisher {
    /// A publisher carrying on from `recovered`, and the sender the
    /// sequencer's sink uses.
    pub(crate) fn new(
        log: Log,
        recovered: Recovered,
        snapshot_policy: SnapshotPolicy,
        stats: Arc<Stats>,
    ) -> (Publisher, mpsc::Sender<OrderedBatch>) {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let publisher = Publisher {
            inbox: rx,
            log,
            stream: recovered.stream,
            building: Building {
                payload: BytesMut::with_capacity(MAX_MESSAGE_BYTES + 4096),
                edges: Vec::new(),
                first_seq: None,
                last_seq: 0,
                new_stream: false,
                deadline: Instant::now(),
            },
            in_flight: VecDeque::with_capacity(PUBLISH_WINDOW),
            next_expected_last: recovered.stream_seq,
            graph: recovered.graph,
            graph_seq: recovered.stream_seq,
            graph_stream: recovered.stream,
            position: recovered.position,
            snapshot_seq: None,
            snapshot_policy,
            snapshot_task: None,
            stats,
            failure_log: LogThrottle::new(Duration::from_secs(5)),
        };
        (publisher, tx)
    }

    /// Writes a snapshot of the recovered state now (gateways need one,
    /// with the stream id, before they serve anyone).
    pub(crate) async fn initial_snapshot(&mut self) -> Result<(), SnapshotError> {
        let bytes = snapshot::encode(
            self.graph_seq,
            self.position,
            self.graph_stream,
            &self.graph,
        );
        snapshots::save(&self.log, bytes, self.mark(), self.snapshot_policy.kept).await?;
        self.snapshot_seq = Some(self.graph_seq);
        Stats::add(&self.stats.snapshots_written, 1);
        Ok(())
    }

    /// Publishes until the sequencer's queue closes, then sends what is
    /// left, waits for every ack, and writes a last snapshot. Ends early
    /// only if another sequencer writes to the stream.
    pub(crate) async fn run(mut self) -> Result<(), AnotherWriter> {
        let mut snapshot_tick = tokio::time::interval(self.snapshot_policy.every);
        snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let linger = self.building.deadline;
            let building = self.building.first_seq.is_some();
            let room = self.in_flight.len() < PUBLISH_WINDOW;
            tokio::select! {
                acked = next_ack(&mut self.in_flight) => match acked {
                    Ok(ack) => self.acked(ack),
                    Err(error) => self.recover(PublishFailure::Ack(error)).await?,
                },
                batch = self.inbox.recv(), if room => match batch {
                    Some(batch) => self.add(batch).await?,
                    None => break,
                },
                () = tokio::time::sleep_until(linger), if building && room => {
                    self.send_building().await?;
                }
                _ = snapshot_tick.tick() => self.snapshot(),
            }
        }
        if self.building.first_seq.is_some() {
            while self.in_flight.len() >= PUBLISH_WINDOW {
                self.await_one().await?;
            }
            self.send_building().await?;
        }
        while !self.in_flight.is_empty() {
            self.await_one().await?;
        }
        if let Some(task) = self.snapshot_task.take() {
            self.snapshot_seq = task.await.ok().flatten();
        }
        if self.snapshot_seq != Some(self.graph_seq) {
            if let Err(error) = self.initial_snapshot().await {
                tracing::warn!(%error, "shutdown: cannot write the last snapshot");
            }
        }
        tracing::info!(
            stream_seq = self.graph_seq,
            position = self.position,
            "publisher stopped: every released event is in the stream"
        );
        Ok(())
    }

    /// Waits for the oldest ack (recovering on failure).
    async fn await_one(&mut self) -> Result<(), AnotherWriter> {
        match next_ack(&mut self.in_flight).await {
            Ok(ack) => self.acked(ack),
            Err(error) => self.recover(PublishFailure::Ack(error)).await?,
        }
        Ok(())
    }

    /// Adds `batch` to the message being built, sending it when full.
    async fn add(&mut self, batch: OrderedBatch) -> Result<(), AnotherWriter> {
        if batch.starts_new_stream() {
            if self.building.first_seq.is_some() {
                self.wait_for_room().await?;
                self.send_building().await?;
            }
            self.stream = new_stream_id();
            self.building.new_stream = true;
            tracing::info!(
                stream = self.stream.as_str(),
                "new stream: publishing under a new stream id"
            );
        }
        for event in batch.events() {
            if self.building.first_seq.is_none() {
                self.building.first_seq = Some(event.seq);
                self.building.deadline = Instant::now() + MAX_LINGER;
            }
            self.building.payload.extend_from_slice(event.raw);
            self.building.last_seq = event.seq;
            if matches!(
                event.kind,
                EventKind::Follow { .. } | EventKind::Unfollow { .. }
            ) {
                self.building.edges.push(event.kind);
            }
            if self.building.payload.len() >= MAX_MESSAGE_BYTES {
                self.wait_for_room().await?;
                self.send_building().await?;
            }
        }
        Ok(())
    }

    /// Waits (taking acks) until the window has room for one more message.
    async fn wait_for_room(&mut self) -> Result<(), AnotherWriter> {
        while self.in_flight.len() >= PUBLISH_WINDOW {
            self.await_one().await?;
        }
        Ok(())
    }

    /// Sends the message being built (non-empty; the window has room).
    async fn send_building(&mut self) -> Result<(), AnotherWriter> {
        let Some(first_seq) = self.building.first_seq.take() else {
            return Ok(());
        };
        let building = &mut self.building;
        let message = Outgoing {
            payload: building.payload.split().freeze(),
            stream: self.stream,
            first_seq,
            new_stream: std::mem::take(&mut building.new_stream),
            last_seq: building.last_seq,
            edges: std::mem::take(&mut building.edges),
            expected_last: self.next_expected_last,
            id: format!("{}-{first_seq}", self.stream.as_str()),
            ack: None,
        };
        self.next_expected_last += 1;
        self.in_flight.push_back(message);
        let index = self.in_flight.len() - 1;
        if let Err(error) = self.publish(index).await {
            self.recover(error).await?;
        }
        Ok(())
    }

    /// Publishes `in_flight[index]`, keeping its ack future.
    async fn publish(&mut self, index: usize) -> Result<(), PublishFailure> {
        let message = &mut self.in_flight[index];
        let headers = jetstream::headers(
            message.stream,
            message.new_stream,
            message.first_seq,
            message.expected_last,
        );
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers);
        let ack = self
            .log
            .js
            .send_publish(self.log.subject.clone(), publish)
            .await
            .map_err(PublishFailure::Send)?;
        message.ack = Some(std::future::IntoFuture::into_future(ack));
        Ok(())
    }

    /// The oldest message is stored as stream message `ack.sequence`.
    fn acked(&mut self, ack: PublishAck) {
        let Some(message) = self.in_flight.pop_front() else {
            return;
        };
        self.stored(message, ack.sequence);
    }

    /// `message` is stream message `stream_seq`: the graph and position
    /// move past it.
    fn stored(&mut self, message: Outgoing, stream_seq: u64) {
        if message.new_stream {
            self.graph.clear();
        }
        for &kind in &message.edges {
            self.graph.apply(kind);
        }
        self.graph_seq = stream_seq;
        self.graph_stream = message.stream;
        self.position = message.last_seq;
        Stats::add(&self.stats.published_messages, 1);
    }

    /// After a failure: waits for NATS, takes as stored the prefix of the
    /// window the stream holds, and republishes the rest. Fails if the
    /// stream holds a message that is not ours.
    async fn recover(&mut self, error: PublishFailure) -> Result<(), AnotherWriter> {
        let mut wait = RETRY_FIRST;
        let mut error = error;
        loop {
            Stats::add(&self.stats.publish_failures, 1);
            if let Some(suppressed) = self.failure_log.allow() {
                tracing::warn!(
                    %error,
                    in_flight = self.in_flight.len(),
                    stream_seq = self.graph_seq,
                    suppressed,
                    "publishing to JetStream failed: holding the source back, retrying"
                );
            }
            for message in &mut self.in_flight {
                message.ack = None;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
            match self.resync().await {
                Ok(()) => return Ok(()),
                Err(Resync::Retry(why)) => error = why,
                Err(Resync::Foreign(why)) => {
                    tracing::error!(
                        %why,
                        "another sequencer is publishing to the stream: stopping"
                    );
                    return Err(AnotherWriter(why));
                }
            }
        }
    }

    /// One attempt of [`Publisher::recover`].
    async fn resync(&mut self) -> Result<(), Resync> {
        let stream = self.log.stream().await.map_err(PublishFailure::from)?;
        let info = stream
            .get_info()
            .await
            .map_err(|error| PublishFailure::Info(error.into()))?;
        let last = info.state.last_sequence;
        let mut seq = self.graph_seq + 1;
        while seq <= last {
            let stored =
                stream
                    .get_raw_message(seq)
                    .await
                    .map_err(|error| PublishFailure::Read {
                        seq,
                        source: error.into(),
                    })?;
            let id = stored
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|value| value.as_str().to_owned());
            match self.in_flight.front() {
                Some(ours) if id.as_deref() == Some(ours.id.as_str()) => {
                    let message = self.in_flight.pop_front().expect("front exists");
                    self.stored(message, seq);
                }
                _ => {
                    return Err(Resync::Foreign(format!(
                        "stream message {seq} (id {id:?}) is not one this sequencer sent"
                    )))
                }
            }
            seq += 1;
        }
        self.next_expected_last = last;
        for index in 0..self.in_flight.len() {
            self.in_flight[index].expected_last = self.next_expected_last;
            self.next_expected_last += 1;
            self.publish(index).await?;
        }
        if !self.in_flight.is_empty() {
            tracing::info!(
                republished = self.in_flight.len(),
                stream_seq = last,
                "reconnected to JetStream: republished the unacknowledged messages"
            );
        }
        Ok(())
    }

    /// What a snapshot of the graph now is of.
    fn mark(&self) -> Mark {
        Mark {
            stream_seq: self.graph_seq,
            position: self.position,
            stream: self.graph_stream,
        }
    }

    /// Starts writing a snapshot if the graph moved since the last one and
    /// none is being written.
    fn snapshot(&mut self) {
        if let Some(task) = &mut self.snapshot_task {
            if !task.is_finished() {
                return;
            }
            // Finished: only a save that succeeded counts, so a failed one
            // is tried again at the next tick.
            let saved = match futures_util::FutureExt::now_or_never(task) {
                Some(Ok(saved)) => saved,
                _ => None,
            };
            self.snapshot_task = None;
            if saved.is_none() {
                self.snapshot_seq = None;
            }
        }
        if self.snapshot_seq == Some(self.graph_seq) {
            return;
        }
        // Encoded here, on the publisher's task: handing the work to a
        // blocking thread would first need a copy of the graph, which is
        // what encoding is (16 bytes an edge, a few ms per million edges).
        let bytes = snapshot::encode(
            self.graph_seq,
            self.position,
            self.graph_stream,
            &self.graph,
        );
        self.snapshot_seq = Some(self.graph_seq);
        let (log, stats, stream_seq) = (self.log.clone(), self.stats.clone(), self.graph_seq);
        let (mark, kept) = (self.mark(), self.snapshot_policy.kept);
        self.snapshot_task = Some(tokio::spawn(async move {
            match snapshots::save(&log, bytes, mark, kept).await {
                Ok(()) => {
                    Stats::add(&stats.snapshots_written, 1);
                    tracing::debug!(stream_seq, "snapshot written");
                    Some(stream_seq)
                }
                Err(error) => {
                    tracing::warn!(%error, stream_seq, "cannot write a snapshot; retrying at the next tick");
                    None
                }
            }
        }));
    }
}

/// Why a publish, or a resync after one, failed: NATS unreachable or
/// slow, tried again.
#[derive(Debug, thiserror::Error)]
enum PublishFailure {
    /// Sending the message failed.
    #[error("publish: {0}")]
    Send(#[source] PublishError),
    /// Its ack failed or timed out.
    #[error("ack: {0}")]
    Ack(#[source] PublishError),
    /// Looking up the stream failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Reading the stream's state failed.
    #[error("stream info: {0}")]
    Info(#[source] async_nats::Error),
    /// Reading back a stored message failed.
    #[error("read message {seq}: {source}")]
    Read {
        /// Its stream sequence.
        seq: u64,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
}

/// Why a resync attempt failed.
enum Resync {
    /// NATS still unreachable or slow: try again.
    Retry(PublishFailure),
    /// Another writer: give up, saying which message is not ours.
    Foreign(String),
}

impl From<PublishFailure> for Resync {
    fn from(failure: PublishFailure) -> Resync {
        Resync::Retry(failure)
    }
}

/// The oldest message's ack; pending for ever if none is awaited.
async fn next_ack(in_flight: &mut VecDeque<Outgoing>) -> Result<PublishAck, PublishError> {
    match in_flight
        .front_mut()
        .and_then(|message| message.ack.as_mut())
    {
        Some(ack) => ack.await,
        None => std::future::pending().await,
    }
}
