//! What the payment worker answers to each step.
//!
//! Each step first claims the order's row in `payments` ([`store::claim`]): whoever inserts
//! it decides, and everyone after reads what was decided. That makes a redelivered charge
//! repeat its first answer, and a refund that arrives before its charge leave a CANCELLED
//! tombstone that turns the late charge into a no-op.

use common::{
    bus::HandlerError,
    db::Tx,
    domain::Username,
    messages::{CreditsChanged, Event, Refusal, Step, StepCommand, StepResult, Worker},
    rows::PaymentStatus,
    worker::StepLogic,
};

use crate::store::{self, Balance};

pub struct Payments {
    /// Credits of a user seen for the first time.
    pub initial_credits: i64,
}

impl StepLogic for Payments {
    const WORKER: Worker = Worker::Payment;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        match cmd.step {
            Step::ChargePayment => self.charge(tx, cmd, events).await,
            Step::RefundPayment => refund(tx, cmd, events).await,
            other => unreachable!("StepHandler routes only payment steps, got {other:?}"),
        }
    }
}

impl Payments {
    async fn charge(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        let username = &cmd.terms.username;
        if store::open_account(tx, username, self.initial_credits).await? {
            events.push(balance(
                username,
                Balance {
                    credits: self.initial_credits,
                    version: 0,
                },
            ));
        }
        if !store::claim(tx, cmd, PaymentStatus::Charged).await? {
            return Ok(earlier_answer(store::status(tx, cmd).await?));
        }
        match store::debit(tx, username, cmd.terms.total().get()).await? {
            Some(after) => {
                events.push(balance(username, after));
                Ok(StepResult::Done)
            }
            None => {
                store::set_status(tx, cmd, PaymentStatus::Declined).await?;
                Ok(StepResult::Refused {
                    reason: Refusal::InsufficientFunds,
                })
            }
        }
    }
}

async fn refund(
    tx: &mut Tx,
    cmd: &StepCommand,
    events: &mut Vec<Event>,
) -> Result<StepResult, HandlerError> {
    if store::claim(tx, cmd, PaymentStatus::Cancelled).await? {
        return Ok(StepResult::Done); // tombstone: nothing was charged, nothing ever will be
    }
    if let Some((user, amount)) = store::mark_refunded(tx, cmd).await? {
        let after = store::credit(tx, &user, amount).await?;
        let user = Username::parse(&user).map_err(|e| HandlerError::Permanent(e.into()))?;
        events.push(balance(&user, after));
    }
    Ok(StepResult::Done)
}

/// What a charge answered the first time, for a charge that finds the row taken.
fn earlier_answer(status: Option<PaymentStatus>) -> StepResult {
    match status {
        Some(PaymentStatus::Charged) => StepResult::Done,
        Some(PaymentStatus::Declined) => StepResult::Refused {
            reason: Refusal::InsufficientFunds,
        },
        _ => StepResult::Skipped, // refunded or tombstoned: the saga has moved on
    }
}

/// The event announcing a user's balance.
fn balance(username: &Username, after: Balance) -> Event {
    Event::CreditsChanged(CreditsChanged {
        username: username.clone(),
        credits: after.credits,
        version: after.version,
    })
}
