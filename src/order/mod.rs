//! Order: the events of every source into one stream in sequence order.
//!
//! - `sequencer`: the task that owns the reorder window and the gap
//!   deadline, and produces ordered batches.
//! - [`reorder`]: the sliding window that puts sequence numbers in order.
//! - `gap`: how long to wait for a missing event before skipping it.
//! - `parked`: an event ahead of a gap, with its line copied into its slot.
//! - `sink`: where the batches go: the registry (standalone), or the
//!   publisher (the cluster's sequencer role).
//!
//! Uses `cluster` (the publisher's queue, through the sink), `fanout` (the
//! registry's handle), `ops`, `batch`, `settings`.

pub(crate) mod gap;
pub(crate) mod parked;
pub mod reorder;
pub(crate) mod sequencer;
pub(crate) mod sink;
