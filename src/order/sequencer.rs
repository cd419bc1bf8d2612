//! The sequencer task: merges what every source connection parsed, puts it
//! in order with the reorder buffer, decides when a gap is lost, and hands
//! [`OrderedBatch`](crate::batch::OrderedBatch)es to the registry.
//!
//! It owns the [`ReorderBuffer`] and the gap deadline, so sequence state
//! outlives any one source connection: a source may disconnect and another
//! carry on where it left off. Two sources open at once are merged by
//! sequence number; a sequence sent by both is delivered once.
//!
//! A *new stream* is recognised when a source connection's first event is
//! behind the window and among the first [`NEW_STREAM_MAX_FIRST_SEQ`], while
//! no other source is open and nothing is parked (a verifier run again
//! against a long-lived server): the sequence restarts at 1, and the next
//! batch is marked as starting a new stream, so the registry forgets the
//! follower graph just before applying it. Connected clients stay. A
//! source that dropped mid-batch and resends leaves a gap parked, so it
//! carries on the old stream instead.

use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::batch::{BatchBuilder, BatchEvent, TaggedRef, MAX_DELIVER_EVENTS};
use crate::ops::stats::{LogThrottle, Stats};
use crate::order::gap::GapPolicy;
use crate::order::parked::Parked;
use crate::order::reorder::{Release, ReorderBuffer};
use crate::order::sink::{BatchSink, SinkGone};
use crate::settings::SequencerSettings;
use bytes::Bytes;
use followermaze_protocol::{Seq, Tagged};

/// Identifies one source connection.
pub(crate) type SourceId = u64;

/// What source connections tell the sequencer.
#[derive(Debug)]
pub(crate) enum SourceMsg {
    /// A source connected.
    Opened(SourceId),
    /// Events parsed from one read, in arrival order, and when it was read.
    Events(SourceId, ReadEvents, std::time::Instant),
    /// A source disconnected.
    Closed(SourceId),
}

/// The events of one read, in arrival order, and the chunk their lines
/// are in: one reference count for the read, none per event.
#[derive(Debug)]
pub(crate) struct ReadEvents {
    /// The read's complete lines.
    pub chunk: Bytes,
    /// Each event, its line a span of `chunk`.
    pub events: Vec<BatchEvent>,
}

/// What the window releases, copied straight into the batches to send, at
/// most [`MAX_DELIVER_EVENTS`] each: a filled or skipped gap can release
/// the whole window at once, and one huge batch would hold up the registry
/// and land in every client's outbox in one piece.
struct Releases {
    /// Full batches, in order.
    full: Vec<BatchBuilder>,
    /// The batch being filled, after them.
    filling: BatchBuilder,
}

impl Releases {
    /// Room for about one read's worth: `events` events, `bytes` of lines.
    fn with_capacity(events: usize, bytes: usize) -> Releases {
        Releases {
            full: Vec::new(),
            filling: BatchBuilder::with_capacity(events.min(MAX_DELIVER_EVENTS), bytes),
        }
    }

