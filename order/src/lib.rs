//! The order worker: records orders and their final status. `logic` decides, `store` is
//! the SQL.

pub mod audit;
mod logic;
mod store;

use common::targets::Service;
use common::{bus::Broker, config::Config, db::Db, service, shutdown::Shutdown, worker};

pub use logic::Orders;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the order database and starts consuming order commands.
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, Service::Order.name(), &MIGRATIONS, &shutdown).await?;
    Ok(worker::spawn(db, Orders, &config, broker, &shutdown))
}
