//! Event parsing: framing (`lines`) plus `parse_event`, over a realistic
//! buffer of classic-mix lines fed in 64 KiB reads, as the source task does.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use followermaze::lines::{Frame, LineReader, MAX_LINE_BYTES, READ_CHUNK_BYTES};
use followermaze_protocol::parse_event;

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
        b.iter(|| parse_all(&input, LINES))
    });
    group.throughput(Throughput::Elements(LINES));
    group.bench_function("classic_200k_lines_events", |b| {
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
    group.finish();
}

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
