//! The follower-graph snapshot in the cluster's object-store bucket: the
//! sequencer saves one every `snapshotIntervalSecs`, a gateway loads the
//! latest to start from. The format is `graph::snapshot`'s.

use async_nats::jetstream::object_store::{GetError, PutError};
use tokio::io::AsyncReadExt;

use crate::cluster::jetstream::{Log, REQUEST_TIMEOUT, SNAPSHOT_OBJECT};
use crate::graph::snapshot::{decode, DecodeError, Snapshot, HEADER_BYTES};

/// Why a snapshot could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// Writing it failed.
    #[error("put snapshot: {0}")]
    Put(#[source] PutError),
    /// Opening it failed.
    #[error("get snapshot: {0}")]
    Get(#[source] GetError),
    /// Opening or reading it got no answer in time.
    #[error("get snapshot: no answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// Reading it failed.
    #[error("read snapshot: {0}")]
    Read(#[source] std::io::Error),
    /// The reading task failed (async-nats panicked).
    #[error("read snapshot: {0}")]
    Reader(#[source] tokio::task::JoinError),
    /// It is larger than a graph of `maxFollowEdges` edges.
    #[error("snapshot larger than {0} bytes")]
    TooLarge(u64),
    /// It is not a snapshot.
    #[error("decode snapshot: {0}")]
    Decode(#[source] DecodeError),
    /// The decoding thread failed.
    #[error("decode snapshot: {0}")]
    Decoder(#[source] tokio::task::JoinError),
}

/// Longest a snapshot's read may take (64 MiB, a graph of 4 M edges, takes
/// about a second).
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes `bytes` as the latest snapshot.
pub(crate) async fn save(log: &Log, bytes: Vec<u8>) -> Result<(), SnapshotError> {
    log.snapshots
        .put(SNAPSHOT_OBJECT, &mut bytes.as_slice())
        .await
        .map(|_| ())
        .map_err(SnapshotError::Put)
}

/// Reads the latest snapshot, `None` if there is none yet. Reads at most
/// what a graph of `max_edges` edges takes, so a foreign object cannot
/// make us buffer without bound.
pub(crate) async fn load(log: &Log, max_edges: usize) -> Result<Option<Snapshot>, SnapshotError> {
    use async_nats::jetstream::object_store::GetErrorKind;
    // Bounded: a direct get can go unanswered (the bucket of a NATS
    // cluster just created, its replicas not serving yet) for the client's
    // whole 10 s request timeout.
    let get = tokio::time::timeout(REQUEST_TIMEOUT, log.snapshots.get(SNAPSHOT_OBJECT));
    let object = match get.await {
        Ok(Ok(object)) => object,
        Ok(Err(error)) if error.kind() == GetErrorKind::NotFound => return Ok(None),
        Ok(Err(error)) => return Err(SnapshotError::Get(error)),
        Err(_) => return Err(SnapshotError::TimedOut(REQUEST_TIMEOUT)),
    };
    let limit = (HEADER_BYTES + max_edges.saturating_mul(16)) as u64;
    // On a task of its own, bounded: async-nats reads the chunks through
    // a consumer it creates with `unwrap()`, so a creation that fails (a
    // bucket just created, or its consumer placed on a NATS server that
    // just died) panics, and one that goes unanswered would wait for ever.
    let read = tokio::spawn(async move {
        let mut bytes = Vec::new();
        object
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map(|_| bytes)
    });
    let abort = read.abort_handle();
    let bytes = match tokio::time::timeout(READ_PATIENCE, read).await {
        Ok(Ok(Ok(bytes))) => bytes,
        Ok(Ok(Err(error))) => return Err(SnapshotError::Read(error)),
        Ok(Err(error)) => return Err(SnapshotError::Reader(error)),
        Err(_) => {
            abort.abort();
            return Err(SnapshotError::TimedOut(READ_PATIENCE));
        }
    };
    if bytes.len() as u64 > limit {
        return Err(SnapshotError::TooLarge(limit));
    }
    // Rebuilding a graph of millions of edges takes a while: off the
    // runtime's workers, which serve clients meanwhile (a gateway reloads
    // a snapshot when it falls behind the stream).
    tokio::task::spawn_blocking(move || decode(&bytes, max_edges))
        .await
        .map_err(SnapshotError::Decoder)?
        .map(Some)
        .map_err(SnapshotError::Decode)
}
