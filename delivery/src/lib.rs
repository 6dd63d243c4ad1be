//! The delivery worker: schedules the delivery of purchased tokens, or cancels it. `logic`
//! decides, `store` is the SQL.

pub mod audit;
mod logic;
mod store;

use common::targets::Service;
use common::{bus::Broker, config::Config, db::Db, service, shutdown::Shutdown, worker};

pub use logic::Deliveries;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the delivery database and starts consuming delivery commands.
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, Service::Delivery.name(), &MIGRATIONS, &shutdown).await?;
    Ok(worker::spawn(db, Deliveries, &config, broker, &shutdown))
}
