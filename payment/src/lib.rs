//! The payment worker: users' credits. `payment.charge` debits price × amount (atomically,
//! never below zero), `payment.refund` gives it back or leaves a tombstone.

pub mod audit;
mod logic;
mod store;

use common::targets::Service;
use common::{bus::Broker, config::Config, db::Db, service, shutdown::Shutdown, worker};

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use logic::Payments;

/// Opens the payment database and starts consuming payment commands.
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, Service::Payment.name(), &MIGRATIONS, &shutdown).await?;
    Ok(worker::spawn(
        db,
        Payments {
            initial_credits: config.initial_credits,
        },
        &config,
        broker,
        &shutdown,
    ))
}
