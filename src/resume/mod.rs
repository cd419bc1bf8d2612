//! Resume: what a reconnecting client is owed, decided without I/O.
//!
//! - `session`: resumable sessions: verdicts, lifetimes, checkpoints.
//! - `retention`: the sessions' retained lines, stored once, bounded per
//!   session and in total.
//! - `replay`: a resumable connection's first bytes: its verdict, then
//!   the lines it missed, counted for its checkpoints.
//! - `history`: a gateway's record of what it applied (edge changes,
//!   stream messages), the plan of a resume from the stream, and how to
//!   route the fetched lines for one user.
//! - `stream`: the state machine of a resume from the stream: attach now,
//!   wait, join a fetch, fetch, or the local verdict.
//! - `outage`: fault injection's outages (`faultOfflineMs`): whose
//!   reconnects are refused, and until when.
//!
//! Pure: no channels, no sockets, no NATS. Uses `graph`, `settings`.

pub(crate) mod history;
pub(crate) mod outage;
pub(crate) mod replay;
pub(crate) mod retention;
pub(crate) mod session;
pub(crate) mod stream;
