//! The event source: a dedicated OS thread that opens the stream with
//! broadcasts until every client is registered, then generates, formats and
//! writes the main stream in large chunks.
//!
//! A thread rather than a task because it is CPU-bound from start to end
//! (the generator, formatting, hashing) and its socket writes are large and
//! blocking by design: a blocked write *is* the server's back-pressure, and
//! must not stall the client readers, which run on the async runtime.
//!
//! Order of effects for every batch, and why:
//! 1. reserve room in the queue of every client it concerns, first writing
//!    out everything buffered so far (those events are what will drain the
//!    queues: waiting with them unsent would deadlock);
//! 2. format the batch, shuffled, into the output buffer;
//! 3. queue each client's expectations and fold the exact bytes into its
//!    tally, before the bytes can reach the server;
//! 4. write the buffer once it holds [`CHUNK_BYTES`], stamping the chunk's
//!    send time first.
//!
//! Writes only ever happen between batches, so the server never sees half a
//! shuffled batch while the source waits (a gap it might give up on).

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtrb::Producer;

use super::expect::{line_hash, Expected, Tally};
use super::failure::{ClientRef, Failure};
use super::generator::{Batch, Generator, GeneratorSettings, MixCounts};
use super::line::{Event, LineWriter, LINE_SLOT_BYTES, MAX_LINE_BYTES};
use super::opening::{Opened, OPENING_TICK};
use super::shared::{Plan, Shared};
use followermaze_protocol::Seq;

/// Bytes buffered before a write: large writes keep the syscall count (and
/// the server's read count) low; 256 KiB is about 16,000 classic events.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

/// Longest single park while waiting for queue room; the wait itself is
/// unbounded (a stuck client fails by its own timeout, which wakes us).
const ROOM_TICK: Duration = Duration::from_millis(20);

/// Longest single sleep when pacing, so a failure is noticed promptly.
const PACE_TICK: Duration = Duration::from_millis(50);

/// The source stopped because a failure was recorded in [`Shared`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

/// What the source did, for the report and the final comparison.
#[derive(Debug, Clone)]
pub(crate) struct SourceOutcome {
    /// Per client: the exact notification bytes it is owed, folded.
    pub(crate) tallies: Vec<Tally>,
    /// Events written, opening included.
    pub(crate) events: u64,
    /// Opening broadcasts among them.
    pub(crate) opening: u64,
    /// Bytes written.
    pub(crate) bytes: u64,
    /// Main-stream events by kind.
    pub(crate) mix: MixCounts,
    /// Follow edges in the model at the end.
    pub(crate) edges: usize,
    /// How long the main stream took to generate and write.
    pub(crate) send_time: Duration,
    /// When the main stream started (the opening was over).
    pub(crate) main_started: Instant,
    /// How long the opening took (until every client was registered).
    pub(crate) opening_time: Duration,
}

/// What the source needs besides its socket.
#[derive(Debug, Clone)]
pub(crate) struct SourceSettings {
    /// The stream to generate.
    pub(crate) generator: GeneratorSettings,
    /// Total events, opening included (unless the opening needs more).
    pub(crate) total_events: u64,
    /// Events per second, 0 for unlimited.
    pub(crate) rate: u64,
    /// How long a write may block, and how long clients may take to
    /// register.
    pub(crate) timeout: Duration,
    /// Opening broadcasts already written before the source started (a
    /// resumable run's probe, [`super::probe`]): the opening carries on
    /// after them.
    pub(crate) opened: Opened,
}

/// See the module doc.
pub(crate) struct Source {
    /// To the server's event port; blocking, with a write timeout.
    stream: TcpStream,
    /// Settings.
    settings: SourceSettings,
    /// Failure slot, plan, clock, counters.
    shared: Arc<Shared>,
    /// One expectation queue per client.
    queues: Vec<Producer<Expected>>,
    /// One tally per client, of what it is owed.
    tallies: Vec<Tally>,
    /// The output buffer, kept at its full length so lines are formatted
    /// straight into it; `out[..used]` is not yet written, whole batches
    /// only. Room for a chunk plus one batch, plus one line slot (the
    /// writer's stores run past a line's end).
    out: Vec<u8>,
    /// Bytes of `out` in use.
    used: usize,
    /// Formats the lines into `out`.
    writer: LineWriter,
    /// Where each event of the current batch sits in `out`: (offset, len).
    spans: Vec<(usize, usize)>,
    /// Per client: entries the current batch needs (scratch, all zero
    /// between batches).
    need: Vec<u32>,
    /// Clients with a non-zero `need`.
    touched: Vec<u32>,
    /// Number of the chunk being filled.
    chunk: u32,
    /// Events in `out`.
    events_buffered: u64,
    /// Events written.
    events_written: u64,
    /// Bytes written.
    bytes_written: u64,
}

