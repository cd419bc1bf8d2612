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
//! replacing the previous one; that is `cluster::snapshots`.

use followermaze_protocol::resume::StreamId;
use followermaze_protocol::{EventKind, Seq};

use crate::graph::router::Router;

/// First bytes of every snapshot.
const MAGIC: &[u8; 8] = b"FMSNAP1\n";

/// Bytes before the edges, at most: magic, two u64, the id, the count.
pub(crate) const HEADER_BYTES: usize = 8 + 8 + 8 + 1 + 32 + 8;

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

/// What is wrong with bytes that are not a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// They end before the snapshot does.
    #[error("truncated snapshot ({0} bytes)")]
    Truncated(usize),
    /// They do not start with the magic.
    #[error("not a followermaze snapshot")]
    NotASnapshot,
    /// The stream id is not one.
    #[error("bad stream id in snapshot")]
    BadStreamId,
    /// Bytes follow the last edge.
    #[error("trailing bytes after the snapshot's edges")]
    TrailingBytes,
}

/// Decodes a snapshot into a graph bounded by `max_edges`; says what is
/// wrong with anything else.
pub(crate) fn decode(bytes: &[u8], max_edges: usize) -> Result<Snapshot, DecodeError> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], DecodeError> {
        if rest.len() < n {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let u64_of = |slice: &[u8]| u64::from_le_bytes(slice.try_into().expect("8 bytes taken"));
    if take(8)? != MAGIC {
        return Err(DecodeError::NotASnapshot);
    }
    let stream_seq = u64_of(take(8)?);
    let position = u64_of(take(8)?);
    let len = take(1)?[0] as usize;
    let stream = StreamId::parse(take(len)?).map_err(|_| DecodeError::BadStreamId)?;
    let edges = u64_of(take(8)?);
    let mut graph = Router::new(max_edges);
    for _ in 0..edges {
        let from = u64_of(take(8)?);
        let to = u64_of(take(8)?);
        graph.apply(EventKind::Follow { from, to });
    }
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Snapshot {
        stream_seq,
        position,
        stream,
        graph,
    })
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
