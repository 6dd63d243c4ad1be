//! The RabbitMQ runtime: one supervised connection per service, the topology, a confirming
//! publisher and the consume loop that turns handler outcomes into acks.
//!
//! Reconnection is ours rather than lapin's auto-recovery: on any connection error the
//! supervisor drops the connection, waits with backoff and jitter, reconnects, re-declares
//! the topology and hands the new connection to every consumer and publisher, which simply
//! start over on it. Unacknowledged deliveries return to their queue; the inbox makes their
//! redelivery harmless.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

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

use crate::metrics::ConsumerMetrics;
use crate::telemetry::{self, KeyValue, Span, SpanKind};
use crate::{backoff::Backoff, config::redact, pending::Pending, shutdown::Shutdown, topology};

mod batch;
mod transient;
pub use batch::{BatchHandler, BatchOptions, consume_batches};
pub use transient::{is_transient, sqlx_is_transient};

/// A supervised connection to RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    current: watch::Receiver<Option<Arc<Connection>>>,
    /// The service this connection belongs to: its publish and consume spans carry the
    /// service's own tracer (so its own `service.name`), also when services share a process.
    service: Arc<str>,
    /// The metrics of the marketplace this broker serves (the consume loop records into it).
    metrics: Arc<crate::metrics::Metrics>,
    /// When the supervisor connected.
    connected: Connected,
}

/// When the supervisor connected, shared by every clone of its [`Broker`] (ms since the
/// epoch; 0: not yet).
#[derive(Clone, Default)]
struct Connected {
    first_ms: Arc<AtomicI64>,
    /// The last time it connected again after losing a connection. The first connection
    /// of a process is not a restoration.
    again_ms: Arc<AtomicI64>,
}

impl Broker {
    /// Starts the supervisor: connects (retrying forever with backoff), declares the
    /// topology, and reconnects whenever the connection fails, until `shutdown`.
    pub fn start(url: &str, service: &str, shutdown: Shutdown) -> Broker {
        let (tx, rx) = watch::channel(None);
        let url = url.to_string();
        let service_name: Arc<str> = service.into();
        let service = service.to_string();
        let metrics = crate::metrics::for_instance(&url);
        let connected = Connected::default();
        tokio::spawn(supervise(url, service, tx, connected.clone(), shutdown));
        Broker {
            current: rx,
            service: service_name,
            metrics,
            connected,
        }
    }

    /// True when this process was connected and is not any more: an outage it lives
    /// through, as opposed to a broker not reached yet since the process started.
    pub fn is_in_outage(&self) -> bool {
        self.connected.first_ms.load(Ordering::Relaxed) > 0 && !self.is_connected()
    }

