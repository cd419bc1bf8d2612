//! The page (`src/web/page.html`) in a real browser: Debian's headless
//! Chromium, driven over WebDriver by `chromedriver`, against the real
//! server on 127.0.0.1:0. Everything stays on loopback.
//!
//! Each test starts its own `chromedriver` (a child process on a free
//! loopback port, killed with its browser when the test ends), opens the page
//! with `?user=…&transport=…&autoconnect=1`, feeds events through the event
//! source over TCP, and polls the page's DOM hooks (`#state[data-state]`,
//! the counters, `#rows li[data-line]`) until they show what a reference
//! model of the follower graph says the user must get, under a timeout.
//! The tests take turns: two browsers at once on two cores only slow both.
//!
//! Chromium and chromedriver are required, not optional: without them the
//! tests fail, saying `apt-get install chromium chromium-driver` (CI does).
//! Screenshots go to `<target>/tmp/browser/`, with each test's chromedriver
//! log.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{send, TestServer};
use fantoccini::{Client, ClientBuilder};
use followermaze::{Config, Listeners};
use followermaze_protocol::auth::{write_auth_line, Key, SOURCE_SUBJECT};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// Every wait on the browser gives up after this long. Longer than the
/// other tests' patience: a browser starts slowly on a busy machine, and an
/// EventSource waits its `retry` (1 s) after each drop.
const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

/// Time between two looks at the page.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// A phone-sized window, in CSS pixels (the browser starts with it).
const PHONE: (u32, u32) = (390, 844);
/// A desktop-sized window, in CSS pixels.
const DESKTOP: (u32, u32) = (1280, 900);

/// The user whose stream the page watches.
const USER: u64 = 7;

/// One browser at a time (see the crate doc).
static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// What to run when a program is missing.
const INSTALL_HINT: &str = "apt-get install -y chromium chromium-driver";

