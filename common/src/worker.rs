//! What every step worker does around its own logic: decode the command, honour the fault
//! flags, and apply it in one transaction with the inbox record and the reply.

use std::{future::Future, sync::Arc, time::Duration};

use crate::targets::Service;
use crate::{
    bus::{self, BatchHandler, BatchOptions, Broker, HandlerError, Incoming},
    db::{Db, Tx},
    inbox,
    messages::{
        Event, Events, Fault, ManagerMessage, StepCommand, StepReply, StepResult, Worker,
        newest_only,
    },
    outbox,
    outbox::Pending,
    shutdown::Shutdown,
    telemetry::{self, Context, KeyValue},
    topology,
};

/// A worker's own logic: apply one step inside the given transaction.
pub trait StepLogic: Send + Sync + 'static {
    const WORKER: Worker;

    /// Applies `cmd` inside `tx` and returns what to reply; the events it causes are pushed
    /// to `events` (published with the batch's, in its transaction). Must be idempotent per
    /// (order, step), and leave a tombstone when a compensation finds no forward effect to
    /// undo.
    fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        events: &mut Vec<Event>,
    ) -> impl Future<Output = Result<StepResult, HandlerError>> + Send;
}

/// Adapts a [`StepLogic`] into a queue [`BatchHandler`]: the commands waiting on the queue
/// are applied in one transaction, each with its inbox record and its reply.
pub struct StepHandler<L> {
    pub logic: L,
    pub db: Db,
    /// How long a `Fault::Stall` holds the command before running it.
    pub stall: Duration,
}

impl<L: StepLogic> BatchHandler for StepHandler<L> {
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let cmds = batch
            .iter()
            .map(Self::command)
            .collect::<Result<Vec<_>, _>>()?;
        if let [cmd] = cmds.as_slice()
            && cmd.fault == Some(Fault::Stall)
        {
            // Outside any transaction: a stalled step must not hold the database.
            tracing::info!(order_id = %cmd.order_id, step = cmd.step.name(), "fault injection: stalling");
            tokio::time::sleep(self.stall).await;
        }
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = batch.iter().map(|m| m.message_id.as_str()).collect();
        let mut first = inbox::first_deliveries(&mut tx, &ids).await?;
        let mut events = Vec::new();
        let mut out = Vec::with_capacity(batch.len() + 1);
        for (msg, cmd) in batch.iter().zip(&cmds) {
            if !first.remove(&msg.message_id) {
                tracing::debug!(id = %msg.message_id, "duplicate delivery; acknowledged again");
                continue;
            }
            // Each command's part of the transaction is a span of its own order's trace.
            let service = Service::from(L::WORKER).name();
            let span = telemetry::transaction(service, self.db.system(), cmd.step.name(), &msg.cx);
            span.set_attribute(KeyValue::new(
                "marketplace.order_id",
                cmd.order_id.to_string(),
            ));
            let work = self.apply_one(&mut tx, cmd, &mut events);
            let result = telemetry::FutureExt::with_context(work, span.context().clone()).await;
            if let Err(e) = &result {
                span.set_error(e.to_string());
            }
            out.push(reply(span.context(), cmd, result?)?);
        }
        out.extend(events_message(events, &batch[0].cx)?);
        outbox::enqueue_all(&mut tx, &out).await?;
        tx.commit().await?;
        self.db.hand_to_relay(out);
        Ok(())
    }

    fn apart(&self, msg: &Incoming) -> bool {
        // Only a command that parses can stall; anything else fails in the batch path.
        msg.decode::<StepCommand>()
            .is_ok_and(|cmd| cmd.fault == Some(Fault::Stall))
    }
}

impl<L: StepLogic> StepHandler<L> {
    /// The command a message carries, if it is one of this worker's.
    fn command(msg: &Incoming) -> Result<StepCommand, HandlerError> {
        let cmd: StepCommand = msg.decode()?;
        if cmd.step.worker() != L::WORKER {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "{} is not a step of the {:?} worker",
                cmd.step.name(),
                L::WORKER
            )));
        }
        Ok(cmd)
    }

    /// One step inside the batch's transaction: its effect, and what to reply.
    async fn apply_one(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        let result = if cmd.fault == Some(Fault::Kill) {
            StepResult::Failed {
                error: format!("injected fault: {} killed", cmd.step.name()),
            }
        } else {
            self.logic.apply(tx, cmd, events).await?
        };
        tracing::debug!(order_id = %cmd.order_id, step = cmd.step.name(), ?result, "step handled");
        Ok(result)
    }
}

/// The reply to `cmd`, in the trace of `cx`.
fn reply(cx: &Context, cmd: &StepCommand, result: StepResult) -> Result<Pending, sqlx::Error> {
    let reply = ManagerMessage::StepReply(StepReply {
        order_id: cmd.order_id,
        step: cmd.step,
        result,
    });
    outbox::message(
        cx,
        topology::EXCHANGE,
        topology::RK_STEP_REPLY,
        Some(cmd.order_id.to_string()),
        &reply,
    )
}

/// The events of a batch as one message for the outbox, if there are any. Of several
/// updates of one balance or one stock only the newest is kept ([`newest_only`]). The
/// message travels in the trace of `cx` (the batch's first message).
pub fn events_message(events: Vec<Event>, cx: &Context) -> Result<Option<Pending>, sqlx::Error> {
    let events = newest_only(events);
    if events.is_empty() {
        return Ok(None);
    }
    outbox::message(
        cx,
        topology::EVENTS_EXCHANGE,
        topology::RK_EVENTS,
        None,
        &Events { events },
    )
    .map(Some)
}

/// Commands a worker may hold unacked: enough to form large batches under load.
const PREFETCH: u16 = 256;
/// The most commands applied in one transaction.
const MAX_BATCH: usize = 128;

/// The consume loop of a worker's command queue.
pub fn consume<L: StepLogic>(
    handler: StepHandler<L>,
    broker: Broker,
    shutdown: Shutdown,
) -> crate::service::Part {
    Box::pin(bus::consume_batches(
        broker,
        topology::worker_queue(L::WORKER),
        BatchOptions {
            prefetch: PREFETCH,
            max_batch: MAX_BATCH,
            room: None,
        },
        Arc::new(handler),
        shutdown,
    ))
}

/// Starts a step worker on its opened database and the instance's broker connection: its
/// command consumer and its outbox relay.
pub fn spawn<L: StepLogic>(
    db: Db,
    logic: L,
    config: &crate::config::Config,
    broker: Broker,
    shutdown: &Shutdown,
) -> crate::service::Running {
    spawn_with(db, logic, config, broker, shutdown, |_| Vec::new())
}

/// [`spawn`], with the worker's other consumers: `more` makes them on the broker.
pub fn spawn_with<L: StepLogic>(
    db: Db,
    logic: L,
    config: &crate::config::Config,
    broker: Broker,
    shutdown: &Shutdown,
    more: impl FnOnce(&Broker) -> Vec<crate::service::Part>,
) -> crate::service::Running {
    let name = Service::from(L::WORKER).name();
    let broker = broker.for_service(name);
    let handler = StepHandler {
        logic,
        db: db.clone(),
        stall: Duration::from_millis(config.fault_stall_ms as u64),
    };
    let mut parts = vec![consume(handler, broker.clone(), shutdown.clone())];
    parts.extend(more(&broker));
    crate::service::spawn(name, db, broker, parts)
}

#[cfg(test)]
mod tests;
