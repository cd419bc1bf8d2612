//! The verifier's settings, from the classic follower-maze environment
//! variables.
//!
//! Every classic name keeps its meaning and default, so old scripts work
//! unchanged; each is also accepted in upper snake case (`totalEvents` or
//! `TOTAL_EVENTS`), like the server's. A value that does not parse, or is out
//! of range, is an error naming the variable, never a silent default.

use std::time::Duration;

use super::generator::Profile;

/// Most client connections one run may open. Each costs a read buffer and an
/// expectation queue (about 160 KiB) and a file descriptor.
pub const MAX_CONCURRENCY: usize = 10_000;

/// Largest `maxEventSourceBatchSize`: a batch is shuffled in memory and every
/// client's expectation queue must hold one whole batch.
pub const MAX_BATCH: u32 = 65_536;

/// Most expectation entries all client queues together may be sized for
/// (24 bytes each: 1.5 GiB).
pub const MAX_QUEUED_ENTRIES: u64 = 1 << 26;

/// How chatty the verifier is on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only the verdict.
    Error,
    /// The verdict and warnings.
    Warn,
    /// Plus progress and the final report (the default).
    Info,
    /// Plus connection and per-client details.
    Debug,
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<LogLevel, String> {
        match text.to_ascii_lowercase().as_str() {
            "error" | "off" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" | "trace" => Ok(LogLevel::Debug),
            _ => Err("expected error, warn, info or debug".into()),
        }
    }
}

/// Everything a run needs; see the README's verifier table. The defaults are
/// the classic verifier's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// Where the server runs (`serverHost`): an address or a host name.
    pub host: String,
    /// The event source port (`eventListenerPort`).
    pub event_listener_port: u16,
    /// The user client port (`clientListenerPort`).
    pub client_listener_port: u16,
    /// Events in the stream, the opening broadcasts included (`totalEvents`).
    pub total_events: u64,
    /// Client connections (`concurrencyLevel`). 0 streams events and checks
    /// nothing: that measures the source alone.
    pub concurrency_level: usize,
    /// Users that events name, `1..=numberOfUsers` (`numberOfUsers`).
    pub number_of_users: u32,
    /// Decides the whole stream and which users connect (`randomSeed`).
    pub random_seed: u64,
    /// Longest a client may wait for a notification it is owed (`timeout`,
    /// ms). Also how long the source may be blocked writing.
    pub timeout: Duration,
    /// Batches are 1..=this events, shuffled within
    /// (`maxEventSourceBatchSize`).
    pub max_event_source_batch_size: u32,
    /// Time between progress lines (`logInterval`, ms); 0 turns them off.
    pub log_interval: Duration,
    /// What to print (`logLevel`).
    pub log_level: LogLevel,
    /// The event mix (`profile`: `classic` or `fanout`).
    pub profile: Profile,
    /// Events per second the source may send; 0 is as fast as it can
    /// (`rate`).
    pub rate: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            host: "127.0.0.1".into(),
            event_listener_port: 9090,
            client_listener_port: 9099,
            total_events: 10_000_000,
            concurrency_level: 100,
            number_of_users: 1000,
            random_seed: 666,
            timeout: Duration::from_millis(20_000),
            max_event_source_batch_size: 100,
            log_interval: Duration::from_millis(1000),
            log_level: LogLevel::Info,
            profile: Profile::Classic,
            rate: 0,
        }
    }
}

/// A setting that cannot be used; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The variables, by classic name. Each also matches its upper snake form.
const NAMES: [&str; 13] = [
    "serverHost",
    "eventListenerPort",
    "clientListenerPort",
    "totalEvents",
    "concurrencyLevel",
    "numberOfUsers",
    "randomSeed",
    "timeout",
    "maxEventSourceBatchSize",
    "logInterval",
    "logLevel",
    "profile",
    "rate",
];

/// `totalEvents` -> `TOTAL_EVENTS`.
fn upper_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for ch in camel.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError(format!("{name}: expected a whole number, got {value:?}")))
}

impl VerifyConfig {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<VerifyConfig, ConfigError> {
        VerifyConfig::from_vars(crate::config::utf8_vars())
    }