    fn len(&self) -> usize {
        self.full.len() * MAX_DELIVER_EVENTS + self.filling.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Releases {
    #[inline]
    fn push(&mut self, seq: Seq, kind: Tagged, raw: &[u8]) {
        if self.filling.events_full() {
            // Sized for one read and the window released more: twice the
            // room, but never past a full batch's (Vec's doubling would
            // make a 4096-event batch of a 3800-event read 7600 events' room).
            let room = (2 * self.filling.len()).clamp(256, MAX_DELIVER_EVENTS);
            self.filling.reserve_events_to(room);
        }
        self.filling.push(seq, kind, raw);
        if self.filling.len() == MAX_DELIVER_EVENTS {
            // The next batch's lines are about as long as this one's.
            let bytes = self.filling.line_bytes();
            let next = BatchBuilder::with_capacity(MAX_DELIVER_EVENTS, bytes + bytes / 16);
            self.full.push(std::mem::replace(&mut self.filling, next));
        }
    }
}

/// An event that waited in the window.
impl Release<Parked> for Releases {
    #[inline]
    fn release(&mut self, event: &Parked) {
        self.push(event.seq, event.tagged, event.raw());
    }
}

/// An event that arrived in order, its line copied from the read's chunk.
impl Release<TaggedRef<'_>> for Releases {
    #[inline]
    fn release(&mut self, event: &TaggedRef<'_>) {
        self.push(event.seq, event.tagged, event.raw);
    }
}

/// How many parsed reads may wait for the sequencer. Each is at most one
/// 64 KiB read's worth of events (~190 KiB with their 32-byte headers); the
/// bound makes a slow pipeline push back on the source's TCP window instead
/// of buffering.
pub(crate) const SOURCE_QUEUE: usize = 8;

/// A new connection's first event opens a new stream only if its sequence
/// is at most this: a fresh stream starts at 1 (shuffled within a first
/// batch), while a source that reconnects and resends recent events starts
/// near where the old one stopped.
pub(crate) const NEW_STREAM_MAX_FIRST_SEQ: Seq = 1024;

/// A gap being waited on.
#[derive(Debug, Clone, Copy)]
struct OpenGap {
    /// The missing sequence at the front of the window.
    front: Seq,
    /// When it became the front. No gap outlives `since + ceiling`.
    since: Instant,
    /// When the wait started: `since`, or later when a source connected
    /// while none was (it may resend what is missing, so it gets a wait of
    /// its own, within the ceiling). The policy's deadline counts from here.
    wait_from: Instant,
}

/// See the module doc.
pub(crate) struct Sequencer {
    /// Parsed events in.
    inbox: mpsc::Receiver<SourceMsg>,
    /// Ordered events out: the registry, or the cluster's publisher.
    sink: BatchSink,
    /// The window.
    buffer: ReorderBuffer<Parked>,
    /// The skip deadline.
    policy: GapPolicy,
    /// The gap being waited on, if any.
    gap: Option<OpenGap>,
    /// Open sources, and whether each is yet to send its first event.
    sources: HashMap<SourceId, bool>,
    /// A new stream started and no batch has told the registry yet: the
    /// next batch sent carries the mark.
    new_stream: bool,
    /// Counters shared with the rest of the server.
    stats: Arc<Stats>,
    /// Rate limit for late/duplicate warnings.
    drop_log: LogThrottle,
}

impl Sequencer {
    /// Creates the task and the sender sources use; run it with
    /// [`Sequencer::run`].
    pub(crate) fn new(
        settings: &SequencerSettings,
        sink: BatchSink,
        stats: Arc<Stats>,
    ) -> (Sequencer, mpsc::Sender<SourceMsg>) {
        let (tx, rx) = mpsc::channel(SOURCE_QUEUE);
        let sequencer = Sequencer {
            inbox: rx,
            sink,
            buffer: ReorderBuffer::new(settings.max_window),
            policy: GapPolicy::new(settings.gap_floor, settings.gap_ceiling),
            gap: None,
            sources: HashMap::new(),
            new_stream: false,
            stats,
            drop_log: LogThrottle::new(Duration::from_secs(5)),
        };
        (sequencer, tx)
    }

