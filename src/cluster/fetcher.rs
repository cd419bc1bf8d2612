//! The fetcher: step 2 of a resume from the stream (the steps are in
//! `resume::history`). It reads the stream messages a resume needs, keeps
//! the lines that concern its user, and hands them back to the registry,
//! which never waits on NATS itself.
//!
//! Requests are served in *sweeps*: one read of the stream, from the
//! earliest message any of them needs to the latest, shared by every
//! request that was queued when the sweep began (a burst of resumes after
//! a gateway's death reads the stream once, not once per client), on the
//! fetcher's own NATS connection. A resume planned from the edge log
//! routes its user's lines with its own [`UserRouter`]; the deep ones of a
//! sweep (planned from a snapshot) share one [`GraphReplay`] of the whole
//! graph from the newest snapshot at or before the earliest of them.
//!
//! What is bounded: the sweeps at once ([`CONCURRENT_SWEEPS`]), each
//! reading a bounded pull ahead; the replays, one at a time on a task of
//! their own (each holds a whole graph, up to 64 MiB at `maxFollowEdges`
//! 4 M), every deep request that queued meanwhile joining the next; the
//! lines a resume keeps (`resumeBufferBytes`). A request beyond them waits
//! in the queue for the next sweep.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use followermaze_protocol::resume::StreamId;
use followermaze_protocol::Seq;

use crate::batch::EventRef;
use crate::cluster::jetstream::{self, DecodeError, Log, LogError, REQUEST_TIMEOUT};
use crate::cluster::snapshots::{self, SnapshotError};
use crate::fanout::command::{Command, FetchRequest, Resumed};
use crate::fanout::outbox::Closed;
use crate::fanout::RegistryHandle;
use crate::resume::history::{keep, GraphReplay, OverBound, Plan, UserRouter};

/// Fetch requests that may wait for the fetcher, at least: the gateway
/// sizes the queue to `maxClients` (each request is one resuming
/// connection, which asks once and waits), so a storm of resumes waits
/// for its turn rather than getting a false `#GAP`; beyond it (a flood of
/// reconnects whose requests outlive their connections) the resume gets
/// its local verdict at once.
pub(crate) const MIN_FETCH_QUEUE: usize = 64;

/// Sweeps of the stream running at once, each through its own consumer
/// reading at most `READ_BATCH_BYTES` ahead (`cluster::jetstream`). Every
/// request that queued while they were busy joins the next sweep.
const CONCURRENT_SWEEPS: usize = 4;

/// Longest one sweep may take, all its messages included; the requests it
/// has not answered by then get `#GAP`. A replay from a snapshot reads up
/// to a window of the stream (30 s of events at full speed take a few
/// seconds); each message must also come within `REQUEST_TIMEOUT`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times one sweep may start its read again after a lost batch
/// or a failed pull before it gives up (and its clients get `#GAP`).
const MAX_READ_RESTARTS: u32 = 8;

