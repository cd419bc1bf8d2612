//! followermaze: an event fan-out server for the follower-maze protocol.
//!
//! One event source streams numbered events, out of order; many user clients
//! each announce a user id; every event is forwarded, byte for byte, to the
//! clients it concerns, in sequence order, with memory bounded however long
//! the stream runs.
//!
//! ```text
//! source sockets --> source --> sequencer --> registry --> outbox --> client sockets
//!                  (parse)   (reorder, gaps)  (graph, fan-out)     (one writer each)
//! ```
//!
//! The registry consumes one thing from upstream: [`batch::OrderedBatch`],
//! events in strictly increasing sequence order with a new-stream mark.
//! That is the seam for scale-out: today the sequencer produces the
//! batches; a consumer of an ordered log could produce the same ones.
//!
//! # Layout
//!
//! Pure logic (no I/O, unit-tested and benchmarked directly):
//! - [`batch`]: the seam: ordered batches, and what a producer promises.
//! - [`lines`]: line framing over a read buffer, with a line-length bound.
//! - [`reorder`]: the sliding window that puts sequence numbers in order.
//! - [`gap`]: how long to wait for a missing event before skipping it.
//! - [`router`]: the follower graph; apply an event, get its audience.
//! - [`online`]: who is connected, with a filter for fast "no".
//! - [`reach`]: each user's online followers, the audience of its status
//!   updates in one lookup.
//! - [`outbox`]: the byte hand-off between the registry and one writer.
//! - [`stats`]: shared counters and a log-line rate limiter.
//!
//! Tasks and sockets:
//! - [`source`]: event source connections: read, frame, parse.
//! - [`sequencer`]: owns the reorder window and the gap deadline.
//! - [`registry`]: the actor that owns the graph and the connected clients.
//! - [`client`]: client handshakes and per-connection writers.
//! - [`accept`]: accept loops that survive running out of descriptors.
//! - [`server`]: wiring, [`run`], and orderly shutdown.
//! - [`metrics`]: the HTTP endpoint: `/metrics` (Prometheus) and `/healthz`.
//! - [`summary`]: a periodic one-line summary of the counters in the log.
//! - [`config`]: settings from environment variables.

pub mod accept;
pub mod batch;
pub mod client;
pub mod config;
pub mod gap;
pub mod lines;
pub mod metrics;
pub mod online;
pub mod outbox;
pub mod reach;
pub mod registry;
pub mod reorder;
pub mod router;
pub mod sequencer;
pub mod server;
pub mod source;
pub mod stats;
pub mod summary;

pub use config::Config;
pub use server::{run, run_with_stats, Listeners};
