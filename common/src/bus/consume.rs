//! The consume loop: handler outcomes turned into acks, retries and rejections, in the
//! message's consumer span.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::task::TaskTracker;

use super::{Broker, Incoming, SETUP_TIMEOUT, lost, transient};
use crate::metrics::ConsumerMetrics;
use crate::telemetry::{self, KeyValue, Span, SpanKind};
use crate::{backoff::Backoff, shutdown::Shutdown, topology};

/// Runs a handler inside a consumer span (messaging semantic conventions), child of the
/// publish span whose context the message carries in its headers (a dead letter keeps the
/// headers of the message it was). One span per attempt: a transient failure retried in
/// place shows as several (the last one, once the retries are spent, is rejected).
pub(super) struct Traced<H> {
    pub(super) inner: Arc<H>,
    pub(super) service: Arc<str>,
    pub(super) queue: &'static str,
}

impl<H: Handler> Handler for Traced<H> {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let span = process_span(&self.service, self.queue, msg);
        let work = self.inner.handle(msg);
        let result = telemetry::FutureExt::with_context(work, span.context().clone()).await;
        match &result {
            Ok(()) => {}
            // Not rejected where nothing dead-letters: see `process_alone`.
            Err(HandlerError::Permanent(e)) if !topology::dead_letters(self.queue) => {
                span.set_error(format!("permanent, retried in place: {e:#}"));
            }
            Err(HandlerError::Permanent(e)) => {
                {
                    // Logged here, in the message's trace, so the line carries its ids.
                    let _in_span = span.context().clone().attach();
                    tracing::error!(queue = self.queue, id = %msg.message_id, error = %format!("{e:#}"), "rejecting message to the dead-letter store");
                }
                span.set_error(format!("rejected to the dead-letter store: {e:#}"));
            }
            Err(HandlerError::Transient(e)) => span.set_error(format!("transient, retried: {e:#}")),
        }
        result
    }
}

pub(super) fn process_span(service: &str, queue: &str, msg: &Incoming) -> Span {
    let headers: Vec<(&str, &str)> = msg
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| match v {
                    AMQPValue::LongString(s) => {
                        Some((k.as_str(), std::str::from_utf8(s.as_bytes()).ok()?))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let parent = telemetry::extract(headers);
    let mut attributes = vec![
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", msg.exchange.clone()),
        KeyValue::new("messaging.destination.subscription.name", queue.to_string()),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            msg.routing_key.clone(),
        ),
        KeyValue::new("messaging.message.id", msg.message_id.clone()),
    ];
    if let Some(c) = &msg.correlation_id {
        attributes.push(KeyValue::new(
            "messaging.message.conversation_id",
            c.clone(),
        ));
    }
    if msg.redelivered || msg.delivery_count() > 0 {
        attributes.push(KeyValue::new(
            "messaging.rabbitmq.delivery_count",
            msg.delivery_count(),
        ));
    }
    Span::start(
        service,
        format!("process {queue}"),
        SpanKind::Consumer,
        &parent,
        attributes,
    )
}

/// Why a handler did not finish. The kind alone decides what happens to the message;
/// [`HandlerError::classify`] tells the kinds of an error apart by what it is.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (database or broker unavailable, a saga moving under it): retried
    /// in place with backoff, up to [`MAX_TRANSIENT_ATTEMPTS`], then rejected.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never work (undecodable, invalid): rejected, so it goes to the dead-letter store.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::classify(e)
    }
}

/// Handles one message. Succeeding means its effects are committed: the message is acked.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: &Incoming) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Consumes `queue` until `shutdown`, handling up to `prefetch` messages at once, and
/// returns once every handler in flight has finished.
pub async fn consume<H: Handler>(
    broker: Broker,
    queue: &'static str,
    prefetch: u16,
    handler: Arc<H>,
    shutdown: Shutdown,
) {
    let handler = Arc::new(Traced {
        inner: handler,
        service: broker.service.clone(),
        queue,
    });
    let tracker = TaskTracker::new();
    let counters = broker.metrics.consumer(queue);
    let (handler, tracker, shutdown, counters) = (&handler, &tracker, &shutdown, &counters);
    on_each_connection(&broker, queue, shutdown, |conn| async move {
        consume_on(&conn, queue, prefetch, handler, tracker, shutdown, counters).await
    })
    .await;
    tracker.close();
    tracker.wait().await;
}

