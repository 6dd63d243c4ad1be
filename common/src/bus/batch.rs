//! Group commit: a consumer that hands the deliveries waiting on its channel to its handler
//! together, so that many messages cost one database transaction and one multiple-ack.
//!
//! Batches form by themselves: while one is being committed, the broker keeps delivering up
//! to the prefetch, and the next batch is whatever arrived meanwhile. At low load a batch
//! is one message and nothing waits; under load the cost per message falls as batches
//! grow. Every guarantee of the single-message loop holds: the ack follows the commit, a
//! redelivered batch is deduplicated by the handler's inbox, and a batch that fails is not
//! retried whole but message by message, so one bad message cannot hold the others (it is
//! retried or rejected alone, exactly as [`super::consume`] would). The messages after it
//! wait while it is retried, which [`super::MAX_TRANSIENT_ATTEMPTS`] bounds.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures::{FutureExt, StreamExt};
use lapin::{Acker, Connection, options::BasicAckOptions};
use tokio_util::task::TaskTracker;

use super::consume::{
    on_each_connection, process_alone, process_span, settled, subscribe, unsubscribe,
};
use super::{Broker, Handler, HandlerError, Incoming, lost};
use crate::{metrics::ConsumerMetrics, room::Room, shutdown::Shutdown, telemetry, topology};

/// Handles several messages as one unit of work, typically one database transaction.
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies every message of `batch` (in order) and commits them together. `Ok` means
    /// all their effects are committed and all are acked; an error means nothing was
    /// committed, and the loop handles each message alone instead. Each message carries
    /// the context of its consumer span ([`Incoming::cx`]): what it publishes is enqueued in
    /// that context, so traces stay one per order.
    fn handle_batch(
        &self,
        batch: &[Incoming],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Whether `msg` must not share a batch: one that will wait (a stall fault) is handled
    /// alone and concurrently, so that it holds no other message.
    fn apart(&self, _msg: &Incoming) -> bool {
        false
    }
}

/// How a batch consumer takes its deliveries.
#[derive(Clone)]
pub struct BatchOptions {
    /// Deliveries the broker may have in flight on the channel (unacked).
    pub prefetch: u16,
    /// The most messages handed to the handler at once.
    pub max_batch: usize,
    /// Slots the work of a message outlives the message by (a saga outlives its
    /// `PlaceOrder`): a message is taken only when a slot is free, and the rest wait in the
    /// queue, durably. None: no such bound.
    pub room: Option<Arc<Room>>,
}

/// Consumes `queue` in batches until `shutdown`, and returns once every message in flight
/// has been handled.
pub async fn consume_batches<H: BatchHandler>(
    broker: Broker,
    queue: &'static str,
    options: BatchOptions,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    let tracker = TaskTracker::new();
    let counters = broker.metrics.consumer(queue);
    // The single-message path: messages handled apart, and a failed batch's one by one.
    let alone = Arc::new(super::consume::Traced {
        inner: Arc::new(Alone(handler.clone())),
        service: broker.service.clone(),
        queue,
    });
    let batches = Batches {
        broker: &broker,
        queue,
        options: &options,
        handler: &handler,
        alone: &alone,
        tracker: &tracker,
        shutdown: &shutdown,
        counters: &counters,
    };
    on_each_connection(&broker, queue, &shutdown, |conn| async move {
        batches.run(&conn).await
    })
    .await;
    tracker.close();
    tracker.wait().await;
}

/// A batch handler seen as a handler of one message at a time: the fallback path.
struct Alone<H>(Arc<H>);

impl<H: BatchHandler> Handler for Alone<H> {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        self.0.handle_batch(std::slice::from_ref(msg)).await
    }
}

/// One consumer on one connection.
struct Batches<'a, H> {
    broker: &'a Broker,
    queue: &'static str,
    options: &'a BatchOptions,
    handler: &'a Arc<H>,
    alone: &'a Arc<super::consume::Traced<Alone<H>>>,
    tracker: &'a TaskTracker,
    shutdown: &'a Shutdown,
    counters: &'a ConsumerMetrics,
}

// References only: copied into each connection's run (a derive would ask `H: Copy`).
impl<H> Clone for Batches<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H> Copy for Batches<'_, H> {}

