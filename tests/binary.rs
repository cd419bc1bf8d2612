//! The server binary as users run it: configuration errors, a port in use,
//! and SIGTERM.

mod common;

use std::process::Stdio;

use common::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_followermaze");

/// A command for the server binary on loopback ephemeral ports, with no
/// metrics or web listener and nothing inherited that could change its
/// settings.
fn server_command() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("bindAddress", "127.0.0.1")
        .env("eventListenerPort", "0")
        .env("clientListenerPort", "0")
        .env("metricsPort", "0")
        .env("webPort", "0")
        .env("logLevel", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `command` to completion; returns its exit code and stderr.
async fn run_to_exit(mut command: Command) -> (Option<i32>, String) {
    let output = within("the server to exit", command.output())
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts the server and reads its startup line for the two addresses.
async fn start() -> (Child, String, String) {
    start_with(server_command()).await
}

/// Starts `command` and reads its startup line for the two addresses.
async fn start_with(mut command: Command) -> (Child, String, String) {
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = within("the startup line", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("server exited");
            if line.contains("followermaze listening") {
                return line;
            }
        }
    })
    .await;
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |name: &str| {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..].split_whitespace().next().unwrap().to_owned()
    };
    (child, field("events"), field("clients"))
}

#[tokio::test]
async fn a_bad_variable_exits_2_naming_it() {
    let mut command = server_command();
    command.env("eventListenerPort", "abc");
    let (code, stderr) = run_to_exit(command).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("eventListenerPort"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_non_utf8_variable_elsewhere_in_the_environment_is_ignored() {
    use std::os::unix::ffi::OsStrExt;
    let mut command = server_command();
    command.env("UNRELATED", std::ffi::OsStr::from_bytes(b"\xff\xfe"));
    let (mut child, _, _) = start_with(command).await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_port_in_use_exits_2_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut command = server_command();
    command.env("clientListenerPort", &port);
    let (code, stderr) = run_to_exit(command).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("clientListenerPort"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let (mut child, events, clients) = start().await;
    let mut client = TcpStream::connect(&clients).await.unwrap();
    client.write_all(b"1\r\n").await.unwrap();
    let mut source = TcpStream::connect(&events).await.unwrap();
    // Registration has no acknowledgement: broadcasts sent one at a time
    // until one arrives prove the client is registered.
    let mut sent = 0;
    let mut first = [0u8; 1];
    loop {
        sent += 1;
        source
            .write_all(format!("{sent}|B\r\n").as_bytes())
            .await
            .unwrap();
        let wait = std::time::Duration::from_millis(50);
        if tokio::time::timeout(wait, client.read_exact(&mut first))
            .await
            .is_ok()
        {
            break;
        }
        assert!(sent < 200, "client never registered");
    }
    // Finish the line that arrived; every broadcast after it is owed.
    let mut line = vec![first[0]];
    while line.last() != Some(&b'\n') {
        let mut byte = [0u8; 1];
        within("the first line", client.read_exact(&mut byte))
            .await
            .unwrap();
        line.push(byte[0]);
    }
    let received: u64 = String::from_utf8_lossy(&line)
        .trim_end()
        .trim_end_matches("|B")
        .parse()
        .unwrap();
    let mut expected: String = (received + 1..=sent)
        .map(|seq| format!("{seq}|B\r\n"))
        .collect();
    let seq = sent;
    // 2 ahead of a gap, parked when SIGTERM comes: shutdown releases it.
    let parked = format!("{}|B\r\n", seq + 2);
    source.write_all(parked.as_bytes()).await.unwrap();
    expected.push_str(&parked);
    let pid = child.id().unwrap().to_string();
    let status = within("kill", Command::new("kill").args(["-TERM", &pid]).status())
        .await
        .unwrap();
    assert!(status.success());
    let status = within("the server to exit after SIGTERM", child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = Vec::new();
    within("the drained stream", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), expected);
}

#[tokio::test]
async fn help_lists_every_setting_with_its_default_and_exits_0() {
    for flag in ["--help", "-h"] {
        let mut command = server_command();
        command.arg(flag).stdout(Stdio::piped());
        let output = within("--help", command.output()).await.unwrap();
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.starts_with("followermaze "), "{text}");
        for setting in followermaze::config::SETTINGS {
            let row = text
                .lines()
                .find(|line| line.split_whitespace().next() == Some(setting.name))
                .unwrap_or_else(|| panic!("{} is not in --help:\n{text}", setting.name));
            assert!(row.contains(setting.default.text()), "{row}");
        }
    }
}

#[tokio::test]
async fn version_prints_the_package_version_and_exits_0() {
    let mut command = server_command();
    command.arg("--version").stdout(Stdio::piped());
    let output = within("--version", command.output()).await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("followermaze {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn an_unknown_argument_is_one_line_and_exit_2() {
    for argument in ["--port=9090", "serve", "-x"] {
        let mut command = server_command();
        command.arg(argument);
        let (code, stderr) = run_to_exit(command).await;
        assert_eq!(code, Some(2), "{argument}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(argument), "{stderr}");
    }
}

#[tokio::test]
async fn json_logs_are_one_json_object_per_line() {
    let mut command = server_command();
    command.env("logFormat", "json");
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let startup = within("the startup line", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("server exited");
            let object: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            assert!(object.is_object(), "{line}");
            if object["message"] == "followermaze listening" {
                return object;
            }
        }
    })
    .await;
    assert_eq!(startup["level"], "INFO", "{startup}");
    let events = startup["events"]
        .as_str()
        .expect("events address as a field");
    assert!(events.starts_with("127.0.0.1:"), "{startup}");
    child.start_kill().unwrap();
    let _ = within("the server to exit", child.wait()).await;
}

#[tokio::test]
async fn token_prints_a_token_signed_with_the_secret_and_needs_one() {
    let mut unset = server_command();
    unset.args(["token", "2932"]);
    let (code, stderr) = run_to_exit(unset).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("authSecret is not set"), "{stderr}");

    let secret = "a secret of tests/binary.rs";
    let minted = |args: &'static [&'static str]| {
        let mut command = server_command();
        command
            .args(args)
            .env("authSecret", secret)
            .stdout(Stdio::piped());
        async move {
            let output = within("token", command.output()).await.unwrap();
            assert_eq!(output.status.code(), Some(0), "{args:?}");
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        }
    };
    let key = followermaze_protocol::auth::Key::new(secret.as_bytes());
    let user = minted(&["token", "2932", "--ttl-secs", "120"]).await;
    assert_eq!(key.check(user.as_bytes(), "2932"), Ok(()));
    let source = minted(&["token", "--source"]).await;
    assert_eq!(key.check(source.as_bytes(), "source"), Ok(()));

    let mut bad = server_command();
    bad.args(["token", "--ttl-secs", "soon"])
        .env("authSecret", secret);
    let (code, stderr) = run_to_exit(bad).await;
    assert_eq!(code, Some(2), "{stderr}");
}