/// Why a resume could not be served from the stream (its client gets
/// `#GAP`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// A request to NATS failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The consumer failed, more often than a sweep restarts.
    #[error("consumer: {0}")]
    Consumer(#[source] async_nats::Error),
    /// The consumer ended.
    #[error("the consumer ended")]
    ConsumerEnded,
    /// The next message did not come within [`REQUEST_TIMEOUT`].
    #[error("no message {0} in time")]
    Late(u64),
    /// A message came without its JetStream metadata.
    #[error("no JetStream metadata: {0}")]
    NoMetadata(#[source] async_nats::Error),
    /// A message is not one of ours.
    #[error("message {seq}: {source}")]
    Decode {
        /// Its stream sequence.
        seq: u64,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// Retention dropped a message the resume needs.
    #[error(
        "the stream no longer holds message {missing} (the next is {next}): retention dropped it"
    )]
    Dropped {
        /// The first message missing.
        missing: u64,
        /// The first message the stream still holds.
        next: u64,
    },
    /// A message of the range belongs to another stream id.
    #[error("message {0} is of another stream")]
    OtherStream(u64),
    /// The user is owed more than a session may retain.
    #[error(transparent)]
    OverBound(#[from] OverBound),
    /// The sweep took longer than [`FETCH_TIMEOUT`].
    #[error("timed out")]
    TimedOut,
    /// The snapshot a deep resume starts from could not be read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The replayer task is gone (it panicked).
    #[error("the replaying task ended")]
    NoReplayer,
    /// Resumes of one sweep name two streams: the stream changed since
    /// some were planned.
    #[error("the stream changed since the resume was planned")]
    StreamChanged,
    /// The bucket keeps no snapshot as old as a deep resume needs.
    #[error("no snapshot kept at or before position {0} (the resume window is longer than the snapshots kept?)")]
    NoSnapshot(Seq),
}

/// The fetcher task: serves requests until the registry drops its sender,
/// answering each with [`Command::Resumed`]. At most [`CONCURRENT_SWEEPS`]
/// run at once.
pub(crate) async fn serve(
    log: Log,
    mut requests: mpsc::Receiver<FetchRequest>,
    registry: RegistryHandle,
    max_edges: usize,
) {
    // Deep requests go to the replayer, one replay at a time; those that
    // queue while one runs join the next. Bounded as the fetch queue is.
    let (deep, deep_requests) = mpsc::channel(requests.max_capacity());
    let replayer = tokio::spawn(replay_deep(
        log.clone(),
        deep_requests,
        registry.clone(),
        max_edges,
    ));
    let slots = Arc::new(Semaphore::new(CONCURRENT_SWEEPS));
    let mut sweeps = JoinSet::new();
    while let Some(first) = requests.recv().await {
        while sweeps.try_join_next().is_some() {}
        let mut group = Vec::new();
        route(first, &mut group, &deep, &registry).await;
        if group.is_empty() {
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break; // Never closed; nothing to serve with.
        };
        // What queued meanwhile joins: at most the queue's bound.
        while let Ok(request) = requests.try_recv() {
            route(request, &mut group, &deep, &registry).await;
        }
        let (log, registry) = (log.clone(), registry.clone());
        sweeps.spawn(async move {
            sweep(&log, group, &registry, max_edges).await;
            drop(slot);
        });
    }
    // Each is bounded by FETCH_TIMEOUT, and answers or closes its clients.
    drop(deep);
    while sweeps.join_next().await.is_some() {}
    let _ = replayer.await;
}

/// Sends a deep request to the replayer, or adds a request planned from
/// the edge log to `group`.
async fn route(
    request: FetchRequest,
    group: &mut Vec<FetchRequest>,
    deep: &mpsc::Sender<FetchRequest>,
    registry: &RegistryHandle,
) {
    if !matches!(request.plan, Plan::Snapshot { .. }) {
        group.push(request);
    } else if let Err(mpsc::error::SendError(request)) = deep.send(request).await {
        fail(registry, request, &FetchError::NoReplayer).await;
    }
}

/// The replayer task: serves the deep requests, a sweep at a time, each
/// with every request queued when it began.
async fn replay_deep(
    log: Log,
    mut requests: mpsc::Receiver<FetchRequest>,
    registry: RegistryHandle,
    max_edges: usize,
) {
    while let Some(first) = requests.recv().await {
        let mut group = vec![first];
        while let Ok(request) = requests.try_recv() {
            group.push(request);
        }
        sweep(&log, group, &registry, max_edges).await;
    }
}

/// How a fetch of a sweep routes its user's lines.
enum Route {
    /// From the edge log ([`Plan::Log`]): its own router, and the lines
    /// kept so far.
    Log(UserRouter, Vec<u8>),
    /// From the sweep's snapshot ([`Plan::Snapshot`]): its target in the
    /// [`Replay`].
    Replay(usize),
}

/// One request of a sweep.
struct Fetch {
    /// The request.
    request: FetchRequest,
    /// The stream sequence of the first message it needs.
    first_message: u64,
    /// How its lines are kept.
    route: Route,
}

impl Fetch {
    /// The stream sequence of the last message it needs.
    fn last_message(&self) -> u64 {
        self.request.plan.last_message()
    }
}

/// A sweep's replay of the graph from a snapshot, for its deep resumes.
struct Replay {
    /// The graph and the targets.
    graph: GraphReplay,
    /// The stream the snapshot is of.
    stream: StreamId,
    /// The first message after the snapshot.
    first_message: u64,
}

/// Reads the union of the group's ranges once and answers each request as
/// soon as its last message is read, or as soon as it fails; whatever is
/// left when [`FETCH_TIMEOUT`] passes gets `#GAP`.
async fn sweep(log: &Log, group: Vec<FetchRequest>, registry: &RegistryHandle, max_edges: usize) {
    let (mut fetches, deep): (Vec<Fetch>, Vec<FetchRequest>) = split(group);
    let read = async {
        let mut replay = None;
        if !deep.is_empty() {
            replay = start_replay(log, deep, &mut fetches, registry, max_edges).await;
        }
        read(log, &mut fetches, &mut replay, registry).await
    };
    let error = match tokio::time::timeout(FETCH_TIMEOUT, read).await {
        Ok(Ok(())) => return, // Every request answered.
        Ok(Err(error)) => error,
        Err(_) => FetchError::TimedOut,
    };
    for fetch in fetches {
        fail(registry, fetch.request, &error).await;
    }
}

/// The group's fetches planned from the edge log, ready to read, and its
/// deep ones, which need a snapshot first.
fn split(group: Vec<FetchRequest>) -> (Vec<Fetch>, Vec<FetchRequest>) {
    let mut fetches = Vec::with_capacity(group.len());
    let mut deep = Vec::new();
    for request in group {
        match &request.plan {
            Plan::Log(plan) => fetches.push(Fetch {
                first_message: plan.first_message,
                route: Route::Log(UserRouter::new(request.resume.user, plan), Vec::new()),
                request,
            }),
            Plan::Snapshot { .. } => deep.push(request),
        }
    }
    (fetches, deep)
}

/// Loads the newest snapshot at or before every `deep` request's position
/// and adds them to `fetches` as its targets; those that cannot be served
/// from it get `#GAP`.
async fn start_replay(
    log: &Log,
    deep: Vec<FetchRequest>,
    fetches: &mut Vec<Fetch>,
    registry: &RegistryHandle,
    max_edges: usize,
) -> Option<Replay> {
    let stream = deep.first()?.resume.stream;
    let (deep, others): (Vec<_>, Vec<_>) = deep
        .into_iter()
        .partition(|request| request.resume.stream == stream);
    for request in others {
        fail(registry, request, &FetchError::StreamChanged).await;
    }
    let after = deep.iter().map(|request| request.resume.after).min()?;
    let snapshot = match snapshots::load_at_or_before(log, stream, after, max_edges).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return fail_all(registry, deep, &FetchError::NoSnapshot(after)).await,
        Err(error) => return fail_all(registry, deep, &error.into()).await,
    };
    tracing::debug!(
        resumes = deep.len(),
        after,
        snapshot_position = snapshot.position,
        snapshot_stream_seq = snapshot.stream_seq,
        "resuming from a snapshot"
    );
    let mut graph = GraphReplay::new(snapshot.graph, snapshot.position);
    let first_message = snapshot.stream_seq + 1;
    for request in deep {
        let resume = &request.resume;
        let index = graph.add(resume.user, (resume.after, resume.upto), request.max_bytes);
        fetches.push(Fetch {
            request,
            first_message,
            route: Route::Replay(index),
        });
    }
    Some(Replay {
        graph,
        stream,
        first_message,
    })
}

