//! The broker ceiling: what RabbitMQ itself sustains for the saga's message pattern.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, Consumer, PublisherConfirm,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;
use tokio::time::Instant;

/// What the broker sustained for the saga's message pattern.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct CeilingMeasure {
    pub duration_s: f64,
    /// Publishes confirmed per second.
    pub published_per_s: f64,
    /// Deliveries consumed and acked per second.
    pub consumed_per_s: f64,
}

impl CeilingMeasure {
    /// Messages per second through the queue: publish and consume both had to keep up.
    pub(super) fn msg_per_s(&self) -> f64 {
        self.published_per_s.min(self.consumed_per_s)
    }
}

/// Unconfirmed publishes at most, and the consumer's prefetch.
const WINDOW: usize = 256;

/// What RabbitMQ sustains here for the saga's pattern: a durable quorum queue, persistent
/// 300-byte messages published with confirms (256 unconfirmed at most) by one task, one
/// consumer with prefetch 256 acking each delivery. The queue is fresh and deleted after.
pub(crate) async fn measure_ceiling(
    amqp_url: &str,
    run_for: Duration,
) -> anyhow::Result<CeilingMeasure> {
    // Two connections, as two services would have: flow control of the publisher's
    // connection does not hold the consumer's acks back.
    let publisher = connect(amqp_url).await?;
    let consumer = connect(amqp_url).await?;
    let queue = format!("loadgen.ceiling.{}", uuid::Uuid::new_v4());
    let publish = publisher.create_channel().await?;
    declare_queue(&publish, &queue).await?;

    let measured = measure(&publish, &consumer, &queue, run_for).await;

    let deleted = publish
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    for conn in [&publisher, &consumer] {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
    }
    let measured = measured?;
    deleted.with_context(|| format!("deleting {queue}"))?;
    Ok(measured)
}

/// A connection to RabbitMQ for the ceiling, given ten seconds to open.
async fn connect(amqp_url: &str) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect_with_config(
            amqp_url,
            lapin::ConnectionProperties::default()
                .with_connection_name("marketplace-loadgen-ceiling".into()),
            common::tls::amqp_tls_config(amqp_url)?,
            async_rs::Runtime::tokio_current(),
        ),
    )
    .await
    .context("connecting to RabbitMQ timed out")?
    .context("connecting to RabbitMQ")
}

/// Declares `queue`: durable, quorum, and expiring a minute after its last use.
async fn declare_queue(publish: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    // Removed by the broker a minute after its last use, should this process die first.
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    publish
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring {queue}"))?;
    Ok(())
}

/// Publishes to `queue` for `run_for` while consuming it, and what each side sustained.
async fn measure(
    publish: &Channel,
    consumer: &Connection,
    queue: &str,
    run_for: Duration,
) -> anyhow::Result<CeilingMeasure> {
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = consumer.create_channel().await?;
    let deliveries = subscribe(&consume, queue).await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let acking = tokio::spawn(ack_each(deliveries, consumed.clone()));

    let mut publishing = Publishing::new(publish, queue);
    let started = Instant::now();
    let outcome = publishing.until(started + run_for).await;
    let elapsed = started.elapsed().as_secs_f64();
    let consumed_n = consumed.load(Ordering::Relaxed);
    acking.abort();
    outcome?;
    let _ = consume.close(200, "measured".into()).await;
    Ok(CeilingMeasure {
        duration_s: elapsed,
        published_per_s: publishing.confirmed as f64 / elapsed,
        consumed_per_s: consumed_n as f64 / elapsed,
    })
}

/// Consumes `queue` on `consume` with a prefetch of [`WINDOW`].
async fn subscribe(consume: &Channel, queue: &str) -> anyhow::Result<Consumer> {
    consume
        .basic_qos(WINDOW as u16, BasicQosOptions::default())
        .await?;
    let deliveries = consume
        .basic_consume(
            queue.into(),
            "loadgen-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(deliveries)
}

/// Acks each delivery and counts it in `consumed`, until the deliveries end or an ack fails.
async fn ack_each(mut deliveries: Consumer, consumed: Arc<AtomicU64>) {
    while let Some(Ok(delivery)) = deliveries.next().await {
        if delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .is_err()
        {
            break;
        }
        consumed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Persistent 300-byte messages published to one queue with confirms, [`WINDOW`]
/// unconfirmed at most.
struct Publishing<'a> {
    channel: &'a Channel,
    queue: &'a str,
    payload: Vec<u8>,
    unconfirmed: VecDeque<PublisherConfirm>,
    /// Publishes the broker has confirmed.
    confirmed: u64,
}

impl<'a> Publishing<'a> {
    /// Nothing published yet to `queue` on `channel`, in confirm mode.
    fn new(channel: &'a Channel, queue: &'a str) -> Self {
        Publishing {
            channel,
            queue,
            payload: vec![b'x'; 300],
            unconfirmed: VecDeque::with_capacity(WINDOW),
            confirmed: 0,
        }
    }

    /// Publishes until `end`, awaiting the oldest confirm whenever the window is full.
    async fn until(&mut self, end: Instant) -> anyhow::Result<()> {
        while Instant::now() < end {
            if self.unconfirmed.len() >= WINDOW {
                let confirm = self.unconfirmed.pop_front().expect("a full window");
                match confirm.await? {
                    Confirmation::Ack(_) => self.confirmed += 1,
                    other => anyhow::bail!("the broker did not confirm: {other:?}"),
                }
                continue;
            }
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.into(),
                    BasicPublishOptions::default(),
                    &self.payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            self.unconfirmed.push_back(confirm);
        }
        Ok(())
    }
}
