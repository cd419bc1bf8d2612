//! The verifier's settings, from the classic follower-maze environment
//! variables.
//!
//! Every classic name keeps its meaning and default, so old scripts work
//! unchanged. [`SETTINGS`] is the one list: `--help` prints it, the README
//! shows it (a test compares them), and it is read by the same rules as the
//! server's ([`followermaze_protocol::settings`]): each name also in upper
//! snake case (`TOTAL_EVENTS`), and `name=value: why` for a value that does
//! not parse or is out of range, never a silent default.
//!
//! Some are the server's own variables, read under the server's names for
//! what a run may expect of it (`resumeWindowSecs`, `resumeBufferBytes`,
//! `metricsPort`) and what it requires (`authSecret`): started from one
//! environment, both binaries agree.
//!
//! `authSecret` is the one secret: it is held in an [`AuthSecret`], whose
//! `Debug` says only that it is set, and no [`ConfigError`] ever shows its
//! value. Because a token travels as the fourth field of the resumable
//! handshake, it makes every client resumable: `resumable` defaults to
//! `true` when it is set, and `resumable=false` with it is an error. A web
//! [`Transport`] does the same: the web listener's every connection is a
//! resumable session (it always begins with a verdict).

use std::time::Duration;

use followermaze_protocol::settings::{self, Fallback, Setting};
use serde::Deserialize;

pub use followermaze_protocol::settings::ConfigError;

use super::expect::queue_capacity;
use super::generator::Profile;
use super::line::MAX_LINE_BYTES;
use super::opening::OPENING_TICK;

/// Most client connections one run may open. Each costs a read buffer and an
/// expectation queue (about 160 KiB) and a file descriptor.
pub(crate) const MAX_CONCURRENCY: usize = 10_000;

/// Largest `maxEventSourceBatchSize`: a batch is shuffled in memory and every
/// client's expectation queue must hold one whole batch.
pub(crate) const MAX_BATCH: u32 = 65_536;

/// Most expectation entries all client queues together may be sized for
/// (24 bytes each: 1.5 GiB).
pub(crate) const MAX_QUEUED_ENTRIES: u64 = 1 << 26;

/// What a server may count per retained line beside its bytes (its index
/// entry and one session's reference to it), for
/// [`VerifyConfig::max_owed_retained_bytes`]. Generous on purpose: ours
/// counts a 16-byte reference per line against `resumeBufferBytes`.
pub(crate) const RETAINED_LINE_OVERHEAD_BYTES: usize = 64;

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

/// The value of `authSecret`: the HS256 secret the server checks tokens
/// with. Its `Debug` never shows it, so neither does [`VerifyConfig`]'s.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthSecret(String);

impl AuthSecret {
    /// The secret `secret`; `None` if it is empty (no tokens).
    pub fn new(secret: impl Into<String>) -> Option<AuthSecret> {
        let secret = secret.into();
        (!secret.is_empty()).then_some(AuthSecret(secret))
    }

    /// The secret's bytes, to sign with.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSecret(<set>)")
    }
}

/// How the clients reach the server (`transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The client port, one line per notification (the default).
    Tcp,
    /// The web listener's `/ws`: the concatenation of the text messages'
    /// payloads is the byte stream a resumable TCP connection gets.
    Ws,
    /// The web listener's `/events` (Server-Sent Events): each event's
    /// `data` plus `\r\n` rebuilds a line, so lines are checked, not the
    /// bytes that carried them.
    Sse,
}

impl Transport {
    /// Its name, as `transport` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }

    /// Whether clients connect to the web listener (`webPort`).
    pub fn is_web(self) -> bool {
        self != Transport::Tcp
    }
}

