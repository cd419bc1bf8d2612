//! Event parsing over a realistic buffer of classic-mix lines fed in 64 KiB
//! reads: the source task's way (`take_lines` + `read_events`, one pass a
//! line), framing then `parse_event` per line (the way before it), and each
//! parser alone over lines already framed.

// `criterion_group!` defines an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use followermaze::ingest::lines::{
    read_events, Frame, LineReader, MAX_LINE_BYTES, READ_CHUNK_BYTES,
};
use followermaze_protocol::{parse_event, parse_event_at};

/// 200,000 lines in the classic mix: 55% status, 15% each follow, unfollow,
/// private, the odd broadcast; ids under 1000, like the verifier's default.
fn classic_lines(count: u64) -> Vec<u8> {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut text = String::new();
    for seq in 1..=count {
        let (from, to) = (next() % 1000, next() % 1000);
        let line = match next() % 10_000 {
            0 => format!("{seq}|B\r\n"),
            r if r < 5_500 => format!("{seq}|S|{from}\r\n"),
            r if r < 7_000 => format!("{seq}|F|{from}|{to}\r\n"),
            r if r < 8_500 => format!("{seq}|U|{from}|{to}\r\n"),
            _ => format!("{seq}|P|{from}|{to}\r\n"),
        };
        text.push_str(&line);
    }
    text.into_bytes()
}

fn parse(c: &mut Criterion) {
    const LINES: u64 = 200_000;
    let input = classic_lines(LINES);
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("classic_200k_lines_bytes", |b| {
        b.iter(|| read_all(&input, LINES))
    });
    group.throughput(Throughput::Elements(LINES));
    group.bench_function("classic_200k_lines_events", |b| {
        b.iter(|| read_all(&input, LINES))
    });
    group.bench_function("framed_then_parsed_200k_lines", |b| {
        b.iter(|| parse_all(&input, LINES))
    });
    // The parser alone, over lines already framed.
    let lines: Vec<&[u8]> = input.split_inclusive(|&byte| byte == b'\n').collect();
    group.bench_function("parse_event_only_200k_lines", |b| {
        b.iter(|| {
            let mut checksum = 0u64;
            for line in &lines {
                if let Ok((seq, _kind)) = parse_event(std::hint::black_box(line)) {
                    checksum = checksum.wrapping_add(seq);
                }
            }
            checksum
        })
    });
    // The one-pass reader alone, line by line over the whole text.
    group.bench_function("parse_event_at_only_200k_lines", |b| {
        b.iter(|| {
            let (mut checksum, mut start) = (0u64, 0);
            while let Some((end, seq, _kind)) = parse_event_at(std::hint::black_box(&input), start)
            {
                checksum = checksum.wrapping_add(seq);
                start = end;
            }
            checksum
        })
    });
    group.finish();
}

/// The source task's way: each read's complete lines taken as one chunk
/// and read in one pass a line.
fn read_all(input: &[u8], expected: u64) -> u64 {
    let mut reader = LineReader::new(MAX_LINE_BYTES);
    let mut events = Vec::with_capacity(READ_CHUNK_BYTES / 16);
    let mut checksum = 0u64;
    let mut count = 0u64;
    for chunk in input.chunks(READ_CHUNK_BYTES) {
        reader.read_buf().extend_from_slice(chunk);
        if let Some(lines) = reader.take_lines(|_| unreachable!("no line is too long")) {
            events.clear();
            read_events(&lines, MAX_LINE_BYTES, &mut events, |_| {
                unreachable!("all valid")
            });
            count += events.len() as u64;
            checksum = events
                .iter()
                .fold(checksum, |sum, event| sum.wrapping_add(event.seq));
        }
    }
    assert_eq!(count, expected);
    checksum
}

/// Framing first, a `Bytes` a line, then `parse_event` on each.
fn parse_all(input: &[u8], expected: u64) -> u64 {
    let mut reader = LineReader::new(MAX_LINE_BYTES);
    let mut checksum = 0u64;
    let mut events = 0u64;
    for chunk in input.chunks(READ_CHUNK_BYTES) {
        reader.read_buf().extend_from_slice(chunk);
        reader.drain(|frame| {
            if let Frame::Line(raw) = frame {
                if let Ok((seq, _kind)) = parse_event(&raw) {
                    checksum = checksum.wrapping_add(seq);
                    events += 1;
                }
            }
        });
    }
    assert_eq!(events, expected);
    checksum
}

criterion_group!(benches, parse);
criterion_main!(benches);