    /// When the connection came back after the last outage this process saw, if it saw
    /// one: the manager gives a step in flight its whole wait again from then.
    pub fn restored_at_ms(&self) -> Option<i64> {
        Some(self.connected.again_ms.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }

    /// The metrics of the marketplace instance this broker belongs to.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The service this connection belongs to.
    pub fn service(&self) -> &str {
        &self.service
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

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(1);

async fn supervise(
    url: String,
    service: String,
    tx: watch::Sender<Option<Arc<Connection>>>,
    connected: Connected,
    shutdown: Shutdown,
) {
    // Capped at 1 s: while the broker is back and one service is not, the others' commands
    // wait in its queue against their deadlines, so every second of catching up costs
    // orders (TIMEOUT). A connection attempt a second, with jitter, costs the broker nothing.
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CAP);
    let mut lost_one = false;
    while !shutdown.is_cancelled() {
        match connect(&url, &service).await {
            Ok(conn) => {
                backoff.reset();
                let at = if lost_one {
                    &connected.again_ms
                } else {
                    &connected.first_ms
                };
                at.store(crate::time::now_ms(), Ordering::Relaxed);
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
                lost_one = true;
                tx.send_replace(None);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if let Some(conflicts) = e.downcast_ref::<TopologyConflicts>() {
                    tracing::error!(service, ?delay, "{conflicts}");
                } else {
                    tracing::warn!(service, error = %format!("{e:#}"), ?delay, "RabbitMQ not reachable; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect(url: &str, service: &str) -> anyhow::Result<Connection> {
    let conn = open_connection(url, service, Duration::from_secs(10)).await?;
    if let Err(e) = declare_topology(&conn).await {
        close(&conn, "topology").await;
        return Err(e);
    }
    Ok(conn)
}

/// The largest frame asked of the broker, unless `AMQP_URL` says (`?frame_max=`). The
/// client keeps 32 frames of buffer each way per connection, touched at once: at RabbitMQ's
/// 128 KiB that is 8 MiB per connection, 56 MiB for the seven services of `all` doing
/// nothing. At 16 KiB it is 1 MiB; a larger message simply takes several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// A connection named `name` (as RabbitMQ lists it), or an error after `wait`. An
/// `amqps://` URL is TLS, trusting the system's roots and the URL's `cacertfile`.
pub async fn open_connection(url: &str, name: &str, wait: Duration) -> anyhow::Result<Connection> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("AMQP_URL {}: {e}", redact(url)))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    // The parser takes the host for a domain name, or else "localhost": an IPv6 address
    // ([::1]) became "localhost".
    if let Some(ip) = ip_host(url) {
        uri.authority.host = ip;
    }
    let tls = crate::tls::amqp_tls_config(url)?;
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let connected = tokio::time::timeout(
        wait,
        Connection::connect_uri_with_config(uri, props, tls, async_rs::Runtime::tokio_current()),
    )
    .await
    .context("connecting timed out")?;
    connected.map_err(|e| match url.starts_with("amqps://") {
        true => crate::tls::explain_certificate_error(
            e.into(),
            "the broker",
            crate::tls::query_param(url, crate::tls::AMQP_CA_PARAM),
        ),
        false => e.into(),
    })
}

/// The host of `url` when it is an IPv6 address (an IPv4 one is taken as a name, which
/// serves as well: TLS checks it as an address either way).
fn ip_host(url: &str) -> Option<String> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(ip.to_string()),
        url::Host::Domain(_) => None,
    }
}

/// Closes `conn`, waiting at most 2 s for the broker's answer.
pub async fn close(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, reason.into())).await;
}

/// Declares every exchange, queue and binding (idempotent), after checking that whatever
/// already exists was declared the way the marketplace needs it. A conflict is a
/// [`TopologyConflicts`] error that names each queue and argument.
pub async fn declare_topology(conn: &Connection) -> anyhow::Result<()> {
    let conflicts = check_topology(conn).await?;
    if !conflicts.is_empty() {
        return Err(TopologyConflicts(conflicts).into());
    }
    let channel = conn.create_channel().await?;
    for q in topology::QUEUES {
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
    let _ = channel.close(200, "topology declared".into()).await;
    for (queue, exchange, key) in topology::RETIRED_BINDINGS {
        // A channel each: unbinding from a queue that does not exist closes the channel.
        let channel = conn.create_channel().await?;
        let unbound = channel
            .queue_unbind(
                (*queue).into(),
                (*exchange).into(),
                (*key).into(),
                FieldTable::default(),
            )
            .await;
        match unbound {
            Ok(()) => {
                let _ = channel.close(200, "retired binding removed".into()).await;
            }
            Err(e) if e.to_string().contains("NOT_FOUND") => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("unbinding {queue}"))),
        }
    }
    Ok(())
}

/// Something on the broker that was declared differently from what the marketplace needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyConflict {
    /// `queue "payment"` or `exchange "marketplace"`.
    pub what: String,
    /// What differs, in words (from RabbitMQ's PRECONDITION_FAILED text).
    pub detail: String,
}

/// Every conflict found by [`check_topology`]; its text tells the operator what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyConflicts(pub Vec<TopologyConflict>);

