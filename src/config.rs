//! The server's settings, from environment variables.
//!
//! [`SETTINGS`] is the one list of variables: `--help` prints it, the README
//! shows it (a test compares the two), and its defaults are the
//! [`Config`]'s. Reading, name matching and errors follow the conventions of
//! [`followermaze_protocol::settings`], shared with the verifier: classic
//! camelCase or UPPER_SNAKE names, and `name=value: why` for anything that
//! cannot be used.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use followermaze_protocol::auth::Key;

use followermaze_protocol::settings::{self, ConfigError, Setting};
use serde::Deserialize;

use crate::settings::{
    ClientSettings, RegistrySettings, RetentionLimits, SequencerSettings, SessionSettings,
    SourceSettings, StreamSettings, WebSettings, SESSION_BYTES,
};

/// Every variable the server reads, in the README's order.
pub const SETTINGS: &[Setting] = &[
    Setting::new("eventListenerPort", "9090", "port the event source connects to"),
    Setting::new("clientListenerPort", "9099", "port user clients connect to"),
    Setting::new("bindAddress", "0.0.0.0", "address both listeners bind to"),
    Setting::new(
        "eventBindAddress",
        "",
        "address the event source listener binds to (a private interface, say); empty = `bindAddress`",
    ),
    Setting::new(
        "logLevel",
        "info",
        "log filter (`debug`, `followermaze=trace`, ...); `RUST_LOG` wins when set",
    ),
    Setting::new(
        "logFormat",
        "text",
        "`text`: human-readable lines; `json`: one JSON object per line, for log shippers",
    ),
    Setting::new(
        "reorderWindow",
        "524288",
        "most sequence numbers the reorder window spans (power of two); see limits",
    ),
    Setting::new(
        "gapTimeoutMinMs",
        "500",
        "shortest wait for a missing event before skipping it",
    ),
    Setting::new(
        "gapTimeoutMaxMs",
        "10000",
        "longest wait for a missing event before skipping it",
    ),
    Setting::new(
        "handshakeTimeoutMs",
        "5000",
        "time a client has to send its user id",
    ),
    Setting::new(
        "maxClientBufferBytes",
        "4194304",
        "bytes a client may fall behind before it is disconnected",
    ),
    Setting::new(
        "clientSendBufferBytes",
        "0",
        "`SO_SNDBUF` for client sockets; 0 = the OS's autotuning",
    ),
    Setting::new(
        "maxClients",
        "100000",
        "most client connections at once (handshaking included)",
    ),
    Setting::new(
        "maxFollowEdges",
        "4000000",
        "most follow edges the follower graph holds",
    ),
    Setting::new(
        "drainTimeoutMs",
        "5000",
        "at shutdown, time clients get to receive what is pending",
    ),
    Setting::new(
        "metricsPort",
        "9191",
        "port of the HTTP endpoint serving `/metrics` and `/healthz`, on `bindAddress`; 0 turns it off",
    ),
    Setting::new(
        "webPort",
        "9080",
        "port of the web listener (the page, WebSocket `/ws`, Server-Sent Events `/events`; see Browser clients), on `bindAddress`; 0 turns it off",
    ),
    Setting::new(
        "webAllowedOrigins",
        "",
        "browser origins allowed on `/ws` and `/events`, comma-separated (`https://app.example.com,http://localhost:8000`); empty = the page's own origin only. Requests without `Origin` are not from browsers and are allowed",
    ),
    Setting::new(
        "summaryIntervalSecs",
        "10",
        "seconds between two summary lines in the log; 0 turns them off",
    ),
    Setting::new(
        "resumeWindowSecs",
        "30",
        "how long a resumable session outlives its last connection before it is purged",
    ),
    Setting::new(
        "resumeBufferBytes",
        "1048576",
        "most bytes of lines one session retains for a resume (oldest go first; a resume from before them gets `#GAP`)",
    ),
    Setting::new(
        "resumeTotalBytes",
        "268435456",
        "most bytes all sessions together retain, lines stored once however many sessions they concern (oldest go first)",
    ),
    Setting::new(
        "checkpointIntervalMs",
        "1000",
        "ms between two `#AT` checkpoints on a resumable connection whose position moved; 0 = never",
    ),
    Setting::new(
        "faultResetEvery",
        "0",
        "fault injection: reset (RST) every resumable connection after each N event lines sent on it; 0 = off",
    ),
    Setting::new(
        "faultOfflineMs",
        "0",
        "fault injection: after each `faultResetEvery` reset, refuse that user's reconnects (closed at once, no verdict, counted) for this many ms, so clients' backoff is exercised; 0 = off",
    ),
    Setting::new(
        "role",
        "standalone",
        "`standalone`: the whole server in one process; `sequencer`: order the source's events and publish them to JetStream; `gateway`: serve clients from the JetStream stream (see Cluster)",
    ),
    Setting::new(
        "natsUrl",
        "nats://127.0.0.1:4222",
        "NATS server(s) the `sequencer` and `gateway` roles use: comma-separated `nats://host[:port]` or `host:port` entries, all of one NATS cluster (the client fails over between them)",
    ),
    Setting::new(
        "natsStream",
        "FOLLOWERMAZE",
        "JetStream stream holding the ordered events; its snapshots go to the object store bucket `<natsStream>_SNAPSHOTS`",
    ),
    Setting::new(
        "streamReplicas",
        "1",
        "copies of the stream and of the snapshot bucket, each on its own NATS server (JetStream `num_replicas`, 1 to 5); more than 1 needs a NATS cluster",
    ),
    Setting::new(
        "streamMaxAgeSecs",
        "3600",
        "the stream keeps events at most this long (JetStream `max_age`); 0 = no age limit",
    ),
    Setting::new(
        "streamMaxBytes",
        "1073741824",
        "the stream keeps at most this many bytes, oldest go first (JetStream `max_bytes`); 0 = no size limit",
    ),
    Setting::new(
        "snapshotIntervalSecs",
        "10",
        "seconds between two snapshots of the follower graph the sequencer writes; keep it well under `streamMaxAgeSecs`",
    ),
    Setting::new(
        "maxLagMs",
        "2000",
        "a `gateway` further than this behind the stream's head (the age of the last message it consumed while more were pending) answers `/readyz` 503 until it catches up",
    ),
    Setting::new(
        "authSecret",
        "",
        "HS256 secret of the signed tokens every client and event source must present (see Authentication); empty = no authentication",
    ),
];

