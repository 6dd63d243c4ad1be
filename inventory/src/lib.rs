//! The inventory worker: stock of `late_token`. `inventory.reserve` takes `amount` off the
//! stock (atomically, never below zero), `inventory.release` puts it back or leaves a
//! tombstone.

mod store;

use common::{config::Config, db::Db, service, shutdown::Shutdown, worker};

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use store::{Inventory, stock_product};

/// Opens the inventory database (stocking the product on first start) and starts
/// consuming inventory commands.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, "inventory", &MIGRATIONS, &shutdown).await?;
    store::stock_product(&db, config.initial_stock).await?;
    Ok(worker::spawn(
        "inventory",
        db,
        Inventory,
        &config,
        &shutdown,
    ))
}
