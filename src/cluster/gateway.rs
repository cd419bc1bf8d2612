//! The gateway role's producer of ordered batches: a JetStream consumer
//! that turns each stream message back into [`OrderedBatch`]es for the
//! registry, the same `Command::Deliver` the standalone sequencer sends.
//!
//! At start the gateway loads the latest snapshot (the sequencer writes
//! one as it starts, so it exists once the stream does), restores the
//! registry's graph, position and stream id from it, and consumes from the
//! next stream sequence; it is *ready* (`/readyz`) once it has consumed
//! everything the stream held. A message's stream sequence is checked
//! against the one expected: a jump means the stream's retention dropped
//! messages this gateway had not consumed (it fell behind), so it reloads
//! the latest snapshot and carries on after it, and says so. If even the
//! latest snapshot is older than what the stream retains, the graph may
//! miss the dropped follows: logged as an error, and the gateway carries on.
//!
//! The consumer is recreated (from the next stream sequence) after a
//! reconnect to NATS, after it fails, and when it delivers nothing for two
//! checks in a row while the stream holds more: its NATS server died while
//! the client's connection, to another server of the cluster, lived on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::batch::OrderedBatch;
use crate::batch::MAX_DELIVER_EVENTS;
use crate::cluster::jetstream::{self, Log};
use crate::cluster::snapshots;
use crate::fanout::command::Command;
use crate::fanout::RegistryHandle;
use crate::graph::snapshot::Snapshot;
use crate::ops::stats::Stats;

/// How long the consumer may deliver nothing before the gateway asks
/// whether the stream holds more (see [`Gateway::stalled`]).
const STALL_CHECK: Duration = Duration::from_secs(1);

/// See the module doc.
pub(crate) struct Gateway {
    /// The stream.
    log: Log,
    /// Where the batches go.
    registry: RegistryHandle,
    /// Follow edges a restored graph may hold.
    max_edges: usize,
    /// Counters.
    stats: Arc<Stats>,
    /// `/readyz`: set once caught up.
    ready: Arc<AtomicBool>,
    /// `/readyz` again: set while the gateway is more than `maxLagMs`
    /// behind the stream's head.
    lag: Lag,
    /// The next stream sequence to apply.
    next: u64,
}

/// The registry is gone: nothing more to feed.
struct Stopped;

/// How far behind the stream's head a gateway is, in ms, having consumed a
/// message the stream stored at `stored_at` with `pending` more after it,
/// at `now` (both ns since the epoch): none when nothing is pending, else
/// that message's age (never negative, whatever the clocks say).
fn lag_ms(pending: u64, stored_at: i128, now: i128) -> u64 {
    match pending {
        0 => 0,
        _ => (now.saturating_sub(stored_at).max(0) / 1_000_000) as u64,
    }
}

/// How far behind the stream a gateway may be and still take clients.
#[derive(Debug, Clone)]
pub(crate) struct Lag {
    /// `maxLagMs`.
    pub(crate) max: Duration,
    /// Set while the gateway is further behind than `max`.
    pub(crate) lagging: Arc<AtomicBool>,
}

