//! The backend: the HTTP API (axum, utoipa, Swagger UI at `/docs`), the read models it
//! answers from, and the sales analytics.
//!
//! A purchase is written to this service's database together with its `PlaceOrder`
//! message (transactional outbox); everything the API reads afterwards comes from events
//! the other services publish, projected into the same database.

use std::sync::Arc;

use anyhow::Context;
use common::{bus, bus::Broker, config::Config, db::Db, service, shutdown::Shutdown, topology};

pub mod analytics;
pub mod api;
pub mod projection;
mod store;

pub use analytics::Analytics;
pub use api::{ApiDoc, ApiError, router};
pub use projection::Projection;

/// The backend's own migrations (versions from 1000; below belongs to `common`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many analytics deliveries may be in flight: counting is keyed by order id, so their
/// order does not matter.
const ANALYTICS_PREFETCH: u16 = 16;

/// Opens the backend's database, starts its consumers (projections and analytics) and
/// returns the running service and the HTTP router (API, `/docs`, `/api-docs/openapi.json`;
/// not `/healthz` and `/readyz`, which `main` merges for every target).
pub async fn start(
    config: Config,
    shutdown: Shutdown,
) -> anyhow::Result<(service::Running, axum::Router)> {
    let db = Db::open(&config, "backend", &MIGRATIONS, &shutdown)
        .await
        .context("opening the backend database")?;
    let broker = Broker::start(&config.amqp_url, "backend", shutdown.clone());
    let parts: Vec<service::Part> = vec![
        // One at a time keeps the events in their publication order; versions make the
        // projection correct without it, but fewer stale writes are wasted.
        Box::pin(bus::consume(
            broker.clone(),
            topology::BACKEND_EVENTS_QUEUE,
            1,
            Arc::new(Projection::new(db.clone())),
            shutdown.clone(),
        )),
        Box::pin(bus::consume(
            broker.clone(),
            topology::ANALYTICS_QUEUE,
            ANALYTICS_PREFETCH,
            Arc::new(Analytics::new(db.clone())),
            shutdown.clone(),
        )),
    ];
    let app = router(db.clone(), &config);
    let running = service::spawn("backend", db, broker, parts);
    Ok((running, app))
}
