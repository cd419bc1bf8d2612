//! Registry dispatch without sockets: apply events to the follower graph
//! and stage their bytes into clients' outboxes. Status updates to N
//! followers, and broadcasts to N clients.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use followermaze::batch::OrderedBatch;
use followermaze::fanout::outbox::Outbox;
use followermaze::Stats;
use followermaze::{Config, Registry, RegistryHandle};
use followermaze_protocol::resume::Hello;
use followermaze_protocol::{Event, EventKind};

const BATCH: u64 = 1_000;

fn event(seq: u64, kind: EventKind) -> Event {
    let raw = match kind {
        EventKind::Follow { from, to } => format!("{seq}|F|{from}|{to}\r\n"),
        EventKind::Status { from } => format!("{seq}|S|{from}\r\n"),
        EventKind::Broadcast => format!("{seq}|B\r\n"),
        _ => unreachable!("not used here"),
    };
    Event {
        seq,
        kind,
        raw: Bytes::from(raw),
    }
}

/// A registry with `clients` connected users 1..=clients, and the outboxes
/// (drained by the benchmark loop, standing in for writers).
fn registry_with(clients: u64) -> (Registry, RegistryHandle, Vec<Arc<Outbox>>) {
    let mut settings = Config::default().registry();
    settings.max_client_pending_bytes = usize::MAX;
    settings.max_follow_edges = usize::MAX;
    // The handle is the channel's sender, unused here: benchmarks call in
    // directly. It is returned only to keep the channel open.
    let (mut registry, handle) = Registry::new(settings, Arc::new(Stats::default()));
    let mut outboxes = Vec::new();
    for user in 1..=clients {
        let outbox = Arc::new(Outbox::new());
        registry.register(Hello::Classic(user), user, outbox.clone());
        outboxes.push(outbox);
    }
    (registry, handle, outboxes)
}

fn drain(outboxes: &[Arc<Outbox>], spare: &mut Vec<u8>) {
    for outbox in outboxes {
        outbox.take(spare);
        spare.clear();
    }
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    let mut spare = Vec::new();
    for n in [10u64, 100, 1_000] {
        // Status updates of user 0, whom users 1..=n follow.
        let (mut registry, _handle, outboxes) = registry_with(n);
        let follows: Vec<Event> = (1..=n)
            .map(|user| event(user, EventKind::Follow { from: user, to: 0 }))
            .collect();
        registry.deliver(&OrderedBatch::new(follows, Instant::now()));
        drain(&outboxes, &mut spare);
        let statuses: Vec<Event> = (0..BATCH)
            .map(|i| event(n + 1 + i, EventKind::Status { from: 0 }))
            .collect();
        let statuses = OrderedBatch::new(statuses, Instant::now());
        group.throughput(Throughput::Elements(BATCH * n));
        group.bench_with_input(
            BenchmarkId::new("status_to_followers", n),
            &statuses,
            |b, statuses| {
                b.iter(|| {
                    registry.deliver(statuses);
                    drain(&outboxes, &mut spare);
                })
            },
        );

        let (mut registry, _handle, outboxes) = registry_with(n);
        let broadcasts: Vec<Event> = (1..=BATCH)
            .map(|seq| event(seq, EventKind::Broadcast))
            .collect();
        let broadcasts = OrderedBatch::new(broadcasts, Instant::now());
        group.bench_with_input(
            BenchmarkId::new("broadcast_to_clients", n),
            &broadcasts,
            |b, broadcasts| {
                b.iter(|| {
                    registry.deliver(broadcasts);
                    drain(&outboxes, &mut spare);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
