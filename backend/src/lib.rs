//! The backend: the HTTP API (axum, utoipa, Swagger UI at `/docs`), the read models it
//! answers from, and the sales analytics.
//!
//! A purchase is written to this service's database together with its `PlaceOrder`
//! message (transactional outbox); everything the API reads afterwards comes from events
//! the other services publish, projected into the same database.

use std::sync::Arc;

use anyhow::Context;
use common::targets::Service;
use common::{bus, bus::Broker, config::Config, db::Db, service, shutdown::Shutdown, topology};

pub mod analytics;
pub mod api;
pub mod audit;
pub mod feed;
pub mod projection;
mod store;

pub use analytics::Analytics;
pub use api::{ApiDoc, ApiError, router};
pub use projection::Projection;

/// The backend's own migrations (versions from 1000; below belongs to `common`).
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many event messages the projection may hold unacked. Versions make it correct in
/// any order (a stale event changes nothing), so it takes what waits, to batch it.
const PROJECTION_PREFETCH: u16 = 256;
/// The most event messages applied in one transaction.
const PROJECTION_BATCH: usize = 128;

/// Opens the backend's database, starts its consumers (projections and analytics) and
/// returns the running service and the HTTP router (API, `/docs`, `/api-docs/openapi.json`;
/// not `/healthz` and `/readyz`, which `main` merges for every target).
///
/// `extra_docs` are the OpenAPI documents of routes served beside the backend's (see
/// [`api::router_with_docs`]).
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
    extra_docs: Vec<utoipa::openapi::OpenApi>,
) -> anyhow::Result<(service::Running, axum::Router)> {
    let db = Db::open(&config, Service::Backend.name(), &MIGRATIONS, &shutdown)
        .await
        .context("opening the backend database")?;
    analytics::catch_up(&db)
        .await
        .context("rebuilding the sales figures")?;
    let broker = broker.for_service(Service::Backend.name());
    // The projection wakes the feed's tailer after each commit that wrote feed rows.
    let metrics = common::metrics::for_instance(&config.amqp_url);
    let feed = feed::Feed::start(db.clone(), &metrics);
    let parts: Vec<service::Part> = vec![
        Box::pin(bus::consume_batches(
            broker.clone(),
            topology::BACKEND_EVENTS_QUEUE,
            bus::BatchOptions {
                prefetch: PROJECTION_PREFETCH,
                max_batch: PROJECTION_BATCH,
                room: None,
            },
            Arc::new(Projection::with_feed(db.clone(), feed.wake())),
            shutdown.clone(),
        )),
        Box::pin(sweep_idempotency_keys(
            db.clone(),
            config.idempotency_key_ttl,
            shutdown.clone(),
        )),
    ];
    let app = api::router_with_feed(db.clone(), &config, extra_docs, feed);
    let running = service::spawn(Service::Backend.name(), db, broker, parts);
    Ok((running, app))
}

/// Forgets `Idempotency-Key`s older than `ttl`, checking a few times per `ttl` (at most
/// every minute), until `shutdown`. A failed sweep is retried at the next tick.
async fn sweep_idempotency_keys(db: Db, ttl: std::time::Duration, shutdown: Shutdown) {
    let period = (ttl / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(60),
    );
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let before = common::time::now_ms().saturating_sub(ttl_ms);
        match store::idempotency::sweep(&db, before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "idempotency keys past their TTL"),
            Err(e) => {
                tracing::warn!(error = %e, "sweeping idempotency keys failed; retrying later");
            }
        }
    }
}
