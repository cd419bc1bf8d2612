//! Wiring for the two cluster roles; the standalone server is in
//! `crate::server`, and all three follow the same numbered steps and share
//! `crate::tasks`.
//!
//! ```text
//! sequencer: source sockets -> source -> sequencer -> publisher -> JetStream
//! gateway:   JetStream -> gateway (consumer) -> registry -> outbox -> client sockets
//! ```
//!
//! The sequencer's batches go to a sink that is the publisher, not the
//! registry. A gateway's registry gets the same
//! [`crate::batch::OrderedBatch`]es, rebuilt from the stream, so routing is
//! the standalone server's.

mod gateway;
mod sequencer;

pub use gateway::{run_gateway, GatewayListeners};
pub use sequencer::{run_sequencer, SequencerListeners};
