//! Configuration from environment variables.
//!
//! The classic follower-maze names (`eventListenerPort`, `clientListenerPort`,
//! `logLevel`) work unchanged, because `followermaze.sh` shares them with the
//! verifier; every variable is also accepted in the conventional upper-case
//! form (`EVENT_LISTENER_PORT`). Names match case-insensitively. A value that
//! does not parse is an error naming the variable, never a silent default.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::Deserialize;

use crate::client::ClientSettings;
use crate::registry::RegistrySettings;
use crate::sequencer::SequencerSettings;

/// Every setting, with its default; see the README's configuration table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Port for the event source.
    #[serde(rename = "eventlistenerport", alias = "event_listener_port")]
    pub event_listener_port: u16,
    /// Port for user clients.
    #[serde(rename = "clientlistenerport", alias = "client_listener_port")]
    pub client_listener_port: u16,
    /// Address both listeners bind to.
    #[serde(rename = "bindaddress", alias = "bind_address")]
    pub bind_address: IpAddr,
    /// A `tracing` filter (`info`, `debug`, `followermaze=trace`...);
    /// `RUST_LOG`, when set, wins.
    #[serde(rename = "loglevel", alias = "log_level")]
    pub log_level: String,
    /// Most sequence numbers the reorder window may span (rounded up to a
    /// power of two). Each costs 64 bytes when in use, plus its line (held
    /// in a shared read chunk at most 4× the line's size).
    #[serde(rename = "reorderwindow", alias = "reorder_window")]
    pub reorder_window: usize,
    /// Shortest wait for a missing event before it is skipped, in ms.
    #[serde(rename = "gaptimeoutminms", alias = "gap_timeout_min_ms")]
    pub gap_timeout_min_ms: u64,
    /// Longest wait for a missing event before it is skipped, in ms.
    #[serde(rename = "gaptimeoutmaxms", alias = "gap_timeout_max_ms")]
    pub gap_timeout_max_ms: u64,
    /// Time a client has to send its user id, in ms.
    #[serde(rename = "handshaketimeoutms", alias = "handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Bytes a client may fall behind before it is disconnected.
    #[serde(rename = "maxclientbufferbytes", alias = "max_client_buffer_bytes")]
    pub max_client_buffer_bytes: usize,
    /// Kernel send buffer for each client socket, in bytes; 0 leaves it to
    /// the OS (autotuned, up to `net.ipv4.tcp_wmem`'s maximum). A client's
    /// unread bytes live here before they count against
    /// `maxClientBufferBytes`, so a small value makes slow consumers show
    /// sooner.
    #[serde(rename = "clientsendbufferbytes", alias = "client_send_buffer_bytes")]
    pub client_send_buffer_bytes: usize,
    /// Most client connections at once (handshaking included).
    #[serde(rename = "maxclients", alias = "max_clients")]
    pub max_clients: usize,
    /// Most follow edges the follower graph holds.
    #[serde(rename = "maxfollowedges", alias = "max_follow_edges")]
    pub max_follow_edges: usize,
    /// At shutdown, how long clients may take to receive what is pending, in
    /// ms.
    #[serde(rename = "draintimeoutms", alias = "drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Port for the HTTP endpoint serving `/metrics` and `/healthz`, on
    /// `bindAddress`; 0 turns it off.
    #[serde(rename = "metricsport", alias = "metrics_port")]
    pub metrics_port: u16,
    /// Seconds between two summary lines in the log; 0 turns them off.
    #[serde(rename = "summaryintervalsecs", alias = "summary_interval_secs")]
    pub summary_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            event_listener_port: 9090,
            client_listener_port: 9099,
            bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            log_level: "info".to_owned(),
            reorder_window: 1 << 19,
            gap_timeout_min_ms: 500,
            gap_timeout_max_ms: 10_000,
            handshake_timeout_ms: 5_000,
            max_client_buffer_bytes: 4 << 20,
            client_send_buffer_bytes: 0,
            max_clients: 100_000,
            max_follow_edges: 4_000_000,
            drain_timeout_ms: 5_000,
            metrics_port: 9191,
            summary_interval_secs: 10,
        }
    }
}

/// A configuration that cannot be used; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The process environment, skipping variables whose name or value is not
/// UTF-8 (none of ours can be; `std::env::vars` would panic on them).
pub fn utf8_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(utf8_vars())
    }

    /// Reads the configuration from `vars` (name, value) pairs; unknown names
    /// are ignored, since the verifier's variables share the environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config: Config =
            envy::from_iter(vars).map_err(|error| ConfigError(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("reorderWindow", self.reorder_window as u64),
            ("gapTimeoutMaxMs", self.gap_timeout_max_ms),
            ("handshakeTimeoutMs", self.handshake_timeout_ms),
            ("maxClientBufferBytes", self.max_client_buffer_bytes as u64),
            ("maxClients", self.max_clients as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be greater than 0")));
            }
        }
        if self.reorder_window > 1 << 30 {
            return Err(ConfigError(
                "reorderWindow must be at most 1073741824 (64 GiB of slots)".into(),
            ));
        }
        if self.gap_timeout_min_ms > self.gap_timeout_max_ms {
            return Err(ConfigError(format!(
                "gapTimeoutMinMs ({}) must not exceed gapTimeoutMaxMs ({})",
                self.gap_timeout_min_ms, self.gap_timeout_max_ms
            )));
        }
        if self.max_clients > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError("maxClients is too large".into()));
        }
        Ok(())
    }

    pub(crate) fn sequencer(&self) -> SequencerSettings {
        SequencerSettings {
            max_window: self.reorder_window,
            gap_floor: Duration::from_millis(self.gap_timeout_min_ms),
            gap_ceiling: Duration::from_millis(self.gap_timeout_max_ms),
        }
    }

    pub(crate) fn registry(&self) -> RegistrySettings {
        RegistrySettings {
            max_client_pending_bytes: self.max_client_buffer_bytes,
            max_follow_edges: self.max_follow_edges,
        }
    }

    pub(crate) fn clients(&self) -> ClientSettings {
        ClientSettings {
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            max_clients: self.max_clients,
            send_buffer_bytes: self.client_send_buffer_bytes,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `(name, value)` pairs as the environment would give them; shared
    /// with the verifier's configuration tests.
    pub(crate) fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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
        assert!(error.to_string().contains("eventListenerPort"), "{error}");
        let error = Config::from_vars(vars(&[("clientListenerPort", "70000")])).unwrap_err();
        assert!(error.to_string().contains("clientListenerPort"), "{error}");
        let error = Config::from_vars(vars(&[("gapTimeoutMinMs", "10"), ("gapTimeoutMaxMs", "5")]))
            .unwrap_err();
        assert!(error.to_string().contains("gapTimeoutMinMs"), "{error}");
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
}