impl<H: BatchHandler> Batches<'_, H> {
    async fn run(self, conn: &Connection) -> anyhow::Result<()> {
        let queue = self.queue;
        let (channel, tag, mut consumer) = subscribe(conn, queue, self.options.prefetch).await?;
        // Messages handled apart and not yet acked: while there are any, a multiple-ack
        // would acknowledge them too, so batches are then acked one by one.
        let apart = Arc::new(AtomicUsize::new(0));
        let mut lost = std::pin::pin!(lost(conn));
        loop {
            let room = match &self.options.room {
                Some(room) => tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    free = room.free() => free,
                },
                None => usize::MAX,
            };
            let first = tokio::select! {
                () = self.shutdown.cancelled() => break,
                next = consumer.next() => next,
                () = &mut lost => anyhow::bail!("the connection to RabbitMQ was lost"),
            };
            let mut deliveries = vec![first];
            let max = self.options.max_batch.min(room).max(1);
            while deliveries.len() < max {
                match consumer.next().now_or_never() {
                    Some(next) => deliveries.push(next),
                    None => break,
                }
            }
            let mut batch = Vec::with_capacity(deliveries.len());
            for next in deliveries {
                match next {
                    Some(Ok(delivery)) => batch.push(Incoming::from_delivery(delivery)),
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("consumer of {queue} was cancelled"),
                }
            }
            self.handle(batch, &apart).await;
        }
        unsubscribe(&channel, tag).await;
        Ok(())
    }

    async fn handle(&self, deliveries: Vec<(Incoming, Acker)>, apart: &Arc<AtomicUsize>) {
        let queue = self.queue;
        let mut batch = Vec::with_capacity(deliveries.len());
        let mut ackers = Vec::with_capacity(deliveries.len());
        for (mut msg, acker) in deliveries {
            if msg.redelivered || msg.delivery_count() > 0 {
                self.counters.redelivered.inc();
            }
            // Without an id a message cannot be deduplicated, and one that waits must not
            // hold the others: both take the single-message path.
            let without_id = msg.message_id.is_empty() && topology::dead_letters(queue);
            if without_id || self.handler.apart(&msg) {
                apart.fetch_add(1, Ordering::SeqCst);
                let (apart, alone) = (apart.clone(), self.alone.clone());
                let (shutdown, counters) = (self.shutdown.clone(), self.counters.clone());
                self.tracker.spawn(async move {
                    process_alone(msg, acker, alone, queue, shutdown, counters).await;
                    apart.fetch_sub(1, Ordering::SeqCst);
                });
                continue;
            }
            let span = process_span(&self.broker.service, queue, &msg);
            msg.cx = span.context().clone();
            batch.push((msg, span));
            ackers.push(acker);
        }
        if batch.is_empty() {
            return;
        }
        let (msgs, spans): (Vec<Incoming>, Vec<telemetry::Span>) = batch.into_iter().unzip();
        match self.handler.handle_batch(&msgs).await {
            Ok(()) => {
                drop(spans);
                self.counters.ok.inc_by(msgs.len() as u64);
                let acked = if apart.load(Ordering::SeqCst) == 0 {
                    let last = ackers.last().expect("a batch is never empty");
                    settled(last.ack(BasicAckOptions { multiple: true }))
                        .await
                        .map(|_| ())
                } else {
                    futures::future::try_join_all(
                        ackers
                            .iter()
                            .map(|a| settled(a.ack(BasicAckOptions::default()))),
                    )
                    .await
                    .map(|_| ())
                };
                if let Err(e) = acked {
                    tracing::warn!(queue, error = %e, "ack failed; the batch will be redelivered and deduplicated");
                }
            }
            Err(e) => {
                for span in &spans {
                    span.set_error(format!("batch failed, handled alone: {e:#}"));
                }
                drop(spans);
                if msgs.len() > 1 {
                    tracing::debug!(queue, size = msgs.len(), error = %format!("{e:#}"), "batch failed; handling its messages one by one");
                }
                self.one_by_one(msgs, ackers).await;
            }
        }
    }

    /// The fallback: each message alone, in order, with the single-message loop's retries
    /// and rejections (a message that fails for good fails again there, and is rejected in
    /// its own span, so the line that says so carries its trace).
    async fn one_by_one(&self, msgs: Vec<Incoming>, ackers: Vec<Acker>) {
        let queue = self.queue;
        for (msg, acker) in msgs.into_iter().zip(ackers) {
            process_alone(
                msg,
                acker,
                self.alone.clone(),
                queue,
                self.shutdown.clone(),
                self.counters.clone(),
            )
            .await;
        }
    }
}
