//! What every step worker does around its own logic: decode the command, honour the fault
//! flags, and apply it in one transaction with the inbox record and the reply.

use std::{future::Future, sync::Arc, time::Duration};

use crate::{
    bus::{self, Broker, Handler, HandlerError, Incoming},
    db::{Db, Tx},
    inbox,
    messages::{Fault, ManagerMessage, StepCommand, StepReply, StepResult, Worker},
    outbox,
    shutdown::Shutdown,
    telemetry::{self, Context, KeyValue},
    topology,
};

/// A worker's own logic: apply one step inside the given transaction.
pub trait StepLogic: Send + Sync + 'static {
    const WORKER: Worker;

    /// Applies `cmd` inside `tx` (events may be enqueued in it too) and returns what to
    /// reply. Must be idempotent per (order, step), and leave a tombstone when a
    /// compensation finds no forward effect to undo.
    fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
    ) -> impl Future<Output = Result<StepResult, HandlerError>> + Send;
}

/// Adapts a [`StepLogic`] into a queue [`Handler`].
pub struct StepHandler<L> {
    pub logic: L,
    pub db: Db,
    /// How long a `Fault::Stall` holds the command before running it.
    pub stall: Duration,
}

impl<L: StepLogic> Handler for StepHandler<L> {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let cmd: StepCommand = msg.decode()?;
        if cmd.step.worker() != L::WORKER {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "{} is not a step of the {:?} worker",
                cmd.step.name(),
                L::WORKER
            )));
        }
        if cmd.fault == Some(Fault::Stall) {
            // Outside any transaction: a stalled step must not hold the database.
            tracing::info!(order_id = %cmd.order_id, step = cmd.step.name(), "fault injection: stalling");
            tokio::time::sleep(self.stall).await;
        }
        let service = worker_name(L::WORKER);
        let span = telemetry::transaction(service, &self.db, cmd.step.name(), &Context::current());
        span.set_attribute(KeyValue::new(
            "marketplace.order_id",
            cmd.order_id.to_string(),
        ));
        let work = self.apply_in_tx(msg, &cmd);
        let result = telemetry::FutureExt::with_context(work, span.context().clone()).await;
        if let Err(e) = &result {
            span.set_error(e.to_string());
        }
        result
    }
}

impl<L: StepLogic> StepHandler<L> {
    /// The step, its inbox record and its reply, in one transaction.
    async fn apply_in_tx(&self, msg: &Incoming, cmd: &StepCommand) -> Result<(), HandlerError> {
        let mut tx = self.db.begin().await?;
        if !inbox::first_delivery(&mut tx, &msg.message_id).await? {
            tracing::debug!(id = %msg.message_id, "duplicate delivery; acknowledged again");
            return Ok(());
        }
        let result = if cmd.fault == Some(Fault::Kill) {
            StepResult::Failed {
                error: format!("injected fault: {} killed", cmd.step.name()),
            }
        } else {
            self.logic.apply(&mut tx, cmd).await?
        };
        tracing::info!(order_id = %cmd.order_id, step = cmd.step.name(), ?result, "step handled");
        let reply = ManagerMessage::StepReply(StepReply {
            order_id: cmd.order_id,
            step: cmd.step,
            result,
        });
        outbox::enqueue(
            &mut tx,
            topology::EXCHANGE,
            topology::RK_STEP_REPLY,
            Some(cmd.order_id.to_string()),
            &reply,
        )
        .await?;
        tx.commit().await?;
        self.db.wake_outbox();
        Ok(())
    }
}

/// The service name of a worker, as in logs, traces and the `marketplace` targets.
pub fn worker_name(worker: Worker) -> &'static str {
    match worker {
        Worker::Order => "order",
        Worker::Payment => "payment",
        Worker::Inventory => "inventory",
        Worker::Delivery => "delivery",
    }
}

/// The consume loop of a worker's command queue.
pub fn consume<L: StepLogic>(
    handler: StepHandler<L>,
    broker: Broker,
    shutdown: Shutdown,
) -> crate::service::Part {
    Box::pin(bus::consume(
        broker,
        topology::worker_queue(L::WORKER),
        64,
        Arc::new(handler),
        shutdown,
    ))
}

/// Starts a step worker on its opened database: its command consumer and its outbox relay.
pub fn spawn<L: StepLogic>(
    name: &'static str,
    db: Db,
    logic: L,
    config: &crate::config::Config,
    shutdown: &Shutdown,
) -> crate::service::Running {
    let broker = Broker::start(&config.amqp_url, name, shutdown.clone());
    let handler = StepHandler {
        logic,
        db: db.clone(),
        stall: Duration::from_millis(config.fault_stall_ms as u64),
    };
    let parts = vec![consume(handler, broker.clone(), shutdown.clone())];
    crate::service::spawn(name, db, broker, parts)
}
