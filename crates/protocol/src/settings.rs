//! Settings from environment variables: the one way every followermaze
//! binary is configured.
//!
//! The server and the verifier share the environment (`followermaze.sh`
//! passes the classic variables to both), so they share its conventions too,
//! from this one table-driven reader:
//!
//! - Each binary declares its variables once, as a table of [`Setting`]s:
//!   the classic camelCase name, the default, and a one-line meaning. The
//!   same table produces `--help` (`cli::usage`, built on this module) and
//!   the README's table ([`markdown_table`]); a test in each binary
//!   compares the README with it, so the two cannot drift.
//! - A variable is accepted under its classic name (`eventListenerPort`) or
//!   in upper snake case (`EVENT_LISTENER_PORT`), both matched without
//!   regard to case. Names not in the table are ignored: the other binary's
//!   variables share the environment.
//! - Values are decoded by `envy` into the binary's own `serde` struct,
//!   whose fields are the snake-case forms of the names. The defaults are
//!   the table's, fed in before the environment, so a struct's `Default` is
//!   the table's by construction.
//! - Every failure is one [`ConfigError`], printed as `name=value: why`.

use serde::de::DeserializeOwned;

/// One environment variable a binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The classic camelCase name; its snake-case form names the field of the
    /// binary's settings struct, its upper snake form is also accepted.
    pub name: &'static str,
    /// What applies when the variable is not set.
    pub default: Fallback,
    /// One line for `--help` and the README (may use Markdown backticks).
    pub meaning: &'static str,
}

impl Setting {
    /// A setting whose default is the literal `default`.
    pub const fn new(name: &'static str, default: &'static str, meaning: &'static str) -> Setting {
        Setting {
            name,
            default: Fallback::Value(default),
            meaning,
        }
    }
}

/// Whether the setting named `name` holds a secret (its name ends in
/// `Secret`, as `authSecret` does): its value is never put in an error.
pub fn is_secret(name: &str) -> bool {
    name.ends_with("Secret")
}

/// A setting's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A literal value, parsed exactly as if it had been set.
    Value(&'static str),
    /// Derived from other settings by the binary (the field is an `Option`
    /// left `None`); the text says how, for `--help` and the README.
    Derived(&'static str),
}

impl Fallback {
    /// The default as `--help` and the README show it.
    pub fn text(self) -> &'static str {
        match self {
            Fallback::Value(text) | Fallback::Derived(text) => text,
        }
    }
}

/// A setting that cannot be used: `name=value: why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable's classic name (whichever spelling was set).
    pub name: String,
    /// The value in force: as set, or the default.
    pub value: String,
    /// What is wrong with it, in words.
    pub why: String,
}

impl ConfigError {
    /// An error about `name`, whose value in force is `value`.
    pub fn new(name: &str, value: impl ToString, why: impl Into<String>) -> ConfigError {
        ConfigError {
            name: name.to_owned(),
            value: value.to_string(),
            why: why.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}: {}", self.name, self.value, self.why)
    }
}

impl std::error::Error for ConfigError {}

/// The process environment, skipping variables whose name or value is not
/// UTF-8 (none of ours can be; `std::env::vars` would panic on them).
pub fn utf8_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
}

