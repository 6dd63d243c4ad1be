//! The dead-letter service: stores every message that reached the dead-letter exchange
//! (rejected, over its delivery limit, expired) and tells the manager when it belonged to a
//! saga, so the saga fails (or, for a compensation, retries) instead of waiting forever.
//! Its API (`/api/dead-letters`) lists, shows, replays and resolves the letters.
//!
//! `consumer` reads letters off the queue, `store` is the SQL, `api` the HTTP routes.

pub mod api;
pub mod audit;
mod consumer;
pub mod store;

use std::sync::Arc;

use common::targets::Service;
use common::{
    bus::{self, Broker},
    config::Config,
    db::Db,
    service,
    shutdown::Shutdown,
    topology,
};
use utoipa::OpenApi;

pub use consumer::DeadLetterConsumer;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the store, starts consuming the dead-letter queue, and returns the running service
/// and its HTTP routes (no fallback: they are merged beside other routers).
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
) -> anyhow::Result<(service::Running, axum::Router)> {
    let db = Db::open(&config, Service::DeadLetter.name(), &MIGRATIONS, &shutdown).await?;
    let broker = broker.for_service(Service::DeadLetter.name());
    let store = Arc::new(DeadLetterConsumer {
        db: db.clone(),
        metrics: broker.metrics().clone(),
    });
    let parts: Vec<service::Part> = vec![Box::pin(bus::consume(
        broker.clone(),
        topology::DEAD_LETTER_QUEUE,
        32,
        store,
        shutdown.clone(),
    ))];
    let router = api::router(db.clone());
    let metrics = broker.metrics().clone();
    let running = service::spawn(Service::DeadLetter.name(), db, broker, parts).counting(
        &metrics.dead_letters_open,
        "SELECT COUNT(*) AS n FROM dead_letters WHERE resolved_at_ms IS NULL",
    );
    Ok((running, router))
}

/// The OpenAPI document of the dead-letter routes (tag `dead-letters`), for `/docs`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::DeadLetterDoc::openapi()
}
