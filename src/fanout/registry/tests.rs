//! The registry against models: delivery, sessions, and resumes from the
//! stream, driven through the actor's own methods.

use super::*;
use crate::batch::EventRef;
use crate::fanout::command::Resumed;
use crate::resume::history::{keep, Plan, UserRouter};
use followermaze_protocol::resume::{StreamId, Verdict};
use followermaze_protocol::{Event, EventKind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Event(EventKind),
    Connect(UserId),
    Disconnect(usize),
}

fn any_op() -> impl Strategy<Value = Op> {
    let user = 1u64..6;
    prop_oneof![
        (user.clone(), user.clone())
            .prop_map(|(from, to)| Op::Event(EventKind::Follow { from, to })),
        (user.clone(), user.clone())
            .prop_map(|(from, to)| Op::Event(EventKind::Unfollow { from, to })),
        user.clone()
            .prop_map(|from| Op::Event(EventKind::Status { from })),
        user.clone()
            .prop_map(|from| Op::Event(EventKind::Status { from })),
        (user.clone(), user.clone())
            .prop_map(|(from, to)| Op::Event(EventKind::Private { from, to })),
        Just(Op::Event(EventKind::Broadcast)),
        user.prop_map(Op::Connect),
        (0usize..8).prop_map(Op::Disconnect),
    ]
}

/// A model connection: its user, its outbox, the bytes it is owed, and
/// whether it is still connected.
type ModelConn = (UserId, Arc<Outbox>, Vec<u8>, bool);

proptest! {
    /// The registry's incremental bookkeeping (online filter, the
    /// online-followers index) against a model that recomputes every
    /// audience from scratch.
    #[test]
    fn prop_delivery_matches_a_naive_model(ops in prop::collection::vec(any_op(), 0..200)) {
        let (mut registry, _handle) = registry();
        let mut edges: std::collections::HashSet<(UserId, UserId)> = Default::default();
        let mut conns: Vec<ModelConn> = Vec::new();
        let mut seq = 0u64;
        for op in ops {
            match op {
                Op::Connect(user) => {
                    let outbox = Arc::new(Outbox::new());
                    registry.register(Hello::Classic(user), conns.len() as ConnId, outbox.clone());
                    conns.push((user, outbox, Vec::new(), true));
                }
                Op::Disconnect(index) => {
                    if let Some(conn) = conns.get_mut(index) {
                        if conn.3 {
                            registry.unregister(conn.0, index as ConnId);
                            conn.3 = false;
                        }
                    }
                }
                Op::Event(kind) => {
                    seq += 1;
                    let raw = format!("{seq}|{kind:?}\n");
                    let to_user = |user: UserId| move |c: &ModelConn| c.0 == user;
                    let wants: Box<dyn Fn(&ModelConn) -> bool> = match kind {
                        EventKind::Follow { from, to } => {
                            edges.insert((from, to));
                            Box::new(to_user(to))
                        }
                        EventKind::Unfollow { from, to } => {
                            edges.remove(&(from, to));
                            Box::new(|_| false)
                        }
                        EventKind::Broadcast => Box::new(|_| true),
                        EventKind::Private { to, .. } => Box::new(to_user(to)),
                        EventKind::Status { from } => {
                            let edges = edges.clone();
                            Box::new(move |c| edges.contains(&(c.0, from)))
                        }
                    };
                    for conn in conns.iter_mut() {
                        if conn.3 && wants(conn) {
                            conn.2.extend_from_slice(raw.as_bytes());
                        }
                    }
                    let event = Event { seq, kind, raw: bytes::Bytes::from(raw) };
                    registry.deliver(&OrderedBatch::new(vec![event], Instant::now()));
                }
            }
        }
        for (index, (_, outbox, expected, _)) in conns.iter().enumerate() {
            let mut got = Vec::new();
            outbox.take(&mut got);
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(expected),
                "connection {}", index
            );
        }
    }
}

#[derive(Debug, Clone)]
enum SessionOp {
    Event(EventKind),
    /// A new resumable client of this user (first connection).
    Join(UserId),
    /// Client `n` (mod the number joined) drops its connection.
    Drop(usize),
    /// Client `n` reconnects and resumes from what it received.
    Resume(usize),
}

