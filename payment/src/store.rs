//! Charges and refunds: the only SQL of the payment worker.
//!
//! Each step first claims the order's row in `payments` (INSERT … ON CONFLICT DO NOTHING):
//! whoever inserts it decides, and everyone after reads what was decided. That makes a
//! redelivered charge repeat its first answer, and a refund that arrives before its charge
//! leave a CANCELLED tombstone that turns the late charge into a no-op.

use common::{
    bus::HandlerError,
    db::Tx,
    messages::{CreditsChanged, Event, Refusal, Step, StepCommand, StepResult, Worker},
    time::now_ms,
    worker::StepLogic,
};
use sqlx::Row;

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
        let order_id = cmd.order_id.to_string();
        let username = cmd.terms.username.as_str();
        let total = cmd.terms.total().get();
        let opened = sqlx::query("INSERT INTO accounts (username, credits, version, opening_credits) VALUES ($1, $2, 0, $2) ON CONFLICT (username) DO NOTHING")
            .bind(username)
            .bind(self.initial_credits)
            .execute(&mut **tx)
            .await?;
        if opened.rows_affected() == 1 {
            events.push(balance(username, self.initial_credits, 0)?);
        }
        if !claim(tx, &order_id, username, total, "CHARGED").await? {
            return Ok(earlier_answer(tx, &order_id).await?);
        }
        let debited = sqlx::query(
            "UPDATE accounts SET credits = credits - $1, version = version + 1 \
             WHERE username = $2 AND credits >= $1 RETURNING credits, version",
        )
        .bind(total)
        .bind(username)
        .fetch_optional(&mut **tx)
        .await?;
        match debited {
            Some(row) => {
                events.push(balance(
                    username,
                    row.try_get("credits")?,
                    row.try_get("version")?,
                )?);
                Ok(StepResult::Done)
            }
            None => {
                set_status(tx, &order_id, "DECLINED").await?;
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
    let order_id = cmd.order_id.to_string();
    let username = cmd.terms.username.as_str();
    if claim(
        tx,
        &order_id,
        username,
        cmd.terms.total().get(),
        "CANCELLED",
    )
    .await?
    {
        return Ok(StepResult::Done); // tombstone: nothing was charged, nothing ever will be
    }
    let refunded = sqlx::query(
        "UPDATE payments SET status = 'REFUNDED', updated_at_ms = $2 \
         WHERE order_id = $1 AND status = 'CHARGED' RETURNING username, amount",
    )
    .bind(&order_id)
    .bind(now_ms())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(row) = refunded {
        let user: String = row.try_get("username")?;
        let amount: i64 = row.try_get("amount")?;
        let balance = sqlx::query(
            "UPDATE accounts SET credits = credits + $1, version = version + 1 WHERE username = $2 RETURNING credits, version",
        )
        .bind(amount)
        .bind(&user)
        .fetch_one(&mut **tx)
        .await?;
        events.push(self::balance(
            &user,
            balance.try_get("credits")?,
            balance.try_get("version")?,
        )?);
    }
    Ok(StepResult::Done)
}

/// Inserts the order's payment row with `status`; false when a row already existed.
async fn claim(
    tx: &mut Tx,
    order_id: &str,
    username: &str,
    amount: i64,
    status: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO payments (order_id, username, amount, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(username)
    .bind(amount)
    .bind(status)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn set_status(tx: &mut Tx, order_id: &str, status: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET status = $2, updated_at_ms = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What a charge answered the first time, for a charge that finds the row taken.
async fn earlier_answer(tx: &mut Tx, order_id: &str) -> Result<StepResult, sqlx::Error> {
    let status: String = sqlx::query("SELECT status FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("status")?;
    Ok(match status.as_str() {
        "CHARGED" => StepResult::Done,
        "DECLINED" => StepResult::Refused {
            reason: Refusal::InsufficientFunds,
        },
        _ => StepResult::Skipped, // refunded or tombstoned: the saga has moved on
    })
}

/// The event announcing a user's balance.
fn balance(username: &str, credits: i64, version: i64) -> Result<Event, HandlerError> {
    Ok(Event::CreditsChanged(CreditsChanged {
        username: common::domain::Username::parse(username)
            .map_err(|e| HandlerError::Permanent(e.into()))?,
        credits,
        version,
    }))
}