/// Fails every request of `requests` with `error`; no replay.
async fn fail_all(
    registry: &RegistryHandle,
    requests: Vec<FetchRequest>,
    error: &FetchError,
) -> Option<Replay> {
    for request in requests {
        fail(registry, request, error).await;
    }
    None
}

/// The sweep's read: answers and removes each request of `fetches` as it
/// completes or fails; `Err` fails the rest.
async fn read(
    log: &Log,
    fetches: &mut Vec<Fetch>,
    replay: &mut Option<Replay>,
    registry: &RegistryHandle,
) -> Result<(), FetchError> {
    let (Some(first), Some(last)) = (
        fetches.iter().map(|f| f.first_message).min(),
        fetches.iter().map(Fetch::last_message).max(),
    ) else {
        return Ok(());
    };
    let mut reader = Reader::start(log, first).await?;
    while reader.expected <= last && !fetches.is_empty() {
        let Some((stream_seq, message)) = reader.next(log).await? else {
            continue;
        };
        if stream_seq > reader.expected {
            // Gone for good: whoever needed one of them cannot be served.
            let error = FetchError::Dropped {
                missing: reader.expected,
                next: stream_seq,
            };
            for fetch in extract(fetches, |f| f.first_message < stream_seq) {
                fail(registry, fetch.request, &error).await;
            }
        }
        reader.expected = stream_seq + 1;
        let decode_error = |source| FetchError::Decode {
            seq: stream_seq,
            source,
        };
        let (stream, _) =
            jetstream::decode_headers(message.headers.as_ref()).map_err(decode_error)?;
        let mut events = Vec::with_capacity(message.payload.len() / 16);
        jetstream::decode_borrowed(&message.payload, &mut events).map_err(decode_error)?;
        let read = Read {
            stream_seq,
            stream,
            events: &events,
        };
        keep_lines(fetches, replay, read, registry).await;
    }
    Ok(())
}

