//! The payment worker: users' credits. `payment.charge` debits price × amount (atomically,
//! never below zero), `payment.refund` gives it back or leaves a tombstone.

mod store;

use std::time::Duration;

use common::{bus::Broker, config::Config, db::Db, service, shutdown::Shutdown, worker};

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use store::Payments;

/// Opens the payment database and starts consuming payment commands.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, "payment", &MIGRATIONS, &shutdown).await?;
    let broker = Broker::start(&config.amqp_url, "payment", shutdown.clone());
    let handler = worker::StepHandler {
        logic: Payments {
            initial_credits: config.initial_credits,
        },
        db: db.clone(),
        stall: Duration::from_millis(config.fault_stall_ms as u64),
    };
    let parts = vec![worker::consume(handler, broker.clone(), shutdown.clone())];
    Ok(service::spawn("payment", db, broker, parts, &shutdown))
}
