//! Resumable sessions end to end: the handshake, verdicts, replay,
//! checkpoints and fault injection, against the real server over real TCP.

mod common;

use common::{get, send, wait_until, within, TestServer};
use followermaze::Config;
use followermaze::DisconnectReason;
use followermaze_protocol::resume::{parse_control, Control, StreamId, Verdict};
use followermaze_protocol::{parse_event, Seq};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A resumable client as the protocol describes it: it remembers the stream
/// id and the highest position it received, and checks each checkpoint.
struct Resumer {
    /// The user id.
    user: u64,
    /// From the last control line received.
    stream: Option<StreamId>,
    /// The highest position received.
    after: Seq,
    /// The open connection.
    conn: Option<BufReader<TcpStream>>,
    /// Event lines since this connection's verdict, and their CRC.
    count: u64,
    crc: crc32fast::Hasher,
}

/// One line as the client sees it.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Event(Seq, String),
    Control(Control),
    /// The connection ended (EOF or an error such as a reset).
    Closed,
}

impl Resumer {
    fn new(user: u64) -> Resumer {
        Resumer {
            user,
            stream: None,
            after: 0,
            conn: None,
            count: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Connects with the resumable handshake and returns the verdict.
    async fn connect(&mut self, server: &TestServer) -> (Verdict, Seq) {
        let hello = format!(
            "{}|{}|{}\r\n",
            self.user,
            self.stream.map(|s| s.to_string()).unwrap_or_default(),
            self.after
        );
        self.connect_with(server, &hello).await
    }

    /// Connects sending `hello` verbatim and returns the verdict.
    async fn connect_with(&mut self, server: &TestServer, hello: &str) -> (Verdict, Seq) {
        let mut stream = within("connect", TcpStream::connect(server.clients))
            .await
            .unwrap();
        stream.write_all(hello.as_bytes()).await.unwrap();
        self.conn = Some(BufReader::new(stream));
        self.count = 0;
        self.crc = crc32fast::Hasher::new();
        match self.next().await {
            Line::Control(Control::Verdict { verdict, seq, .. }) => (verdict, seq),
            other => panic!("expected a verdict first, got {other:?}"),
        }
    }

    /// Reads the next line, tracking position and checking checkpoints.
    async fn next(&mut self) -> Line {
        let conn = self.conn.as_mut().expect("connected");
        let mut bytes = Vec::new();
        let read = within("a line", conn.read_until(b'\n', &mut bytes)).await;
        if !matches!(read, Ok(n) if n > 0) || !bytes.ends_with(b"\n") {
            self.conn = None;
            return Line::Closed;
        }
        if bytes.first() == Some(&b'#') {
            let control = parse_control(&bytes).unwrap_or_else(|| {
                panic!("bad control line {:?}", String::from_utf8_lossy(&bytes))
            });
            match control {
                Control::Verdict { stream, seq, .. } => {
                    self.stream = Some(stream);
                    self.after = seq;
                }
                Control::Checkpoint {
                    stream,
                    seq,
                    count,
                    crc32,
                } => {
                    assert_eq!(Some(stream), self.stream, "checkpoint of another stream");
                    assert_eq!(count, self.count, "checkpoint count");
                    assert_eq!(crc32, self.crc.clone().finalize(), "checkpoint CRC");
                    self.after = self.after.max(seq);
                }
            }
            return Line::Control(control);
        }
        let (seq, _) = parse_event(&bytes).expect("an event line");
        assert!(
            seq > self.after,
            "line {seq} repeats or goes back (after {})",
            self.after
        );
        self.after = seq;
        self.count += 1;
        self.crc.update(&bytes);
        Line::Event(seq, String::from_utf8(bytes).unwrap())
    }

    /// Reads lines until event `seq`, returning the event sequences seen
    /// (control lines skipped).
    async fn events_through(&mut self, seq: Seq) -> Vec<Seq> {
        let mut seen = Vec::new();
        while self.after < seq {
            match self.next().await {
                Line::Event(s, _) => seen.push(s),
                Line::Control(_) => {}
                Line::Closed => panic!("closed before {seq}; saw {seen:?}"),
            }
        }
        seen
    }

    /// Closes the connection and waits until the server has noticed.
    async fn drop_connection(&mut self, server: &TestServer) {
        let before = get(&server.stats.client_connects) - connected(server);
        self.conn = None;
        wait_until("the server to notice the drop", || {
            get(&server.stats.client_connects) - connected(server) > before
        })
        .await;
    }
}

/// Registered connections now.
fn connected(server: &TestServer) -> u64 {
    get(&server.stats.clients_connected)
}

/// Broadcasts `seqs` from `source`.
async fn broadcasts(source: &mut TcpStream, seqs: std::ops::RangeInclusive<Seq>) {
    let text: String = seqs.map(|seq| format!("{seq}|B\r\n")).collect();
    send(source, &text).await;
}

fn resumable(config: Config) -> Config {
    Config {
        checkpoint_interval_ms: 0,
        ..config
    }
}

#[tokio::test]
async fn a_first_connection_gets_ok_at_the_current_position() {
    let server = TestServer::start_with(resumable(Config::default())).await;
    let mut source = server.source().await;
    broadcasts(&mut source, 1..=10).await;
    server.delivered(10).await;
    let mut client = Resumer::new(7);
    assert_eq!(client.connect(&server).await, (Verdict::Ok, 10));
    broadcasts(&mut source, 11..=11).await;
    assert_eq!(client.events_through(11).await, vec![11]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_resume_within_the_window_gets_exactly_the_missed_lines() {
    let server = TestServer::start_with(resumable(Config::default())).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(7);
    assert_eq!(client.connect(&server).await, (Verdict::Ok, 0));
    // Lines of every kind that concern user 7, and some that do not.
    send(
        &mut source,
        "1|F|7|2\r\n2|S|2\r\n3|P|1|7\r\n4|P|1|8\r\n5|F|3|7\r\n",
    )
    .await;
    assert_eq!(client.events_through(5).await, vec![2, 3, 5]);
    client.drop_connection(&server).await;
    send(
        &mut source,
        "6|S|2\r\n7|U|7|2\r\n8|S|2\r\n9|B\r\n10|P|4|7\r\n11|S|3\r\n",
    )
    .await;
    server.delivered(11).await;
    assert_eq!(client.connect(&server).await, (Verdict::Ok, 5));
    assert_eq!(client.events_through(10).await, vec![6, 9, 10]);
    broadcasts(&mut source, 12..=12).await;
    assert_eq!(client.events_through(12).await, vec![12]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn events_flowing_during_reconnects_are_neither_lost_nor_repeated() {
    const LAST: Seq = 20_000;
    let server = TestServer::start_with(resumable(Config::default())).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(1);
    client.connect(&server).await;
    let writer = tokio::spawn(async move {
        for start in (1..=LAST).step_by(500) {
            broadcasts(&mut source, start..=(start + 499).min(LAST)).await;
            tokio::task::yield_now().await;
        }
        source
    });
    let mut received = Vec::new();
    let mut resumes = 0;
    while client.after < LAST {
        // Read a varying number of lines, then drop and resume at once.
        for _ in 0..(97 + resumes * 31) {
            match client.next().await {
                Line::Event(seq, _) => received.push(seq),
                Line::Control(_) => {}
                Line::Closed => panic!("the server closed the connection"),
            }
            if client.after == LAST {
                break;
            }
        }
        if client.after < LAST {
            client.conn = None;
            let (verdict, seq) = client.connect(&server).await;
            assert_eq!(verdict, Verdict::Ok, "resume {resumes}");
            assert_eq!(seq, *received.last().unwrap_or(&0));
            resumes += 1;
        }
    }
    let _source = within("the writer", writer).await.unwrap();
    assert!(resumes > 10, "{resumes} resumes");
    assert_eq!(received, (1..=LAST).collect::<Vec<_>>());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_purged_session_resumes_with_a_gap() {
    let config = Config {
        resume_window_secs: 0,
        ..resumable(Config::default())
    };
    let server = TestServer::start_with(config).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(3);
    client.connect(&server).await;
    broadcasts(&mut source, 1..=4).await;
    client.events_through(4).await;
    client.drop_connection(&server).await;
    wait_until("the session to be purged", || {
        get(&server.stats.sessions_purged) == 1
    })
    .await;
    broadcasts(&mut source, 5..=9).await;
    server.delivered(9).await;
    assert_eq!(client.connect(&server).await, (Verdict::Gap, 9));
    broadcasts(&mut source, 10..=10).await;
    assert_eq!(client.events_through(10).await, vec![10]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn retention_overflow_resumes_with_a_gap_at_the_floor_and_the_rest() {
    let config = Config {
        resume_buffer_bytes: 400,
        ..resumable(Config::default())
    };
    let server = TestServer::start_with(config).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(3);
    client.connect(&server).await;
    client.drop_connection(&server).await;
    broadcasts(&mut source, 1..=100).await;
    server.delivered(100).await;
    let (verdict, floor) = client.connect(&server).await;
    assert_eq!(verdict, Verdict::Gap);
    assert!(floor > 0 && floor < 100, "floor {floor}");
    assert_eq!(
        client.events_through(100).await,
        (floor + 1..=100).collect::<Vec<_>>()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn another_stream_a_restarted_server_or_a_position_ahead_get_a_gap() {
    let server = TestServer::start_with(resumable(Config::default())).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(5);
    client.connect(&server).await;
    broadcasts(&mut source, 1..=3).await;
    client.events_through(3).await;
    let stream = client.stream.expect("a stream id");

    // Another stream id.
    let mut other = Resumer::new(5);
    let hello = if stream.as_str() == "zzz" {
        "5|yyy|3\r\n"
    } else {
        "5|zzz|3\r\n"
    };
    assert_eq!(other.connect_with(&server, hello).await, (Verdict::Gap, 3));
    // A position ahead of the server's.
    let ahead = format!("5|{stream}|50\r\n");
    assert_eq!(other.connect_with(&server, &ahead).await, (Verdict::Gap, 3));
    server.stop().await.unwrap();

    // A restarted server has a new stream id and no sessions.
    let restarted = TestServer::start_with(resumable(Config::default())).await;
    let (verdict, seq) = client.connect(&restarted).await;
    assert_eq!((verdict, seq), (Verdict::Gap, 0));
    assert_ne!(client.stream, Some(stream));
    restarted.stop().await.unwrap();
}

#[tokio::test]
async fn two_connections_of_one_session_resume_each_from_its_own_position() {
    let server = TestServer::start_with(resumable(Config::default())).await;
    let mut source = server.source().await;
    let mut phone = Resumer::new(9);
    let mut laptop = Resumer::new(9);
    phone.connect(&server).await;
    laptop.connect(&server).await;
    broadcasts(&mut source, 1..=5).await;
    phone.events_through(5).await;
    laptop.events_through(2).await;
    phone.drop_connection(&server).await;
    broadcasts(&mut source, 6..=8).await;
    assert_eq!(laptop.events_through(8).await, vec![3, 4, 5, 6, 7, 8]);
    assert_eq!(phone.connect(&server).await, (Verdict::Ok, 5));
    assert_eq!(phone.events_through(8).await, vec![6, 7, 8]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn checkpoints_carry_a_count_and_crc_the_client_can_check() {
    let config = Config {
        checkpoint_interval_ms: 20,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(2);
    client.connect(&server).await;
    send(&mut source, "1|B\r\n2|P|1|2\r\n3|P|1|4\r\n4|B\r\n").await;
    // `next` checks every checkpoint's count and CRC against what came.
    let checkpoint = within("a checkpoint at 4", async {
        loop {
            if let Line::Control(Control::Checkpoint { seq: 4, count, .. }) = client.next().await {
                return count;
            }
        }
    })
    .await;
    assert_eq!(checkpoint, 3);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn classic_clients_never_see_a_control_line() {
    let config = Config {
        checkpoint_interval_ms: 10,
        fault_reset_every: 5,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut classic = server.client(1).await;
    let mut resumer = Resumer::new(1);
    resumer.connect(&server).await;
    let mut source = server.source().await;
    for seq in 1..=40 {
        broadcasts(&mut source, seq..=seq).await;
        server.delivered(seq).await;
    }
    let expected: String = (1..=40).map(|seq| format!("{seq}|B\r\n")).collect();
    classic.expect(&expected).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_reset_every_few_lines_still_receives_its_whole_stream() {
    const LAST: Seq = 2_000;
    let config = Config {
        fault_reset_every: 37,
        checkpoint_interval_ms: 5,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut source = server.source().await;
    let mut client = Resumer::new(4);
    client.connect(&server).await;
    let writer = tokio::spawn(async move {
        for start in (1..=LAST).step_by(100) {
            broadcasts(&mut source, start..=start + 99).await;
        }
        source
    });
    let mut received = Vec::new();
    let mut resumes = 0;
    while client.after < LAST {
        match client.next().await {
            Line::Event(seq, _) => received.push(seq),
            Line::Control(_) => {}
            Line::Closed => {
                let (verdict, _) = client.connect(&server).await;
                assert_eq!(verdict, Verdict::Ok);
                resumes += 1;
            }
        }
    }
    let _source = within("the writer", writer).await.unwrap();
    assert_eq!(received, (1..=LAST).collect::<Vec<_>>());
    assert!(resumes >= 2000 / 37 - 1, "{resumes} resumes");
    assert!(server.stats.disconnects(DisconnectReason::FaultReset) >= resumes);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_resumable_handshake_closes_only_that_connection() {
    let server = TestServer::start().await;
    let mut good = server.client(1).await;
    let long_stream = format!("2932|{}|1\r\n", "a".repeat(33));
    let too_long = format!("2932||{}\r\n", "1".repeat(100));
    for hello in [
        "2932|x\r\n",
        "2932|ABC|1\r\n",
        "2932||-1\r\n",
        long_stream.as_str(),
        too_long.as_str(),
    ] {
        let before = server.stats.disconnects(DisconnectReason::BadHandshake);
        let mut stream = TcpStream::connect(server.clients).await.unwrap();
        stream.write_all(hello.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = within("the bad client to be closed", stream.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "{hello:?} got {rest:?}");
        wait_until("the bad handshake to be counted", || {
            server.stats.disconnects(DisconnectReason::BadHandshake) > before
        })
        .await;
    }
    let mut source = server.source().await;
    broadcasts(&mut source, 1..=1).await;
    good.expect("1|B\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn after_a_fault_reset_the_user_is_refused_until_its_outage_ends() {
    // An outage far longer than the test: every reconnect within it is
    // refused, whatever the build's speed.
    let config = Config {
        fault_reset_every: 3,
        fault_offline_ms: 600_000,
        checkpoint_interval_ms: 0,
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let mut reset = Resumer::new(1);
    reset.connect(&server).await;
    let mut bystander = Resumer::new(2);
    bystander.connect(&server).await;
    let mut source = server.source().await;
    broadcasts(&mut source, 1..=5).await;
    for seq in 1..=3 {
        assert!(matches!(reset.next().await, Line::Event(got, _) if got == seq));
    }
    assert!(matches!(reset.next().await, Line::Closed));
    // Its reconnects are closed at once, before any verdict, and counted.
    for attempt in 1..=2 {
        let hello = format!("1|{}|3\r\n", reset.stream.unwrap());
        let mut stream = within("connect", TcpStream::connect(server.clients))
            .await
            .unwrap();
        stream.write_all(hello.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = within("the refusal", stream.read_to_end(&mut got)).await;
        assert!(got.is_empty(), "refused without a verdict: {got:?}");
        assert_eq!(get(&server.stats.fault_refused_reconnects), attempt);
    }
    // The other user, not reset, is not refused: its own first reset comes
    // after three lines too, and its stream is whole up to it.
    for seq in 1..=3 {
        assert!(matches!(bystander.next().await, Line::Event(got, _) if got == seq));
    }
    server.stop().await.unwrap();
}
