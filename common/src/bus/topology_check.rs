//! Declaring the topology, and checking what already exists against it.

use std::time::Duration;

use anyhow::Context;
use lapin::{
    Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

use super::{close, open_connection};
use crate::{config::redact, topology};

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
