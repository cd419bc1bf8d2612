//! The verifier binary's command line: help, version, modes and errors.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_followermaze-verify");

/// Runs the binary with `args` and a clean environment. Each call here
/// exits at once (it never gets as far as connecting), so no timeout is
/// needed beyond the test harness's own.
fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("the verifier binary runs")
}

#[test]
fn help_lists_every_setting_and_the_sink_mode() {
    let output = run(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Usage: followermaze-verify [sink]"), "{text}");
    for setting in followermaze_verify::SETTINGS {
        let row = text
            .lines()
            .find(|line| line.split_whitespace().next() == Some(setting.name))
            .unwrap_or_else(|| panic!("{} is not in --help:\n{text}", setting.name));
        assert!(row.contains(setting.default.text()), "{row}");
    }
}

#[test]
fn version_prints_the_package_version() {
    let output = run(&["--version"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("followermaze-verify {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_argument_or_a_bad_variable_is_one_line_and_exit_2() {
    for (args, vars) in [
        (&["--totalEvents=5"][..], &[][..]),
        (&["sink", "extra"][..], &[][..]),
        (&[][..], &[("totalEvents", "ten")][..]),
    ] {
        let output = run(args, vars);
        assert_eq!(output.status.code(), Some(2), "{args:?} {vars:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let output = run(&[], &[("totalEvents", "ten")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("totalEvents=ten: "), "{stderr}");
}

#[test]
fn auth_secret_is_listed_and_resumable_false_beside_it_is_exit_2_without_the_secret() {
    let output = run(&["--help"], &[]);
    let text = String::from_utf8_lossy(&output.stdout);
    let row = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("authSecret"))
        .unwrap_or_else(|| panic!("authSecret is not in --help:\n{text}"));
    assert!(row.contains("unset"), "{row}");

    let output = run(&[], &[("authSecret", "s3cret"), ("resumable", "false")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("resumable=false: authSecret is set"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stderr.contains("s3cret") && !stdout.contains("s3cret"));
}
