//! `/healthz` (the process answers) and `/readyz` (RabbitMQ and the database answer), on
//! every target.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Map, Value, json};

use crate::service::Readiness;

pub fn router(services: Vec<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(services)
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
