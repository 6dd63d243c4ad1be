//! What the delivery worker answers to each step.

use common::{
    bus::HandlerError,
    db::Tx,
    messages::{Event, Step, StepCommand, StepResult, Worker},
    rows::DeliveryStatus,
    worker::StepLogic,
};

use crate::store;

pub struct Deliveries;

impl StepLogic for Deliveries {
    const WORKER: Worker = Worker::Delivery;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        _events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        match cmd.step {
            Step::ScheduleDelivery => {
                if store::claim(tx, cmd, DeliveryStatus::Scheduled).await? {
                    return Ok(StepResult::Done);
                }
                // A redelivered schedule finds its own row; a late one a cancellation.
                Ok(
                    if store::status(tx, cmd).await? == Some(DeliveryStatus::Scheduled) {
                        StepResult::Done
                    } else {
                        StepResult::Skipped
                    },
                )
            }
            Step::CancelDelivery => {
                if !store::claim(tx, cmd, DeliveryStatus::Cancelled).await? {
                    store::cancel(tx, cmd).await?;
                }
                Ok(StepResult::Done)
            }
            other => unreachable!("StepHandler routes only delivery steps, got {other:?}"),
        }
    }
}
