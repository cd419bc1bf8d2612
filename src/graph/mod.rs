//! Graph: who follows whom and who is online, as routing needs it. Pure.
//!
//! - [`router`]: the follower graph; apply an event, get its audience.
//! - `online`: who is connected, with a filter for a fast "no".
//! - `reach`: each user's online followers, the audience of its status
//!   updates in one lookup.
//! - `snapshot`: the follower graph after one stream message, encoded.
//!
//! Uses nothing of the crate's.

pub(crate) mod online;
pub(crate) mod reach;
pub mod router;
pub(crate) mod snapshot;
