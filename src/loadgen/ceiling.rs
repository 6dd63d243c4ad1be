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

/// What RabbitMQ sustains here for the saga's pattern: a durable quorum queue, persistent
/// 300-byte messages published with confirms (256 unconfirmed at most) by one task, one
/// consumer with prefetch 256 acking each delivery. The queue is fresh and deleted after.
pub(crate) async fn measure_ceiling(
    amqp_url: &str,
    run_for: Duration,
) -> anyhow::Result<CeilingMeasure> {
    use lapin::{
        BasicProperties, Confirmation,
        options::{
            BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
            ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
        },
        types::{AMQPValue, FieldTable},
    };
    const WINDOW: usize = 256;

    let connect = || async {
        tokio::time::timeout(
            Duration::from_secs(10),
            lapin::Connection::connect_with_config(
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
    };
    // Two connections, as two services would have: flow control of the publisher's
    // connection does not hold the consumer's acks back.
    let publisher = connect().await?;
    let consumer = connect().await?;
    let queue = format!("loadgen.ceiling.{}", uuid::Uuid::new_v4());
    let publish = publisher.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    // Removed by the broker a minute after its last use, should this process die first.
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    publish
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring {queue}"))?;

    let measured = async {
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = consumer.create_channel().await?;
        consume
            .basic_qos(WINDOW as u16, BasicQosOptions::default())
            .await?;
        let mut deliveries = consume
            .basic_consume(
                queue.as_str().into(),
                "loadgen-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumed = Arc::new(AtomicU64::new(0));
        let acking = {
            let consumed = consumed.clone();
            tokio::spawn(async move {
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
            })
        };

        let payload = vec![b'x'; 300];
        let started = Instant::now();
        let end = started + run_for;
        let mut unconfirmed = VecDeque::with_capacity(WINDOW);
        let mut confirmed = 0u64;
        let outcome: anyhow::Result<()> = async {
            while Instant::now() < end {
                if unconfirmed.len() >= WINDOW {
                    let confirm = unconfirmed.pop_front().expect("a full window");
                    match confirm.await? {
                        Confirmation::Ack(_) => confirmed += 1,
                        other => anyhow::bail!("the broker did not confirm: {other:?}"),
                    }
                    continue;
                }
                let confirm = publish
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                unconfirmed.push_back(confirm);
            }
            Ok(())
        }
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let consumed_n = consumed.load(Ordering::Relaxed);
        acking.abort();
        outcome?;
        let _ = consume.close(200, "measured".into()).await;
        Ok::<_, anyhow::Error>(CeilingMeasure {
            duration_s: elapsed,
            published_per_s: confirmed as f64 / elapsed,
            consumed_per_s: consumed_n as f64 / elapsed,
        })
    }
    .await;

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