    /// Reads the settings from `(name, value)` pairs; other names are
    /// ignored (the server's variables share the environment).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<VerifyConfig, ConfigError> {
        let upper: Vec<String> = NAMES.iter().map(|name| upper_snake(name)).collect();
        let mut config = VerifyConfig::default();
        let mut users = None;
        for (key, value) in vars {
            let Some(name) = NAMES
                .iter()
                .zip(&upper)
                .find(|(camel, upper)| key == **camel || key == **upper)
                .map(|(camel, _)| *camel)
            else {
                continue;
            };
            match name {
                "serverHost" => config.host = value.trim().to_owned(),
                "eventListenerPort" => config.event_listener_port = number(name, &value)?,
                "clientListenerPort" => config.client_listener_port = number(name, &value)?,
                "totalEvents" => config.total_events = number(name, &value)?,
                "concurrencyLevel" => config.concurrency_level = number(name, &value)?,
                "numberOfUsers" => users = Some(number(name, &value)?),
                "randomSeed" => config.random_seed = number(name, &value)?,
                "timeout" => config.timeout = Duration::from_millis(number(name, &value)?),
                "maxEventSourceBatchSize" => {
                    config.max_event_source_batch_size = number(name, &value)?
                }
                "logInterval" => config.log_interval = Duration::from_millis(number(name, &value)?),
                "logLevel" => {
                    config.log_level = value
                        .trim()
                        .parse()
                        .map_err(|why| ConfigError(format!("logLevel: {why}, got {value:?}")))?
                }
                "profile" => {
                    config.profile = value
                        .trim()
                        .parse()
                        .map_err(|why| ConfigError(format!("profile: {why}, got {value:?}")))?
                }
                "rate" => config.rate = number(name, &value)?,
                _ => unreachable!("every name in NAMES has an arm"),
            }
        }
        // The classic default depends on another variable.
        config.number_of_users = match users {
            Some(users) => users,
            None => u32::try_from(config.concurrency_level.saturating_mul(10))
                .unwrap_or(u32::MAX - 1)
                .max(1),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the ranges a run relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.host.is_empty() {
            return fail("serverHost must not be empty".into());
        }
        if self.total_events == 0 {
            return fail("totalEvents must be at least 1".into());
        }
        if self.concurrency_level > MAX_CONCURRENCY {
            return fail(format!(
                "concurrencyLevel must be at most {MAX_CONCURRENCY}"
            ));
        }
        if self.number_of_users == 0 || self.number_of_users == u32::MAX {
            return fail(format!(
                "numberOfUsers must be between 1 and {}",
                u32::MAX - 1
            ));
        }
        if self.timeout.is_zero() {
            return fail("timeout must be at least 1 ms".into());
        }
        if self.max_event_source_batch_size == 0 || self.max_event_source_batch_size > MAX_BATCH {
            return fail(format!(
                "maxEventSourceBatchSize must be between 1 and {MAX_BATCH}"
            ));
        }
        let entries = (self.concurrency_level as u64)
            * u64::from(self.max_event_source_batch_size.next_power_of_two());
        if entries > MAX_QUEUED_ENTRIES {
            return fail(format!(
                "concurrencyLevel x maxEventSourceBatchSize must be at most {MAX_QUEUED_ENTRIES}: \
                 every client's expectation queue holds a whole batch"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::vars;

    #[test]
    fn defaults_are_the_classic_ones() {
        let config = VerifyConfig::from_vars(vars(&[("PATH", "/bin")])).unwrap();
        assert_eq!(config, VerifyConfig::default());
        assert_eq!(config.number_of_users, 1000);
        assert_eq!(config.total_events, 10_000_000);
    }

    #[test]
    fn classic_and_upper_snake_names_both_work() {
        let config = VerifyConfig::from_vars(vars(&[
            ("concurrencyLevel", "7"),
            ("TOTAL_EVENTS", "500"),
            ("serverHost", "localhost"),
            ("profile", "fanout"),
            ("RATE", "1000"),
            ("logLevel", "DEBUG"),
            ("MAX_EVENT_SOURCE_BATCH_SIZE", "3"),
        ]))
        .unwrap();
        assert_eq!(config.concurrency_level, 7);
        assert_eq!(config.number_of_users, 70, "defaults to concurrency x 10");
        assert_eq!(config.total_events, 500);
        assert_eq!(config.host, "localhost");
        assert_eq!(config.profile, Profile::Fanout);
        assert_eq!(config.rate, 1000);
        assert_eq!(config.log_level, LogLevel::Debug);
        assert_eq!(config.max_event_source_batch_size, 3);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("totalEvents", "ten"),
            ("totalEvents", "0"),
            ("timeout", "-1"),
            ("maxEventSourceBatchSize", "0"),
            ("profile", "heavy"),
            ("logLevel", "loud"),
            ("eventListenerPort", "70000"),
            ("concurrencyLevel", "10001"),
        ] {
            let error = VerifyConfig::from_vars(vars(&[(name, value)])).unwrap_err();
            assert!(error.to_string().contains(name), "{name}={value}: {error}");
        }
        let error = VerifyConfig::from_vars(vars(&[
            ("concurrencyLevel", "10000"),
            ("maxEventSourceBatchSize", "65536"),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("whole batch"), "{error}");
    }
}
