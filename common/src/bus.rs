//! The RabbitMQ runtime: one supervised connection per service, the topology, a confirming
//! publisher and the consume loop that turns handler outcomes into acks.
//!
//! Reconnection is ours rather than lapin's auto-recovery: on any connection error the
//! supervisor drops the connection, waits with backoff and jitter, reconnects, re-declares
//! the topology and hands the new connection to every consumer and publisher, which simply
//! start over on it. Unacknowledged deliveries return to their queue; the inbox makes their
//! redelivery harmless.

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::{backoff::Backoff, config::redact, outbox::Pending, shutdown::Shutdown, topology};

/// A supervised connection to RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    current: watch::Receiver<Option<Arc<Connection>>>,
}

impl Broker {
    /// Starts the supervisor: connects (retrying forever with backoff), declares the
    /// topology, and reconnects whenever the connection fails, until `shutdown`.
    pub fn start(url: &str, service: &str, shutdown: Shutdown) -> Broker {
        let (tx, rx) = watch::channel(None);
        let url = url.to_string();
        let service = service.to_string();
        tokio::spawn(supervise(url, service, tx, shutdown));
        Broker { current: rx }
    }

    pub fn is_connected(&self) -> bool {
        self.current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// The live connection, waiting for one; None once shutting down.
    pub async fn connection(&self, shutdown: &Shutdown) -> Option<Arc<Connection>> {
        let mut rx = self.current.clone();
        loop {
            if let Some(c) = rx.borrow_and_update().as_ref()
                && c.status().connected()
            {
                return Some(c.clone());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// The live connection if there is one right now.
    pub fn try_connection(&self) -> Option<Arc<Connection>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }
}

async fn supervise(
    url: String,
    service: String,
    tx: watch::Sender<Option<Arc<Connection>>>,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        match connect(&url, &service).await {
            Ok(conn) => {
                backoff.reset();
                let conn = Arc::new(conn);
                tracing::info!(service, url = %redact(&url), "connected to RabbitMQ");
                tx.send_replace(Some(conn.clone()));
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            // Closed by the service once its consumers and relay drained.
                            let _ = tx.send(Some(conn.clone()));
                            return;
                        }
                        _ = tick.tick() => if !conn.status().connected() { break },
                    }
                }
                tracing::warn!(service, "lost the RabbitMQ connection; reconnecting");
                tx.send_replace(None);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(service, error = %format!("{e:#}"), ?delay, "RabbitMQ not reachable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect(url: &str, service: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(service.to_string().into());
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect_with_runtime(url, props, async_rs::Runtime::tokio_current()),
    )
    .await
    .context("connecting timed out")??;
    let channel = conn.create_channel().await?;
    declare_topology(&channel).await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(conn)
}

/// Declares every exchange, queue and binding (idempotent). A queue that exists with other
/// arguments makes RabbitMQ refuse the declaration: the error names the queue.
pub async fn declare_topology(channel: &Channel) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (topology::EXCHANGE, ExchangeKind::Topic),
        (topology::EVENTS_EXCHANGE, ExchangeKind::Topic),
        (topology::DLX_EXCHANGE, ExchangeKind::Fanout),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .with_context(|| format!("declaring exchange {name}"))?;
    }
    for q in topology::QUEUES {
        channel
            .queue_declare(q.name.into(), QueueDeclareOptions::durable(), queue_arguments(q.dead_letters))
            .await
            .with_context(|| {
                format!(
                    "declaring queue {:?}: if it exists with other arguments (it must be a quorum queue{}), \
                     delete it or use another vhost",
                    q.name,
                    if q.dead_letters { " with a delivery limit and the dead-letter exchange" } else { "" }
                )
            })?;
        for key in q.bindings {
            channel
                .queue_bind(
                    q.name.into(),
                    q.exchange.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {} to {} with {key:?}", q.name, q.exchange))?;
        }
    }
    Ok(())
}

/// Quorum queues: replicated, and they count deliveries, so a message that keeps failing
/// is dead-lettered after [`topology::DELIVERY_LIMIT`] attempts instead of looping forever.
/// At-least-once dead-lettering keeps a dead letter until the dead-letter queue confirms it.
pub fn queue_arguments(dead_letters: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if dead_letters {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(topology::DLX_EXCHANGE.into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(topology::DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    args
}

/// Publishes with confirms on a channel of its own, re-opened after any failure.
pub struct Publisher {
    broker: Broker,
    channel: Option<Channel>,
}

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            channel: None,
        }
    }

    async fn channel(&mut self) -> anyhow::Result<&Channel> {
        if self
            .channel
            .as_ref()
            .is_none_or(|c| !c.status().connected())
        {
            let conn = self
                .broker
                .try_connection()
                .context("not connected to RabbitMQ")?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            self.channel = Some(channel);
        }
        Ok(self.channel.as_ref().expect("set above"))
    }

    /// Publishes every message (pipelined) and returns the ids the broker confirmed and
    /// routed. Mandatory publishing: a message no queue would take is not confirmed.
    pub async fn publish_all(&mut self, batch: &[Pending]) -> anyhow::Result<Vec<String>> {
        let result = self.try_publish_all(batch).await;
        if result.is_err() {
            self.channel = None;
        }
        result
    }

    async fn try_publish_all(&mut self, batch: &[Pending]) -> anyhow::Result<Vec<String>> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(batch.len());
        for m in batch {
            let mut props = BasicProperties::default()
                .with_message_id(m.id.clone().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_type(m.routing_key.clone().into())
                .with_timestamp(crate::time::now_ms() as u64 / 1000);
            if let Some(c) = &m.correlation_id {
                props = props.with_correlation_id(c.clone().into());
            }
            let confirm = channel
                .basic_publish(
                    m.exchange.clone().into(),
                    m.routing_key.clone().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    m.payload.as_bytes(),
                    props,
                )
                .await?;
            confirms.push((m, confirm));
        }
        let mut confirmed = Vec::with_capacity(batch.len());
        for (m, confirm) in confirms {
            match confirm.await? {
                Confirmation::Ack(None) => confirmed.push(m.id.clone()),
                Confirmation::Ack(Some(_returned)) => {
                    tracing::error!(routing_key = %m.routing_key, id = %m.id, "message was unroutable; kept in the outbox")
                }
                Confirmation::Nack(_) => {
                    tracing::warn!(id = %m.id, "broker refused the message; kept in the outbox")
                }
                Confirmation::NotRequested => {
                    anyhow::bail!("publisher confirms are off on this channel")
                }
            }
        }
        Ok(confirmed)
    }
}

/// A consumed message, as handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub message_id: String,
    pub routing_key: String,
    pub exchange: String,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
    pub redelivered: bool,
    pub properties: BasicProperties,
}

