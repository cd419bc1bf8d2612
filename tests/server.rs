//! The server's behaviour end to end: real server on 127.0.0.1:0, real TCP.
//!
//! "Nobody else was notified" is asserted by sending a broadcast afterwards:
//! a client's next bytes must be exactly that broadcast.

mod common;

use common::{get, send, wait_until, within, TestServer};
use followermaze::Config;
use tokio::io::AsyncWriteExt;

fn config_with_gaps(floor_ms: u64, ceiling_ms: u64) -> Config {
    Config {
        gap_timeout_min_ms: floor_ms,
        gap_timeout_max_ms: ceiling_ms,
        ..Config::default()
    }
}

#[tokio::test]
async fn routes_each_event_type_to_the_right_clients() {
    let server = TestServer::start().await;
    let mut alice = server.client(1).await;
    let mut bob = server.client(2).await;
    let mut carol = server.client(3).await;
    let mut source = server.source().await;

    send(&mut source, "1|F|1|2\r\n").await; // 1 follows 2: 2 hears
    bob.expect("1|F|1|2\r\n").await;
    send(&mut source, "2|S|2\r\n").await; // 2's followers: 1
    alice.expect("2|S|2\r\n").await;
    send(&mut source, "3|P|1|3\r\n").await; // private to 3
    carol.expect("3|P|1|3\r\n").await;
    send(&mut source, "4|U|1|2\r\n5|S|2\r\n").await; // unfollow: nobody; then no followers
    send(&mut source, "6|B\r\n").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.expect("6|B\r\n").await;
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn status_goes_to_every_current_follower_only() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for user in 1..=4 {
        clients.push(server.client(user).await);
    }
    let mut source = server.source().await;
    send(
        &mut source,
        "1|F|1|4\n2|F|2|4\n3|F|3|4\n4|U|2|4\n5|S|4\n6|B\n",
    )
    .await;
    clients[0].expect("5|S|4\n6|B\n").await;
    clients[1].expect("6|B\n").await;
    clients[2].expect("5|S|4\n6|B\n").await;
    clients[3].expect("1|F|1|4\n2|F|2|4\n3|F|3|4\n6|B\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn follows_made_before_users_connect_still_count() {
    let server = TestServer::start().await;
    let mut source = server.source().await;
    send(&mut source, "1|F|10|20\r\n2|F|11|20\r\n").await;
    server.delivered(2).await;
    let mut follower = server.client(10).await;
    let mut other = server.client(11).await;
    send(&mut source, "3|S|20\r\n").await;
    follower.expect("3|S|20\r\n").await;
    other.expect("3|S|20\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn out_of_order_input_across_reads_comes_out_in_order() {
    let server = TestServer::start().await;
    let mut client = server.client(7).await;
    let mut source = server.source().await;
    let mut expected = String::new();
    for seq in 1..=50 {
        expected.push_str(&format!("{seq}|P|1|7\r\n"));
    }
    // Batches of ten, each reversed, each in its own write.
    for batch in (1..=50).collect::<Vec<u32>>().chunks(10) {
        let lines: String = batch
            .iter()
            .rev()
            .map(|seq| format!("{seq}|P|1|7\r\n"))
            .collect();
        send(&mut source, &lines).await;
        source.flush().await.unwrap();
    }
    client.expect(&expected).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn lines_split_at_every_byte_offset_arrive_whole_and_exact() {
    let server = TestServer::start().await;
    let mut client = server.client(5).await;
    let mut first_seq = 1;
    // One source connection per split offset; sequence state carries on
    // across them. Mixed CRLF and LF, and a leading zero that must survive.
    for offset in 0..=30usize {
        let text = format!(
            "{}|P|9|5\r\n{}|B\n{}|F|9|5\r\n",
            first_seq + 1,
            first_seq,
            first_seq + 2
        );
        let text = text.replacen(&format!("{first_seq}|B"), &format!("0{first_seq}|B"), 1);
        let offset = offset.min(text.len());
        let mut source = server.source().await;
        source.write_all(&text.as_bytes()[..offset]).await.unwrap();
        source.flush().await.unwrap();
        source.write_all(&text.as_bytes()[offset..]).await.unwrap();
        drop(source);
        client
            .expect(&format!(
                "0{}|B\n{}|P|9|5\r\n{}|F|9|5\r\n",
                first_seq,
                first_seq + 1,
                first_seq + 2
            ))
            .await;
        first_seq += 3;
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn two_connections_with_one_id_both_receive() {
    let server = TestServer::start().await;
    let mut phone = server.client(42).await;
    let mut laptop = server.client(42).await;
    let mut source = server.source().await;
    send(&mut source, "1|P|1|42\r\n2|B\r\n").await;
    phone.expect("1|P|1|42\r\n2|B\r\n").await;
    laptop.expect("1|P|1|42\r\n2|B\r\n").await;
    // One leaves; the other still gets everything.
    drop(phone);
    wait_until("one connection left", || {
        get(&server.stats.clients_connected) == 1
    })
    .await;
    send(&mut source, "3|P|1|42\r\n").await;
    laptop.expect("3|P|1|42\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn notifications_for_unconnected_users_are_dropped_silently() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    send(&mut source, "1|P|1|99\r\n2|F|1|98\r\n3|F|98|1\r\n4|B\r\n").await;
    client.expect("3|F|98|1\r\n4|B\r\n").await;
    assert_eq!(get(&server.stats.notifications), 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_gap_is_skipped_after_its_deadline_and_the_late_event_dropped() {
    let server = TestServer::start_with(config_with_gaps(50, 200)).await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    // Sequence 1 is lost; 2 and 3 wait behind it until the deadline.
    send(&mut source, "2|B\r\n3|B\r\n").await;
    client.expect("2|B\r\n3|B\r\n").await;
    assert_eq!(get(&server.stats.skipped_sequences), 1);
    // 1 turns up after all: too late, never delivered out of order.
    send(&mut source, "1|B\r\n4|B\r\n").await;
    client.expect("4|B\r\n").await;
    assert_eq!(get(&server.stats.late_events), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn events_parked_when_the_source_leaves_are_delivered_after_the_deadline() {
    let server = TestServer::start_with(config_with_gaps(50, 200)).await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    send(&mut source, "1|B\r\n3|B\r\n4|B\r\n").await;
    client.expect("1|B\r\n").await;
    drop(source);
    // No new source connects; the gap deadline alone releases 3 and 4.
    client.expect("3|B\r\n4|B\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_source_carries_on_the_sequence() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut first = server.source().await;
    send(&mut first, "1|B\r\n3|B\r\n").await;
    client.expect("1|B\r\n").await;
    drop(first);
    server.sources_gone().await;
    let mut second = server.source().await;
    send(&mut second, "2|B\r\n4|B\r\n").await;
    client.expect("2|B\r\n3|B\r\n4|B\r\n").await;
    assert_eq!(get(&server.stats.source_connections), 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn two_sources_at_once_are_merged_by_sequence() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut odd = server.source().await;
    let mut even = server.source().await;
    send(&mut even, "2|B\r\n4|B\r\n").await;
    send(&mut odd, "1|B\r\n3|B\r\n").await;
    // A sequence both send is delivered once.
    send(&mut even, "3|B\r\n5|B\r\n").await;
    client.expect("1|B\r\n2|B\r\n3|B\r\n4|B\r\n5|B\r\n").await;
    // Whichever copy of 3 came second was dropped: as a duplicate if the
    // first was still parked, as late if it had been released.
    let dropped = get(&server.stats.duplicate_events) + get(&server.stats.late_events);
    assert_eq!(dropped, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_source_starting_over_begins_a_new_stream() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut first = server.source().await;
    send(&mut first, "1|F|1|2\r\n2|B\r\n3|S|2\r\n").await;
    client.expect("2|B\r\n3|S|2\r\n").await;
    drop(first);
    server.sources_gone().await;
    // A second run from sequence 1: the old follow is forgotten, so the
    // status update reaches nobody.
    let mut second = server.source().await;
    send(&mut second, "2|S|2\r\n1|B\r\n3|B\r\n").await;
    client.expect("1|B\r\n3|B\r\n").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_delivers_what_was_read_and_closes_clients() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    send(&mut source, "1|B\r\n2|B\r\n4|B\r\n").await;
    server.delivered(2).await;
    wait_until("4 parked", || get(&server.stats.window_len) == 1).await;
    within("shutdown", server.stop()).await.unwrap();
    // Everything read was delivered in order (4 past its gap), then EOF.
    assert_eq!(client.read_to_end().await, "1|B\r\n2|B\r\n4|B\r\n");
}

#[tokio::test]
async fn a_huge_burst_is_written_in_few_syscalls() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    let mut text = String::new();
    for seq in 1..=20_000 {
        text.push_str(&format!("{seq}|P|2|1\r\n"));
    }
    send(&mut source, &text).await;
    client.expect(&text).await;
    let writes = get(&server.stats.client_writes);
    // One write per event would be 20,000; batching must do far better.
    assert!(writes < 2_000, "{writes} writes for 20,000 events");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn light_load_is_not_held_back_for_a_batch() {
    let server = TestServer::start().await;
    let mut client = server.client(1).await;
    let mut source = server.source().await;
    for seq in 1..=5 {
        // Each event must arrive on its own before the next is sent.
        send(&mut source, &format!("{seq}|B\r\n")).await;
        client.expect(&format!("{seq}|B\r\n")).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_source_that_drops_mid_batch_can_come_back_and_fill_the_gap() {
    // Floor 100 ms, ceiling 10 s: while no source is connected the ceiling
    // applies, so the gap survives well past the floor.
    let server = TestServer::start_with(config_with_gaps(100, 10_000)).await;
    let mut client = server.client(1).await;
    let mut first = server.source().await;
    send(&mut first, "1|B\r\n3|B\r\n").await;
    client.expect("1|B\r\n").await;
    drop(first);
    server.sources_gone().await;
    // Time passing is the condition under test: three floors, no skip.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(get(&server.stats.skipped_sequences), 0);
    // The source resends from the start of its batch: not a new stream,
    // since 3 is still waiting behind the gap.
    let mut second = server.source().await;
    send(&mut second, "1|B\r\n2|B\r\n4|B\r\n").await;
    client.expect("2|B\r\n3|B\r\n4|B\r\n").await;
    assert_eq!(get(&server.stats.late_events), 1);
    server.stop().await.unwrap();
}