impl std::str::FromStr for Transport {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Transport, &'static str> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Transport::Tcp),
            "ws" | "websocket" => Ok(Transport::Ws),
            "sse" => Ok(Transport::Sse),
            _ => Err("expected tcp, ws or sse"),
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
    /// Where clients connect, `host:port` each (`clientAddresses`): client
    /// `i` to entry `i mod n`, and a resumable client's each reconnect to
    /// the next entry. Empty: `host:client_listener_port` alone.
    pub client_addresses: Vec<String>,
    /// How clients reach the server (`transport`): the client port, or
    /// the web listener over WebSocket or Server-Sent Events.
    pub transport: Transport,
    /// The server's web listener port (`webPort`, the server's name too),
    /// where web clients connect.
    pub web_port: u16,
    /// Where web clients connect, `host:port` each (`webAddresses`), as
    /// [`VerifyConfig::client_addresses`] for TCP clients. Empty:
    /// `host:web_port` alone.
    pub web_addresses: Vec<String>,
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
    /// How terminators are judged (`lineEndings`).
    pub line_endings: LineEndings,
    /// Every client uses the resumable handshake and is held to the
    /// resumable protocol (`resumable`; from the environment, `true` by
    /// default when `authSecret` is set or the transport is a web one).
    /// Must be `true` with [`VerifyConfig::auth_secret`] and with a web
    /// [`VerifyConfig::transport`].
    pub resumable: bool,
    /// Mean time between two drops of a client's own connection
    /// (`killswitchMs`); zero for none. Needs `resumable`.
    pub killswitch: Duration,
    /// Longest a dropped client stays away before it reconnects
    /// (`offlineMs`): each wait is drawn from `0..=` this. Needs `resumable`.
    pub offline: Duration,
    /// The server's session window (`resumeWindowSecs`, read under the
    /// server's own name): a client away longer may be told `#GAP`.
    pub resume_window: Duration,
    /// The server's per-session retention (`resumeBufferBytes`, the
    /// server's name too): validated against what a client can be owed, so
    /// that a `#GAP` within the window is always a fault.
    pub resume_buffer_bytes: u64,
    /// The server's metrics port (`metricsPort`, the server's name too),
    /// scraped before and after the run for its CPU time; 0 for none.
    pub metrics_port: u16,
    /// The server's token secret (`authSecret`, the server's name too):
    /// when set, every client handshake and the source's first line carry
    /// a token signed with it. `None` (unset or empty): no tokens.
    pub auth_secret: Option<AuthSecret>,
}

impl Default for VerifyConfig {
    /// The defaults of [`SETTINGS`].
    fn default() -> Self {
        VerifyConfig::from_vars(std::iter::empty())
            .expect("the settings table's defaults are valid")
    }
}

/// How a notification's line terminator is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEndings {
    /// Byte for byte as the source sent it (the default, and the protocol).
    Exact,
    /// A line whose payload matches counts as received whatever its
    /// terminator (`\r\n` or `\n`); the report says the run was not
    /// byte-exact. For ranking servers that re-terminate lines.
    Any,
}

impl std::str::FromStr for LineEndings {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<LineEndings, &'static str> {
        match text.to_ascii_lowercase().as_str() {
            "exact" => Ok(LineEndings::Exact),
            "any" => Ok(LineEndings::Any),
            _ => Err("expected exact or any"),
        }
    }
}

