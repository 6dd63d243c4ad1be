//! The inventory worker: stock per product. `inventory.reserve` takes `amount` of the
//! order's product off its stock (atomically, never below zero), `inventory.release` puts
//! it back or leaves a tombstone; operators' restocks arrive on a queue of their own.

pub mod audit;
mod logic;
mod restock;
mod store;

use std::sync::Arc;

use common::targets::Service;
use common::{
    bus::{self, BatchOptions, Broker},
    config::Config,
    db::Db,
    service,
    shutdown::Shutdown,
    topology, worker,
};

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use logic::Inventory;
pub use restock::Restocks;
pub use store::stock_products;

/// Restocks are rare: a small batch is plenty.
const RESTOCK_BATCH: u16 = 16;

/// Opens the inventory database (stocking the catalog's new products) and starts
/// consuming inventory commands and restocks.
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, Service::Inventory.name(), &MIGRATIONS, &shutdown).await?;
    store::stock_products(&db, &config.catalog).await?;
    let restocks = Arc::new(Restocks { db: db.clone() });
    let stop = shutdown.clone();
    Ok(worker::spawn_with(
        db,
        Inventory,
        &config,
        broker,
        &shutdown,
        move |broker| {
            vec![Box::pin(bus::consume_batches(
                broker.clone(),
                topology::RESTOCK_QUEUE,
                BatchOptions {
                    prefetch: RESTOCK_BATCH,
                    max_batch: RESTOCK_BATCH.into(),
                    room: None,
                },
                restocks,
                stop,
            ))]
        },
    ))
}