fn any_session_op() -> impl Strategy<Value = SessionOp> {
    let user = 1u64..5;
    prop_oneof![
        4 => any_op().prop_filter_map("events only", |op| match op {
            Op::Event(kind) => Some(SessionOp::Event(kind)),
            _ => None,
        }),
        1 => user.prop_map(SessionOp::Join),
        1 => (0usize..6).prop_map(SessionOp::Drop),
        1 => (0usize..6).prop_map(SessionOp::Resume),
    ]
}

/// Whether `kind` concerns `user`, given the graph `edges` after it.
fn concerns(
    kind: EventKind,
    user: UserId,
    edges: &std::collections::HashSet<(UserId, UserId)>,
) -> bool {
    match kind {
        EventKind::Follow { to, .. } | EventKind::Private { to, .. } => to == user,
        EventKind::Unfollow { .. } => false,
        EventKind::Broadcast => true,
        EventKind::Status { from } => edges.contains(&(user, from)),
    }
}

/// One resumable client of the model.
struct ModelClient {
    user: UserId,
    /// The highest position it received.
    after: Seq,
    /// Its current connection: id, outbox, bytes owed on it.
    conn: Option<(ConnId, Arc<Outbox>, Vec<u8>)>,
}

proptest! {
    /// Sessions against a model that keeps, per session, every line
    /// that concerned its user since it opened: a resume gets `#OK` at
    /// its own position and exactly the lines above it, and live lines
    /// follow without loss or repetition.
    #[test]
    fn prop_sessions_match_a_model(ops in prop::collection::vec(any_session_op(), 0..150)) {
        let (mut registry, _handle) = registry();
        let stream = registry.sessions.stream();
        let mut edges: std::collections::HashSet<(UserId, UserId)> = Default::default();
        let mut retained: std::collections::HashMap<UserId, Vec<(Seq, Vec<u8>)>> = Default::default();
        let mut clients: Vec<ModelClient> = Vec::new();
        let mut finished: Vec<(Arc<Outbox>, Vec<u8>)> = Vec::new();
        let (mut seq, mut next_id) = (0u64, 0u64);
        let verdict = |stream: &StreamId, at: Seq| {
            let mut line = Vec::new();
            followermaze_protocol::resume::write_verdict(&mut line, Verdict::Ok, stream, at);
            line
        };
        for op in ops {
            match op {
                SessionOp::Join(user) => {
                    next_id += 1;
                    let outbox = Arc::new(Outbox::new());
                    let hello = Hello::Resumable { user, stream: None, after: 0 };
                    registry.register(hello, next_id, outbox.clone());
                    retained.entry(user).or_default();
                    clients.push(ModelClient {
                        user,
                        after: seq,
                        conn: Some((next_id, outbox, verdict(&stream, seq))),
                    });
                }
                SessionOp::Drop(n) if !clients.is_empty() => {
                    let count = clients.len();
                    let client = &mut clients[n % count];
                    if let Some((id, outbox, owed)) = client.conn.take() {
                        registry.unregister(client.user, id);
                        finished.push((outbox, owed));
                    }
                }
                SessionOp::Resume(n) if !clients.is_empty() => {
                    let count = clients.len();
                    let client = &mut clients[n % count];
                    if client.conn.is_none() {
                        next_id += 1;
                        let outbox = Arc::new(Outbox::new());
                        let hello = Hello::Resumable {
                            user: client.user,
                            stream: Some(stream),
                            after: client.after,
                        };
                        registry.register(hello, next_id, outbox.clone());
                        let mut owed = verdict(&stream, client.after);
                        for (line_seq, line) in &retained[&client.user] {
                            if *line_seq > client.after {
                                owed.extend_from_slice(line);
                                client.after = *line_seq;
                            }
                        }
                        client.conn = Some((next_id, outbox, owed));
                    }
                }
                SessionOp::Drop(_) | SessionOp::Resume(_) => {}
                SessionOp::Event(kind) => {
                    seq += 1;
                    match kind {
                        EventKind::Follow { from, to } => {
                            edges.insert((from, to));
                        }
                        EventKind::Unfollow { from, to } => {
                            edges.remove(&(from, to));
                        }
                        _ => {}
                    }
                    let raw = format!("{seq}|{kind:?}\n").into_bytes();
                    for (&user, lines) in retained.iter_mut() {
                        if concerns(kind, user, &edges) {
                            lines.push((seq, raw.clone()));
                        }
                    }
                    for client in clients.iter_mut() {
                        if let Some((_, _, owed)) = client.conn.as_mut() {
                            if concerns(kind, client.user, &edges) {
                                owed.extend_from_slice(&raw);
                                client.after = seq;
                            }
                        }
                    }
                    let event = Event { seq, kind, raw: bytes::Bytes::from(raw) };
                    registry.deliver(&OrderedBatch::new(vec![event], Instant::now()));
                }
            }
        }
        let open = clients.into_iter().filter_map(|client| client.conn).map(|(_, o, b)| (o, b));
        for (index, (outbox, owed)) in finished.into_iter().chain(open).enumerate() {
            let mut got = Vec::new();
            outbox.take(&mut got);
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&owed),
                "connection {}", index
            );
        }
    }
}

