//! followermaze: an event fan-out server for the follower-maze protocol.
//!
//! One event source streams numbered events, out of order; many user clients
//! each announce a user id; every event is forwarded, byte for byte, to the
//! clients it concerns, in sequence order, with memory bounded however long
//! the stream runs.
//!
//! ```text
//! source sockets --> ingest --> order --> fanout --> client sockets
//!                   (frame,   (reorder,  (graph, sessions,
//!                    parse)    gaps)      one writer each)
//!                               |            ^
//!                               +-> cluster -+   role=sequencer | gateway
//!                                  (JetStream)
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
//! Top to bottom. A module uses only modules of its own folder and of the
//! folders and files below it: data flows down the list (the source's
//! events are handed from `ingest` to `order` to `fanout`), and so do
//! imports. `tests/layout.rs` reads this list and fails on an import
//! against it or on any cycle among modules.
//!
//! 1. `server`: the standalone server's wiring, [`run`], and its numbered
//!    start and shutdown steps.
//! 2. `roles`: the cluster roles' wiring, [`run_sequencer`] and
//!    [`run_gateway`].
//! 3. `tasks`: what the three wirings share: a named task, the observers,
//!    the shutdown wait, and how a run ends ([`ServerError`]).
//! 4. [`config`]: environment variables into [`Config`], which hands each
//!    component its own settings; imports no component.
//! 5. `ingest`: event source connections: read, frame, parse.
//! 6. `order`: the sequencer task, the reorder window, the gap deadline,
//!    parked lines, and where ordered batches go (the sink).
//! 7. `cluster`: NATS JetStream: the log, the sequencer role's publisher,
//!    the gateway's consumer, and the fetcher that reads a resume's lines.
//! 8. `web`: the web listener: the page, WebSocket and Server-Sent Events
//!    sessions, and the pure checks that route or refuse a request.
//! 9. `fanout`: the registry actor (its `Command`, handle and connection
//!    table), client connections and their outboxes.
//! 10. `resume`: resumable sessions, retention, replay, the history
//!    recorder and the plan of a resume from the stream; pure, no channels.
//! 11. `graph`: the follower graph (router), who is online, each user's
//!     online followers (reach), the snapshot codec; pure.
//! 12. `ops`: counters ([`Stats`]), the metrics endpoint, the log summary,
//!     process figures, and the accept loop every listener shares.
//! 13. [`batch`]: the seam: ordered batches, and what a producer promises.
//! 14. `settings`: each component's settings struct; imports nothing.
//!
//! Public: the crate root re-exports the few types a user needs ([`run`],
//! [`run_with_stats`], [`Listeners`], [`Config`], [`Stats`], the cluster
//! roles, and [`Registry`] for the dispatch benchmark); the pure modules
//! that benchmarks, the fuzz target and tests drive directly are public
//! where they live: [`ingest::lines`], [`order::reorder`],
//! [`graph::router`], [`fanout::outbox`], [`batch`], [`config`].

pub mod batch;
pub mod config;
pub mod fanout;
pub mod graph;
pub mod ingest;
pub mod order;

mod cluster;
mod ops;
mod resume;
mod roles;
mod server;
mod settings;
mod tasks;
mod web;

pub use config::{Config, Role};
pub use fanout::{Registry, RegistryHandle};
pub use ops::accept::ACCEPT_BACKOFF;
pub use ops::stats::{DisconnectReason, Stats, WebTransport};
pub use roles::{run_gateway, run_sequencer, GatewayListeners, SequencerListeners};
pub use server::{listen, run, run_with_stats, BindError, Listeners};
pub use settings::RegistrySettings;
pub use tasks::ServerError;