/// Which part of the system this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Source, ordering and clients in one process; no NATS.
    Standalone,
    /// Source and ordering; publishes the ordered stream to JetStream.
    Sequencer,
    /// Clients; consumes the ordered stream from JetStream.
    Gateway,
}

impl std::str::FromStr for Role {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Role, &'static str> {
        match text.to_ascii_lowercase().as_str() {
            "standalone" => Ok(Role::Standalone),
            "sequencer" => Ok(Role::Sequencer),
            "gateway" => Ok(Role::Gateway),
            _ => Err("expected standalone, sequencer or gateway"),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<LogFormat, &'static str> {
        match text.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json"),
        }
    }
}

/// Every setting; see [`SETTINGS`] for the meanings and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Config {
    /// Port for the event source.
    pub event_listener_port: u16,
    /// Port for user clients.
    pub client_listener_port: u16,
    /// Address both listeners bind to.
    pub bind_address: IpAddr,
    /// Address the event source listener binds to, if not `bind_address`.
    #[serde(deserialize_with = "settings::parsed")]
    pub event_bind_address: OptionalAddress,
    /// A `tracing` filter (`info`, `debug`, `followermaze=trace`...);
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// Text for people, JSON for log shippers.
    #[serde(deserialize_with = "settings::parsed")]
    pub log_format: LogFormat,
    /// Most sequence numbers the reorder window may span (rounded up to a
    /// power of two). Each costs 64 bytes when in use, plus its line (held
    /// in a shared read chunk at most 4× the line's size).
    pub reorder_window: usize,
    /// Shortest wait for a missing event before it is skipped, in ms.
    pub gap_timeout_min_ms: u64,
    /// Longest wait for a missing event before it is skipped, in ms.
    pub gap_timeout_max_ms: u64,
    /// Time a client has to send its user id, in ms.
    pub handshake_timeout_ms: u64,
    /// Bytes a client may fall behind before it is disconnected.
    pub max_client_buffer_bytes: usize,
    /// Kernel send buffer for each client socket, in bytes; 0 leaves it to
    /// the OS (autotuned, up to `net.ipv4.tcp_wmem`'s maximum). A client's
    /// unread bytes live here before they count against
    /// `maxClientBufferBytes`, so a small value makes slow consumers show
    /// sooner.
    pub client_send_buffer_bytes: usize,
    /// Most client connections at once (handshaking included).
    pub max_clients: usize,
    /// Most follow edges the follower graph holds.
    pub max_follow_edges: usize,
    /// At shutdown, how long clients may take to receive what is pending, in
    /// ms.
    pub drain_timeout_ms: u64,
    /// Port for the HTTP endpoint serving `/metrics` and `/healthz`, on
    /// `bindAddress`; 0 turns it off.
    pub metrics_port: u16,
    /// Port of the web listener (the page, `/ws`, `/events`), on
    /// `bindAddress`; 0 turns it off.
    pub web_port: u16,
    /// Browser origins allowed on the web listener, comma-separated; empty:
    /// the page's own origin only.
    pub web_allowed_origins: String,
    /// Seconds between two summary lines in the log; 0 turns them off.
    pub summary_interval_secs: u64,
    /// Seconds a session outlives its last connection.
    pub resume_window_secs: u64,
    /// Bytes one session may retain.
    pub resume_buffer_bytes: usize,
    /// Bytes all sessions together may retain.
    pub resume_total_bytes: usize,
    /// Milliseconds between checkpoints on a resumable connection; 0 = none.
    pub checkpoint_interval_ms: u64,
    /// Reset a resumable connection after each this many event lines; 0 =
    /// never. For tests and fault drills only.
    pub fault_reset_every: u64,
    /// After each fault-injected reset, refuse that user's reconnects for
    /// this many ms; 0 = never. For tests and fault drills only.
    pub fault_offline_ms: u64,
    /// What this process does: everything, or one side of a cluster.
    #[serde(deserialize_with = "settings::parsed")]
    pub role: Role,
    /// Where the cluster roles reach NATS: one URL, or several of one NATS
    /// cluster, comma-separated (see [`Config::nats_urls`]).
    pub nats_url: String,
    /// The JetStream stream's name (and prefix of its subject and bucket).
    pub nats_stream: String,
    /// Replicas of the stream and of the snapshot bucket (1 to 5).
    pub stream_replicas: usize,
    /// Retention by age of the stream, in seconds (0 = none): bounds the
    /// disk NATS uses; a gateway further behind reloads a snapshot.
    pub stream_max_age_secs: u64,
    /// Retention by size of the stream, in bytes (0 = none).
    pub stream_max_bytes: u64,
    /// Seconds between two graph snapshots the sequencer writes: how far
    /// back a new gateway must replay the stream.
    pub snapshot_interval_secs: u64,
    /// A gateway further behind the stream than this (ms) is not ready.
    pub max_lag_ms: u64,
    /// The tokens' secret; authentication is off while it is empty.
    #[serde(deserialize_with = "settings::parsed")]
    pub auth_secret: Secret,
}

