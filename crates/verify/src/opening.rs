//! The stream's opening, as the probe and the source both send it: one
//! broadcast per [`OPENING_TICK`], `1, 2, ...`, until the clients it waits
//! for are registered.
//!
//! A resumable run's probe (`probe`) sends the first of them before its
//! clients connect and says how far it got ([`Opened`]); the event source
//! (`source`) carries on from there. Both use this module and neither uses
//! the other, and the settings (`config`) read the tick to bound what a
//! server may have to retain while a client is away. Depends on nothing
//! of the crate, so every use of it points one way.

use std::time::Duration;

use followermaze_protocol::Seq;

/// Time between opening broadcasts while clients are still registering.
pub(crate) const OPENING_TICK: Duration = Duration::from_millis(2);

/// What the probe phase sent, for the source to carry on from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// Opening broadcasts written, `1..=broadcasts`, one chunk each.
    pub(crate) broadcasts: Seq,
    /// Their bytes.
    pub(crate) bytes: u64,
}