/// Every variable the verifier reads, in the README's order.
pub const SETTINGS: &[Setting] = &[
    Setting::new(
        "eventListenerPort",
        "9090",
        "the server's event source port",
    ),
    Setting::new(
        "clientListenerPort",
        "9099",
        "the server's user client port",
    ),
    Setting::new(
        "serverHost",
        "127.0.0.1",
        "the server's address or host name",
    ),
    Setting {
        name: "clientAddresses",
        default: Fallback::Derived("serverHost:clientListenerPort"),
        meaning: "`host:port,host:port,...`: clients are spread over these round robin (several \
                  gateways of a cluster), and with `resumable=true` each reconnect goes to the \
                  next address in the list",
    },
    Setting::new(
        "transport",
        "tcp",
        "how clients connect: `tcp`, the client port; `ws`, WebSocket on the web listener \
         (`/ws`), checked byte for byte over the concatenated text payloads; `sse`, Server-Sent \
         Events (`/events`), checked line for line (each event's `data` plus `\\r\\n`, so not \
         byte-exact); web clients are resumable",
    ),
    Setting::new(
        "webPort",
        "9080",
        "the server's web listener port (the server's variable too), for `transport=ws` and `sse`",
    ),
    Setting {
        name: "webAddresses",
        default: Fallback::Derived("serverHost:webPort"),
        meaning: "`host:port,host:port,...` of web listeners, for `transport=ws` and `sse`: clients are \
                  spread over these round robin, and each reconnect goes to the next one",
    },
    Setting::new(
        "totalEvents",
        "10000000",
        "events in the stream, sequence numbers 1..N (opening broadcasts included)",
    ),
    Setting::new(
        "concurrencyLevel",
        "100",
        "user clients connected; 0 sends events and checks nothing (measures the source alone)",
    ),
    Setting {
        name: "numberOfUsers",
        default: Fallback::Derived("concurrencyLevel × 10"),
        meaning: "events name users 1..numberOfUsers; clients are distinct users while there are \
                  enough, several connections per user beyond that",
    },
    Setting::new(
        "randomSeed",
        "666",
        "decides the whole stream and which users connect",
    ),
    Setting::new(
        "timeout",
        "20000",
        "ms a client may wait for a notification it is owed (counted from when the source wrote \
         it); also how long a write to the server may block, and how long clients may take to \
         register",
    ),
    Setting::new(
        "maxEventSourceBatchSize",
        "100",
        "events are sent in consecutive batches of 1..=this, each shuffled",
    ),
    Setting::new(
        "logInterval",
        "1000",
        "ms between progress lines; 0 for none",
    ),
    Setting::new(
        "logLevel",
        "info",
        "`error`/`warn`: verdict only; `info`: progress and report; `debug`: each client's \
         figures too",
    ),
    Setting::new(
        "profile",
        "classic",
        "`classic`: ≈55% status updates, ≈15% each follows, unfollows and private messages, \
         ≈0.01% broadcasts; `fanout`: 0.5% broadcasts and follows outpacing unfollows, so users \
         gather hundreds of followers and status updates reach many clients (notifications per \
         event grow to tens as the graph fills: size `totalEvents` to match)",
    ),
    Setting::new(
        "rate",
        "0",
        "events per second the source may send; 0 is as fast as it can",
    ),
    Setting::new(
        "lineEndings",
        "exact",
        "`exact`: every notification byte for byte, terminator included; `any`: a notification \
         whose payload matches counts whatever its terminator (`\\r\\n` or `\\n`), and the report \
         says the run was not byte-exact",
    ),
    Setting {
        name: "resumable",
        default: Fallback::Derived("false (true with authSecret or a web transport)"),
        meaning: "`true`: every client uses the resumable handshake and is held to the protocol \
                  (see Resumable sessions): the verdict first, `#OK` at its own position on every \
                  resume within the window, then exactly the lines it is owed, and each `#AT`'s \
                  count and CRC-32 equal to its own; `false`: classic clients, and any `#` line \
                  fails the run (an error with `authSecret`, whose tokens need the resumable \
                  handshake, and with `transport=ws` or `sse`, whose every connection is resumable)",
    },
    Setting::new(
        "killswitchMs",
        "0",
        "each client drops its own connection on average every this many ms (a clean close, a \
         reset or a close in the middle of a line, deterministic from `randomSeed`) and resumes; \
         0 = never; needs `resumable=true`",
    ),
    Setting::new(
        "offlineMs",
        "0",
        "a client that dropped (or was dropped by the server) waits a random 0..this ms before it \
         reconnects; below `timeout`; needs `resumable=true`",
    ),
    Setting::new(
        "resumeWindowSecs",
        "30",
        "the server's session window (the server's variable, read from the same environment): a \
         `#GAP` is accepted only from a client away at least this long (less a tenth)",
    ),
    Setting::new(
        "resumeBufferBytes",
        "1048576",
        "the server's per-session retention (the server's variable too): with `resumable=true`, \
         everything a client can be owed must fit in it, so a `#GAP` within the window is always a \
         fault",
    ),
    Setting::new(
        "metricsPort",
        "9191",
        "the server's metrics port (the server's variable too): if `serverHost:metricsPort/metrics` \
         gives `process_cpu_seconds_total` (ours does), the report adds the server's CPU per event \
         and per notification over the run and its peak memory; 0 = do not ask",
    ),
    Setting {
        name: "authSecret",
        default: Fallback::Derived("unset"),
        meaning: "the server's token secret (the server's variable too): when set, the source \
                  sends an `#AUTH` line with a token first, every client handshake (first \
                  connection and each resume) carries a token for its user as its fourth field, \
                  each token is minted as it connects and valid for an hour, and clients are \
                  resumable; unset or empty = no tokens; never printed",
    },
];