impl Source {
    /// A source writing to `stream`, queueing into `queues` (one per client,
    /// in client order).
    pub(crate) fn new(
        stream: TcpStream,
        settings: SourceSettings,
        shared: Arc<Shared>,
        queues: Vec<Producer<Expected>>,
    ) -> Source {
        let clients = queues.len();
        let max_batch = settings.generator.max_batch as usize;
        let opened = settings.opened;
        let writer = LineWriter::new(settings.generator.users);
        Source {
            stream,
            settings,
            shared,
            queues,
            tallies: vec![Tally::default(); clients],
            out: vec![0; CHUNK_BYTES + max_batch * MAX_LINE_BYTES + LINE_SLOT_BYTES],
            used: 0,
            writer,
            spans: Vec::with_capacity(max_batch),
            need: vec![0; clients],
            touched: Vec::with_capacity(clients),
            // One chunk per opening broadcast.
            chunk: u32::try_from(opened.broadcasts)
                .expect("far fewer opening broadcasts than 2^32"),
            events_buffered: 0,
            events_written: opened.broadcasts,
            bytes_written: opened.bytes,
        }
    }

    /// Runs the whole stream. On failure the reason is in `shared`.
    pub(crate) fn run(mut self) -> Result<SourceOutcome, Stopped> {
        self.shared.register_source_thread();
        // Loopback writes are large and few; Nagle would only delay the
        // small opening broadcasts.
        let _ = self.stream.set_nodelay(true);
        self.stream
            .set_write_timeout(Some(self.settings.timeout))
            .map_err(|error| self.fail_io(error))?;
        let clients = self.queues.len();
        let opening_started = Instant::now();
        let opening_end = if clients > 0 { self.opening()? } else { 0 };
        let opening_time = opening_started.elapsed();
        let final_seq = self.settings.total_events.max(opening_end + 1);
        self.shared.set_plan(Plan {
            opening_end,
            final_seq,
        });

        let mut generator = Generator::new(&self.settings.generator, opening_end + 1, final_seq);
        let mut batch = Batch::default();
        let started = Instant::now();
        let mut generated: u64 = 0;
        while generator.next_batch(&mut batch) {
            if self.shared.aborted() {
                return Err(Stopped);
            }
            self.reserve(&batch)?;
            self.append(&batch);
            generated += batch.events.len() as u64;
            if self.used >= CHUNK_BYTES {
                self.flush()?;
            }
            if self.settings.rate > 0 {
                self.pace(started, generated)?;
            }
        }
        self.flush()?;
        Ok(SourceOutcome {
            tallies: self.tallies,
            events: self.events_written,
            opening: opening_end,
            bytes: self.bytes_written,
            mix: generator.mix(),
            edges: generator.edges(),
            send_time: started.elapsed(),
            main_started: started,
            opening_time,
        })
    }

    /// Sends broadcasts `1, 2, ...` (after those already opened), one per
    /// write, until every client has received one; returns the last one's
    /// sequence number.
    fn opening(&mut self) -> Result<Seq, Stopped> {
        let clients = self.queues.len();
        let started = Instant::now();
        let mut seq: Seq = self.settings.opened.broadcasts;
        while self.shared.registered() < clients {
            if self.shared.aborted() {
                return Err(Stopped);
            }
            let waited = started.elapsed();
            if waited >= self.settings.timeout {
                let index = self.shared.first_unregistered().unwrap_or(0);
                self.shared.fail(Failure::NotRegistered {
                    client: ClientRef::new(index, self.settings.generator.client_users[index]),
                    registered: self.shared.registered(),
                    clients,
                    waited,
                });
                return Err(Stopped);
            }
            seq += 1;
            // One broadcast per chunk: chunk `seq - 1`, which the client
            // checkers rely on to time the opening.
            debug_assert_eq!(u64::from(self.chunk), seq - 1);
            self.put(&Event::broadcast(seq));
            self.events_buffered += 1;
            self.flush()?;
            let shared = &self.shared;
            shared.park_source(|| shared.registered() >= clients, OPENING_TICK);
        }
        Ok(seq)
    }