    /// Runs until every sender is dropped (shutdown), then releases whatever
    /// is parked, in order, and tells the registry to stop.
    pub(crate) async fn run(mut self) {
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = tokio::time::sleep_until(far_future);
        tokio::pin!(timer);
        loop {
            let deadline = self.deadline();
            if let Some(deadline) = deadline {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
            }
            tokio::select! {
                message = self.inbox.recv() => match message {
                    Some(message) => {
                        if self.handle(message).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                () = &mut timer, if deadline.is_some() => {
                    // The missing event may be queued already (select! picks
                    // at random among ready branches): place what is queued
                    // first, and skip only if the gap is still overdue.
                    while let Ok(message) = self.inbox.try_recv() {
                        if self.handle(message).await.is_err() {
                            return;
                        }
                    }
                    let overdue = self.deadline().is_some_and(|due| due <= Instant::now());
                    if overdue && self.skip_gap().await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut released = Releases::with_capacity(0, 0);
        let skipped = self.buffer.flush(&mut released);
        if !released.is_empty() {
            tracing::info!(
                events = released.len(),
                skipped,
                "shutdown: released parked events past their gaps"
            );
        }
        self.publish_stats();
        // If the sink is already gone there is nobody left to deliver to.
        let _ = self.send(released, std::time::Instant::now()).await;
        self.sink.finish().await;
    }

    /// This sequencer, carrying on after event `position` (a restarted
    /// cluster sequencer: the stream already holds everything up to it, so
    /// a source's resend of those events is late and dropped).
    pub(crate) fn starting_after(mut self, position: Seq) -> Sequencer {
        self.buffer.restart_at(position + 1);
        self.publish_stats();
        self
    }

    /// When the open gap, if any, will be skipped.
    fn deadline(&self) -> Option<Instant> {
        let gap = self.gap?;
        Some(gap_deadline(
            &self.policy,
            gap,
            self.buffer.missing(),
            !self.sources.is_empty(),
        ))
    }

    async fn handle(&mut self, message: SourceMsg) -> Result<(), SinkGone> {
        match message {
            SourceMsg::Opened(source) => {
                if self.sources.is_empty() {
                    // No stream flowed while no source was connected; and
                    // this one may resend what a gap is missing.
                    let now = Instant::now();
                    self.policy.restart_clock(now.into_std());
                    if let Some(gap) = &mut self.gap {
                        gap.wait_from = now;
                    }
                }
                self.sources.insert(source, true);
                Ok(())
            }
            SourceMsg::Closed(source) => {
                self.sources.remove(&source);
                Ok(())
            }
            SourceMsg::Events(source, events, read_at) => self.place(source, events, read_at).await,
        }
    }

    async fn place(
        &mut self,
        source: SourceId,
        read: ReadEvents,
        read_at: std::time::Instant,
    ) -> Result<(), SinkGone> {
        let ReadEvents { chunk, events } = read;
        let now = Instant::now();
        // When the source read them, not when they got here: the rate is
        // the stream's, not the sequencer's.
        self.policy.observe(events.len(), read_at);
        let mut released = Releases::with_capacity(events.len(), chunk.len());
        let events = events.into_iter();
        if self.sources.get(&source) == Some(&true) {
            self.sources.insert(source, false);
            if let Some(first) = events.as_slice().first() {
                // A source resending after a drop mid-batch leaves a gap
                // behind it: nothing parked means the old stream was whole.
                let starts_over = (1..=NEW_STREAM_MAX_FIRST_SEQ).contains(&first.seq)
                    && first.seq < self.buffer.next_expected()
                    && self.buffer.parked() == 0;
                if starts_over && self.sources.len() == 1 {
                    self.restart(first.seq);
                }
            }
        }
        let before = self.buffer.stats();
        for event in events {
            let arrival = TaggedRef {
                seq: event.seq,
                tagged: event.tagged(),
                raw: event.line(&chunk),
            };
            self.buffer.insert(event.seq, arrival, &mut released);
        }
        let after = self.buffer.stats();
        let (late, duplicate, too_far, skipped) = (
            after.late - before.late,
            after.duplicate - before.duplicate,
            after.too_far_ahead - before.too_far_ahead,
            after.skipped - before.skipped,
        );
        if late + duplicate + too_far + skipped > 0 {
            if let Some(suppressed) = self.drop_log.allow() {
                tracing::warn!(
                    late,
                    duplicate,
                    too_far_ahead = too_far,
                    skipped_for_room = skipped,
                    next_expected = self.buffer.next_expected(),
                    window = self.buffer.max_window(),
                    suppressed,
                    "events dropped or skipped by the reorder window"
                );
            }
        }
        self.track_gap(now);
        self.publish_stats();
        self.send(released, read_at).await
    }

    /// Opens, keeps or closes the gap record after the window changed.
    fn track_gap(&mut self, now: Instant) {
        if self.buffer.parked() == 0 {
            self.gap = None;
            return;
        }
        let front = self.buffer.next_expected();
        match self.gap {
            Some(gap) if gap.front == front => {}
            _ => {
                self.gap = Some(OpenGap {
                    front,
                    since: now,
                    wait_from: now,
                })
            }
        }
    }

    async fn skip_gap(&mut self) -> Result<(), SinkGone> {
        let now = Instant::now();
        let waited = self
            .gap
            .map(|gap| now.saturating_duration_since(gap.since))
            .unwrap_or_default();
        let mut released = Releases::with_capacity(0, 0);
        let skipped = self.buffer.skip_gap(&mut released);
        tracing::warn!(
            first = skipped.start,
            last = skipped.end.saturating_sub(1),
            count = skipped.end - skipped.start,
            waited_ms = waited.as_millis() as u64,
            rate = self.policy.events_per_sec(now.into_std()) as u64,
            quiet_ms = self.policy.quiet_for(now.into_std()).as_millis() as u64,
            sources = self.sources.len(),
            "gave up on missing events: skipped"
        );
        self.track_gap(now);
        self.publish_stats();
        self.send(released, std::time::Instant::now()).await
    }

    /// A new stream starts (see the module doc). Only called with nothing
    /// parked, so nothing of the old stream is lost, and every batch sent
    /// from now on belongs to the new stream.
    fn restart(&mut self, first_seq: Seq) {
        debug_assert_eq!(self.buffer.parked(), 0);
        tracing::info!(
            previous_next = self.buffer.next_expected(),
            first_seq,
            "new source started a new stream: sequence restarts at 1, follower graph cleared"
        );
        self.buffer.restart();
        self.gap = None;
        self.new_stream = true;
    }

    fn publish_stats(&self) {
        let stats = self.buffer.stats();
        Stats::set(&self.stats.late_events, stats.late);
        Stats::set(&self.stats.duplicate_events, stats.duplicate);
        Stats::set(&self.stats.too_far_events, stats.too_far_ahead);
        Stats::set(&self.stats.skipped_sequences, stats.skipped);
        Stats::set(&self.stats.window_len, self.buffer.parked() as u64);
        Stats::set(&self.stats.next_sequence, self.buffer.next_expected());
    }

    /// Hands `released` to the registry, in batches of at most
    /// [`MAX_DELIVER_EVENTS`]: a filled or skipped gap can release the whole
    /// window at once, and one huge batch would hold up the registry and
    /// land in every client's outbox in one piece.
    async fn send(
        &mut self,
        released: Releases,
        read_at: std::time::Instant,
    ) -> Result<(), SinkGone> {
        for batch in released.full.into_iter().chain([released.filling]) {
            if !batch.is_empty() {
                self.deliver(batch, read_at).await?;
            }
        }
        Ok(())
    }

    /// Sends `events` (non-empty, released in order by the window) as one
    /// batch, marked if it is the first of a new stream.
    async fn deliver(
        &mut self,
        events: BatchBuilder,
        read_at: std::time::Instant,
    ) -> Result<(), SinkGone> {
        let mut batch = events.finish(read_at);
        if std::mem::take(&mut self.new_stream) {
            batch = batch.starting_new_stream();
        }
        self.sink.deliver(batch).await
    }
}

/// When `gap`, with `missing` absent sequences, is to be skipped. While no
/// source is connected the wait is the longest allowed, the ceiling: a
/// source that dropped mid-batch may reconnect and resend what is missing.
/// Otherwise the policy decides from the arrival rate and any silence (see
/// [`crate::order::gap`]), counting from when the wait started, and never past the
/// ceiling from when the gap opened: a source that keeps reconnecting
/// cannot hold a gap open for ever.
fn gap_deadline(policy: &GapPolicy, gap: OpenGap, missing: u64, source_connected: bool) -> Instant {
    let ceiling = gap.since + policy.ceiling();
    if !source_connected {
        return ceiling;
    }
    Instant::from_std(policy.deadline(gap.wait_from.into_std(), missing)).min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Registry;
    use crate::settings::RegistrySettings;
    use bytes::Bytes;
    use followermaze_protocol::parse_event;

    const FLOOR: Duration = Duration::from_millis(500);
    const CEILING: Duration = Duration::from_secs(10);

    /// A sequencer whose registry is never run (its queue holds the few
    /// batches these tests release), and the registry kept alive.
    fn sequencer() -> (Sequencer, Registry) {
        let stats = Arc::new(Stats::default());
        let (registry, handle) =
            Registry::new(RegistrySettings::with_bounds(1 << 20, 1_000), stats.clone());
        let settings = SequencerSettings {
            max_window: 1 << 16,
            gap_floor: FLOOR,
            gap_ceiling: CEILING,
        };
        let (sequencer, _sender) = Sequencer::new(&settings, BatchSink::Registry(handle), stats);
        (sequencer, registry)
    }

    /// Broadcasts with these sequence numbers, as one read.
    fn broadcasts(seqs: impl IntoIterator<Item = Seq>) -> ReadEvents {
        let mut chunk = Vec::new();
        let mut events = Vec::new();
        for seq in seqs {
            let start = chunk.len();
            chunk.extend_from_slice(format!("{seq}|B\r\n").as_bytes());
            let (seq, kind) = parse_event(&chunk[start..]).expect("a valid broadcast");
            events.push(BatchEvent::new(seq, kind, start, chunk.len() - start));
        }
        ReadEvents {
            chunk: Bytes::from(chunk),
            events,
        }
    }

    /// The open gap's deadline, as an offset from when its wait started.
    fn wait(sequencer: &Sequencer) -> Duration {
        let gap = sequencer.gap.expect("a gap is open");
        sequencer.deadline().expect("a deadline") - gap.wait_from
    }

    #[tokio::test]
    async fn a_connected_source_gone_quiet_after_a_burst_gets_the_floor() {
        let (mut sequencer, _registry) = sequencer();
        sequencer.handle(SourceMsg::Opened(1)).await.unwrap();
        let read_at = std::time::Instant::now();
        let burst = broadcasts((1..=2_000).filter(|&seq| seq != 701));
        let message = SourceMsg::Events(1, burst, read_at);
        sequencer.handle(message).await.unwrap();
        assert_eq!(sequencer.buffer.missing(), 1);
        assert_eq!(wait(&sequencer), FLOOR);
    }

    #[tokio::test]
    async fn with_no_source_connected_the_gap_waits_the_ceiling() {
        let (mut sequencer, _registry) = sequencer();
        sequencer.handle(SourceMsg::Opened(1)).await.unwrap();
        let read_at = std::time::Instant::now();
        let message = SourceMsg::Events(1, broadcasts([1, 3]), read_at);
        sequencer.handle(message).await.unwrap();
        assert_eq!(wait(&sequencer), FLOOR);
        sequencer.handle(SourceMsg::Closed(1)).await.unwrap();
        assert_eq!(wait(&sequencer), CEILING);
    }

    /// A sequencer with a gap that opened `age` ago, its source gone, and
    /// then a new source connected; returns it with the gap's opening.
    async fn reconnected_after(age: Duration) -> (Sequencer, Registry, Instant) {
        let (mut sequencer, registry) = sequencer();
        sequencer.handle(SourceMsg::Opened(1)).await.unwrap();
        let read_at = std::time::Instant::now();
        let message = SourceMsg::Events(1, broadcasts([1, 3]), read_at);
        sequencer.handle(message).await.unwrap();
        sequencer.handle(SourceMsg::Closed(1)).await.unwrap();
        let opened = Instant::now() - age;
        if let Some(gap) = &mut sequencer.gap {
            gap.since = opened;
            gap.wait_from = opened;
        }
        sequencer.handle(SourceMsg::Opened(2)).await.unwrap();
        (sequencer, registry, opened)
    }

    #[tokio::test]
    async fn a_source_connecting_while_none_was_starts_the_wait_afresh() {
        let reconnected = Instant::now();
        // Waited on for a second already, more than the floor.
        let (sequencer, _registry, opened) = reconnected_after(Duration::from_secs(1)).await;
        let gap = sequencer.gap.expect("still open");
        assert_eq!(gap.since, opened);
        assert!(gap.wait_from >= reconnected);
        // The new source has a whole floor to resend, from its connection.
        assert_eq!(wait(&sequencer), FLOOR);
    }

    #[tokio::test]
    async fn a_gap_never_outlives_the_ceiling_however_often_a_source_reconnects() {
        let age = CEILING - Duration::from_millis(100);
        let (sequencer, _registry, opened) = reconnected_after(age).await;
        assert_eq!(sequencer.deadline(), Some(opened + CEILING));
    }
}
