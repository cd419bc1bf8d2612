//! The fetcher: step 2 of a resume from the stream (the steps are in
//! `resume::history`). It reads the stream messages a resume needs, keeps
//! the lines that concern its user, and hands them back to the registry,
//! which never waits on NATS itself.
//!
//! Requests are served in *sweeps*: one read of the stream, from the
//! earliest message any of them needs to the latest, shared by every
//! request that was queued when the sweep began (a burst of resumes after
//! a gateway's death reads the stream once, not once per client), on the
//! fetcher's own NATS connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::cluster::jetstream::{self, DecodeError, Log, LogError, REQUEST_TIMEOUT};
use crate::fanout::command::{Command, FetchRequest, Resumed};
use crate::fanout::outbox::Closed;
use crate::fanout::RegistryHandle;
use crate::resume::history::{keep, OverBound, UserRouter};

/// Fetch requests that may wait for the fetcher; beyond, the resume gets
/// its local verdict (`#GAP`) at once rather than wait.
pub(crate) const FETCH_QUEUE: usize = 64;

/// Sweeps of the stream running at once, each through its own consumer.
/// Every request that queued while they were busy joins the next sweep.
const CONCURRENT_SWEEPS: usize = 4;

/// Longest one sweep may take, all its messages included; the requests it
/// has not answered by then get `#GAP`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// The fetcher task: serves requests until the registry drops its sender,
/// answering each with [`Command::Resumed`]. At most [`CONCURRENT_SWEEPS`]
/// run at once.
pub(crate) async fn serve(
    log: Log,
    mut requests: mpsc::Receiver<FetchRequest>,
    registry: RegistryHandle,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_SWEEPS));
    let mut sweeps = JoinSet::new();
    while let Some(first) = requests.recv().await {
        while sweeps.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break; // Never closed; nothing to serve with.
        };
        // What queued meanwhile joins: at most the queue's bound.
        let mut group = vec![first];
        while let Ok(request) = requests.try_recv() {
            group.push(request);
        }
        let (log, registry) = (log.clone(), registry.clone());
        sweeps.spawn(async move {
            sweep(&log, group, &registry).await;
            drop(slot);
        });
    }
    // Each is bounded by FETCH_TIMEOUT, and answers or closes its clients.
    while sweeps.join_next().await.is_some() {}
}

/// One request of a sweep, with what it has kept so far.
struct Fetch {
    /// The request.
    request: FetchRequest,
    /// Its user's routing, kept in step with the messages read.
    router: UserRouter,
    /// The lines kept so far.
    lines: Vec<u8>,
}

/// Reads the union of the group's ranges once and answers each request as
/// soon as its last message is read, or as soon as it fails; whatever is
/// left when [`FETCH_TIMEOUT`] passes gets `#GAP`.
async fn sweep(log: &Log, group: Vec<FetchRequest>, registry: &RegistryHandle) {
    let mut fetches: Vec<Fetch> = group
        .into_iter()
        .map(|request| Fetch {
            router: UserRouter::new(request.resume.user, &request.plan),
            request,
            lines: Vec::new(),
        })
        .collect();
    let read = tokio::time::timeout(FETCH_TIMEOUT, read(log, &mut fetches, registry)).await;
    let error = match read {
        Ok(Ok(())) => return, // Every request answered.
        Ok(Err(error)) => error,
        Err(_) => FetchError::TimedOut,
    };
    for fetch in fetches {
        fail(registry, fetch.request, &error).await;
    }
}

/// The sweep's read: answers and removes each request of `fetches` as it
/// completes or fails; `Err` fails the rest.
async fn read(
    log: &Log,
    fetches: &mut Vec<Fetch>,
    registry: &RegistryHandle,
) -> Result<(), FetchError> {
    let (Some(first), Some(last)) = (
        fetches.iter().map(|f| f.request.plan.first_message).min(),
        fetches.iter().map(|f| f.request.plan.last_message).max(),
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
            for fetch in extract(fetches, |f| f.request.plan.first_message < stream_seq) {
                fail(registry, fetch.request, &error).await;
            }
        }
        reader.expected = stream_seq + 1;
        let entry =
            jetstream::decode(message.headers.as_ref(), &message.payload).map_err(|source| {
                FetchError::Decode {
                    seq: stream_seq,
                    source,
                }
            })?;
        keep_lines(fetches, stream_seq, &entry, registry).await;
    }
    Ok(())
}

/// Hands the events of message `stream_seq` to every fetch whose range
/// holds it; fails those that cannot go on, answers those it completes.
async fn keep_lines(
    fetches: &mut Vec<Fetch>,
    stream_seq: u64,
    entry: &jetstream::Entry,
    registry: &RegistryHandle,
) {
    let mut failed = Vec::new();
    for (index, fetch) in fetches.iter_mut().enumerate() {
        let plan = &fetch.request.plan;
        if stream_seq < plan.first_message || stream_seq > plan.last_message {
            continue;
        }
        let resume = &fetch.request.resume;
        let kept = if entry.stream != resume.stream {
            Err(FetchError::OtherStream(stream_seq))
        } else {
            let range = (resume.after, resume.upto);
            let max = fetch.request.max_bytes;
            keep(
                &mut fetch.router,
                &entry.events,
                range,
                max,
                &mut fetch.lines,
            )
            .map_err(FetchError::from)
        };
        if let Err(error) = kept {
            failed.push((index, error));
        }
    }
    for (index, error) in failed.into_iter().rev() {
        fail(registry, fetches.swap_remove(index).request, &error).await;
    }
    for fetch in extract(fetches, |f| f.request.plan.last_message <= stream_seq) {
        answer(registry, fetch.request, Some(fetch.lines)).await;
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