impl std::fmt::Display for TopologyConflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "RabbitMQ holds {} declared differently from what the marketplace needs:",
            if self.0.len() == 1 {
                "an object"
            } else {
                "objects"
            }
        )?;
        for c in &self.0 {
            writeln!(f, "  - {}: {}", c.what, c.detail)?;
        }
        write!(
            f,
            "Queues must be quorum queues; all but {:?} with x-delivery-limit={} and \
             x-dead-letter-exchange={:?} (at-least-once, reject-publish). Delete the objects \
             named above once they are empty (`rabbitmqctl delete_queue NAME`; their messages \
             would be lost), or point AMQP_URL at another vhost.",
            topology::DEAD_LETTER_QUEUE,
            topology::DELIVERY_LIMIT,
            topology::DLX_EXCHANGE,
        )
    }
}

impl std::error::Error for TopologyConflicts {}

/// Declares each exchange and queue with the arguments the marketplace needs, each on a
/// channel of its own (RabbitMQ closes the channel that a refused declaration used), and
/// collects every refusal. What did not exist is created; what exists with the same
/// arguments is left alone. Errors other than a refusal (the connection failed) are
/// returned as such.
pub async fn check_topology(conn: &Connection) -> anyhow::Result<Vec<TopologyConflict>> {
    let mut conflicts = Vec::new();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        (topology::EXCHANGE, ExchangeKind::Topic),
        (topology::EVENTS_EXCHANGE, ExchangeKind::Topic),
        (topology::DLX_EXCHANGE, ExchangeKind::Fanout),
    ] {
        let channel = conn.create_channel().await?;
        match channel
            .exchange_declare(name.into(), kind.clone(), durable, FieldTable::default())
            .await
        {
            Ok(()) => {
                let _ = channel.close(200, "checked".into()).await;
            }
            Err(e) => conflicts.push(refusal(format!("exchange {name:?}"), e)?),
        }
    }
    for q in topology::QUEUES {
        let channel = conn.create_channel().await?;
        match channel
            .queue_declare(
                q.name.into(),
                QueueDeclareOptions::durable(),
                queue_arguments(q.dead_letters),
            )
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
            }
            Err(e) => conflicts.push(refusal(format!("queue {:?}", q.name), e)?),
        }
    }
    Ok(conflicts)
}

/// A declaration's error as a conflict when RabbitMQ refused it (PRECONDITION_FAILED);
/// any other error is passed on.
fn refusal(what: String, error: lapin::Error) -> anyhow::Result<TopologyConflict> {
    let text = error.to_string();
    if !text.contains("PRECONDITION_FAILED") {
        return Err(anyhow::Error::new(error).context(format!("declaring {what}")));
    }
    Ok(TopologyConflict {
        what,
        detail: explain_refusal(&text),
    })
}

/// Turns RabbitMQ's "inequivalent arg 'x-queue-type' for queue 'order' in vhost '/':
/// received the value 'quorum' of type 'longstr' but current is none" into
/// "x-queue-type is none; needed: 'quorum'". Unknown shapes are kept whole.
fn explain_refusal(text: &str) -> String {
    let Some(arg_start) = text.find("inequivalent arg '") else {
        return text.to_string();
    };
    let rest = &text[arg_start + "inequivalent arg '".len()..];
    let Some(arg_end) = rest.find('\'') else {
        return text.to_string();
    };
    let arg = &rest[..arg_end];
    let received = rest
        .find("received ")
        .map(|i| &rest[i + "received ".len()..]);
    let (wanted, current) = match received.and_then(|r| r.split_once(" but current is ")) {
        Some((wanted, current)) => (wanted.trim_start_matches("the value "), current),
        None => return text.to_string(),
    };
    let current = current
        .trim_end_matches(|c: char| c == '"' || c == ')' || c.is_whitespace())
        .trim_start_matches("the value ");
    // "'quorum' of type 'longstr'" reads better as "'quorum'".
    let value = |v: &'_ str| v.split(" of type ").next().unwrap_or(v).to_string();
    format!("{arg} is {}; needed: {}", value(current), value(wanted))
}

