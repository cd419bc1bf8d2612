//! Follower-graph snapshots: the state after one stream message, so that a
//! new gateway (or a restarted sequencer) replays only the stream after it.
//!
//! Format (integers little-endian), pure and tested here:
//!
//! ```text
//! "FMSNAP1\n"          magic
//! u64 stream_seq       JetStream sequence of the last message applied (0: none)
//! u64 position         last event sequence applied (0: none)
//! u8  len, len bytes   stream id
//! u64 edges            then edges × (u64 from, u64 to)
//! ```
//!
//! The sequencer puts it as one object in the `<natsStream>_SNAPSHOTS`
//! object store (chunked by NATS, so a graph of millions of edges fits),
//! replacing the previous one.

use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{EventKind, Seq};
use tokio::io::AsyncReadExt;

use crate::jetstream::{Log, SNAPSHOT_OBJECT};
use crate::router::Router;

/// First bytes of every snapshot.
const MAGIC: &[u8; 8] = b"FMSNAP1\n";

/// Bytes before the edges, at most: magic, two u64, the id, the count.
const HEADER_BYTES: usize = 8 + 8 + 8 + 1 + 32 + 8;

/// The graph after one stream message.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// JetStream sequence of the last message applied: replay from the
    /// next one.
    pub stream_seq: u64,
    /// Last event sequence applied: the registry's position.
    pub position: Seq,
    /// The sequence space's id.
    pub stream: StreamId,
    /// The follower graph.
    pub graph: Router,
}

/// Encodes the state `graph` reached after `stream_seq`.
pub(crate) fn encode(stream_seq: u64, position: Seq, stream: StreamId, graph: &Router) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + graph.edges() * 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stream_seq.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.push(stream.as_bytes().len() as u8);
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(&(graph.edges() as u64).to_le_bytes());
    for (from, to) in graph.edge_list() {
        out.extend_from_slice(&from.to_le_bytes());
        out.extend_from_slice(&to.to_le_bytes());
    }
    out
}

/// Decodes a snapshot into a graph bounded by `max_edges`; says what is
/// wrong with anything else.
pub(crate) fn decode(bytes: &[u8], max_edges: usize) -> Result<Snapshot, String> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(format!("truncated snapshot ({} bytes)", bytes.len()));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let u64_of = |slice: &[u8]| u64::from_le_bytes(slice.try_into().expect("8 bytes taken"));
    if take(8)? != MAGIC {
        return Err("not a followermaze snapshot".into());
    }
    let stream_seq = u64_of(take(8)?);
    let position = u64_of(take(8)?);
    let len = take(1)?[0] as usize;
    let stream = StreamId::parse(take(len)?).map_err(|_| "bad stream id in snapshot")?;
    let edges = u64_of(take(8)?);
    let mut graph = Router::new(max_edges);
    for _ in 0..edges {
        let from = u64_of(take(8)?);
        let to = u64_of(take(8)?);
        graph.apply(EventKind::Follow { from, to });
    }
    if !rest.is_empty() {
        return Err("trailing bytes after the snapshot's edges".into());
    }
    Ok(Snapshot {
        stream_seq,
        position,
        stream,
        graph,
    })
}

/// Writes `bytes` as the latest snapshot.
pub(crate) async fn save(log: &Log, bytes: Vec<u8>) -> Result<(), String> {
    log.snapshots
        .put(SNAPSHOT_OBJECT, &mut bytes.as_slice())
        .await
        .map(|_| ())
        .map_err(|error| format!("put snapshot: {error}"))
}

/// Reads the latest snapshot, `None` if there is none yet. Reads at most
/// what a graph of `max_edges` edges takes, so a foreign object cannot
/// make us buffer without bound.
pub(crate) async fn load(log: &Log, max_edges: usize) -> Result<Option<Snapshot>, String> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let object = match log.snapshots.get(SNAPSHOT_OBJECT).await {
        Ok(object) => object,
        Err(error) if error.kind() == GetErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("get snapshot: {error}")),
    };
    let limit = (HEADER_BYTES + max_edges.saturating_mul(16)) as u64;
    let mut bytes = Vec::new();
    object
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|error| format!("read snapshot: {error}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("snapshot larger than {limit} bytes"));
    }
    // Rebuilding a graph of millions of edges takes a while: off the
    // runtime's workers, which serve clients meanwhile (a gateway reloads
    // a snapshot when it falls behind the stream).
    tokio::task::spawn_blocking(move || decode(&bytes, max_edges))
        .await
        .map_err(|error| format!("decode snapshot: {error}"))?
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_the_graph() {
        let mut graph = Router::new(100);
        for (from, to) in [(1, 2), (3, 2), (2, 1), (9, 8)] {
            graph.apply(EventKind::Follow { from, to });
        }
        graph.apply(EventKind::Unfollow { from: 9, to: 8 });
        let stream = StreamId::parse(b"k3j9x0").unwrap();
        let bytes = encode(42, 1234, stream, &graph);
        let snapshot = decode(&bytes, 100).unwrap();
        assert_eq!((snapshot.stream_seq, snapshot.position), (42, 1234));
        assert_eq!(snapshot.stream, stream);
        assert_eq!(snapshot.graph.edges(), 3);
        assert!(snapshot.graph.follows(1, 2) && snapshot.graph.follows(3, 2));
        assert!(snapshot.graph.follows(2, 1) && !snapshot.graph.follows(9, 8));
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let graph = Router::new(10);
        let stream = StreamId::parse(b"abc").unwrap();
        let bytes = encode(1, 1, stream, &graph);
        assert!(decode(&bytes[..bytes.len() - 1], 10).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 10).is_err());
        assert!(decode(b"garbage!", 10).is_err());
    }
}