#[derive(Debug, Clone)]
enum StreamOp {
    Event(EventKind),
    /// A client of this user resumes from this many events back.
    Resume(UserId, u64),
    /// The oldest pending fetch is answered.
    Serve,
}

fn any_stream_op() -> impl Strategy<Value = StreamOp> {
    prop_oneof![
        6 => any_op().prop_filter_map("events only", |op| match op {
            Op::Event(kind) => Some(StreamOp::Event(kind)),
            _ => None,
        }),
        1 => (1u64..5, 0u64..30).prop_map(|(user, back)| StreamOp::Resume(user, back)),
        1 => Just(StreamOp::Serve),
    ]
}

proptest! {
    /// Resumes on a gateway that never served the session: whether
    /// the lines come from the (in-memory) stream or, for a later
    /// connection of the same user, from the session opened by an
    /// earlier one, every connection gets `#OK` at its own `after` and
    /// every line concerning its user above it, however many events
    /// the registry applied while its fetch was under way.
    #[test]
    fn prop_resumes_from_the_stream_match_a_model(
        ops in prop::collection::vec(any_stream_op(), 0..150),
    ) {
        let (registry, _handle) = registry();
        let (fetches, mut requests) = mpsc::channel(64);
        let mut registry = registry.with_history(fetches);
        let stream = registry.sessions.stream();
        let mut edges: std::collections::HashSet<(UserId, UserId)> = Default::default();
        // Every event, and the users (1..5) it concerns.
        let mut log: Vec<(Event, Vec<UserId>)> = Vec::new();
        let mut clients: Vec<(UserId, Seq, Arc<Outbox>)> = Vec::new();
        let mut pending: std::collections::VecDeque<FetchRequest> = Default::default();
        let mut next_id = 0;
        let serve = |registry: &mut Registry, log: &[(Event, Vec<UserId>)], request: FetchRequest| {
            let resume = &request.resume;
            let Plan::Log(plan) = &request.plan else {
                panic!("the registry's history never drops its edge log here");
            };
            let mut router = UserRouter::new(resume.user, plan);
            let mut lines = Vec::new();
            for stream_seq in plan.first_message..=plan.last_message {
                let event = &log[stream_seq as usize - 1].0;
                let range = (resume.after, resume.upto);
                let event = EventRef { seq: event.seq, kind: event.kind, raw: &event.raw };
                keep(&mut router, &[event], range, request.max_bytes, &mut lines)
                    .expect("within the bound");
            }
            registry.fetched(Resumed { resume: request.resume, lines: Some(lines) });
        };
        for op in ops {
            match op {
                StreamOp::Event(kind) => {
                    let seq = log.len() as Seq + 1;
                    match kind {
                        EventKind::Follow { from, to } => { edges.insert((from, to)); }
                        EventKind::Unfollow { from, to } => { edges.remove(&(from, to)); }
                        _ => {}
                    }
                    let concerned = (1..5).filter(|&user| concerns(kind, user, &edges)).collect();
                    let event = Event { seq, kind, raw: bytes::Bytes::from(format!("{seq}|{kind:?}\n")) };
                    let batch = OrderedBatch::new(vec![event.clone()], Instant::now()).in_message(seq);
                    registry.deliver(&batch);
                    log.push((event, concerned));
                }
                StreamOp::Resume(user, back) => {
                    let after = (log.len() as Seq).saturating_sub(back);
                    next_id += 1;
                    let outbox = Arc::new(Outbox::new());
                    let hello = Hello::Resumable { user, stream: Some(stream), after };
                    registry.register(hello, next_id, outbox.clone());
                    while let Ok(request) = requests.try_recv() {
                        pending.push_back(request);
                    }
                    clients.push((user, after, outbox));
                }
                StreamOp::Serve => {
                    if let Some(request) = pending.pop_front() {
                        serve(&mut registry, &log, request);
                    }
                }
            }
        }
        while let Some(request) = pending.pop_front() {
            serve(&mut registry, &log, request);
        }
        for (index, (user, after, outbox)) in clients.iter().enumerate() {
            let mut owed = Vec::new();
            followermaze_protocol::resume::write_verdict(&mut owed, Verdict::Ok, &stream, *after);
            for (event, concerned) in &log {
                if event.seq > *after && concerned.contains(user) {
                    owed.extend_from_slice(&event.raw);
                }
            }
            let mut got = Vec::new();
            outbox.take(&mut got);
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&owed),
                "connection {} of user {} after {}", index, user, after
            );
        }
    }
}