/// An address setting that may be left empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalAddress(pub Option<IpAddr>);

impl std::str::FromStr for OptionalAddress {
    type Err = std::net::AddrParseError;

    fn from_str(text: &str) -> Result<OptionalAddress, Self::Err> {
        match text {
            "" => Ok(OptionalAddress(None)),
            text => text.parse().map(|address| OptionalAddress(Some(address))),
        }
    }
}

/// A secret setting: never printed (its `Debug` says only whether it is
/// set).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// The secret's bytes, `None` when it is empty (unset).
    pub fn get(&self) -> Option<&[u8]> {
        (!self.0.is_empty()).then_some(self.0.as_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(unset)"
        } else {
            "Secret(<set>)"
        })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl Default for Config {
    /// The defaults of [`SETTINGS`].
    fn default() -> Self {
        Config::from_vars(std::iter::empty()).expect("the settings table's defaults are valid")
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(settings::utf8_vars())
    }

    /// Reads the configuration from `vars` (name, value) pairs; unknown names
    /// are ignored, since the verifier's variables share the environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config: Config = settings::from_vars(SETTINGS, vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("reorderWindow", self.reorder_window as u64),
            ("gapTimeoutMaxMs", self.gap_timeout_max_ms),
            ("handshakeTimeoutMs", self.handshake_timeout_ms),
            ("maxClientBufferBytes", self.max_client_buffer_bytes as u64),
            ("maxClients", self.max_clients as u64),
            ("resumeBufferBytes", self.resume_buffer_bytes as u64),
            ("resumeTotalBytes", self.resume_total_bytes as u64),
            ("snapshotIntervalSecs", self.snapshot_interval_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(name, value, "must be greater than 0"));
            }
        }
        if self.reorder_window > 1 << 30 {
            return Err(ConfigError::new(
                "reorderWindow",
                self.reorder_window,
                "must be at most 1073741824 (64 GiB of slots)",
            ));
        }
        if self.gap_timeout_min_ms > self.gap_timeout_max_ms {
            return Err(ConfigError::new(
                "gapTimeoutMinMs",
                self.gap_timeout_min_ms,
                format!(
                    "must not exceed gapTimeoutMaxMs ({})",
                    self.gap_timeout_max_ms
                ),
            ));
        }
        if self.fault_offline_ms > 0 && self.fault_reset_every == 0 {
            return Err(ConfigError::new(
                "faultOfflineMs",
                self.fault_offline_ms,
                "needs faultResetEvery: an outage follows each of its resets",
            ));
        }
        self.validate_resume()?;
        self.validate_names()
    }

    /// The resume settings against the client limits.
    fn validate_resume(&self) -> Result<(), ConfigError> {
        if self.resume_buffer_bytes > self.max_client_buffer_bytes / 2 {
            return Err(ConfigError::new(
                "resumeBufferBytes",
                self.resume_buffer_bytes,
                format!(
                    "must be at most half of maxClientBufferBytes ({}): a full replay, then a \
                     batch before the writer takes it, must not cut the client off as a slow \
                     consumer",
                    self.max_client_buffer_bytes
                ),
            ));
        }
        let sessions_cost = self.max_clients.saturating_mul(SESSION_BYTES);
        if self.resume_total_bytes < sessions_cost {
            return Err(ConfigError::new(
                "resumeTotalBytes",
                self.resume_total_bytes,
                format!(
                    "must hold at least one session per client: maxClients ({}) x {} bytes",
                    self.max_clients, SESSION_BYTES
                ),
            ));
        }
        if self.max_clients > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "maxClients",
                self.max_clients,
                format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            ));
        }
        Ok(())
    }

    /// Names that must be of a given form.
    fn validate_names(&self) -> Result<(), ConfigError> {
        let stream_name_ok = !self.nats_stream.is_empty()
            && self
                .nats_stream
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if !stream_name_ok {
            return Err(ConfigError::new(
                "natsStream",
                &self.nats_stream,
                "expected letters, digits, `_` or `-`",
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError::new(
                "streamReplicas",
                self.stream_replicas,
                "must be 1 to 5 (JetStream's limit)",
            ));
        }
        if self.nats_url.split(',').all(|url| url.trim().is_empty()) {
            return Err(ConfigError::new(
                "natsUrl",
                &self.nats_url,
                "expected at least one `nats://host[:port]` or `host:port`",
            ));
        }
        for url in self.nats_url.split(',').map(str::trim) {
            if let Err(why) = check_nats_url(url) {
                return Err(ConfigError::new(
                    "natsUrl",
                    &self.nats_url,
                    format!("`{url}` {why}: expected `nats://host[:port]` or `host:port`, comma-separated"),
                ));
            }
        }
        for origin in self.allowed_origins() {
            let host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if !host.is_some_and(|host| !host.is_empty() && !host.contains(['/', ' ', '?', '#'])) {
                return Err(ConfigError::new(
                    "webAllowedOrigins",
                    &self.web_allowed_origins,
                    format!("`{origin}` is not an origin: expected `http://host[:port]` or `https://host[:port]`"),
                ));
            }
        }
        Ok(())
    }

    /// The sequencer's settings.
    pub(crate) fn sequencer(&self) -> SequencerSettings {
        SequencerSettings {
            max_window: self.reorder_window,
            gap_floor: Duration::from_millis(self.gap_timeout_min_ms),
            gap_ceiling: Duration::from_millis(self.gap_timeout_max_ms),
        }
    }

    /// The registry's settings (sessions and retention included); public
    /// for benchmarks that drive a [`crate::Registry`] directly.
    pub fn registry(&self) -> RegistrySettings {
        RegistrySettings {
            max_client_pending_bytes: self.max_client_buffer_bytes,
            max_follow_edges: self.max_follow_edges,
            sessions: SessionSettings {
                window: Duration::from_secs(self.resume_window_secs),
                limits: RetentionLimits {
                    per_session_bytes: self.resume_buffer_bytes,
                    total_bytes: self.resume_total_bytes,
                },
                checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms),
                fault_reset_every: self.fault_reset_every,
                fault_offline: Duration::from_millis(self.fault_offline_ms),
            },
        }
    }

    /// The client connections' settings.
    pub(crate) fn clients(&self) -> ClientSettings {
        ClientSettings {
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_clients: self.max_clients,
            send_buffer_bytes: self.client_send_buffer_bytes,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            auth: self.auth_key(),
        }
    }

    /// The event sources' settings; `max_line_bytes` is the framing bound.
    pub(crate) fn sources(&self, max_line_bytes: usize) -> SourceSettings {
        SourceSettings {
            max_line_bytes,
            auth: self.auth_key(),
            auth_timeout: Duration::from_millis(self.handshake_timeout_ms),
        }
    }

    /// The web listener's own settings.
    pub(crate) fn web(&self) -> WebSettings {
        WebSettings {
            allowed_origins: self.allowed_origins(),
            ping_after: Duration::from_secs(30),
            keep_alive: Duration::from_secs(15),
        }
    }

    /// `webAllowedOrigins` as a list, each without a trailing slash.
    fn allowed_origins(&self) -> Vec<String> {
        self.web_allowed_origins
            .split(',')
            .map(|origin| origin.trim().trim_end_matches('/'))
            .filter(|origin| !origin.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The tokens' key, if `authSecret` is set.
    pub fn auth_key(&self) -> Option<Arc<Key>> {
        self.auth_secret
            .get()
            .map(|secret| Arc::new(Key::new(secret)))
    }

    /// The address the event source listener binds to: `eventBindAddress`,
    /// else `bindAddress`.
    pub fn event_address(&self) -> IpAddr {
        self.event_bind_address.0.unwrap_or(self.bind_address)
    }

    /// `natsUrl`'s servers, in order, each trimmed (validated: each
    /// `nats://host[:port]` or `host:port`).
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Where the cluster's stream is, and its limits.
    pub(crate) fn stream(&self) -> StreamSettings {
        StreamSettings {
            nats_urls: self.nats_urls(),
            replicas: self.stream_replicas,
            name: self.nats_stream.clone(),
            max_age: Duration::from_secs(self.stream_max_age_secs),
            max_bytes: self.stream_max_bytes,
            client_name: format!("followermaze-{:?}", self.role).to_lowercase(),
        }
    }
}

/// Whether `url` is one `natsUrl` entry: `nats://host[:port]` (a
/// `user[:password]@` allowed before the host) or `host:port`; `Err` says
/// what is wrong. A host is a name, an IPv4 address or a bracketed IPv6
/// one; a port is 1 to 65535.
fn check_nats_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() {
        return Err("is empty");
    }
    let (authority, port_required) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("nats") => {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            (rest.rsplit_once('@').map_or(rest, |(_, host)| host), false)
        }
        Some(_) => return Err("has a scheme other than `nats://`"),
        None => (url, true),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (address, rest) = v6.split_once(']').ok_or("has an unclosed `[`")?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has a bad IPv6 address");
        }
        match rest {
            "" => ("v6", None),
            rest => (
                "v6",
                Some(rest.strip_prefix(':').ok_or("has junk after `]`")?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' || byte == b'_'
        });
    if !host_ok {
        return Err("has no valid host");
    }
    match port {
        None if port_required => Err("has no port"),
        None => Ok(()),
        Some(port) => match port.parse::<u16>() {
            Ok(1..) if !port.starts_with('+') => Ok(()),
            _ => Err("has a bad port"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use followermaze_protocol::settings::pairs as vars;

    #[test]
    fn defaults_are_the_classic_ports() {
        let config = Config::from_vars(vars(&[("totalEvents", "5")])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.event_listener_port, 9090);
        assert_eq!(config.client_listener_port, 9099);
    }

    #[test]
    fn classic_and_upper_case_names_both_work() {
        let config = Config::from_vars(vars(&[
            ("eventListenerPort", "1234"),
            ("CLIENT_LISTENER_PORT", "4321"),
            ("logLevel", "debug"),
            ("GAP_TIMEOUT_MIN_MS", "7"),
        ]))
        .unwrap();
        assert_eq!(config.event_listener_port, 1234);
        assert_eq!(config.client_listener_port, 4321);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.gap_timeout_min_ms, 7);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let error = Config::from_vars(vars(&[("eventListenerPort", "abc")])).unwrap_err();
        assert!(
            error.to_string().starts_with("eventListenerPort=abc: "),
            "{error}"
        );
        let error = Config::from_vars(vars(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(error.to_string(), "logFormat=xml: expected text or json");
        let error = Config::from_vars(vars(&[("clientListenerPort", "70000")])).unwrap_err();
        assert!(error.to_string().contains("clientListenerPort"), "{error}");
        let error = Config::from_vars(vars(&[("gapTimeoutMinMs", "10"), ("gapTimeoutMaxMs", "5")]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "gapTimeoutMinMs=10: must not exceed gapTimeoutMaxMs (5)"
        );
        let error = Config::from_vars(vars(&[("metricsPort", "-1")])).unwrap_err();
        assert!(error.to_string().contains("metricsPort"), "{error}");
    }

    #[test]
    fn observability_settings_have_defaults_and_can_be_turned_off() {
        let config = Config::default();
        assert_eq!(config.metrics_port, 9191);
        assert_eq!(config.summary_interval_secs, 10);
        let config = Config::from_vars(vars(&[
            ("metricsPort", "0"),
            ("SUMMARY_INTERVAL_SECS", "0"),
        ]))
        .unwrap();
        assert_eq!((config.metrics_port, config.summary_interval_secs), (0, 0));
    }

    #[test]
    fn an_outage_needs_the_resets_it_follows() {
        let error = Config::from_vars(vars(&[("faultOfflineMs", "300")])).unwrap_err();
        assert!(error.to_string().contains("faultResetEvery"), "{error}");
        let config = Config::from_vars(vars(&[
            ("faultOfflineMs", "300"),
            ("faultResetEvery", "500"),
        ]))
        .unwrap();
        assert_eq!(
            config.registry().sessions.fault_offline,
            Duration::from_millis(300)
        );
    }

    #[test]
    fn retention_must_fit_the_client_limits() {
        let error = Config::from_vars(vars(&[
            ("maxClientBufferBytes", "1000"),
            ("resumeBufferBytes", "501"),
        ]))
        .unwrap_err();
        assert!(
            error.to_string().starts_with("resumeBufferBytes=501: "),
            "{error}"
        );
        let error = Config::from_vars(vars(&[("maxClients", "10"), ("resumeTotalBytes", "1279")]))
            .unwrap_err();
        assert!(
            error.to_string().starts_with("resumeTotalBytes=1279: "),
            "{error}"
        );
        assert!(
            Config::from_vars(vars(&[("maxClients", "10"), ("resumeTotalBytes", "1280")])).is_ok()
        );
    }

    #[test]
    fn the_event_listener_binds_apart_only_when_asked_and_the_secret_is_never_printed() {
        let config = Config::from_vars(vars(&[("bindAddress", "127.0.0.2")])).unwrap();
        assert_eq!(config.event_address(), config.bind_address);
        assert!(config.auth_key().is_none(), "no secret, no authentication");
        let config = Config::from_vars(vars(&[
            ("bindAddress", "0.0.0.0"),
            ("eventBindAddress", "127.0.0.3"),
            ("authSecret", "hunter2"),
        ]))
        .unwrap();
        assert_eq!(config.event_address().to_string(), "127.0.0.3");
        assert!(config.auth_key().is_some());
        assert!(!format!("{config:?}").contains("hunter2"));
        let twice = vars(&[("authSecret", "hunter2"), ("AUTH_SECRET", "hunter3")]);
        let error = Config::from_vars(twice).unwrap_err().to_string();
        assert!(!error.contains("hunter"), "{error}");
        let error = Config::from_vars(vars(&[("eventBindAddress", "nowhere")])).unwrap_err();
        assert!(
            error.to_string().starts_with("eventBindAddress=nowhere: "),
            "{error}"
        );
    }

    #[test]
    fn nats_url_takes_a_list_and_names_itself_when_wrong() {
        assert_eq!(Config::default().nats_urls(), ["nats://127.0.0.1:4222"]);
        let list = "nats://127.0.0.1:4222, 127.0.0.1:4223,nats://a.example:4224,nats://user:pw@b-1.example,[::1]:4225";
        let config =
            Config::from_vars(vars(&[("natsUrl", list), ("streamReplicas", "3")])).unwrap();
        assert_eq!(
            config.nats_urls(),
            [
                "nats://127.0.0.1:4222",
                "127.0.0.1:4223",
                "nats://a.example:4224",
                "nats://user:pw@b-1.example",
                "[::1]:4225"
            ]
        );
        assert_eq!(config.stream().replicas, 3);
        assert_eq!(Config::default().stream_replicas, 1);
        for bad in [
            "",
            " , ",
            "nats://127.0.0.1:4222,,127.0.0.1:4223",
            "127.0.0.1",
            "http://127.0.0.1:4222",
            "nats://127.0.0.1:0",
            "nats://127.0.0.1:70000",
            "nats://:4222",
            "127.0.0.1:4222/x",
            "nats://127.0.0.1:4222 127.0.0.1:4223",
            "[::1:4222",
        ] {
            let error = Config::from_vars(vars(&[("natsUrl", bad)])).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("natsUrl={bad}: ")),
                "{bad:?}: {error}"
            );
        }
        for replicas in ["0", "6"] {
            let error = Config::from_vars(vars(&[("streamReplicas", replicas)])).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("streamReplicas={replicas}: must be 1 to 5 (JetStream's limit)")
            );
        }
    }

    #[test]
    fn the_readme_shows_the_settings_table() {
        let readme = include_str!("../README.md");
        if let Err(drift) = settings::check_documented(readme, SETTINGS) {
            panic!("README.md's configuration table differs from config::SETTINGS: {drift}");
        }
    }
}
