//! The registry's messages: what it is sent ([`Command`], through its
//! handle) and what it sends out ([`FetchRequest`], to a gateway's
//! fetcher). Above both the actor and its handle, so neither imports the
//! other, and the fetcher talks to the registry through these alone.

use std::sync::Arc;

use followermaze_protocol::resume::{Hello, StreamId};
use followermaze_protocol::{Seq, UserId};

use crate::batch::OrderedBatch;
use crate::fanout::outbox::Outbox;
use crate::graph::snapshot::Snapshot;
use crate::resume::history::Plan;

/// Identifies one client connection for the life of the process.
pub(crate) type ConnId = u64;

/// How many commands may wait for the registry. Each `Deliver` holds at
/// most [`crate::batch::MAX_DELIVER_EVENTS`] events (about one 64 KiB read's
/// worth: ~200 KiB with their lines, 32 bytes an event), so 8 bound the queue to ~1.6 MiB
/// while leaving enough in flight to keep both sides busy; a slow registry
/// pushes back on the sources.
pub(crate) const COMMAND_QUEUE: usize = 8;

/// Commands the registry accepts, in the order they are sent.
#[derive(Debug)]
pub(crate) enum Command {
    /// Apply this batch (forgetting the graph first if it starts a new
    /// stream) and notify.
    Deliver(OrderedBatch),
    /// A client finished its handshake.
    Register {
        /// What it sent: its user id, and whether (and whence) it resumes.
        hello: Hello,
        /// Its connection.
        conn: ConnId,
        /// Where its writer picks up bytes.
        outbox: Arc<Outbox>,
    },
    /// A resume from the shared stream has its lines in (`after`,
    /// `upto`], or `None` if they could not be fetched.
    Resumed(Resumed),
    /// A client connection ended.
    Unregister {
        /// The user it announced.
        user: UserId,
        /// Its connection.
        conn: ConnId,
    },
    /// Replace the follower graph with a snapshot's, the state after its
    /// event `position` of its stream (a cluster gateway loading it).
    /// Sessions end: their retained lines would have a hole.
    Restore(Snapshot),
    /// Deliver nothing more: tell every writer to drain and stop.
    Shutdown,
}

/// Which resume a fetch serves: the connection that asked, and the range
/// it is owed from the stream. A [`FetchRequest`] carries it to the
/// fetcher and [`Command::Resumed`] back.
#[derive(Debug)]
pub(crate) struct Resume {
    /// The resuming client.
    pub(crate) user: UserId,
    /// Its connection.
    pub(crate) conn: ConnId,
    /// Its writer's outbox: closed by the fetcher if the registry is gone.
    pub(crate) outbox: Arc<Outbox>,
    /// The stream id it named (the cluster's, then).
    pub(crate) stream: StreamId,
    /// What it received up to.
    pub(crate) after: Seq,
    /// The registry's position when it planned (the session's opening
    /// position): the lines above it are the session's.
    pub(crate) upto: Seq,
}

/// A fetch is back: the user's lines in (`after`, `upto`], in order, or
/// `None` if they could not be fetched.
#[derive(Debug)]
pub(crate) struct Resumed {
    /// The resume it serves.
    pub(crate) resume: Resume,
    /// The lines, or `None`.
    pub(crate) lines: Option<Vec<u8>>,
}

/// Step 2 of a resume from the stream (see `resume::history`): what the
/// fetcher reads, and for whom.
#[derive(Debug)]
pub(crate) struct FetchRequest {
    /// The resume it serves, handed back with the lines.
    pub(crate) resume: Resume,
    /// Where to read, and how to route.
    pub(crate) plan: Plan,
    /// The most line bytes to fetch (`resumeBufferBytes`): a resume owed
    /// more than a session could retain gets `#GAP`, as locally.
    pub(crate) max_bytes: usize,
}