/// `(name, value)` pairs as the environment would give them, for tests and
/// for callers that build an environment by hand.
pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// `totalEvents` -> `total_events`: the field a variable fills.
pub(crate) fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for ch in camel.chars() {
        if ch.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// Whether the environment name `key` is `setting`'s, in either spelling.
fn names(setting: &Setting, key: &str) -> bool {
    key.eq_ignore_ascii_case(setting.name) || key.eq_ignore_ascii_case(&snake_case(setting.name))
}

/// Decodes `vars` (name, value pairs, as from [`utf8_vars`]) into `T` by the
/// rules in the module doc.
///
/// Returns the first unusable variable as a [`ConfigError`]; a variable set
/// twice (in both spellings) with different values is one too, since which
/// one wins would depend on the environment's order.
pub fn from_vars<T: DeserializeOwned>(
    table: &[Setting],
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    // (table index, value) for each variable of ours that is set.
    let mut set: Vec<(usize, String)> = Vec::new();
    for (key, value) in vars {
        let Some(index) = table.iter().position(|setting| names(setting, &key)) else {
            continue;
        };
        match set.iter().find(|(seen, _)| *seen == index) {
            Some((_, earlier)) if *earlier != value => {
                let name = table[index].name;
                // A secret's values are never printed, not even here.
                if is_secret(name) {
                    return Err(ConfigError::new(
                        name,
                        "<set>",
                        "set twice, with different values",
                    ));
                }
                return Err(ConfigError::new(
                    name,
                    value,
                    format!("set twice, also as {earlier:?}"),
                ));
            }
            Some(_) => {}
            None => set.push((index, value)),
        }
    }
    let field = |index: usize, value: &str| (snake_case(table[index].name), value.to_owned());
    let defaults = table
        .iter()
        .enumerate()
        .filter(|(index, _)| !set.iter().any(|(seen, _)| seen == index))
        .filter_map(|(index, setting)| match setting.default {
            Fallback::Value(value) => Some(field(index, value)),
            Fallback::Derived(_) => None,
        });
    let all: Vec<(String, String)> = defaults
        .chain(set.iter().map(|(index, value)| field(*index, value)))
        .collect();
    envy::from_iter(all.clone()).map_err(|error| culprit::<T>(table, &all, &error))
}

/// Names the variable behind an `envy` error: decoding each one alone (over
/// the same struct, whose other fields then default) fails for the culprit.
fn culprit<T: DeserializeOwned>(
    table: &[Setting],
    all: &[(String, String)],
    error: &envy::Error,
) -> ConfigError {
    // envy words a bad value as "<why> while parsing value '<v>' provided by <k>".
    let why = |error: &envy::Error| {
        let text = error.to_string();
        match text.split_once(" while parsing value") {
            Some((why, _)) => why.to_owned(),
            None => text,
        }
    };
    for (field, value) in all {
        let alone = table
            .iter()
            .filter(|setting| snake_case(setting.name) != *field)
            .filter_map(|setting| match setting.default {
                Fallback::Value(default) => Some((snake_case(setting.name), default.to_owned())),
                Fallback::Derived(_) => None,
            })
            .chain([(field.clone(), value.clone())]);
        if let Err(error) = envy::from_iter::<_, T>(alone) {
            let name = table
                .iter()
                .find(|setting| snake_case(setting.name) == *field)
                .map_or(field.as_str(), |setting| setting.name);
            return ConfigError::new(name, value, why(&error));
        }
    }
    ConfigError::new("(settings)", "", why(error))
}

/// For `#[serde(deserialize_with = "followermaze_protocol::settings::parsed")]`:
/// decodes a field through its `FromStr`, whose error text becomes the
/// `why` of the [`ConfigError`].
pub fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    text.trim().parse().map_err(serde::de::Error::custom)
}

/// The table as the README shows it: a header and a row per setting, each
/// line ending in `\n`.
pub fn markdown_table(table: &[Setting]) -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for setting in table {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            setting.name,
            setting.default.text(),
            setting.meaning
        ));
    }
    out
}