/// Runs a consumer, `on`, on each connection the broker gives until `shutdown`: one that
/// stops (its connection lost, its queue gone) starts over on the next connection.
pub(super) async fn on_each_connection<F>(
    broker: &Broker,
    queue: &str,
    shutdown: &Shutdown,
    mut on: impl FnMut(Arc<Connection>) -> F,
) where
    F: Future<Output = anyhow::Result<()>>,
{
    while let Some(conn) = broker.connection(shutdown).await {
        if let Err(e) = on(conn).await {
            tracing::warn!(queue, error = %format!("{e:#}"), "consumer stopped; resuming on the next connection");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
}

async fn consume_on<H: Handler>(
    conn: &Connection,
    queue: &'static str,
    prefetch: u16,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    shutdown: &Shutdown,
    counters: &ConsumerMetrics,
) -> anyhow::Result<()> {
    let (channel, tag, mut consumer) = subscribe(conn, queue, prefetch).await?;
    let mut lost = std::pin::pin!(lost(conn));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                unsubscribe(&channel, tag).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let handler = handler.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(process(delivery, handler, queue, shutdown, counters.clone()));
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("consumer of {queue} was cancelled"),
            },
            () = &mut lost => anyhow::bail!("the connection to RabbitMQ was lost"),
        }
    }
}

/// A consumer of `queue` on a channel of its own, with `prefetch` deliveries in flight at
/// most; returns the channel and the consumer's tag too, to cancel it.
pub(super) async fn subscribe(
    conn: &Connection,
    queue: &'static str,
    prefetch: u16,
) -> anyhow::Result<(Channel, String, lapin::Consumer)> {
    tokio::time::timeout(SETUP_TIMEOUT, subscribe_now(conn, queue, prefetch))
        .await
        .with_context(|| format!("subscribing to {queue}: no answer from RabbitMQ"))?
}

async fn subscribe_now(
    conn: &Connection,
    queue: &'static str,
    prefetch: u16,
) -> anyhow::Result<(Channel, String, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{queue}-{}", uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))?;
    Ok((channel, tag, consumer))
}

/// Stops new deliveries; those in flight finish and ack on this channel. Bounded: a broker
/// that stopped answering must not hold the shutdown.
pub(super) async fn unsubscribe(channel: &Channel, tag: String) {
    let cancel = channel.basic_cancel(tag.into(), BasicCancelOptions::default());
    let _ = tokio::time::timeout(Duration::from_secs(2), cancel).await;
}

async fn process<H: Handler>(
    delivery: lapin::message::Delivery,
    handler: Arc<H>,
    queue: &'static str,
    shutdown: Shutdown,
    counters: ConsumerMetrics,
) {
    let (msg, acker) = Incoming::from_delivery(delivery);
    if msg.redelivered || msg.delivery_count() > 0 {
        counters.redelivered.inc();
    }
    process_alone(msg, acker, handler, queue, shutdown, counters).await;
}

/// Attempts a message gets in place before a transient failure is taken for good: the
/// handler runs this many times, with [`RETRY_FIRST`] to [`RETRY_CAP`] backoff between the
/// attempts, which waits 2.6 to 5.2 s in all (ceilings of 50, 100, 200, 400, 800, 1600 and
/// 2000 ms, each delay between half its ceiling and the ceiling). Attempts that themselves
/// wait on the database (SQLite's 5 s busy timeout, a pool's acquire timeout) add their own
/// time. Enough to ride out a lock, a deadlock or a dropped connection; a message still
/// failing after it is rejected to the dead-letter store, where it can be replayed, instead
/// of holding its prefetch slot (in a batch consumer, the queue) for good.
pub const MAX_TRANSIENT_ATTEMPTS: u32 = 8;
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_CAP: Duration = Duration::from_secs(2);