/// Where `program` is on `PATH`; fails the test with the install hint if it
/// is nowhere.
fn find_program(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` not found: tests/browser.rs drives Debian's headless Chromium; \
                 install it with `{INSTALL_HINT}` (.ci/run does)"
            )
        })
}

/// A `chromedriver` child process on a free loopback port. Dropping it kills
/// its whole process group: chromedriver and every browser it started.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it accepts connections.
    fn start() -> Chromedriver {
        let program = find_program("chromedriver");
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        // One log per test (the test harness names each test's thread),
        // overwritten by the next run.
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let log = screenshot_dir().join(format!("chromedriver-{test}.log"));
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&program)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that Drop can end the browsers too.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()))
        };
        let mut driver = Chromedriver { child, port };
        let deadline = Instant::now() + BROWSER_PATIENCE;
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited at start ({status}); see {}",
                    log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        driver
    }

    /// The WebDriver URL.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child (its id); it touches no memory.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A Chromium session: the WebDriver client and the driver it talks to.
/// Field order matters: the client closes before the driver is killed.
struct Browser {
    client: Client,
    driver: Chromedriver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a phone-sized window.
    async fn start() -> Browser {
        let chromium = find_program("chromium");
        let driver = Chromedriver::start();
        let (width, height) = PHONE;
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    // Loopback only: no updates, sync or other calls home.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--no-default-browser-check",
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let client = tokio::time::timeout(
            BROWSER_PATIENCE,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&driver.url()),
        )
        .await
        .expect("timed out starting Chromium")
        .unwrap_or_else(|error| panic!("cannot start Chromium through chromedriver: {error}"));
        Browser { client, driver }
    }

    /// Opens `url` (the page loads; its script may still be connecting).
    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// Reads the page's hooks.
    async fn view(&self) -> PageView {
        let json = self
            .client
            .execute(READ_PAGE, Vec::new())
            .await
            .expect("the page answers");
        serde_json::from_value(json).expect("the page's hooks are all there")
    }

    /// Polls the page until `condition` holds; fails the test after
    /// [`BROWSER_PATIENCE`] with `what` and what the page showed last.
    async fn wait_for(&self, what: &str, condition: impl Fn(&PageView) -> bool) -> PageView {
        let deadline = Instant::now() + BROWSER_PATIENCE;
        loop {
            let view = self.view().await;
            if condition(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page shows {view:#?}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Saves a screenshot at `size` as `<target>/tmp/browser/<name>.png`.
    async fn screenshot(&self, name: &str, (width, height): (u32, u32)) -> PathBuf {
        self.client
            .set_window_size(width, height)
            .await
            .expect("the window resizes");
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is saved");
        path
    }

    /// Ends the session (the browser quits) and the driver.
    async fn close(self) {
        let Browser { client, driver } = self;
        let _ = tokio::time::timeout(BROWSER_PATIENCE, client.close()).await;
        drop(driver);
    }
}

/// `<target>/tmp/browser`, created if need be.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

/// The script that reads the page's hooks into a [`PageView`].
const READ_PAGE: &str = r##"
const text = (id) => document.getElementById(id).textContent;
const count = (id) => Number(text(id));
const rows = [...document.querySelectorAll("#rows > li")].reverse();
return {
  state: document.getElementById("state").dataset.state,
  state_text: text("state"),
  error: text("error"),
  stream: text("stream"),
  position: text("position"),
  received: count("received"),
  resumes: count("resumes"),
  gaps: count("gaps"),
  checkpoints: count("checkpoints"),
  checkpoint_failures: count("checkpoint-failures"),
  lines: rows.map((row) => row.dataset.line),
  seqs: rows.map((row) => row.dataset.seq),
  titles: rows.map((row) => row.title),
  words: rows.map((row) => row.textContent),
};
"##;

/// What the page shows, rows oldest first.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // Read by Debug in failure messages.
struct PageView {
    state: String,
    state_text: String,
    error: String,
    stream: String,
    position: String,
    received: u64,
    resumes: u64,
    gaps: u64,
    checkpoints: u64,
    checkpoint_failures: u64,
    lines: Vec<String>,
    seqs: Vec<String>,
    titles: Vec<String>,
    words: Vec<String>,
}

/// A server on loopback with a web listener, configured by `vars`, and the
/// web listener's address. Checkpoints come every 50 ms, so that each test
/// sees the page check some.
async fn web_server(vars: &[(&str, &str)]) -> (TestServer, SocketAddr) {
    let vars = [("checkpointIntervalMs", "50")].iter().chain(vars);
    let config = Config::from_vars(vars.map(|&(name, value)| (name.to_owned(), value.to_owned())))
        .expect("a valid configuration");
    let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = web.local_addr().unwrap();
    let listeners = Listeners {
        events: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        clients: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        web: Some(web),
        metrics: None,
    };
    (TestServer::start_on(listeners, config), address)
}

/// The page's URL on `server` for `USER` over `transport`, connecting at
/// once, with `token` if any.
fn page_url(server: SocketAddr, transport: &str, token: Option<&str>) -> String {
    let token = token.map_or_else(String::new, |token| format!("&token={token}"));
    format!("http://{server}/?user={USER}&transport={transport}{token}&autoconnect=1")
}

/// Events 1 to 13, one of each kind, some for `USER`, some for others; and
/// what `USER` is told of each in words, for the rows it gets.
const STORY: &[(&str, Option<&str>)] = &[
    ("1|F|3|7", Some("3 followed you")),
    ("2|F|7|5", None),
    ("3|P|5|7", Some("5 sent you a private message")),
    ("4|P|5|8", None),
    ("5|S|5", Some("5 posted a status update")),
    ("6|S|9", None),
    ("7|B", Some("broadcast")),
    ("8|U|7|5", None),
    ("9|S|5", None),
    ("10|F|60|7", Some("60 followed you")),
    ("11|P|32|7", Some("32 sent you a private message")),
    ("12|B", Some("broadcast")),
    // The last event is someone else's: `USER` hears of position 13 only
    // from a checkpoint, which so covers every line before it.
    ("13|P|1|2", None),
];

/// `count` events to follow `STORY`, numbered from 14: a seeded mix of
/// every kind, among users 1 to 9.
fn more_events(count: u64) -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: u64| {
        // xorshift64: deterministic, and good enough to pick test events.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    (14..14 + count)
        .map(|seq| {
            let (from, to) = (1 + next(9), 1 + next(9));
            match next(5) {
                0 => format!("{seq}|F|{from}|{to}"),
                1 => format!("{seq}|U|{from}|{to}"),
                2 => format!("{seq}|P|{from}|{to}"),
                3 => format!("{seq}|S|{from}"),
                _ => format!("{seq}|B"),
            }
        })
        .collect()
}

/// The lines `user` must get of `events` (in sequence order), in order: a
/// reference model of the follower maze.
fn stream_of(user: u64, events: &[String]) -> Vec<String> {
    let mut follows = HashSet::new();
    let mut got = Vec::new();
    for line in events {
        let fields: Vec<&str> = line.split('|').collect();
        let id = |index: usize| fields[index].parse::<u64>().expect("a user id");
        let concerned = match fields[1] {
            "F" => {
                follows.insert((id(2), id(3)));
                id(3) == user
            }
            "U" => {
                follows.remove(&(id(2), id(3)));
                false
            }
            "P" => id(3) == user,
            "S" => follows.contains(&(user, id(2))),
            "B" => true,
            kind => panic!("no event kind {kind:?}"),
        };
        if concerned {
            got.push(line.clone());
        }
    }
    got
}

/// `events` as a source sends them, two by two in reverse order (`2, 1, 4,
/// 3, …`): the server puts them back in order.
fn as_sent(events: &[String]) -> String {
    events
        .chunks(2)
        .flat_map(|pair| pair.iter().rev())
        .map(|line| format!("{line}\r\n"))
        .collect()
}

/// The sequence number of an event line.
fn seq_of(line: &str) -> &str {
    line.split('|').next().expect("a first field")
}

/// Waits until the page shows every line of `expected` (and a checkpoint
/// at `last`, the last event's sequence number), then asserts that it shows
/// exactly those rows, each with its hooks, and that every checkpoint it
/// checked matched.
async fn assert_rows(browser: &Browser, expected: &[String], last: &str) -> PageView {
    let view = browser
        .wait_for("every row and the last checkpoint", |view| {
            view.lines.len() >= expected.len() && view.position == last
        })
        .await;
    assert_eq!(view.lines, expected, "the rows, oldest first");
    let seqs: Vec<&str> = expected.iter().map(|line| seq_of(line)).collect();
    assert_eq!(view.seqs, seqs, "each row's data-seq");
    assert_eq!(view.titles, expected, "each row's title");
    assert_eq!(view.received, expected.len() as u64, "#received");
    assert!(view.checkpoints > 0, "a checkpoint was checked: {view:#?}");
    assert_eq!(view.checkpoint_failures, 0, "{view:#?}");
    assert_eq!(view.gaps, 0, "{view:#?}");
    view
}

/// (a) The page watches `USER` from a first connection: it goes live, and
/// its rows are exactly `USER`'s stream, in order, each told in words; its
/// checkpoints all match. Over SSE, then over WebSocket, each against a new
/// server. Screenshots: phone and desktop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_users_stream_in_order() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let browser = Browser::start().await;
    let events: Vec<String> = STORY.iter().map(|(line, _)| line.to_string()).collect();
    let expected = stream_of(USER, &events);
    let words: Vec<&str> = STORY.iter().filter_map(|(_, words)| *words).collect();
    assert_eq!(expected.len(), words.len(), "STORY and the model agree");
    for transport in ["sse", "ws"] {
        let (server, web) = web_server(&[]).await;
        browser.open(&page_url(web, transport, None)).await;
        let view = browser
            .wait_for("state live", |view| view.state == "live")
            .await;
        assert_eq!(view.state_text, "live");
        assert!(view.lines.is_empty(), "{view:#?}");
        let mut source = server.source().await;
        send(&mut source, &as_sent(&events)).await;
        let view = assert_rows(&browser, &expected, "13").await;
        assert_eq!(view.words, words, "each row in words");
        assert_eq!((view.state.as_str(), view.resumes), ("live", 0));
        assert_eq!(view.error, "");
        assert!(view.stream.len() > 1, "the verdict's stream id: {view:#?}");
        browser
            .screenshot(&format!("live-{transport}-phone"), PHONE)
            .await;
        browser
            .screenshot(&format!("live-{transport}-desktop"), DESKTOP)
            .await;
        browser
            .client
            .set_window_size(PHONE.0, PHONE.1)
            .await
            .unwrap();
        server.stop().await.unwrap();
    }
    browser.close().await;
}