fn registry() -> (Registry, RegistryHandle) {
    Registry::new(
        RegistrySettings::with_bounds(1 << 20, 1000),
        Arc::new(Stats::default()),
    )
}

#[test]
fn a_gateway_holds_a_resume_from_ahead_of_it_until_it_gets_there() {
    let (registry, _handle) = registry();
    let (fetches, _requests) = mpsc::channel(4);
    let mut registry = registry.with_history(fetches);
    let stream = registry.sessions.stream();
    let outbox = Arc::new(Outbox::new());
    let hello = Hello::Resumable {
        user: 1,
        stream: Some(stream),
        after: 2,
    };
    registry.register(hello, 1, outbox.clone());
    let mut got = Vec::new();
    outbox.take(&mut got);
    assert!(got.is_empty(), "nothing before the gateway reaches 2");
    let broadcast = |seq: Seq| Event {
        seq,
        kind: EventKind::Broadcast,
        raw: bytes::Bytes::from(format!("{seq}|B\n")),
    };
    registry.deliver(&OrderedBatch::new(vec![broadcast(1)], Instant::now()));
    registry.deliver(&OrderedBatch::new(vec![broadcast(2)], Instant::now()));
    registry.deliver(&OrderedBatch::new(vec![broadcast(3)], Instant::now()));
    outbox.take(&mut got);
    let mut expected = Vec::new();
    followermaze_protocol::resume::write_verdict(&mut expected, Verdict::Ok, &stream, 2);
    expected.extend_from_slice(b"3|B\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&expected)
    );
}

#[tokio::test]
async fn a_registration_queued_behind_shutdown_is_told_to_drain() {
    let (registry, handle) = registry();
    let outbox = Arc::new(Outbox::new());
    handle.send(Command::Shutdown).await.unwrap();
    handle
        .send(Command::Register {
            hello: Hello::Classic(1),
            conn: 1,
            outbox: outbox.clone(),
        })
        .await
        .unwrap();
    registry.run().await;
    assert_eq!(outbox.closed(), Some(Closed::Drain));
}

#[test]
fn a_new_stream_changes_the_stream_id_even_with_no_session_open() {
    let (mut registry, _handle) = registry();
    let before = registry.sessions.stream();
    let event = |seq| Event {
        seq,
        kind: EventKind::Broadcast,
        raw: bytes::Bytes::from(format!("{seq}|B\n")),
    };
    registry.deliver(&OrderedBatch::new(vec![event(20)], Instant::now()));
    registry.deliver(&OrderedBatch::new(vec![event(1)], Instant::now()).starting_new_stream());
    let after = registry.sessions.stream();
    assert_ne!(before, after, "the old id must not stay current");
    // A client of the old stream resumes with a gap, not a false #OK.
    let outbox = Arc::new(Outbox::new());
    let hello = Hello::Resumable {
        user: 7,
        stream: Some(before),
        after: 1,
    };
    registry.register(hello, 1, outbox.clone());
    let mut got = Vec::new();
    outbox.take(&mut got);
    assert!(
        got.starts_with(b"#GAP|"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn a_large_release_does_not_cut_off_an_idle_client() {
    let (mut registry, _handle) = registry();
    let outbox = Arc::new(Outbox::new());
    registry.register(Hello::Classic(1), 1, outbox.clone());
    // 2 MiB for one client in one batch, over its 1 MiB bound.
    let events: Vec<Event> = (1..=200_000u64)
        .map(|seq| Event {
            seq,
            kind: followermaze_protocol::EventKind::Broadcast,
            raw: bytes::Bytes::from(format!("{seq:07}|B\r\n")),
        })
        .collect();
    registry.deliver(&OrderedBatch::new(events, Instant::now()));
    assert_eq!(outbox.closed(), None);
}
