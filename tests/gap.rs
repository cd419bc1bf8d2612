//! Gap skipping end to end: real server on 127.0.0.1:0, real TCP, default
//! gap settings (floor 500 ms, ceiling 10 s).

mod common;

use std::time::Duration;

use common::{get, send, TestServer};
use followermaze::Config;

/// How long the events behind the hole may take to arrive: about ten
/// floors, half the ceiling. Waiting the ceiling, as a burst followed by
/// silence once did, fails.
const RELEASE_BOUND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_hole_in_a_burst_from_a_source_gone_quiet_waits_about_the_floor() {
    let config = Config::default();
    assert_eq!(
        config.gap_timeout_max_ms, 10_000,
        "the old wait, for contrast"
    );
    let server = TestServer::start_with(config).await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    // 20,000 broadcasts in one write, 7,001 never sent; the source then
    // stays open and sends nothing more.
    let line = |seq: u32| format!("{seq}|B\r\n");
    let burst: String = (1..=20_000).filter(|&seq| seq != 7_001).map(line).collect();
    send(&mut source, &burst).await;
    let before_hole: String = (1..=7_000).map(line).collect();
    client.expect(&before_hole).await;
    let behind_hole: String = (7_002..=20_000).map(line).collect();
    let released = tokio::time::timeout(RELEASE_BOUND, client.expect(&behind_hole)).await;
    assert!(
        released.is_ok(),
        "the events behind the hole were held longer than {RELEASE_BOUND:?}"
    );
    assert_eq!(get(&server.stats.skipped_sequences), 1);
    assert_eq!(
        get(&server.stats.sources_connected),
        1,
        "the source stayed open"
    );
    drop(source);
    server.stop().await.unwrap();
}
