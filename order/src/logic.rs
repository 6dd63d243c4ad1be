//! What the order worker answers to each step.

use common::{
    bus::HandlerError,
    db::Tx,
    domain::OrderStatus,
    messages::{Event, Step, StepCommand, StepResult, Worker},
    worker::StepLogic,
};

use crate::store;

pub struct Orders;

impl StepLogic for Orders {
    const WORKER: Worker = Worker::Order;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        _events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        match cmd.step {
            Step::CreateOrder => {
                if store::insert(tx, cmd, OrderStatus::Processing, true).await? {
                    return Ok(StepResult::Done);
                }
                // A redelivered create finds its own row; a late one finds a tombstone.
                Ok(done_if(
                    store::status(tx, cmd).await? == Some(OrderStatus::Processing),
                ))
            }
            Step::CompleteOrder => {
                store::complete(tx, cmd).await?;
                Ok(done_if(
                    store::status(tx, cmd).await? == Some(OrderStatus::Success),
                ))
            }
            Step::RejectOrder => {
                let final_status = cmd
                    .reject_status
                    .filter(|s| s.is_final() && *s != OrderStatus::Success)
                    .ok_or_else(|| {
                        HandlerError::Permanent(anyhow::anyhow!(
                            "order.reject needs a final failure status"
                        ))
                    })?;
                if !store::insert(tx, cmd, final_status, false).await? {
                    // The manager decides once per saga; SUCCESS is overridden only when the
                    // manager timed order.complete out and compensated everything else.
                    store::overwrite(tx, cmd, final_status).await?;
                }
                Ok(StepResult::Done)
            }
            other => unreachable!("StepHandler routes only order steps, got {other:?}"),
        }
    }
}

fn done_if(done: bool) -> StepResult {
    if done {
        StepResult::Done
    } else {
        StepResult::Skipped
    }
}
