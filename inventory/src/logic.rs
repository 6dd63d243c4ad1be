//! What the inventory worker answers to each step. Same claim-first pattern as payment
//! (see payment/src/logic.rs): the first writer of an order's reservation row decides, and
//! a release before its reserve leaves a tombstone.

use common::{
    bus::HandlerError,
    db::Tx,
    domain::Product,
    messages::{Event, Refusal, Step, StepCommand, StepResult, StockChanged, Worker},
    rows::ReservationStatus,
    worker::StepLogic,
};

use crate::store::{self, Stock};

pub struct Inventory;

impl StepLogic for Inventory {
    const WORKER: Worker = Worker::Inventory;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        match cmd.step {
            Step::ReserveStock => reserve(tx, cmd, events).await,
            Step::ReleaseStock => release(tx, cmd, events).await,
            other => unreachable!("StepHandler routes only inventory steps, got {other:?}"),
        }
    }
}

async fn reserve(
    tx: &mut Tx,
    cmd: &StepCommand,
    events: &mut Vec<Event>,
) -> Result<StepResult, HandlerError> {
    if !store::claim(tx, cmd, ReservationStatus::Reserved).await? {
        return Ok(earlier_answer(store::status(tx, cmd).await?));
    }
    let product = &cmd.terms.product;
    match store::take(tx, product, cmd.terms.amount.get()).await? {
        Some(after) => {
            events.push(stock(product, after));
            Ok(StepResult::Done)
        }
        None => {
            store::set_status(tx, cmd, ReservationStatus::Refused).await?;
            Ok(StepResult::Refused {
                reason: Refusal::InsufficientStock,
            })
        }
    }
}

async fn release(
    tx: &mut Tx,
    cmd: &StepCommand,
    events: &mut Vec<Event>,
) -> Result<StepResult, HandlerError> {
    if store::claim(tx, cmd, ReservationStatus::Cancelled).await? {
        return Ok(StepResult::Done); // tombstone
    }
    if let Some(amount) = store::mark_released(tx, cmd).await? {
        let product = &cmd.terms.product;
        let after = store::put_back(tx, product, amount).await?;
        events.push(stock(product, after));
    }
    Ok(StepResult::Done)
}

/// What a reservation answered the first time, for one that finds the row taken.
fn earlier_answer(status: Option<ReservationStatus>) -> StepResult {
    match status {
        Some(ReservationStatus::Reserved) => StepResult::Done,
        Some(ReservationStatus::Refused) => StepResult::Refused {
            reason: Refusal::InsufficientStock,
        },
        _ => StepResult::Skipped, // released or tombstoned: the saga has moved on
    }
}

/// The event announcing a product's stock.
pub(crate) fn stock(product: &Product, after: Stock) -> Event {
    Event::StockChanged(StockChanged {
        product: product.to_string(),
        stock: after.stock,
        version: after.version,
    })
}