/// The variables as decoded, before the derived defaults and the units.
#[derive(Deserialize)]
struct Variables {
    server_host: String,
    event_listener_port: u16,
    client_listener_port: u16,
    client_addresses: Option<String>,
    #[serde(deserialize_with = "settings::parsed")]
    transport: Transport,
    web_port: u16,
    web_addresses: Option<String>,
    total_events: u64,
    concurrency_level: usize,
    number_of_users: Option<u32>,
    random_seed: u64,
    timeout: u64,
    max_event_source_batch_size: u32,
    log_interval: u64,
    #[serde(deserialize_with = "settings::parsed")]
    log_level: LogLevel,
    #[serde(deserialize_with = "settings::parsed")]
    profile: Profile,
    rate: u64,
    #[serde(deserialize_with = "settings::parsed")]
    line_endings: LineEndings,
    #[serde(default, deserialize_with = "parsed_if_set")]
    resumable: Option<bool>,
    killswitch_ms: u64,
    offline_ms: u64,
    resume_window_secs: u64,
    resume_buffer_bytes: u64,
    metrics_port: u16,
    auth_secret: Option<String>,
}

/// [`settings::parsed`] for a setting whose default is derived (an `Option`
/// left `None` when unset).
fn parsed_if_set<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    settings::parsed(deserializer).map(Some)
}

impl VerifyConfig {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<VerifyConfig, ConfigError> {
        VerifyConfig::from_vars(settings::utf8_vars())
    }