impl Incoming {
    /// Deliveries so far, as counted by the quorum queue (0 on the first).
    pub fn delivery_count(&self) -> i64 {
        header_i64(&self.properties, "x-delivery-count").unwrap_or(0)
    }

    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HandlerError::Permanent(anyhow::anyhow!("undecodable message: {e}")))
    }
}

pub fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Why a handler did not finish. The kind alone decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (database or broker unavailable): retried in place with backoff.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never work (undecodable, invalid): rejected, so it goes to the dead-letter store.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
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
    let tracker = TaskTracker::new();
    while let Some(conn) = broker.connection(&shutdown).await {
        if let Err(e) = consume_on(&conn, queue, prefetch, &handler, &tracker, &shutdown).await {
            tracing::warn!(queue, error = %format!("{e:#}"), "consumer stopped; resuming on the next connection");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    tracker.close();
    tracker.wait().await;
}

async fn consume_on<H: Handler>(
    conn: &Connection,
    queue: &'static str,
    prefetch: u16,
    handler: &Arc<H>,
    tracker: &TaskTracker,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{queue}-{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {queue}"))?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Stop new deliveries; those in flight finish and ack on this channel. Bounded:
                // a broker that stopped answering must not hold the shutdown.
                let cancel = channel.basic_cancel(tag.into(), BasicCancelOptions::default());
                let _ = tokio::time::timeout(Duration::from_secs(2), cancel).await;
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let handler = handler.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(process(delivery, handler, queue, shutdown));
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("consumer of {queue} was cancelled"),
            }
        }
    }
}

async fn process<H: Handler>(
    delivery: lapin::message::Delivery,
    handler: Arc<H>,
    queue: &'static str,
    shutdown: Shutdown,
) {
    let msg = Incoming {
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        routing_key: delivery.routing_key.to_string(),
        exchange: delivery.exchange.to_string(),
        correlation_id: delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string()),
        body: delivery.data,
        redelivered: delivery.redelivered,
        properties: delivery.properties,
    };
    let acker = delivery.acker;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        let outcome = if msg.message_id.is_empty() {
            Err(HandlerError::Permanent(anyhow::anyhow!(
                "message has no message_id"
            )))
        } else {
            match AssertUnwindSafe(handler.handle(&msg)).catch_unwind().await {
                Ok(r) => r,
                Err(_) => {
                    // A panic may repeat on every delivery: requeue, and the queue's delivery
                    // limit sends it to the dead-letter store after a few attempts.
                    tracing::error!(queue, id = %msg.message_id, "handler panicked; requeueing");
                    let _ = acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                    return;
                }
            }
        };
        match outcome {
            Ok(()) => {
                if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(queue, error = %e, "ack failed; the message will be redelivered and deduplicated");
                }
                return;
            }
            Err(HandlerError::Permanent(e)) => {
                tracing::error!(queue, id = %msg.message_id, error = %format!("{e:#}"), "rejecting message to the dead-letter store");
                let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
            Err(HandlerError::Transient(e)) => {
                if shutdown.is_cancelled() {
                    let _ = acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(queue, id = %msg.message_id, error = %format!("{e:#}"), ?delay, "transient failure; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
