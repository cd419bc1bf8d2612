//! The follower-graph snapshots in the cluster's object-store bucket: the
//! sequencer saves one every `snapshotIntervalSecs`; a gateway loads the
//! latest to start from, and a deep resume the newest at or before the
//! position its client received up to (`resume::history`). The format is
//! `graph::snapshot`'s.
//!
//! The bucket holds a fixed ring of *slots*, objects `graph.0` to
//! `graph.<kept - 1>`, each put over the slot holding the oldest snapshot,
//! so the bucket never grows (a deleted object would leave a marker behind
//! for ever) and keeps the newest `kept` snapshots, as many as the resume
//! window needs ([`kept_for`]). Each slot names what it holds in its
//! metadata ([`Mark`]), so choosing one costs a listing, not a download.
//!
//! A snapshot being overwritten while a resume reads it fails that read
//! (the resume gets `#GAP`); it is always the oldest slot, which only the
//! deepest resumes need.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, GetError, ObjectMetadata, PutError};
use followermaze_protocol::resume::StreamId;
use followermaze_protocol::Seq;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::cluster::jetstream::{Log, REQUEST_TIMEOUT};
use crate::graph::snapshot::{decode, DecodeError, Snapshot, HEADER_BYTES};

/// Why a snapshot could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    /// Writing it failed.
    #[error("put snapshot: {0}")]
    Put(#[source] PutError),
    /// Listing the bucket failed.
    #[error("list snapshots: {0}")]
    List(#[source] async_nats::Error),
    /// Opening it failed.
    #[error("get snapshot: {0}")]
    Get(#[source] GetError),
    /// Opening, listing or reading got no answer in time.
    #[error("snapshot: no answer within {0:?}")]
    TimedOut(Duration),
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
    /// It is not the one its slot's metadata named (overwritten meanwhile).
    #[error("slot {0} changed while it was read")]
    Changed(String),
}

/// Longest a snapshot's read may take (64 MiB, a graph of 4 M edges, takes
/// about a second).
const READ_PATIENCE: Duration = Duration::from_secs(60);

/// Most objects a listing reads: the slots, and room for a few foreign or
/// older ones (a bucket written by a build with more slots).
const MAX_LISTED: usize = 64;

/// Most slots kept, whatever the window asks: a bound on the bucket.
pub(crate) const MAX_KEPT: usize = 32;

/// Prefix of a slot's object name.
const SLOT_PREFIX: &str = "graph.";

/// What a snapshot is of: stored in its object's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// JetStream sequence of the last message applied.
    pub stream_seq: u64,
    /// Last event sequence applied.
    pub position: Seq,
    /// The sequence space.
    pub stream: StreamId,
}

impl Mark {
    /// Metadata keys.
    const STREAM_SEQ: &'static str = "stream_seq";
    const POSITION: &'static str = "position";
    const STREAM: &'static str = "stream";

    fn to_metadata(self) -> HashMap<String, String> {
        HashMap::from([
            (Self::STREAM_SEQ.into(), self.stream_seq.to_string()),
            (Self::POSITION.into(), self.position.to_string()),
            (Self::STREAM.into(), self.stream.as_str().into()),
        ])
    }

    /// The mark in an object's metadata; `None` if it is not one of ours.
    fn from_metadata(metadata: &HashMap<String, String>) -> Option<Mark> {
        Some(Mark {
            stream_seq: metadata.get(Self::STREAM_SEQ)?.parse().ok()?,
            position: metadata.get(Self::POSITION)?.parse().ok()?,
            stream: StreamId::parse(metadata.get(Self::STREAM)?.as_bytes()).ok()?,
        })
    }
}

/// How many snapshots to keep so that a resume from `window_secs` back
/// finds one at or before it, at one snapshot every `interval_secs`: the
/// window's worth, one older than the window, and one being written.
pub(crate) fn kept_for(window_secs: u64, interval_secs: u64) -> usize {
    let per_window = window_secs.div_ceil(interval_secs.max(1));
    usize::try_from(per_window.saturating_add(2))
        .unwrap_or(MAX_KEPT)
        .min(MAX_KEPT)
}

/// One stored slot: its object name and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    name: String,
    mark: Mark,
}

