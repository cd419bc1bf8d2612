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
//! That is the seam for scale-out: standalone, the sequencer produces the
//! batches; in a cluster, a gateway's JetStream consumer produces the same
//! ones from the stream the sequencer publishes.
//!
//! # Layout
//!
//! Linked modules are public: the pure logic that the benchmarks, the fuzz
//! target and the tests drive directly, and the settings table. The rest is
//! private; the crate root re-exports the few types a user needs: [`run`],
//! [`run_with_stats`], [`Listeners`], [`Config`], [`Stats`] (and
//! [`Registry`] for the dispatch benchmark).
//!
//! Pure logic (no I/O, unit-tested and benchmarked directly):
//! - [`batch`]: the seam: ordered batches, and what a producer promises.
//! - [`lines`]: line framing over a read buffer, with a line-length bound,
//!   and `read_events`, where framing meets parsing (one pass a line).
//! - [`reorder`]: the sliding window that puts sequence numbers in order.
//! - `gap`: how long to wait for a missing event before skipping it.
//! - [`router`]: the follower graph; apply an event, get its audience.
//! - `online`: who is connected, with a filter for fast "no".
//! - `reach`: each user's online followers, the audience of its status
//!   updates in one lookup.
//! - `retention`: resumable sessions' retained lines, stored once, bounded
//!   per session and in total.
//! - [`outbox`]: the byte hand-off between the registry and one writer.
//! - `stats`: shared counters ([`Stats`]) and a log-line rate limiter.
//!
//! Tasks and sockets:
//! - `source`: event source connections: read, frame, parse.
//! - `sequencer`: owns the reorder window and the gap deadline; produces
//!   the ordered batches.
//! - `registry`: the actor that owns the graph and the connected clients;
//!   consumes the ordered batches.
//! - `session`: resumable sessions: verdicts, lifetimes, checkpoints.
//! - `client`: client handshakes and per-connection writers.
//! - `accept`: accept loops that survive running out of descriptors.
//! - `server`: wiring, [`run`], and orderly shutdown, step by step.
//!
//! Cluster roles (`role=sequencer|gateway`, over NATS JetStream):
//! - `sink`: where the sequencer's batches go: the registry, or the
//!   publisher. The seam seen from upstream.
//! - `jetstream`: the stream, its message format, the snapshot bucket.
//! - `publisher`: the sequencer role's sink: batches into acked messages,
//!   a bounded window, recovery after NATS failures, snapshots.
//! - `snapshot`: the follower graph after one stream message, encoded.
//! - `gateway`: the gateway role's producer: stream messages back into
//!   ordered batches for the registry.
//! - `history`: resuming a session on another gateway: what the registry
//!   records to plan it, and the task that reads the missed lines from the
//!   stream.
//! - `cluster`: wiring of the two roles, [`run_sequencer`] and
//!   [`run_gateway`].
//! - `metrics`: the HTTP endpoint: `/metrics` (Prometheus), `/healthz` and
//!   `/readyz`.
//! - `summary`: a periodic one-line summary of the counters in the log.
//! - [`config`]: settings from environment variables.

// Public: the pure logic that the benches, the fuzz target and the tests
// drive directly, and the settings table the binary prints.
pub mod batch;
pub mod config;
pub mod lines;
pub mod outbox;
pub mod reorder;
pub mod router;

mod accept;
mod client;
mod cluster;
mod gap;
mod gateway;
mod history;
mod jetstream;
mod metrics;
mod online;
mod parked;
mod process;
mod publisher;
mod reach;
mod registry;
mod retention;
mod sequencer;
mod server;
mod session;
mod sink;
mod snapshot;
mod source;
mod stats;
mod summary;

pub use accept::ACCEPT_BACKOFF;
pub use cluster::{run_gateway, run_sequencer, GatewayListeners, SequencerListeners};
pub use config::{Config, Role};
pub use registry::{Registry, RegistryHandle, RegistrySettings};
pub use server::{listen, run, run_with_stats, BindError, Listeners, ServerError};
pub use stats::{DisconnectReason, Stats};