/// Handles one message until it is acked, rejected or requeued: transient failures are
/// retried in place with backoff up to [`MAX_TRANSIENT_ATTEMPTS`], permanent ones and those
/// that outlast the bound rejected to the dead-letter store.
///
/// A queue that dead-letters nowhere (the dead-letter store's own) never gives a message
/// up: rejected, it would be dropped; requeued, it would come straight back (a quorum queue
/// returns it near its head) and, on RabbitMQ 4, count towards the default delivery limit
/// past which a queue without a dead-letter exchange drops it. There every failure is
/// retried in place, with the same backoff, until it succeeds or the service stops.
pub(super) async fn process_alone<H: Handler>(
    msg: Incoming,
    acker: lapin::Acker,
    handler: Arc<H>,
    queue: &'static str,
    shutdown: Shutdown,
    counters: ConsumerMetrics,
) {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_CAP);
    // A message without an id cannot be deduplicated: it is rejected to the dead-letter
    // store, where the queue has one. A queue that dead-letters nowhere (the store's own)
    // would drop it instead, so its handler gets it and must cope (the store makes one up).
    let can_reject = topology::dead_letters(queue);
    let mut attempts = 0;
    loop {
        let Some(outcome) = attempt(&msg, &*handler, queue, can_reject).await else {
            counters.transient.inc();
            // A panic may repeat on every delivery: requeue, and the queue's delivery
            // limit sends it to the dead-letter store after a few attempts.
            tracing::error!(queue, id = %msg.message_id, "handler panicked; requeueing");
            requeue(&acker).await;
            return;
        };
        let error = match outcome {
            Ok(()) => {
                counters.ok.inc();
                if let Err(e) = settled(acker.ack(BasicAckOptions::default())).await {
                    tracing::warn!(queue, error = %e, "ack failed; the message will be redelivered and deduplicated");
                }
                return;
            }
            Err(e) => e,
        };
        // A database that cannot be reached is an outage of the service, not a fault of
        // the message: it is waited out, however long, and counts no attempt.
        if !matches!(&error, HandlerError::Transient(e) if transient::is_unavailable(e)) {
            attempts += 1;
        }
        let for_good = match &error {
            HandlerError::Permanent(_) => true,
            HandlerError::Transient(_) => attempts >= MAX_TRANSIENT_ATTEMPTS,
        };
        if for_good && can_reject {
            counters.permanent.inc();
            if let HandlerError::Transient(e) = &error {
                // A permanent failure was logged in the message's span (see `Traced`).
                tracing::error!(queue, id = %msg.message_id, attempts, error = %format!("{e:#}"), "still failing after the bounded retries; rejecting the message to the dead-letter store");
            }
            let _ = settled(acker.reject(BasicRejectOptions { requeue: false })).await;
            return;
        }
        counters.transient.inc();
        if shutdown.is_cancelled() {
            requeue(&acker).await;
            return;
        }
        if attempts == MAX_TRANSIENT_ATTEMPTS && !can_reject {
            tracing::error!(queue, id = %msg.message_id, attempts, error = %format!("{error:#}"), "still failing, and this queue dead-letters nowhere; retrying in place until it succeeds");
        }
        let delay = backoff.next_delay();
        tracing::warn!(queue, id = %msg.message_id, error = %format!("{error:#}"), ?delay, "failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// One attempt at `msg`: the handler's outcome, or None when the handler panicked. A
/// message without an id is refused without a handler where it can be rejected.
async fn attempt<H: Handler>(
    msg: &Incoming,
    handler: &H,
    queue: &'static str,
    can_reject: bool,
) -> Option<Result<(), HandlerError>> {
    if msg.message_id.is_empty() && can_reject {
        tracing::error!(
            queue,
            "rejecting a message without message_id to the dead-letter store"
        );
        return Some(Err(HandlerError::Permanent(anyhow::anyhow!(
            "message has no message_id"
        ))));
    }
    AssertUnwindSafe(handler.handle(msg))
        .catch_unwind()
        .await
        .ok()
}

/// Gives the message back to its queue.
async fn requeue(acker: &lapin::Acker) {
    let _ = settled(acker.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await;
}

/// The longest an ack, a nack or a reject may wait for the client to take it. It is a frame
/// written to the socket, normally in microseconds; but one asked for while the connection
/// dies may never be answered, and the consumer waiting on it would neither take the next
/// connection nor drain. Past this it counts as failed: the broker redelivers what it did
/// not see settled, and the inbox drops the duplicate.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// `settle` (an ack, nack or reject), bounded by [`SETTLE_TIMEOUT`].
pub(super) async fn settled(
    settle: impl Future<Output = lapin::Result<bool>>,
) -> anyhow::Result<bool> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settle).await {
        Ok(settled) => Ok(settled?),
        Err(_) => anyhow::bail!("not taken within {SETTLE_TIMEOUT:?} (the connection is failing)"),
    }
}

#[cfg(test)]
mod tests;
