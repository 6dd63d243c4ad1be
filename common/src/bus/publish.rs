//! The confirming publisher.

use super::*;

/// Publishes with confirms on a channel of its own, re-opened after any failure.
pub struct Publisher {
    broker: Broker,
    /// The channel, and the connection it was opened on.
    channel: Option<(Channel, Arc<Connection>)>,
}

/// How long a publisher waits for the broker to open its channel before it tries again.
const CHANNEL_OPEN_WAIT: Duration = Duration::from_secs(10);

impl Publisher {
    pub fn new(broker: Broker) -> Self {
        Self {
            broker,
            channel: None,
        }
    }

    /// The channel, opened again when it closed or the broker's connection is a new one
    /// (a channel of a dead connection may never say so).
    async fn channel(&mut self) -> anyhow::Result<&Channel> {
        let conn = self
            .broker
            .try_connection()
            .context("not connected to RabbitMQ")?;
        let usable = self
            .channel
            .as_ref()
            .is_some_and(|(channel, on)| Arc::ptr_eq(on, &conn) && channel.status().connected());
        if !usable {
            self.channel = None;
            let open = async {
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                anyhow::Ok(channel)
            };
            let channel = tokio::time::timeout(CHANNEL_OPEN_WAIT, open)
                .await
                .context("no answer to opening a channel")??;
            self.channel = Some((channel, conn));
        }
        Ok(&self.channel.as_ref().expect("set above").0)
    }

    /// Publishes every message (pipelined) and returns the ids the broker confirmed and
    /// routed. Mandatory publishing: a message no queue would take is not confirmed.
    pub async fn publish_all(&mut self, batch: &[Pending]) -> anyhow::Result<Vec<String>> {
        let sent = self.send_all(batch).await?;
        let confirmed = sent.confirmed().await;
        if confirmed.is_err() {
            self.channel = None;
        }
        confirmed
    }

    /// Publishes every message without waiting for the broker's confirms: they are awaited
    /// with [`Sent::confirmed`], while the next messages are published.
    pub async fn send_all(&mut self, batch: &[Pending]) -> anyhow::Result<Sent> {
        let result = self.try_send_all(batch).await;
        if result.is_err() {
            self.channel = None;
        }
        result
    }

    async fn try_send_all(&mut self, batch: &[Pending]) -> anyhow::Result<Sent> {
        let service = self.broker.service.clone();
        self.channel().await?;
        let (channel, conn) = self.channel.as_ref().expect("opened above");
        let lost = self.broker.superseded(conn);
        tokio::pin!(lost);
        let mut confirms = Vec::with_capacity(batch.len());
        for m in batch {
            let span = publish_span(&service, m);
            let mut props = BasicProperties::default()
                .with_message_id(m.id.clone().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_type(m.routing_key.clone().into())
                .with_timestamp(crate::time::now_ms() as u64 / 1000);
            if let Some(c) = &m.correlation_id {
                props = props.with_correlation_id(c.clone().into());
            }
            let trace = telemetry::inject(span.context());
            if !trace.is_empty() {
                let mut headers = FieldTable::default();
                for (k, v) in trace {
                    headers.insert(k.into(), AMQPValue::LongString(v.into()));
                }
                props = props.with_headers(headers);
            }
            let publish = channel.basic_publish(
                m.exchange.clone().into(),
                m.routing_key.clone().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                m.payload.as_bytes(),
                props,
            );
            let confirm = tokio::select! {
                published = publish => published?,
                _ = &mut lost => anyhow::bail!("the connection was lost while publishing"),
            };
            confirms.push(Sending {
                id: m.id.clone(),
                routing_key: m.routing_key.clone(),
                confirm,
                span,
            });
        }
        Ok(Sent {
            confirms,
            broker: self.broker.clone(),
            conn: conn.clone(),
        })
    }
}

/// Messages published and not yet confirmed.
pub struct Sent {
    confirms: Vec<Sending>,
    /// The connection they were published on, whose loss ends the wait for their confirms.
    broker: Broker,
    conn: Arc<Connection>,
}

struct Sending {
    id: String,
    routing_key: String,
    confirm: lapin::PublisherConfirm,
    span: Span,
}

impl Sent {
    /// The ids of every message published.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.confirms.iter().map(|s| s.id.as_str())
    }

    /// Waits for the broker's confirms and returns the ids it confirmed and routed; an
    /// error when the connection is lost first (however slow, a live broker's confirms are
    /// waited for: giving up early would publish the rows twice).
    pub async fn confirmed(self) -> anyhow::Result<Vec<String>> {
        let Sent {
            confirms,
            broker,
            conn,
        } = self;
        tokio::select! {
            confirmed = await_confirms(confirms) => confirmed,
            _ = broker.superseded(&conn) => {
                anyhow::bail!("the connection was lost before the broker confirmed")
            }
        }
    }
}

/// The ids among `confirms` the broker confirmed and routed.
async fn await_confirms(confirms: Vec<Sending>) -> anyhow::Result<Vec<String>> {
    let mut confirmed = Vec::with_capacity(confirms.len());
    for Sending {
        id,
        routing_key,
        confirm,
        span,
    } in confirms
    {
        match confirm.await? {
            Confirmation::Ack(None) => confirmed.push(id),
            Confirmation::Ack(Some(_returned)) => {
                span.set_error("unroutable");
                tracing::error!(%routing_key, %id, "message was unroutable; kept in the outbox")
            }
            Confirmation::Nack(_) => {
                span.set_error("refused by the broker");
                tracing::warn!(%id, "broker refused the message; kept in the outbox")
            }
            Confirmation::NotRequested => {
                anyhow::bail!("publisher confirms are off on this channel")
            }
        }
    }
    Ok(confirmed)
}

/// The producer span of one publish (messaging semantic conventions), child of the context
/// the message was enqueued in; the consumer's span becomes its child.
pub(super) fn publish_span(service: &str, m: &Pending) -> Span {
    let parent = match &m.headers {
        Some(h) => telemetry::extract(h.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        None => telemetry::Context::new(),
    };
    let mut attributes = vec![
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "publish"),
        KeyValue::new("messaging.destination.name", m.exchange.clone()),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            m.routing_key.clone(),
        ),
        KeyValue::new("messaging.message.id", m.id.clone()),
    ];
    if let Some(c) = &m.correlation_id {
        attributes.push(KeyValue::new(
            "messaging.message.conversation_id",
            c.clone(),
        ));
    }
    Span::start(
        service,
        format!("publish {}", m.routing_key),
        SpanKind::Producer,
        &parent,
        attributes,
    )
}