/// One stream message read: its sequence, its stream and its events (each
/// line borrowed from the message).
struct Read<'a> {
    stream_seq: u64,
    stream: StreamId,
    events: &'a [EventRef<'a>],
}

/// Hands the events of message `stream_seq` to every fetch whose range
/// holds it, and to the replay; fails those that cannot go on, answers
/// those it completes.
async fn keep_lines(
    fetches: &mut Vec<Fetch>,
    replay: &mut Option<Replay>,
    Read {
        stream_seq,
        stream,
        events,
    }: Read<'_>,
    registry: &RegistryHandle,
) {
    let mut failed = Vec::new();
    if let Some(replaying) = replay {
        if stream_seq >= replaying.first_message {
            if stream == replaying.stream {
                replaying.graph.apply(events);
            } else {
                for (index, fetch) in fetches.iter().enumerate() {
                    if matches!(fetch.route, Route::Replay(_)) {
                        failed.push((index, FetchError::OtherStream(stream_seq)));
                    }
                }
            }
        }
    }
    for (index, fetch) in fetches.iter_mut().enumerate() {
        let Route::Log(router, lines) = &mut fetch.route else {
            continue;
        };
        if stream_seq < fetch.first_message || stream_seq > fetch.request.plan.last_message() {
            continue;
        }
        let resume = &fetch.request.resume;
        let kept = if stream != resume.stream {
            Err(FetchError::OtherStream(stream_seq))
        } else {
            let range = (resume.after, resume.upto);
            keep(router, events, range, fetch.request.max_bytes, lines).map_err(FetchError::from)
        };
        if let Err(error) = kept {
            failed.push((index, error));
        }
    }
    failed.sort_by_key(|&(index, _)| index);
    for (index, error) in failed.into_iter().rev() {
        fail(registry, fetches.swap_remove(index).request, &error).await;
    }
    for fetch in extract(fetches, |f| f.last_message() <= stream_seq) {
        let lines = match fetch.route {
            Route::Log(_, lines) => Ok(lines),
            // A replay outlives its last fetch: it is there.
            Route::Replay(index) => match replay.as_mut() {
                Some(replay) => replay.graph.take(index).map_err(FetchError::from),
                None => Err(FetchError::NoReplayer),
            },
        };
        match lines {
            Ok(lines) => answer(registry, fetch.request, Some(lines)).await,
            Err(error) => fail(registry, fetch.request, &error).await,
        }
    }
    if !fetches.iter().any(|f| matches!(f.route, Route::Replay(_))) {
        *replay = None; // Its graph serves nobody now.
    }
}