    /// Makes room in every queue `batch` needs, writing out what is
    /// buffered before waiting.
    fn reserve(&mut self, batch: &Batch) -> Result<(), Stopped> {
        for note in &batch.notes {
            let need = &mut self.need[note.client as usize];
            if *need == 0 {
                self.touched.push(note.client);
            }
            *need += 1;
        }
        // After a failure the loop goes on only to leave `need` all zero.
        let mut result = Ok(());
        for i in 0..self.touched.len() {
            let client = self.touched[i] as usize;
            let need = self.need[client] as usize;
            if result.is_ok() && self.queues[client].slots() < need {
                result = self.wait_for_room(client, need);
            }
            self.need[client] = 0;
        }
        self.touched.clear();
        result
    }

    fn wait_for_room(&mut self, client: usize, need: usize) -> Result<(), Stopped> {
        self.flush()?;
        loop {
            if self.shared.aborted() {
                return Err(Stopped);
            }
            let queue = &self.queues[client];
            if self.shared.park_source(|| queue.slots() >= need, ROOM_TICK) {
                return Ok(());
            }
        }
    }

    /// Formats `batch` in its shuffled order and queues what each client is
    /// owed, in sequence order.
    fn append(&mut self, batch: &Batch) {
        self.spans.clear();
        self.spans.resize(batch.events.len(), (0, 0));
        for &index in &batch.order {
            self.spans[index as usize] = self.put(&batch.events[index as usize]);
        }
        // Notes are grouped by event: hash each line once, however many
        // clients it goes to.
        let mut current = u32::MAX;
        let (mut hash, mut len) = (0, 0);
        for note in &batch.notes {
            if note.event != current {
                current = note.event;
                let (start, span) = self.spans[current as usize];
                hash = line_hash(&self.out[start..start + span]);
                len = span;
            }
            let client = note.client as usize;
            self.tallies[client].add_hashed(hash, len);
            let entry = Expected::new(&batch.events[current as usize], self.chunk);
            self.queues[client]
                .push(entry)
                .expect("reserve() made room for every note of the batch");
        }
        self.events_buffered += batch.events.len() as u64;
    }

    /// Formats `event` at the end of the buffer; returns (offset, length).
    #[inline]
    fn put(&mut self, event: &Event) -> (usize, usize) {
        let start = self.used;
        let slot: &mut [u8; LINE_SLOT_BYTES] = (&mut self.out[start..start + LINE_SLOT_BYTES])
            .try_into()
            .expect("the buffer has room for a chunk, a batch and a slot more");
        let len = self.writer.write(event, slot);
        self.used += len;
        (start, len)
    }

    /// Writes everything buffered as one chunk.
    fn flush(&mut self) -> Result<(), Stopped> {
        if self.used == 0 {
            return Ok(());
        }
        self.shared.clock.stamp(self.chunk);
        // Batches are consecutive ranges: the buffer ends at this sequence.
        self.shared.events_handed.store(
            self.events_written + self.events_buffered,
            std::sync::atomic::Ordering::Release,
        );
        if let Err(error) = self.stream.write_all(&self.out[..self.used]) {
            return Err(self.fail_io(error));
        }
        self.chunk += 1;
        self.bytes_written += self.used as u64;
        self.events_written += self.events_buffered;
        self.events_buffered = 0;
        self.used = 0;
        self.shared
            .events_sent
            .store(self.events_written, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Holds the stream to `rate` events per second: when ahead, writes out
    /// what is buffered (so it leaves on time) and sleeps until due.
    fn pace(&mut self, started: Instant, generated: u64) -> Result<(), Stopped> {
        let due = started + Duration::from_secs_f64(generated as f64 / self.settings.rate as f64);
        if Instant::now() >= due {
            return Ok(());
        }
        self.flush()?;
        loop {
            if self.shared.aborted() {
                return Err(Stopped);
            }
            let now = Instant::now();
            if now >= due {
                return Ok(());
            }
            std::thread::sleep((due - now).min(PACE_TICK));
        }
    }

    /// Records a socket error as the run's failure.
    fn fail_io(&self, error: std::io::Error) -> Stopped {
        let failure = match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::SourceStalled {
                events_sent: self.events_written,
                waited: self.settings.timeout,
            },
            _ => Failure::SourceIo {
                error: error.to_string(),
            },
        };
        self.shared.fail(failure);
        Stopped
    }
}
