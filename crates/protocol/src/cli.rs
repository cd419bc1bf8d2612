//! Command-line conventions every followermaze binary shares.
//!
//! Settings come from the environment ([`crate::settings`]); the command
//! line only asks for help, the version, or (for binaries that have them)
//! a mode. `--help` / `-h` prints [`usage`] and exits 0, `--version` prints
//! the version and exits 0, anything else unknown is a one-line error and
//! exit status [`EXIT_USAGE`].

use crate::settings::Setting;

/// Exit status for a usage or configuration error (unknown argument, bad
/// variable, port in use), so scripts can tell it from a failed run.
pub const EXIT_USAGE: u8 = 2;

/// Width `--help` wraps its lines at, in columns.
const HELP_WIDTH: usize = 100;

/// What a binary is, for `--help` and `--version`.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// The binary's name, as the user types it.
    pub binary: &'static str,
    /// Its version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// One sentence saying what it does.
    pub summary: &'static str,
    /// Modes it takes as its one positional argument, with a line each; the
    /// first is what runs without one.
    pub modes: &'static [(&'static str, &'static str)],
    /// The variables it reads.
    pub settings: &'static [Setting],
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invocation {
    /// Run, in the named mode (`None`: the default one).
    Run(Option<String>),
    /// Print [`usage`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// Reads the arguments after the program name.
///
/// Returns the invocation, or a one-line error for an unknown argument, a
/// mode the binary does not have, or more than one argument.
pub(crate) fn parse(
    about: &About,
    args: impl IntoIterator<Item = String>,
) -> Result<Invocation, String> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Invocation::Run(None));
    };
    let invocation = match first.as_str() {
        "-h" | "--help" => Invocation::Help,
        "-V" | "--version" => Invocation::Version,
        mode if about.modes.iter().any(|(name, _)| *name == mode) => {
            Invocation::Run(Some(mode.to_owned()))
        }
        other => {
            return Err(format!(
            "{}: unknown argument {other:?}; settings are environment variables, see `{} --help`",
            about.binary, about.binary
        ))
        }
    };
    match args.next() {
        None => Ok(invocation),
        Some(extra) => Err(format!(
            "{}: unexpected argument {extra:?}; see `{} --help`",
            about.binary, about.binary
        )),
    }
}

/// Reads the arguments after the program name and answers what needs no
/// running: prints the usage or the version (`Err(ExitCode::SUCCESS)`), or
/// a one-line error (`Err` with [`EXIT_USAGE`]). `Ok(mode)` means run, in
/// that mode (`None`: the default one).
pub fn dispatch(
    about: &About,
    args: impl IntoIterator<Item = String>,
) -> Result<Option<String>, std::process::ExitCode> {
    match parse(about, args) {
        Ok(Invocation::Run(mode)) => Ok(mode),
        Ok(Invocation::Help) => {
            print!("{}", usage(about));
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok(Invocation::Version) => {
            println!("{} {}", about.binary, about.version);
            Err(std::process::ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("{message}");
            Err(std::process::ExitCode::from(EXIT_USAGE))
        }
    }
}

/// The `--help` text: what the binary does, how to call it, and every
/// variable with its default and meaning (the same table the README shows).
pub fn usage(about: &About) -> String {
    let mut out = format!("{} {}\n", about.binary, about.version);
    push_wrapped(&mut out, "", about.summary);
    out.push('\n');
    let modes: Vec<&str> = about.modes.iter().map(|(name, _)| *name).collect();
    let mode = match modes.as_slice() {
        [] => String::new(),
        [_default, rest @ ..] => format!(" [{}]", rest.join(" | ")),
    };
    out.push_str(&format!(
        "Usage: {}{mode} [--help | --version]\n",
        about.binary
    ));
    if !about.modes.is_empty() {
        out.push_str("\nModes:\n");
        let width = about
            .modes
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        for (name, meaning) in about.modes {
            push_wrapped(&mut out, &format!("  {name:width$}  "), meaning);
        }
    }
    out.push_str(
        "\nSettings are environment variables, by their classic name or in upper snake case\n\
         (eventListenerPort or EVENT_LISTENER_PORT):\n\n",
    );
    let name_width = about
        .settings
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    let default_width = about
        .settings
        .iter()
        .map(|s| s.default.text().chars().count())
        .max()
        .unwrap_or(0);
    for setting in about.settings {
        let lead = format!(
            "  {:name_width$}  {:default_width$}  ",
            setting.name,
            setting.default.text()
        );
        push_wrapped(&mut out, &lead, &setting.meaning.replace('`', ""));
    }
    out
}

/// Appends `lead` then `text`, wrapped at [`HELP_WIDTH`] with the wrapped
/// lines indented under the text's start.
fn push_wrapped(out: &mut String, lead: &str, text: &str) {
    let indent = lead.chars().count();
    let mut line = lead.to_owned();
    let mut column = indent;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if column > indent && column + 1 + len > HELP_WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent);
            column = indent;
        }
        if column > indent {
            line.push(' ');
            column += 1;
        }
        line.push_str(word);
        column += len;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Fallback;

    const ABOUT: About = About {
        binary: "tool",
        version: "1.2.3",
        summary: "Does a thing.",
        modes: &[("check", "checks"), ("sink", "discards everything")],
        settings: &[Setting {
            name: "somePort",
            default: Fallback::Value("9090"),
            meaning: "the port `tool` listens on",
        }],
    };

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn help_version_modes_and_errors() {
        assert_eq!(parse(&ABOUT, args(&[])), Ok(Invocation::Run(None)));
        assert_eq!(parse(&ABOUT, args(&["--help"])), Ok(Invocation::Help));
        assert_eq!(parse(&ABOUT, args(&["-h"])), Ok(Invocation::Help));
        assert_eq!(parse(&ABOUT, args(&["--version"])), Ok(Invocation::Version));
        assert_eq!(
            parse(&ABOUT, args(&["sink"])),
            Ok(Invocation::Run(Some("sink".into())))
        );
        let error = parse(&ABOUT, args(&["--port=1"])).unwrap_err();
        assert!(
            error.starts_with("tool: unknown argument \"--port=1\""),
            "{error}"
        );
        assert!(!error.contains('\n'));
        assert!(parse(&ABOUT, args(&["sink", "extra"])).is_err());
    }

    #[test]
    fn usage_lists_every_setting_with_its_default() {
        let text = usage(&ABOUT);
        assert!(text.starts_with("tool 1.2.3\nDoes a thing.\n"), "{text}");
        assert!(
            text.contains("Usage: tool [sink] [--help | --version]"),
            "{text}"
        );
        assert!(
            text.contains("  somePort  9090  the port tool listens on\n"),
            "{text}"
        );
        assert!(text.lines().all(|line| line.chars().count() <= HELP_WIDTH));
    }

    #[test]
    fn long_meanings_wrap_under_their_start() {
        let mut out = String::new();
        push_wrapped(&mut out, "  x  ", &"word ".repeat(40));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1);
        assert!(lines[1].starts_with("     word"));
        assert!(lines.iter().all(|line| line.chars().count() <= HELP_WIDTH));
    }
}