/// The slot name to put a new snapshot in, given the stored `slots`: the
/// first of the `kept` names unused, or else the one holding the oldest
/// snapshot.
fn slot_to_write(slots: &[Slot], kept: usize) -> String {
    let kept = kept.clamp(1, MAX_KEPT);
    let names = (0..kept).map(|index| format!("{SLOT_PREFIX}{index}"));
    let mut oldest: Option<&Slot> = None;
    for name in names {
        let Some(slot) = slots.iter().find(|slot| slot.name == name) else {
            return name;
        };
        match oldest {
            Some(old) if old.mark.stream_seq <= slot.mark.stream_seq => {}
            _ => oldest = Some(slot),
        }
    }
    oldest.map_or_else(|| format!("{SLOT_PREFIX}0"), |slot| slot.name.clone())
}

/// The newest of `slots` that `fits`.
fn newest(slots: Vec<Slot>, fits: impl Fn(&Mark) -> bool) -> Option<Slot> {
    slots
        .into_iter()
        .filter(|slot| fits(&slot.mark))
        .max_by_key(|slot| slot.mark.stream_seq)
}

/// Writes `bytes`, the snapshot `mark` names, over the oldest of `kept`
/// slots.
pub(crate) async fn save(
    log: &Log,
    bytes: Vec<u8>,
    mark: Mark,
    kept: usize,
) -> Result<(), SnapshotError> {
    let name = slot_to_write(&list(log).await?, kept);
    let meta = ObjectMetadata {
        name,
        metadata: mark.to_metadata(),
        ..ObjectMetadata::default()
    };
    log.snapshots
        .put(meta, &mut bytes.as_slice())
        .await
        .map(|_| ())
        .map_err(SnapshotError::Put)
}

/// Every slot in the bucket (at most [`MAX_LISTED`] objects read).
async fn list(log: &Log) -> Result<Vec<Slot>, SnapshotError> {
    let listing = async {
        let mut infos = log
            .snapshots
            .list()
            .await
            .map_err(|error| SnapshotError::List(error.into()))?
            .take(MAX_LISTED);
        let mut slots = Vec::new();
        while let Some(info) = infos.next().await {
            let info = info.map_err(|error| SnapshotError::List(error.into()))?;
            if !info.name.starts_with(SLOT_PREFIX) {
                continue; // Not ours (an older build's single object, say).
            }
            if let Some(mark) = Mark::from_metadata(&info.metadata) {
                slots.push(Slot {
                    name: info.name,
                    mark,
                });
            }
        }
        Ok(slots)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, listing)
        .await
        .unwrap_or(Err(SnapshotError::TimedOut(REQUEST_TIMEOUT)))
}

/// Reads the latest snapshot, `None` if there is none yet. Reads at most
/// what a graph of `max_edges` edges takes, so a foreign object cannot
/// make us buffer without bound.
pub(crate) async fn load(log: &Log, max_edges: usize) -> Result<Option<Snapshot>, SnapshotError> {
    match newest(list(log).await?, |_| true) {
        Some(slot) => read(log, &slot, max_edges).await.map(Some),
        None => Ok(None),
    }
}

/// Reads the newest snapshot of `stream` at or before `position`, `None`
/// if the bucket keeps none that old.
pub(crate) async fn load_at_or_before(
    log: &Log,
    stream: StreamId,
    position: Seq,
    max_edges: usize,
) -> Result<Option<Snapshot>, SnapshotError> {
    let fits = |mark: &Mark| mark.stream == stream && mark.position <= position;
    match newest(list(log).await?, fits) {
        Some(slot) => read(log, &slot, max_edges).await.map(Some),
        None => Ok(None),
    }
}