/// (b) The server resets every connection after each 3 event lines
/// (`faultResetEvery`): the page comes back by itself each time, EventSource
/// with its Last-Event-ID, the WebSocket with `stream` and `after`, and its
/// rows are still exactly `USER`'s stream: nothing lost, nothing twice.
///
/// The WebSocket gets the events in one burst, so that it resumes from the
/// middle of multi-line messages. SSE gets them one at a time, each once the
/// page has heard of it: a resumed event stream whose first write already
/// holds 3 lines is reset before those reach the socket, so a burst would
/// keep the page resuming from the same place (a server bug, reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resumes_after_each_drop_without_losing_or_doubling_a_row() {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let browser = Browser::start().await;
    let mut events: Vec<String> = STORY.iter().map(|(line, _)| line.to_string()).collect();
    events.extend(more_events(40));
    events.push(format!("{}|P|1|2", events.len() + 1));
    let last = seq_of(events.last().unwrap()).to_owned();
    let expected = stream_of(USER, &events);
    assert!(expected.len() > 9, "enough lines for three resets");
    for transport in ["sse", "ws"] {
        let (server, web) = web_server(&[("faultResetEvery", "3")]).await;
        browser.open(&page_url(web, transport, None)).await;
        browser
            .wait_for("state live", |view| view.state == "live")
            .await;
        let mut source = server.source().await;
        send(&mut source, &as_sent(&events)).await;
        let view = assert_rows(&browser, &expected, &last).await;
        assert!(view.resumes > 0, "the page resumed: {view:#?}");
        browser
            .screenshot(&format!("resumed-{transport}-phone"), PHONE)
            .await;
        server.stop().await.unwrap();
    }
    browser.close().await;
}