/// A sweep's consumer, started again (a bounded number of times) after a
/// failed pull or a lost batch.
struct Reader {
    /// The consumer.
    messages: async_nats::jetstream::consumer::pull::Stream,
    /// The stream sequence of the next message wanted.
    expected: u64,
    /// How often it has started again.
    restarts: u32,
}

impl Reader {
    /// A consumer from stream sequence `first` on.
    async fn start(log: &Log, first: u64) -> Result<Reader, FetchError> {
        Ok(Reader {
            messages: log.read_from(first).await?,
            expected: first,
            restarts: 0,
        })
    }

    /// The next message at or after `expected`, with its stream sequence:
    /// `None` if the read started again (call again). A sequence above
    /// `expected` means the messages between are gone from the stream.
    async fn next(
        &mut self,
        log: &Log,
    ) -> Result<Option<(u64, async_nats::jetstream::Message)>, FetchError> {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, self.messages.next()).await;
        let message = match next {
            Ok(Some(Ok(message))) => message,
            // A pull that failed or came back short (a busy server, a lost
            // batch): read again from where we are, a bounded number of
            // times.
            Ok(Some(Err(_))) | Ok(None) | Err(_) if self.restarts < MAX_READ_RESTARTS => {
                return self.restart(log).await;
            }
            Ok(Some(Err(error))) => return Err(FetchError::Consumer(error.into())),
            Ok(None) => return Err(FetchError::ConsumerEnded),
            Err(_) => return Err(FetchError::Late(self.expected)),
        };
        let stream_seq = message
            .info()
            .map_err(FetchError::NoMetadata)?
            .stream_sequence;
        if stream_seq < self.expected {
            // A redelivery of something already read: skip it.
            return Ok(None);
        }
        if stream_seq > self.expected {
            // Retention dropped `expected`, or a batch on its way was lost
            // (the consumer does not ask for acks): the stream tells which.
            let (first, _) = log.sequences().await?;
            if first <= self.expected && self.restarts < MAX_READ_RESTARTS {
                return self.restart(log).await;
            }
        }
        Ok(Some((stream_seq, message)))
    }

    /// Starts the read again from `expected`.
    async fn restart(
        &mut self,
        log: &Log,
    ) -> Result<Option<(u64, async_nats::jetstream::Message)>, FetchError> {
        self.restarts += 1;
        self.messages = log.read_from(self.expected).await?;
        Ok(None)
    }
}

/// Removes and returns the fetches `done` picks.
fn extract(fetches: &mut Vec<Fetch>, done: impl Fn(&Fetch) -> bool) -> Vec<Fetch> {
    let (picked, kept): (Vec<Fetch>, Vec<Fetch>) =
        std::mem::take(fetches).into_iter().partition(done);
    *fetches = kept;
    picked
}

/// Answers `request` with `#GAP`, saying why in the log.
async fn fail(registry: &RegistryHandle, request: FetchRequest, error: &FetchError) {
    tracing::warn!(
        user = request.resume.user,
        after = request.resume.after,
        upto = request.resume.upto,
        %error,
        "cannot resume from the stream: the client gets #GAP"
    );
    answer(registry, request, None).await;
}

/// Hands the fetched lines (`None`: the fetch failed) back to the
/// registry. If the registry is gone (shutdown), the client's outbox is
/// closed instead, so its writer ends at once.
async fn answer(registry: &RegistryHandle, request: FetchRequest, lines: Option<Vec<u8>>) {
    let writer = Arc::clone(&request.resume.outbox);
    let resumed = Command::Resumed(Resumed {
        resume: request.resume,
        lines,
    });
    if registry.send(resumed).await.is_err() {
        writer.close(Closed::Drain);
    }
}
