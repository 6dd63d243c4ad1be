//! `/healthz` (the process answers), `/readyz` (RabbitMQ and the database answer) and
//! `/metrics` (Prometheus text), on every target; `/metrics` on a listener of its own when
//! `METRICS_ADDR` is set.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Map, Value, json};

use crate::{metrics::Metrics, service::Readiness};

/// The probes and `/metrics`, for one listener.
pub fn router(services: Vec<Readiness>, metrics: Arc<Metrics>) -> Router {
    probes(services.clone()).merge(metrics_router(services, metrics))
}

/// `/healthz` and `/readyz`.
pub fn probes(services: Vec<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(services)
}

/// `/metrics` alone: what a listener of its own (`METRICS_ADDR`, on a scrape network)
/// serves.
pub fn metrics_router(services: Vec<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state((services, metrics))
}

async fn serve_metrics(
    State((services, metrics)): State<(Vec<Readiness>, Arc<Metrics>)>,
) -> impl IntoResponse {
    let body = scrape(&metrics, &services).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

/// Refreshes the gauges read from `services`' databases (each one's outbox, and what it
/// counts of its own tables: [`crate::service::StoredCount`]), then renders every metric.
async fn scrape(metrics: &Metrics, services: &[Readiness]) -> String {
    for s in services {
        let db = s.db.pool();
        if let Some(n) = count(db, "SELECT COUNT(*) AS n FROM outbox").await {
            metrics.outbox_backlog.with_label_values(&[s.name]).set(n);
        }
        for stored in &s.counts {
            if let Some(n) = count(db, stored.sql).await {
                stored.gauge.with_label_values(&[s.name]).set(n);
            }
        }
    }
    metrics.render()
}

/// A single count, or None (logged) when the database does not answer in time: a scrape
/// keeps the previous value rather than report a wrong one.
async fn count(db: &sqlx::AnyPool, sql: &'static str) -> Option<i64> {
    use sqlx::Row;
    let query = sqlx::query(sql).fetch_one(db);
    match tokio::time::timeout(std::time::Duration::from_secs(2), query).await {
        Ok(Ok(row)) => row.try_get("n").ok(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, sql, "metrics query failed");
            None
        }
        Err(_) => None,
    }
}

async fn readyz(State(services): State<Vec<Readiness>>) -> (StatusCode, Json<Value>) {
    let mut report = Map::new();
    let mut ready = true;
    for s in &services {
        let (rabbitmq, database) = s.check().await;
        ready &= rabbitmq && database;
        report.insert(
            s.name.to_string(),
            json!({"rabbitmq": rabbitmq, "database": database}),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "services": report})))
}
