//! A backend over a fresh database, driven through its router without a socket and without
//! RabbitMQ (a purchase only writes the database and its outbox).
//!
//! SQLite in a temp dir by default; with `TEST_DATABASE_URL=postgres://…` the same tests run
//! on PostgreSQL, each in a schema of its own (`backend_test_<uuid>`, left for inspection).

#![allow(dead_code)] // each test crate uses a different part of this

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use backend::{Analytics, Projection};
use common::{
    config::Config,
    db::Db,
    domain::{Credits, OrderId, OrderStatus, OrderTerms, Quantity, Username},
    messages::{Event, OrderUpdated, Phase, Step, TimelineEntry, TimelineEvent},
    shutdown::Shutdown,
};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub(crate) struct TestApp {
    pub db: Db,
    pub router: Router,
    pub projection: Projection,
    pub analytics: Analytics,
    /// Keeps the database directory alive for the test's duration.
    _dir: tempfile::TempDir,
}

/// A response, its body parsed as JSON (`Value::Null` when it is not JSON).
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub(crate) async fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    let database_url = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    spawn_app_on(database_url, vars).await
}

/// The local PostgreSQL test server, unless `TEST_DATABASE_URL` names another.
pub(crate) const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A backend on PostgreSQL whatever `TEST_DATABASE_URL` says: for the tests of what only
/// PostgreSQL does differently.
pub(crate) async fn spawn_pg_app() -> TestApp {
    let url = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_string());
    spawn_app_on(Some(url), &[]).await
}

async fn spawn_app_on(database_url: Option<String>, vars: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_string_lossy().to_string();
    let config = Config::from_lookup(|name| match name {
        "DATA_DIR" => Some(data_dir.clone()),
        "DATABASE_URL" => database_url.clone(),
        _ => vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string()),
    })
    .expect("test configuration");
    // The service name picks the PostgreSQL schema: one per test keeps them apart.
    let service = format!("backend_test_{}", uuid::Uuid::new_v4().simple());
    let db = Db::open(&config, &service, &backend::MIGRATIONS, &Shutdown::new())
        .await
        .expect("open the test database");
    TestApp {
        router: backend::router(db.clone(), &config),
        projection: Projection::new(db.clone()),
        analytics: Analytics::new(db.clone()),
        db,
        _dir: dir,
    }
}

impl TestApp {
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Reply {
        // As the server sees a client on this machine (operator checks admit loopback).
        let mut req =
            Request::builder()
                .method(method)
                .uri(path)
                .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    40000,
                ))));
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let response = self
            .router
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        Reply {
            status,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, Body::empty()).await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.request(
            Method::POST,
            path,
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// Places a purchase that must be accepted; returns its order id.
    pub(crate) async fn buy(&self, username: &str, price: i64, amount: i64) -> OrderId {
        let r = self
            .post_json(
                "/api/purchase/",
                &serde_json::json!({"username": username, "price": price, "amount": amount}),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        OrderId::parse(r.body["order_id"].as_str().unwrap()).unwrap()
    }

    pub(crate) async fn outbox_backlog(&self) -> i64 {
        common::outbox::backlog(&self.db).await.unwrap()
    }

    /// Projects `event` as a delivery with a fresh message id.
    pub(crate) async fn project(&self, event: Event) {
        self.project_as(&uuid::Uuid::now_v7().to_string(), event)
            .await;
    }

    pub(crate) async fn project_as(&self, message_id: &str, event: Event) {
        self.projection
            .apply(message_id, &event)
            .await
            .expect("projection");
    }
}

/// Asserts an error response: status, JSON shape, and (when given) the field the detail
/// starts with.
pub(crate) fn assert_error(r: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}: {}",
        r.content_type,
        r.text
    );
    assert_eq!(r.body["error"], code, "{}", r.text);
    let detail = r.body["detail"].as_str().expect("a detail");
    assert!(!detail.is_empty());
    if let Some(field) = field {
        assert!(
            detail.starts_with(&format!("{field}: ")),
            "detail does not name {field}: {detail}"
        );
    }
}

pub(crate) fn terms(username: &str, price: i64, amount: i64) -> OrderTerms {
    OrderTerms::new(
        Username::parse(username).unwrap(),
        Credits::new(price).unwrap(),
        Quantity::new(amount).unwrap(),
    )
    .unwrap()
}

/// The saga's state as the manager would publish it after `version` transitions.
pub(crate) fn order_updated(
    id: OrderId,
    terms: &OrderTerms,
    status: OrderStatus,
    phase: &str,
    created: bool,
    version: i64,
) -> OrderUpdated {
    let events: [(Step, &str); 4] = [
        (Step::CreateOrder, "sent"),
        (Step::CreateOrder, "done"),
        (Step::ChargePayment, "sent"),
        (Step::ChargePayment, "done"),
    ];
    let timeline = events
        .iter()
        .take(version.clamp(0, 4) as usize)
        .enumerate()
        .map(|(i, (step, event))| TimelineEntry {
            seq: i as i64 + 1,
            at_ms: 1_700_000_000_000 + i as i64,
            step: *step,
            event: TimelineEvent::parse(event).expect("an event"),
            detail: None,
            span_id: None,
        })
        .collect();
    OrderUpdated {
        order_id: id,
        terms: terms.clone(),
        status,
        phase: Phase::parse(phase).expect("a phase"),
        created,
        version,
        placed_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000 + version,
        timeline,
        trace_id: None,
    }
}
