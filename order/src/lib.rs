//! The order worker: records orders and their final status.

use common::{
    bus::HandlerError,
    config::Config,
    db::{Db, Tx},
    domain::OrderStatus,
    messages::{Event, Step, StepCommand, StepResult, Worker},
    service,
    shutdown::Shutdown,
    time::now_ms,
    worker::{self, StepLogic},
};
use sqlx::Row;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the order database and starts consuming order commands.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, "order", &MIGRATIONS, &shutdown).await?;
    Ok(worker::spawn("order", db, Orders, &config, &shutdown))
}

pub struct Orders;

impl StepLogic for Orders {
    const WORKER: Worker = Worker::Order;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        _events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        let order_id = cmd.order_id.to_string();
        match cmd.step {
            Step::CreateOrder => {
                if insert(tx, cmd, OrderStatus::Processing, true).await? {
                    return Ok(StepResult::Done);
                }
                // A redelivered create finds its own row; a late one finds a tombstone.
                Ok(match status(tx, &order_id).await?.as_deref() {
                    Some("PROCESSING") => StepResult::Done,
                    _ => StepResult::Skipped,
                })
            }
            Step::CompleteOrder => {
                sqlx::query("UPDATE orders SET status = 'SUCCESS', updated_at_ms = $2 WHERE order_id = $1 AND status = 'PROCESSING'")
                    .bind(&order_id)
                    .bind(now_ms())
                    .execute(&mut **tx)
                    .await?;
                Ok(match status(tx, &order_id).await?.as_deref() {
                    Some("SUCCESS") => StepResult::Done,
                    _ => StepResult::Skipped,
                })
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
                if !insert(tx, cmd, final_status, false).await? {
                    // The manager decides once per saga; SUCCESS is overridden only when the
                    // manager timed order.complete out and compensated everything else.
                    sqlx::query(
                        "UPDATE orders SET status = $2, updated_at_ms = $3 WHERE order_id = $1 AND status IN ('PROCESSING', 'SUCCESS')",
                    )
                    .bind(&order_id)
                    .bind(final_status.as_str())
                    .bind(now_ms())
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(StepResult::Done)
            }
            other => unreachable!("StepHandler routes only order steps, got {other:?}"),
        }
    }
}

async fn insert(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: OrderStatus,
    created: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO orders (order_id, username, price, amount, status, created, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(cmd.order_id.to_string())
    .bind(cmd.terms.username.as_str())
    .bind(cmd.terms.price.get())
    .bind(cmd.terms.amount.get())
    .bind(status.as_str())
    .bind(i64::from(created))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn status(tx: &mut Tx, order_id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT status FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get("status"))
        .transpose()
}
