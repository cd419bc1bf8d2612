//! Cluster: the sequencer and gateway roles' NATS JetStream half. The
//! stream is the ordered log between one sequencer and many gateways.
//!
//! - `jetstream`: the connection, the stream and its message format, the
//!   snapshot bucket.
//! - `publisher`: the sequencer role's sink: batches into acked messages,
//!   a bounded window, recovery after NATS failures, snapshots.
//! - `snapshots`: the follower-graph snapshot saved to and loaded from the
//!   bucket (the codec is `graph::snapshot`).
//! - `gateway`: the gateway role's producer: stream messages back into
//!   ordered batches for the registry.
//! - `fetcher`: the task that reads a resume's missed lines from the
//!   stream (what to read, and how to route it, is `resume::history`'s).
//!
//! Uses `fanout` (the registry's handle and messages), `resume`, `graph`,
//! `ops`, `batch`, `settings`.

pub(crate) mod fetcher;
pub(crate) mod gateway;
pub(crate) mod jetstream;
pub(crate) mod publisher;
pub(crate) mod snapshots;