    /// Reads the settings from `(name, value)` pairs; other names are
    /// ignored (the server's variables share the environment).
    pub(crate) fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<VerifyConfig, ConfigError> {
        let v: Variables = settings::from_vars(SETTINGS, vars)?;
        let auth_secret = v.auth_secret.and_then(AuthSecret::new);
        let config = VerifyConfig {
            host: v.server_host.trim().to_owned(),
            event_listener_port: v.event_listener_port,
            client_listener_port: v.client_listener_port,
            client_addresses: v
                .client_addresses
                .as_deref()
                .map(split_addresses)
                .unwrap_or_default(),
            transport: v.transport,
            web_port: v.web_port,
            web_addresses: v
                .web_addresses
                .as_deref()
                .map(split_addresses)
                .unwrap_or_default(),
            total_events: v.total_events,
            concurrency_level: v.concurrency_level,
            // The classic default depends on another variable.
            number_of_users: v.number_of_users.unwrap_or_else(|| {
                u32::try_from(v.concurrency_level.saturating_mul(10))
                    .unwrap_or(u32::MAX - 1)
                    .max(1)
            }),
            random_seed: v.random_seed,
            timeout: Duration::from_millis(v.timeout),
            max_event_source_batch_size: v.max_event_source_batch_size,
            log_interval: Duration::from_millis(v.log_interval),
            log_level: v.log_level,
            profile: v.profile,
            rate: v.rate,
            line_endings: v.line_endings,
            // Tokens travel in the resumable handshake only, and the web
            // listener speaks nothing else.
            resumable: v
                .resumable
                .unwrap_or(auth_secret.is_some() || v.transport.is_web()),
            killswitch: Duration::from_millis(v.killswitch_ms),
            offline: Duration::from_millis(v.offline_ms),
            resume_window: Duration::from_secs(v.resume_window_secs),
            resume_buffer_bytes: v.resume_buffer_bytes,
            metrics_port: v.metrics_port,
            auth_secret,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the ranges a run relies on.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |name: &str, value: &dyn std::fmt::Display, why: String| {
            Err(ConfigError::new(name, value, why))
        };
        if self.host.is_empty() {
            return fail("serverHost", &"", "must not be empty".into());
        }
        if let Err(why) = check_addresses(&self.client_addresses) {
            return fail("clientAddresses", &self.client_addresses.join(","), why);
        }
        if let Err(why) = check_addresses(&self.web_addresses) {
            return fail("webAddresses", &self.web_addresses.join(","), why);
        }
        if self.total_events == 0 {
            return fail("totalEvents", &0, "must be at least 1".into());
        }
        if self.concurrency_level > MAX_CONCURRENCY {
            let why = format!("must be at most {MAX_CONCURRENCY}");
            return fail("concurrencyLevel", &self.concurrency_level, why);
        }
        if self.number_of_users == 0 || self.number_of_users == u32::MAX {
            let why = format!("must be between 1 and {}", u32::MAX - 1);
            return fail("numberOfUsers", &self.number_of_users, why);
        }
        if self.timeout.is_zero() {
            return fail("timeout", &0, "must be at least 1 ms".into());
        }
        if self.max_event_source_batch_size == 0 || self.max_event_source_batch_size > MAX_BATCH {
            let why = format!("must be between 1 and {MAX_BATCH}");
            return fail(
                "maxEventSourceBatchSize",
                &self.max_event_source_batch_size,
                why,
            );
        }
        let entries = (self.concurrency_level as u64)
            * u64::from(self.max_event_source_batch_size.next_power_of_two());
        if entries > MAX_QUEUED_ENTRIES {
            let why = format!(
                "concurrencyLevel x maxEventSourceBatchSize must be at most {MAX_QUEUED_ENTRIES}: \
                 every client's expectation queue holds a whole batch"
            );
            return fail(
                "maxEventSourceBatchSize",
                &self.max_event_source_batch_size,
                why,
            );
        }
        self.validate_resume()
    }

    /// Checks the resumable settings: drops need sessions, an offline
    /// client must come back before its owed lines time out, and the server
    /// must be able to retain whatever a client can be owed.
    fn validate_resume(&self) -> Result<(), ConfigError> {
        if self.auth_secret.is_some() && !self.resumable {
            return Err(ConfigError::new(
                "resumable",
                false,
                "authSecret is set, and a token travels only in the resumable handshake \
                 (user|stream|after|token), whose clients get the resumable protocol: set \
                 resumable=true (or leave it unset), or unset authSecret",
            ));
        }
        if self.transport.is_web() && !self.resumable {
            return Err(ConfigError::new(
                "resumable",
                false,
                format!(
                    "transport={} is set, and every connection to the web listener is a \
                     resumable session (it begins with a verdict): set resumable=true (or leave \
                     it unset), or transport=tcp",
                    self.transport.name()
                ),
            ));
        }
        let needs_resumable = "needs resumable=true: a plain client that drops loses what is sent \
                               while it is away";
        if !self.resumable && !self.killswitch.is_zero() {
            let value = self.killswitch.as_millis();
            return Err(ConfigError::new("killswitchMs", value, needs_resumable));
        }
        if !self.resumable && !self.offline.is_zero() {
            let value = self.offline.as_millis();
            return Err(ConfigError::new("offlineMs", value, needs_resumable));
        }
        if self.offline >= self.timeout {
            return Err(ConfigError::new(
                "offlineMs",
                self.offline.as_millis(),
                format!(
                    "must be below timeout={}: a line owed to a client that is away waits \
                     through its whole absence",
                    self.timeout.as_millis()
                ),
            ));
        }
        if self.resumable && self.concurrency_level > 0 {
            let owed = self.max_owed_retained_bytes();
            if owed > self.resume_buffer_bytes {
                return Err(ConfigError::new(
                    "resumeBufferBytes",
                    self.resume_buffer_bytes,
                    format!(
                        "a client can be owed up to {owed} bytes of retained lines (its \
                         expectation queue of {} entries, plus opening broadcasts while it is \
                         away): a correct server could answer #GAP within the window; raise \
                         resumeBufferBytes (on both sides) or lower maxEventSourceBatchSize",
                        queue_capacity(self.max_event_source_batch_size, self.concurrency_level)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The most bytes a server may have to retain for one client for a
    /// complete resume, as the server counts them at most: every entry its
    /// expectation queue can hold (nothing more can be owed: the source
    /// waits for room), plus the opening broadcasts sent while it is away,
    /// each at the longest line plus [`RETAINED_LINE_OVERHEAD_BYTES`].
    pub(crate) fn max_owed_retained_bytes(&self) -> u64 {
        let queued = queue_capacity(self.max_event_source_batch_size, self.concurrency_level);
        let opening = self.offline.as_millis() as u64 / OPENING_TICK.as_millis() as u64 + 1;
        (queued as u64 + opening) * (MAX_LINE_BYTES + RETAINED_LINE_OVERHEAD_BYTES) as u64
    }
}

/// The entries of a `clientAddresses` value, trimmed; a blank value is
/// none.
fn split_addresses(value: &str) -> Vec<String> {
    if value.trim().is_empty() {
        return Vec::new();
    }
    value
        .split(',')
        .map(|entry| entry.trim().to_owned())
        .collect()
}

/// Each entry must be `host:port`, with a host and a port from 1 to 65535.
fn check_addresses(addresses: &[String]) -> Result<(), String> {
    for entry in addresses {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(format!("{entry:?} is not host:port"));
        };
        if host.is_empty() {
            return Err(format!("{entry:?} has no host"));
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(format!("{entry:?}: the port must be 1 to 65535")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use followermaze_protocol::settings::pairs as vars;

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

    #[test]
    fn client_addresses_are_a_list_of_host_port() {
        assert!(VerifyConfig::default().client_addresses.is_empty());
        let config = VerifyConfig::from_vars(vars(&[(
            "clientAddresses",
            "127.0.0.1:9100, localhost:9101,[::1]:9102",
        )]))
        .unwrap();
        assert_eq!(
            config.client_addresses,
            ["127.0.0.1:9100", "localhost:9101", "[::1]:9102"]
        );
        for value in [
            "9100", "host:", ":9100", "a:1,,b:2", "a:0", "a:65536", "a:x",
        ] {
            let error = VerifyConfig::from_vars(vars(&[("clientAddresses", value)])).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("clientAddresses="), "{value}: {text}");
        }
    }

    #[test]
    fn line_endings_default_to_exact() {
        assert_eq!(VerifyConfig::default().line_endings, LineEndings::Exact);
        let config = VerifyConfig::from_vars(vars(&[("LINE_ENDINGS", "any")])).unwrap();
        assert_eq!(config.line_endings, LineEndings::Any);
        let error = VerifyConfig::from_vars(vars(&[("lineEndings", "crlf")])).unwrap_err();
        assert_eq!(error.to_string(), "lineEndings=crlf: expected exact or any");
    }

    #[test]
    fn resumable_settings_default_off_and_are_validated() {
        let config = VerifyConfig::default();
        assert!(!config.resumable);
        assert_eq!(config.killswitch, Duration::ZERO);
        assert_eq!(config.offline, Duration::ZERO);
        assert_eq!(config.resume_window, Duration::from_secs(30));
        assert!(config.max_owed_retained_bytes() <= config.resume_buffer_bytes);
        let config = VerifyConfig::from_vars(vars(&[
            ("resumable", "true"),
            ("KILLSWITCH_MS", "200"),
            ("offlineMs", "50"),
            ("resumeWindowSecs", "2"),
        ]))
        .unwrap();
        assert!(config.resumable);
        assert_eq!(config.killswitch, Duration::from_millis(200));
        assert_eq!(config.offline, Duration::from_millis(50));
        assert_eq!(config.resume_window, Duration::from_secs(2));

        for (pairs, name, why) in [
            (
                &[("killswitchMs", "200")][..],
                "killswitchMs",
                "needs resumable=true",
            ),
            (
                &[("offlineMs", "5")][..],
                "offlineMs",
                "needs resumable=true",
            ),
            (
                &[("resumable", "true"), ("offlineMs", "20000")][..],
                "offlineMs",
                "below timeout",
            ),
            (
                &[("resumable", "true"), ("resumeBufferBytes", "100000")][..],
                "resumeBufferBytes",
                "could answer #GAP",
            ),
            (
                &[("resumable", "true"), ("maxEventSourceBatchSize", "20000")][..],
                "resumeBufferBytes",
                "lower maxEventSourceBatchSize",
            ),
            (&[("resumable", "yes")][..], "resumable", "true"),
        ] {
            let error = VerifyConfig::from_vars(vars(pairs)).unwrap_err();
            let text = error.to_string();
            assert!(
                text.starts_with(name) && text.contains(why),
                "{pairs:?}: {text}"
            );
        }
        // With no clients nothing is owed: any retention will do.
        let config = VerifyConfig::from_vars(vars(&[
            ("resumable", "true"),
            ("concurrencyLevel", "0"),
            ("resumeBufferBytes", "0"),
        ]));
        assert!(config.is_ok());
    }

    #[test]
    fn auth_secret_defaults_off_and_makes_clients_resumable() {
        let config = VerifyConfig::default();
        assert_eq!(config.auth_secret, None);
        assert!(!config.resumable);
        // Empty is unset.
        let config = VerifyConfig::from_vars(vars(&[("authSecret", "")])).unwrap();
        assert_eq!(config.auth_secret, None);
        assert!(!config.resumable);
        for pairs in [
            &[("authSecret", "s3cret")][..],
            &[("AUTH_SECRET", "s3cret"), ("resumable", "true")][..],
        ] {
            let config = VerifyConfig::from_vars(vars(pairs)).unwrap();
            assert_eq!(config.auth_secret, AuthSecret::new("s3cret"), "{pairs:?}");
            assert!(config.resumable, "{pairs:?}");
        }
        // The resumable settings then apply without naming `resumable`.
        let config =
            VerifyConfig::from_vars(vars(&[("authSecret", "s3cret"), ("killswitchMs", "200")]));
        assert_eq!(config.unwrap().killswitch, Duration::from_millis(200));
    }

    #[test]
    fn auth_secret_with_resumable_false_is_an_error_naming_both() {
        let error =
            VerifyConfig::from_vars(vars(&[("authSecret", "s3cret"), ("RESUMABLE", "false")]))
                .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("resumable=false: authSecret is set"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        // The same rule for a config built by hand.
        let config = VerifyConfig {
            auth_secret: AuthSecret::new("s3cret"),
            ..VerifyConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.to_string(), text);
    }

    #[test]
    fn the_secret_is_never_shown() {
        let config = VerifyConfig::from_vars(vars(&[("authSecret", "s3cret")])).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(
            debug.contains("auth_secret: Some(AuthSecret(<set>))"),
            "{debug}"
        );
        // Set twice in both spellings: the error names it, not its values.
        let error =
            VerifyConfig::from_vars(vars(&[("authSecret", "s3cret"), ("AUTH_SECRET", "other")]))
                .unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("authSecret="), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("other"),
            "{text}"
        );
        assert!(!format!("{error:?}").contains("s3cret"));
    }

    #[test]
    fn transport_defaults_to_tcp_and_a_web_one_makes_clients_resumable() {
        let config = VerifyConfig::default();
        assert_eq!(config.transport, Transport::Tcp);
        assert_eq!(config.web_port, 9080);
        assert!(config.web_addresses.is_empty());
        for (value, transport) in [("ws", Transport::Ws), ("SSE", Transport::Sse)] {
            let config = VerifyConfig::from_vars(vars(&[("transport", value)])).unwrap();
            assert_eq!(config.transport, transport);
            assert!(config.resumable, "{value}");
            // The resumable settings apply without naming `resumable`.
            let config = VerifyConfig::from_vars(vars(&[
                ("TRANSPORT", value),
                ("killswitchMs", "200"),
                ("webPort", "19080"),
                ("webAddresses", "127.0.0.1:19080,localhost:19081"),
            ]))
            .unwrap();
            assert_eq!(config.killswitch, Duration::from_millis(200));
            assert_eq!(config.web_port, 19080);
            assert_eq!(config.web_addresses, ["127.0.0.1:19080", "localhost:19081"]);
            let error =
                VerifyConfig::from_vars(vars(&[("transport", value), ("resumable", "false")]))
                    .unwrap_err()
                    .to_string();
            assert!(
                error.starts_with("resumable=false: transport=") && error.contains("resumable"),
                "{error}"
            );
        }
        let error = VerifyConfig::from_vars(vars(&[("transport", "http")])).unwrap_err();
        assert_eq!(error.to_string(), "transport=http: expected tcp, ws or sse");
        let error = VerifyConfig::from_vars(vars(&[("webAddresses", "a:1,b")])).unwrap_err();
        assert!(error.to_string().starts_with("webAddresses="), "{error}");
        // A plain TCP run stays classic.
        let config = VerifyConfig::from_vars(vars(&[("transport", "tcp")])).unwrap();
        assert!(!config.resumable);
    }

    #[test]
    fn the_readme_shows_the_settings_table() {
        let readme = include_str!("../../../README.md");
        if let Err(drift) = settings::check_documented(readme, SETTINGS) {
            panic!("README.md's verifier table differs from config::SETTINGS: {drift}");
        }
    }
}
