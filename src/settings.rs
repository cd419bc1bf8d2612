//! Each component's settings, as [`crate::config`] hands them out: a
//! component takes its own struct, never the whole `Config`, and this file
//! imports nothing of the crate's, so settings stay a leaf of the layout.

use std::sync::Arc;
use std::time::Duration;

use followermaze_protocol::auth::Key;

/// Settings the sequencer needs.
#[derive(Debug, Clone)]
pub(crate) struct SequencerSettings {
    /// Most sequences the reorder window may span (`reorderWindow`).
    pub(crate) max_window: usize,
    /// Shortest wait for a missing event (`gapTimeoutMinMs`).
    pub(crate) gap_floor: Duration,
    /// Longest wait for a missing event (`gapTimeoutMaxMs`).
    pub(crate) gap_ceiling: Duration,
}

/// Settings the registry needs.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// A client with more than this many bytes pending is disconnected
    /// (`maxClientBufferBytes`).
    pub max_client_pending_bytes: usize,
    /// Follow edges the graph may hold (`maxFollowEdges`).
    pub max_follow_edges: usize,
    /// Resumable sessions: window, retention bounds, checkpoints.
    pub(crate) sessions: SessionSettings,
}

/// Settings for resumable sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionSettings {
    /// How long a session outlives its last connection
    /// (`resumeWindowSecs`).
    pub(crate) window: Duration,
    /// Bounds on retained lines.
    pub(crate) limits: RetentionLimits,
    /// Time between checkpoints; zero for none (`checkpointIntervalMs`).
    pub(crate) checkpoint_interval: Duration,
    /// Reset a resumable connection after each this many event lines; 0 =
    /// never (`faultResetEvery`).
    pub(crate) fault_reset_every: u64,
    /// After each such reset, the user's reconnects are refused for this
    /// long; zero for never (`faultOfflineMs`).
    pub(crate) fault_offline: Duration,
}

/// The two bounds on retained lines; see `resume::retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetentionLimits {
    /// Most bytes one session may hold (`resumeBufferBytes`).
    pub(crate) per_session_bytes: usize,
    /// Most bytes all sessions together may hold (`resumeTotalBytes`).
    pub(crate) total_bytes: usize,
}

/// What one session costs beside its references, for the total retention
/// bound (its map slot and bookkeeping, rounded up). Here rather than in
/// `resume::retention`, which counts with it, because the configuration
/// checks `resumeTotalBytes` against it too.
pub(crate) const SESSION_BYTES: usize = 128;

/// Settings for client connections.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// A client must send its id within this time (`handshakeTimeoutMs`).
    pub(crate) handshake_timeout: Duration,
    /// Connections (handshaking or registered) beyond this are refused
    /// (`maxClients`).
    pub(crate) max_clients: usize,
    /// `SO_SNDBUF` for client sockets; 0 leaves the OS default
    /// (`clientSendBufferBytes`).
    pub(crate) send_buffer_bytes: usize,
    /// At shutdown, how long writers may take to flush before they are cut
    /// (`drainTimeoutMs`).
    pub(crate) drain_timeout: Duration,
    /// When set (`authSecret`), every handshake must carry a token for its
    /// user.
    pub(crate) auth: Option<Arc<Key>>,
}

/// Settings for the web listener (`webPort`): its transports share the
/// client settings; these are its own.
#[derive(Debug, Clone)]
pub(crate) struct WebSettings {
    /// Browser origins allowed to connect (`webAllowedOrigins`), each
    /// `scheme://host[:port]` without a trailing slash; empty: only the
    /// page's own origin, `http://` + the request's `Host`.
    pub(crate) allowed_origins: Vec<String>,
    /// A WebSocket with no traffic either way for this long is pinged.
    pub(crate) ping_after: Duration,
    /// An idle event stream gets a comment line this often.
    pub(crate) keep_alive: Duration,
}

/// Settings for event source connections.
#[derive(Debug, Clone)]
pub(crate) struct SourceSettings {
    /// Longest line accepted; a longer one is dropped and counted.
    pub(crate) max_line_bytes: usize,
    /// When set (`authSecret`), a source's first line must be
    /// `#AUTH|<token>` for the subject `source`.
    pub(crate) auth: Option<Arc<Key>>,
    /// A source that must authenticate has this long to send its first
    /// line (`handshakeTimeoutMs`).
    pub(crate) auth_timeout: Duration,
}

/// Where the cluster's stream lives and how long it keeps events.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    /// The NATS servers (`natsUrl`, comma-separated): the client connects
    /// to one and fails over to the others.
    pub(crate) nats_urls: Vec<String>,
    /// The JetStream stream's name (`natsStream`); the snapshot bucket is
    /// `<name>_SNAPSHOTS`.
    pub(crate) name: String,
    /// The stream keeps events at most this long; zero for no limit
    /// (`streamMaxAgeSecs`).
    pub(crate) max_age: Duration,
    /// The stream keeps at most this many bytes; 0 for no limit
    /// (`streamMaxBytes`).
    pub(crate) max_bytes: u64,
    /// Copies of the stream and of the snapshot bucket, each on its own
    /// NATS server (`streamReplicas`).
    pub(crate) replicas: usize,
    /// Names this process's NATS connections (`followermaze-<role>`).
    pub(crate) client_name: String,
}

#[cfg(test)]
impl RegistrySettings {
    /// The default settings with these bounds, for tests.
    pub(crate) fn with_bounds(
        max_client_pending_bytes: usize,
        max_follow_edges: usize,
    ) -> RegistrySettings {
        RegistrySettings {
            max_client_pending_bytes,
            max_follow_edges,
            ..crate::Config::default().registry()
        }
    }
}
