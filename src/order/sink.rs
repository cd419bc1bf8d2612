//! Where the sequencer's ordered batches go: the seam seen from upstream.
//!
//! Standalone, a [`BatchSink`] is the in-process registry; in the cluster's
//! sequencer role it is the JetStream publisher, and the registry runs in
//! each gateway behind a consumer that turns the stream back into the same
//! [`OrderedBatch`]es. The sequencer does not know which: it delivers
//! batches in order, and at the end says it is done.

use tokio::sync::mpsc;

use crate::batch::OrderedBatch;
use crate::fanout::command::Command;
use crate::fanout::RegistryHandle;

/// The consumer of the sequencer's batches; see the module doc.
#[derive(Debug)]
pub(crate) enum BatchSink {
    /// Standalone: the registry applies the batches here.
    Registry(RegistryHandle),
    /// Sequencer role: the publisher appends them to the JetStream stream.
    /// The queue is bounded ([`crate::cluster::publisher::PUBLISH_QUEUE`]): while
    /// NATS is slow or down it fills, the sequencer waits, and the sources'
    /// TCP windows close.
    Publisher(mpsc::Sender<OrderedBatch>),
}

/// The sink has stopped: nothing more can be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SinkGone;

impl BatchSink {
    /// Hands `batch` on, waiting for queue space.
    pub(crate) async fn deliver(&self, batch: OrderedBatch) -> Result<(), SinkGone> {
        match self {
            BatchSink::Registry(registry) => registry
                .send(Command::Deliver(batch))
                .await
                .map_err(|_| SinkGone),
            BatchSink::Publisher(publisher) => publisher.send(batch).await.map_err(|_| SinkGone),
        }
    }

    /// No more batches: the registry is told to stop; the publisher sees
    /// its queue close, publishes what it holds, and stops.
    pub(crate) async fn finish(self) {
        match self {
            // If the registry is already gone there is nobody left to stop.
            BatchSink::Registry(registry) => {
                let _ = registry.send(Command::Shutdown).await;
            }
            BatchSink::Publisher(publisher) => drop(publisher),
        }
    }
}
