//! The confirming publisher: a channel of its own, confirms awaited while the next batch goes out.

use std::time::Duration;

use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};

use super::{Broker, SETUP_TIMEOUT};
use crate::pending::Pending;
use crate::telemetry::{self, KeyValue, Span, SpanKind};

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
            let open = async {
                let channel = conn.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                anyhow::Ok(channel)
            };
            let channel = tokio::time::timeout(SETUP_TIMEOUT, open)
                .await
                .context("opening a publishing channel: no answer from RabbitMQ")??;
            self.channel = Some(channel);
        }
        Ok(self.channel.as_ref().expect("set above"))
    }

    /// Drops the channel: the next publish opens a new one. After confirms that did not
    /// come, the channel is not to be trusted.
    pub fn reset(&mut self) {
        self.channel = None;
    }

    /// Publishes every message (pipelined) and returns the ids the broker confirmed and
    /// routed. Mandatory publishing: a message no queue would take is not confirmed.
    pub async fn publish_all(&mut self, batch: &[Pending]) -> anyhow::Result<Vec<String>> {
        let sent = self.send_all(batch).await?;
        let confirmed = sent.confirmed().await;
        if confirmed.is_err() {
            self.reset();
        }
        confirmed
    }

    /// Publishes every message without waiting for the broker's confirms: they are awaited
    /// with [`Sent::confirmed`], while the next messages are published.
    pub async fn send_all(&mut self, batch: &[Pending]) -> anyhow::Result<Sent> {
        let result = self.try_send_all(batch).await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn try_send_all(&mut self, batch: &[Pending]) -> anyhow::Result<Sent> {
        let service = self.broker.service.clone();
        let channel = self.channel().await?;
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
            confirms.push(Sending {
                id: m.id.clone(),
                routing_key: m.routing_key.clone(),
                confirm,
                span,
            });
        }
        Ok(Sent { confirms })
    }
}

/// The longest the confirms of one batch are awaited. They normally take a broker round
/// trip; a channel whose connection died may never answer, and its messages must not be
/// held in flight for good: past this they are published again (the consumers' inbox drops
/// a duplicate).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages published and not yet confirmed.
pub struct Sent {
    confirms: Vec<Sending>,
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

    /// Waits for the broker's confirms, at most [`CONFIRM_TIMEOUT`], and returns the ids it
    /// confirmed and routed.
    pub async fn confirmed(self) -> anyhow::Result<Vec<String>> {
        tokio::time::timeout(CONFIRM_TIMEOUT, self.confirmed_now())
            .await
            .context("no confirm from RabbitMQ in time; the messages stay in the outbox")?
    }

    async fn confirmed_now(self) -> anyhow::Result<Vec<String>> {
        let mut confirmed = Vec::with_capacity(self.confirms.len());
        for Sending {
            id,
            routing_key,
            confirm,
            span,
        } in self.confirms
        {
            match confirm.await? {
                Confirmation::Ack(None) => confirmed.push(id),
                Confirmation::Ack(Some(_returned)) => {
                    span.set_error("unroutable");
                    tracing::error!(%routing_key, %id, "message was unroutable; kept in the outbox");
                }
                Confirmation::Nack(_) => {
                    span.set_error("refused by the broker");
                    tracing::warn!(%id, "broker refused the message; kept in the outbox");
                }
                Confirmation::NotRequested => {
                    anyhow::bail!("publisher confirms are off on this channel")
                }
            }
        }
        Ok(confirmed)
    }
}

/// The producer span of one publish (messaging semantic conventions), child of the context
/// the message was enqueued in; the consumer's span becomes its child.
fn publish_span(service: &str, m: &Pending) -> Span {
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
