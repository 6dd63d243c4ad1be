//! The delivery worker: schedules the delivery of purchased tokens, or cancels it.

use common::{
    bus::HandlerError,
    config::Config,
    db::{Db, Tx},
    messages::{Event, Step, StepCommand, StepResult, Worker},
    service,
    shutdown::Shutdown,
    time::now_ms,
    worker::{self, StepLogic},
};
use sqlx::Row;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the delivery database and starts consuming delivery commands.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, "delivery", &MIGRATIONS, &shutdown).await?;
    Ok(worker::spawn(
        "delivery", db, Deliveries, &config, &shutdown,
    ))
}

pub struct Deliveries;

impl StepLogic for Deliveries {
    const WORKER: Worker = Worker::Delivery;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        _events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        let order_id = cmd.order_id.to_string();
        match cmd.step {
            Step::ScheduleDelivery => {
                if claim(tx, cmd, "SCHEDULED").await? {
                    return Ok(StepResult::Done);
                }
                let status: String =
                    sqlx::query("SELECT status FROM deliveries WHERE order_id = $1")
                        .bind(&order_id)
                        .fetch_one(&mut **tx)
                        .await?
                        .try_get("status")?;
                Ok(if status == "SCHEDULED" {
                    StepResult::Done
                } else {
                    StepResult::Skipped
                })
            }
            Step::CancelDelivery => {
                if !claim(tx, cmd, "CANCELLED").await? {
                    sqlx::query("UPDATE deliveries SET status = 'CANCELLED', updated_at_ms = $2 WHERE order_id = $1")
                        .bind(&order_id)
                        .bind(now_ms())
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(StepResult::Done)
            }
            other => unreachable!("StepHandler routes only delivery steps, got {other:?}"),
        }
    }
}

/// Inserts the order's delivery row with `status`; false when one existed (see
/// payment/src/store.rs for why the first writer decides).
async fn claim(tx: &mut Tx, cmd: &StepCommand, status: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO deliveries (order_id, username, amount, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(cmd.order_id.to_string())
    .bind(cmd.terms.username.as_str())
    .bind(cmd.terms.amount.get())
    .bind(status)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}
