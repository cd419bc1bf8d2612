//! The reorder buffer on shuffled batches (of 100, like the classic
//! verifier, and of 10,000), against the hash-map window the design card
//! describes, to show which is faster.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use hashbrown::HashMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use followermaze::order::reorder::ReorderBuffer;

const EVENTS: u64 = 1_000_000;

/// 1..=count, shuffled within consecutive batches of `batch`.
fn shuffled(count: u64, batch: usize) -> Vec<u64> {
    let mut seqs: Vec<u64> = (1..=count).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in seqs.chunks_mut(batch) {
        for i in (1..chunk.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            chunk.swap(i, (rng % (i as u64 + 1)) as usize);
        }
    }
    seqs
}

/// The sliding window as a hash map (hashbrown, foldhash: the fastest map we
/// depend on): park everything, release from `next`.
fn hash_map_window(seqs: &[u64], released: &mut Vec<u64>) {
    let mut parked: HashMap<u64, u64> = HashMap::new();
    let mut next = 1;
    for &seq in seqs {
        parked.insert(seq, seq);
        while let Some(item) = parked.remove(&next) {
            released.push(item);
            next += 1;
        }
    }
}

fn ring_window(seqs: &[u64], released: &mut Vec<u64>) {
    let mut buffer = ReorderBuffer::new(1 << 19);
    for &seq in seqs {
        buffer.insert(seq, seq, released);
    }
}

fn reorder(c: &mut Criterion) {
    let mut group = c.benchmark_group("reorder");
    group.throughput(Throughput::Elements(EVENTS));
    for batch in [100usize, 10_000] {
        let seqs = shuffled(EVENTS, batch);
        let mut released = Vec::with_capacity(EVENTS as usize);
        group.bench_with_input(BenchmarkId::new("ring", batch), &seqs, |b, seqs| {
            b.iter(|| {
                released.clear();
                ring_window(seqs, &mut released);
                assert_eq!(released.len() as u64, EVENTS);
            })
        });
        group.bench_with_input(BenchmarkId::new("hash_map", batch), &seqs, |b, seqs| {
            b.iter(|| {
                released.clear();
                hash_map_window(seqs, &mut released);
                assert_eq!(released.len() as u64, EVENTS);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, reorder);
criterion_main!(benches);