/// A burst of 600 broadcasts over WebSocket (many lines per message): the
/// page keeps the newest 500 rows, newest first, and counts all 600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_the_newest_500_rows() {
    const SENT: u64 = 600;
    const KEPT: u64 = 500;
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let browser = Browser::start().await;
    let (server, web) = web_server(&[]).await;
    browser.open(&page_url(web, "ws", None)).await;
    browser
        .wait_for("state live", |view| view.state == "live")
        .await;
    let mut source = server.source().await;
    let events: String = (1..=SENT).map(|seq| format!("{seq}|B\r\n")).collect();
    send(&mut source, &events).await;
    let view = browser
        .wait_for("every broadcast", |view| view.received == SENT)
        .await;
    let newest: Vec<String> = (SENT - KEPT + 1..=SENT)
        .map(|seq| format!("{seq}|B"))
        .collect();
    assert_eq!(view.lines, newest, "the newest {KEPT} rows, oldest first");
    assert_eq!(view.checkpoint_failures, 0, "{view:#?}");
    server.stop().await.unwrap();
    browser.close().await;
}

/// (c) With `authSecret` set, a bad token: the page says the server refused
/// it (401) and stops; a good one (minted as `followermaze token` mints
/// them): it goes live and shows the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_the_server_refuses_its_token() {
    const SECRET: &str = "the secret of tests/browser.rs";
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let browser = Browser::start().await;
    let key = Key::new(SECRET.as_bytes());
    let now = SystemTime::now();
    let good = key.mint(&USER.to_string(), Duration::from_secs(3600), now);
    let forged =
        Key::new(b"not the secret").mint(&USER.to_string(), Duration::from_secs(3600), now);
    for transport in ["sse", "ws"] {
        let (server, web) = web_server(&[("authSecret", SECRET)]).await;
        browser.open(&page_url(web, transport, Some(&forged))).await;
        let view = browser
            .wait_for("state error", |view| view.state == "error")
            .await;
        assert!(
            view.error.contains("401"),
            "#error names the status: {view:#?}"
        );
        assert!(view.state_text.starts_with("error: "), "{view:#?}");
        assert!(view.state_text.contains("401"), "{view:#?}");
        browser
            .screenshot(&format!("refused-{transport}-phone"), PHONE)
            .await;

        browser.open(&page_url(web, transport, Some(&good))).await;
        browser
            .wait_for("state live", |view| view.state == "live")
            .await;
        let mut source = server.source().await;
        let mut first = Vec::new();
        write_auth_line(
            &mut first,
            &key.mint(SOURCE_SUBJECT, Duration::from_secs(3600), now),
        );
        first.extend_from_slice(b"1|B\r\n2|P|3|7\r\n");
        send(&mut source, std::str::from_utf8(&first).unwrap()).await;
        let view = browser
            .wait_for("two rows", |view| view.lines.len() >= 2)
            .await;
        assert_eq!(view.lines, ["1|B", "2|P|3|7"]);
        assert_eq!(view.error, "");
        server.stop().await.unwrap();
    }
    browser.close().await;
}

/// The page stands alone and keeps secrets: nothing loaded from elsewhere
/// (it is served by a server that may have no way out), and no console
/// output (a token must never land in a log).
#[test]
fn the_page_is_self_contained_and_logs_nothing() {
    let page = include_str!("../src/web/page.html");
    for forbidden in [" src=", " href=", "@import", "url(", "//cdn", "console."] {
        assert!(!page.contains(forbidden), "the page holds {forbidden:?}");
    }
    assert!(
        page.contains(r#"<meta name="viewport""#),
        "readable on a phone"
    );
}