/// Checks the broker at `url` once, for a service's start: conflicts are an error that
/// says what is wrong; a broker that cannot be reached within `wait` is not (the
/// supervisor connects later, and checks again then).
pub async fn verify_topology_at_start(url: &str, wait: Duration) -> anyhow::Result<()> {
    let conn = match open_connection(url, "topology check", wait).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), url = %redact(url), "RabbitMQ not reachable at start; the topology is checked once it is");
            return Ok(());
        }
    };
    let result = check_topology(&conn).await;
    close(&conn, "checked").await;
    match result {
        Ok(conflicts) if conflicts.is_empty() => Ok(()),
        Ok(conflicts) => Err(TopologyConflicts(conflicts).into()),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "topology check interrupted; the services check again when they connect");
            Ok(())
        }
    }
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

    /// Waits for the broker's confirms and returns the ids it confirmed and routed.
    pub async fn confirmed(self) -> anyhow::Result<Vec<String>> {
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

/// Runs a handler inside a consumer span (messaging semantic conventions), child of the
/// publish span whose context the message carries in its headers (a dead letter keeps the
/// headers of the message it was). One span per attempt: a transient failure retried in
/// place shows as several (the last one, once the retries are spent, is rejected).
struct Traced<H> {
    inner: Arc<H>,
    service: Arc<str>,
    queue: &'static str,
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
                span.set_error(format!("permanent, retried in place: {e:#}"))
            }
            Err(HandlerError::Permanent(e)) => {
                {
                    // Logged here, in the message's trace, so the line carries its ids.
                    let _in_span = span.context().clone().attach();
                    tracing::error!(queue = self.queue, id = %msg.message_id, error = %format!("{e:#}"), "rejecting message to the dead-letter store");
                }
                span.set_error(format!("rejected to the dead-letter store: {e:#}"))
            }
            Err(HandlerError::Transient(e)) => span.set_error(format!("transient, retried: {e:#}")),
        }
        result
    }
}

fn process_span(service: &str, queue: &str, msg: &Incoming) -> Span {
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
    /// The context of the message's consumer span: work done for it, and messages it
    /// causes, belong to its trace. Set by the consume loops.
    pub cx: telemetry::Context,
}

impl Incoming {
    /// The message of a delivery, and what acknowledges it.
    fn from_delivery(delivery: lapin::message::Delivery) -> (Incoming, lapin::Acker) {
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
            cx: telemetry::Context::new(),
        };
        (msg, delivery.acker)
    }

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
    while let Some(conn) = broker.connection(&shutdown).await {
        let on = consume_on(
            &conn, queue, prefetch, &handler, &tracker, &shutdown, &counters,
        );
        if let Err(e) = on.await {
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
    counters: &ConsumerMetrics,
) -> anyhow::Result<()> {
    let (channel, tag, mut consumer) = subscribe(conn, queue, prefetch).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
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
            }
        }
    }
}

/// A consumer of `queue` on a channel of its own, with `prefetch` deliveries in flight at
/// most; returns the channel and the consumer's tag too, to cancel it.
async fn subscribe(
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
async fn unsubscribe(channel: &Channel, tag: String) {
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
    process_alone(msg, acker, handler, queue, shutdown, counters).await
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
async fn process_alone<H: Handler>(
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
        let outcome = if msg.message_id.is_empty() && can_reject {
            tracing::error!(
                queue,
                "rejecting a message without message_id to the dead-letter store"
            );
            Err(HandlerError::Permanent(anyhow::anyhow!(
                "message has no message_id"
            )))
        } else {
            match AssertUnwindSafe(handler.handle(&msg)).catch_unwind().await {
                Ok(r) => r,
                Err(_) => {
                    counters.transient.inc();
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
        let error = match outcome {
            Ok(()) => {
                counters.ok.inc();
                if let Err(e) = acker.ack(BasicAckOptions::default()).await {
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
            let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
        counters.transient.inc();
        if shutdown.is_cancelled() {
            let _ = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
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