/// Whether `document` (a README) contains `table` exactly as
/// [`markdown_table`] renders it; `Err` shows the first row that differs.
pub fn check_documented(document: &str, table: &[Setting]) -> Result<(), String> {
    let expected = markdown_table(table);
    if document.contains(&expected) {
        return Ok(());
    }
    for line in expected.lines().skip(2) {
        if !document.lines().any(|documented| documented == line) {
            return Err(format!(
                "not in the document as it is in the table:\n{line}"
            ));
        }
    }
    Err("every row is documented, but not as one table in this order".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const TABLE: &[Setting] = &[
        Setting {
            name: "listenerPort",
            default: Fallback::Value("9090"),
            meaning: "a port",
        },
        Setting {
            name: "logLevel",
            default: Fallback::Value("info"),
            meaning: "how much to say",
        },
        Setting {
            name: "numberOfUsers",
            default: Fallback::Derived("10 × listenerPort"),
            meaning: "derived",
        },
        Setting {
            name: "mode",
            default: Fallback::Value("fast"),
            meaning: "parsed by FromStr",
        },
    ];

    #[derive(Debug, PartialEq, Eq)]
    enum Mode {
        Fast,
        Slow,
    }

    impl std::str::FromStr for Mode {
        type Err = String;
        fn from_str(text: &str) -> Result<Mode, String> {
            match text {
                "fast" => Ok(Mode::Fast),
                "slow" => Ok(Mode::Slow),
                _ => Err("expected fast or slow".into()),
            }
        }
    }

    #[derive(Debug, Deserialize, PartialEq, Eq)]
    struct Example {
        listener_port: u16,
        log_level: String,
        number_of_users: Option<u32>,
        #[serde(deserialize_with = "parsed")]
        mode: Mode,
    }

    fn decode(list: &[(&str, &str)]) -> Result<Example, ConfigError> {
        from_vars(TABLE, super::pairs(list))
    }

    #[test]
    fn defaults_come_from_the_table() {
        let example = decode(&[("PATH", "/bin")]).unwrap();
        assert_eq!(
            example,
            Example {
                listener_port: 9090,
                log_level: "info".into(),
                number_of_users: None,
                mode: Mode::Fast,
            }
        );
    }

    #[test]
    fn both_spellings_match_without_regard_to_case() {
        let example = decode(&[
            ("LISTENER_PORT", "1"),
            ("loglevel", "debug"),
            ("numberOfUsers", "7"),
            ("Mode", "slow"),
        ])
        .unwrap();
        assert_eq!(example.listener_port, 1);
        assert_eq!(example.log_level, "debug");
        assert_eq!(example.number_of_users, Some(7));
        assert_eq!(example.mode, Mode::Slow);
    }

    #[test]
    fn a_bad_value_is_name_equals_value_colon_why() {
        let error = decode(&[("logLevel", "debug"), ("LISTENER_PORT", "70000")]).unwrap_err();
        assert_eq!(error.name, "listenerPort");
        assert_eq!(error.value, "70000");
        assert!(
            error.to_string().starts_with("listenerPort=70000: "),
            "{error}"
        );
        assert!(!error.to_string().contains("while parsing"), "{error}");
        let error = decode(&[("mode", "medium")]).unwrap_err();
        assert_eq!(error.to_string(), "mode=medium: expected fast or slow");
        let error = decode(&[("numberOfUsers", "-3")]).unwrap_err();
        assert!(
            error.to_string().starts_with("numberOfUsers=-3: "),
            "{error}"
        );
    }

    #[test]
    fn two_spellings_must_agree() {
        assert!(decode(&[("listenerPort", "5"), ("LISTENER_PORT", "5")]).is_ok());
        let error = decode(&[("listenerPort", "5"), ("LISTENER_PORT", "6")]).unwrap_err();
        assert!(error.to_string().contains("set twice"), "{error}");
    }

    #[test]
    fn the_markdown_table_is_checked_row_by_row() {
        let table = markdown_table(TABLE);
        assert!(table.contains("| `numberOfUsers` | 10 × listenerPort | derived |\n"));
        let readme = format!("# Title\n\n{table}\nmore text\n");
        assert_eq!(check_documented(&readme, TABLE), Ok(()));
        let drifted = readme.replace("| 9090 |", "| 9091 |");
        let error = check_documented(&drifted, TABLE).unwrap_err();
        assert!(error.contains("listenerPort"), "{error}");
    }
}