/// Reads and decodes the snapshot in `slot`.
async fn read(log: &Log, slot: &Slot, max_edges: usize) -> Result<Snapshot, SnapshotError> {
    // Bounded: a direct get can go unanswered (the bucket of a NATS
    // cluster just created, its replicas not serving yet) for the client's
    // whole 10 s request timeout.
    let get = tokio::time::timeout(REQUEST_TIMEOUT, log.snapshots.get(&slot.name));
    let object = match get.await {
        Ok(Ok(object)) => object,
        Ok(Err(error)) => return Err(SnapshotError::Get(error)),
        Err(_) => return Err(SnapshotError::TimedOut(REQUEST_TIMEOUT)),
    };
    let limit = (HEADER_BYTES + max_edges.saturating_mul(16)) as u64;
    let bytes = read_bounded(object, limit).await?;
    // Rebuilding a graph of millions of edges takes a while: off the
    // runtime's workers, which serve clients meanwhile (a gateway reloads
    // a snapshot when it falls behind the stream).
    let snapshot = tokio::task::spawn_blocking(move || decode(&bytes, max_edges))
        .await
        .map_err(SnapshotError::Decoder)?
        .map_err(SnapshotError::Decode)?;
    let mark = Mark {
        stream_seq: snapshot.stream_seq,
        position: snapshot.position,
        stream: snapshot.stream,
    };
    if mark != slot.mark {
        return Err(SnapshotError::Changed(slot.name.clone()));
    }
    Ok(snapshot)
}

/// The object's bytes, at most `limit` of them.
async fn read_bounded(object: object_store::Object, limit: u64) -> Result<Vec<u8>, SnapshotError> {
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
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(index: usize, stream_seq: u64, position: Seq, stream: &[u8]) -> Slot {
        Slot {
            name: format!("{SLOT_PREFIX}{index}"),
            mark: Mark {
                stream_seq,
                position,
                stream: StreamId::parse(stream).unwrap(),
            },
        }
    }

    #[test]
    fn the_window_decides_how_many_are_kept() {
        assert_eq!(kept_for(30, 10), 5);
        assert_eq!(kept_for(31, 10), 6);
        assert_eq!(kept_for(0, 10), 2);
        assert_eq!(kept_for(30, 0), MAX_KEPT);
        assert_eq!(kept_for(3600, 1), MAX_KEPT);
    }

    #[test]
    fn a_new_snapshot_takes_a_free_slot_then_the_oldest() {
        assert_eq!(slot_to_write(&[], 3), "graph.0");
        let slots = [slot(0, 10, 100, b"a"), slot(2, 30, 300, b"a")];
        assert_eq!(slot_to_write(&slots, 3), "graph.1");
        let slots = [
            slot(0, 40, 400, b"a"),
            slot(1, 20, 200, b"a"),
            slot(2, 30, 300, b"a"),
        ];
        assert_eq!(slot_to_write(&slots, 3), "graph.1");
        // Slots beyond `kept` (an earlier, larger setting) are left alone.
        let slots = [slot(0, 40, 400, b"a"), slot(5, 1, 1, b"a")];
        assert_eq!(slot_to_write(&slots, 1), "graph.0");
    }

    #[test]
    fn the_newest_at_or_before_a_position_of_the_stream_is_chosen() {
        let slots = vec![
            slot(0, 10, 100, b"a"),
            slot(1, 20, 200, b"a"),
            slot(2, 30, 5, b"b"),
            slot(3, 25, 250, b"a"),
        ];
        let a = StreamId::parse(b"a").unwrap();
        let at_or_before = |position: Seq| {
            newest(slots.clone(), |mark| {
                mark.stream == a && mark.position <= position
            })
            .map(|slot| slot.mark.stream_seq)
        };
        assert_eq!(at_or_before(99), None);
        assert_eq!(at_or_before(100), Some(10));
        assert_eq!(at_or_before(249), Some(20));
        assert_eq!(at_or_before(1000), Some(25));
        assert_eq!(newest(slots, |_| true).map(|s| s.mark.stream_seq), Some(30));
    }

    #[test]
    fn a_mark_survives_the_metadata_and_foreign_metadata_is_none() {
        let mark = slot(0, 7, 9, b"xyz").mark;
        assert_eq!(Mark::from_metadata(&mark.to_metadata()), Some(mark));
        assert_eq!(Mark::from_metadata(&HashMap::new()), None);
        let mut bad = mark.to_metadata();
        bad.insert("position".into(), "-1".into());
        assert_eq!(Mark::from_metadata(&bad), None);
    }
}