impl Gateway {
    /// Waits for the latest snapshot (retrying while there is none, or
    /// NATS is away), so that the registry knows the cluster's stream id
    /// before any client registers.
    pub(crate) async fn first_snapshot(log: &Log, max_edges: usize) -> Snapshot {
        let mut attempt = 0u32;
        loop {
            match snapshots::load(log, max_edges).await {
                Ok(Some(snapshot)) => return snapshot,
                Ok(None) => tracing::info!("no snapshot yet: waiting for the sequencer"),
                Err(error) => tracing::warn!(%error, attempt, "cannot load a snapshot yet"),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A gateway feeding `registry`, not yet started.
    pub(crate) fn new(
        log: Log,
        registry: RegistryHandle,
        max_edges: usize,
        stats: Arc<Stats>,
        (ready, lag): (Arc<AtomicBool>, Lag),
    ) -> Gateway {
        Gateway {
            log,
            registry,
            max_edges,
            stats,
            ready,
            lag,
            next: 1,
        }
    }

    /// Restores the registry from `snapshot`; queued before any client's
    /// registration, since the client listener starts after this.
    pub(crate) async fn restore(&mut self, snapshot: Snapshot) -> bool {
        self.next = snapshot.stream_seq + 1;
        Stats::add(&self.stats.snapshots_loaded, 1);
        Stats::set(&self.stats.next_sequence, snapshot.position + 1);
        tracing::info!(
            stream_seq = snapshot.stream_seq,
            position = snapshot.position,
            edges = snapshot.graph.edges(),
            "gateway: loaded the follower graph snapshot"
        );
        self.registry.send(Command::Restore(snapshot)).await.is_ok()
    }

    /// Consumes until `stop` is cancelled, then stops the registry.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let started = Instant::now();
        match self.log.last_sequence().await {
            Ok(last) if last < self.next => self.caught_up(started),
            _ => {}
        }
        tokio::select! {
            () = stop.cancelled() => {}
            _ = self.consume(started) => {}
        }
        // If the registry is already gone there is nobody left to stop.
        let _ = self.registry.send(Command::Shutdown).await;
    }

    /// Consumes for ever (retrying after NATS failures); ends only if the
    /// registry is gone.
    async fn consume(&mut self, started: Instant) -> Stopped {
        loop {
            let mut messages = match self.log.consume_from(self.next).await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, next = self.next, "gateway: cannot consume yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            // The first connection stores a permit too: one needless
            // recreation at start, never a missed one.
            let reconnected = self.log.reconnected.clone();
            // Quiet checks in a row that found the stream ahead of us.
            let mut stalled = 0;
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    () = reconnected.notified() => {
                        tracing::info!(next = self.next, "gateway: reconnected to NATS; recreating the consumer");
                        break;
                    }
                    () = tokio::time::sleep(STALL_CHECK) => {
                        if self.stalled(&mut stalled).await {
                            break;
                        }
                        continue;
                    }
                };
                let message = match next {
                    Some(Ok(message)) => {
                        stalled = 0;
                        message
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, next = self.next, "gateway: consumer failed; recreating it");
                        break;
                    }
                    None => break,
                };
                let (stream_seq, pending, stored_at) = match message.info() {
                    Ok(info) => (
                        info.stream_sequence,
                        info.pending,
                        info.published.unix_timestamp_nanos(),
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "gateway: a message without JetStream metadata; skipped");
                        continue;
                    }
                };
                if stream_seq < self.next {
                    continue; // Already applied (a recreated consumer's overlap).
                }
                if stream_seq > self.next {
                    match self.fell_behind(stream_seq).await {
                        Ok(true) => break, // Restored: consume after the snapshot.
                        Ok(false) => {}    // Accept the hole; apply this one.
                        Err(stopped) => return stopped,
                    }
                }
                match self.apply(stream_seq, &message).await {
                    Ok(events) => self.applied(events, (pending, stored_at), started),
                    Err(stopped) => return stopped,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Nothing came for [`STALL_CHECK`]: counts it in `stalled` if the
    /// stream holds a message this gateway has not had, and says whether
    /// that is so for the second check in a row. The consumer is then
    /// recreated: it lived on a NATS server that died (a replicated
    /// stream's other servers carry on without it, and the client's
    /// connection may be to one of them, so no reconnect says so) and
    /// async-nats would notice only after two missed 15 s heartbeats.
    async fn stalled(&self, stalled: &mut u32) -> bool {
        let last = tokio::time::timeout(jetstream::REQUEST_TIMEOUT, self.log.last_sequence()).await;
        match last {
            Ok(Ok(last)) if last >= self.next => *stalled += 1,
            // Idle and caught up, or NATS cannot say yet (no stream leader).
            _ => return false,
        }
        if *stalled < 2 {
            return false;
        }
        tracing::warn!(
            next = self.next,
            "gateway: the consumer delivers nothing while the stream holds more (its NATS server gone?); recreating it"
        );
        true
    }

    /// Decodes stream message `stream_seq` and hands its events to the
    /// registry in batches of at most [`MAX_DELIVER_EVENTS`].
    async fn apply(
        &mut self,
        stream_seq: u64,
        message: &async_nats::jetstream::Message,
    ) -> Result<u64, Stopped> {
        self.next = stream_seq + 1;
        Stats::add(&self.stats.consumed_messages, 1);
        let decoded = jetstream::decode_headers(message.headers.as_ref())
            .and_then(|headers| Ok((headers, jetstream::decode_batch_events(&message.payload)?)));
        let ((stream, mut new_stream), mut events) = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                Stats::add(&self.stats.skipped_messages, 1);
                tracing::error!(stream_seq, %error, "gateway: not a followermaze message; skipped");
                return Ok(0);
            }
        };
        let read_at = Instant::now();
        let count = events.len() as u64;
        let last = events.last().map_or(0, |event| event.seq);
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(MAX_DELIVER_EVENTS));
            // Each batch's lines are the whole payload: a reference, not a copy.
            let mut batch = OrderedBatch::over(events, message.payload.clone(), read_at)
                .in_stream(stream)
                .in_message(stream_seq);
            if std::mem::take(&mut new_stream) {
                batch = batch.starting_new_stream();
            }
            self.registry
                .send(Command::Deliver(batch))
                .await
                .map_err(|_| Stopped)?;
            events = rest;
        }
        Stats::add(&self.stats.events_received, count);
        Stats::set(&self.stats.next_sequence, last + 1);
        Ok(count)
    }

    /// Message `stream_seq` came when `self.next` was expected: the stream
    /// no longer holds what lies between. Reloads the latest snapshot if it
    /// is newer than what was applied; returns whether it did (then the
    /// consumer is recreated after it).
    async fn fell_behind(&mut self, stream_seq: u64) -> Result<bool, Stopped> {
        let applied = self.next - 1;
        tracing::warn!(
            expected = self.next,
            got = stream_seq,
            "gateway fell behind the stream's retention: reloading a snapshot"
        );
        match snapshots::load(&self.log, self.max_edges).await {
            Ok(Some(snapshot)) if snapshot.stream_seq > applied => {
                let covers = snapshot.stream_seq + 1 >= stream_seq;
                if !covers {
                    tracing::error!(
                        snapshot = snapshot.stream_seq,
                        first_retained = stream_seq,
                        "the latest snapshot is older than the retained stream: the follower graph may miss follows (snapshotIntervalSecs too long for streamMaxAgeSecs / streamMaxBytes?)"
                    );
                }
                if self.restore(snapshot).await {
                    Ok(true)
                } else {
                    Err(Stopped)
                }
            }
            Ok(_) => {
                tracing::error!(
                    applied,
                    first_retained = stream_seq,
                    "no snapshot newer than this gateway's state: carrying on; the follower graph may miss follows"
                );
                Ok(false)
            }
            Err(error) => {
                tracing::error!(%error, "cannot load a snapshot: carrying on with a hole");
                Ok(false)
            }
        }
    }

    /// A message of `events` events, stored at `stored_at` with `pending`
    /// more after it, was applied: the lag, and readiness once caught up.
    fn applied(&mut self, events: u64, (pending, stored_at): (u64, i128), started: Instant) {
        self.note_lag(pending, stored_at, events);
        if pending == 0 && !self.ready.load(Ordering::Relaxed) {
            self.caught_up(started);
        }
    }

    /// Publishes how far behind the stream's head the gateway is, after a
    /// message of `events` events the stream stored at `stored_at` (ns
    /// since the epoch) with `pending` more after it, and whether that is
    /// over `maxLagMs`.
    fn note_lag(&self, pending: u64, stored_at: i128, events: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        let lag_ms = lag_ms(pending, stored_at, now);
        Stats::set(&self.stats.gateway_lag_messages, pending);
        Stats::set(
            &self.stats.gateway_lag_events,
            pending.saturating_mul(events),
        );
        Stats::set(&self.stats.gateway_lag_ms, lag_ms);
        let lagging = lag_ms > self.lag.max.as_millis() as u64;
        if self.lag.lagging.swap(lagging, Ordering::Relaxed) != lagging {
            let max_lag_ms = self.lag.max.as_millis() as u64;
            match lagging {
                true => tracing::warn!(
                    lag_ms,
                    pending,
                    max_lag_ms,
                    "gateway behind the stream: not ready"
                ),
                false => {
                    tracing::info!(max_lag_ms, "gateway caught up with the stream again: ready")
                }
            }
        }
    }

    /// Everything the stream held at start is applied.
    fn caught_up(&self, started: Instant) {
        self.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            next = self.next,
            took_ms = started.elapsed().as_millis() as u64,
            "gateway caught up with the stream: ready"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_last_message_while_more_are_pending() {
        let second = 1_000_000_000i128;
        assert_eq!(lag_ms(0, 0, 5 * second), 0, "caught up: no lag");
        assert_eq!(lag_ms(3, 2 * second, 5 * second), 3000);
        assert_eq!(
            lag_ms(3, 6 * second, 5 * second),
            0,
            "a clock behind NATS's"
        );
    }
}
