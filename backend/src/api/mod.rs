//! The HTTP API: routes, shared state and the OpenAPI document served at `/docs`.

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use common::{config::Config, db::Db, rate_limit::RateLimiter};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub mod accounts;
pub mod analytics;
pub mod backlog;
pub mod dashboard;
pub mod orders;
mod placing;
pub mod purchase;
pub mod restock;
pub mod stream;

pub use common::http_error::{ApiError, ErrorBody, MAX_BODY_BYTES};

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Whether purchase fault flags are honoured (`FAULT_INJECTION`); refused with 403 if not.
    pub fault_injection: bool,
    /// Fault flags are an operator's tool: they need the operator's token (or loopback).
    pub admin_token: common::operator::AdminToken,
    /// The products on sale: a purchase of another, or at another price than the
    /// catalog's, is refused.
    pub catalog: std::sync::Arc<common::catalog::Catalog>,
    /// The most orders `/api/all-transaction` answers with (the newest).
    pub all_transaction_limit: i64,
    /// Orders waiting to complete, against `MAX_BACKLOG`: past it, purchases are refused.
    pub backlog: std::sync::Arc<backlog::Backlog>,
    /// The sales summary for `/api/analytics/stream`, read once for every listener.
    pub summary: analytics::SummaryFeed,
    /// Writes accepted purchases in groups (one transaction for those arriving together).
    placing: placing::Placing,
    /// The order feed this process streams (`/api/orders/stream`).
    pub feed: crate::feed::Feed,
}

/// The API, `/docs` and `/api-docs/openapi.json` over `db`. Needs no broker: a purchase
/// only writes the database and its outbox, which the service's relay publishes.
pub fn router(db: Db, config: &Config) -> Router {
    router_with_docs(db, config, Vec::new())
}

/// [`router`], with `extra_docs` (the OpenAPI documents of routes other services serve
/// beside this API: dead letters, audit) merged into the one document at `/docs`.
pub fn router_with_docs(
    db: Db,
    config: &Config,
    extra_docs: Vec<utoipa::openapi::OpenApi>,
) -> Router {
    let metrics = common::metrics::for_instance(&config.amqp_url);
    let feed = crate::feed::Feed::start(db.clone(), &metrics);
    router_with_feed(db, config, extra_docs, feed)
}

/// [`router_with_docs`] streaming `feed`, whose tailer the process's projection wakes.
pub fn router_with_feed(
    db: Db,
    config: &Config,
    extra_docs: Vec<utoipa::openapi::OpenApi>,
    feed: crate::feed::Feed,
) -> Router {
    let mut doc = ApiDoc::openapi();
    for extra in extra_docs {
        doc.merge(extra);
    }
    common::operator::add_security_scheme(&mut doc);
    purchase::document_username_pattern(&mut doc);
    purchase::document_catalog(&mut doc, &config.catalog);
    common::http_server::document_limits(&mut doc);
    let backlog = std::sync::Arc::new(backlog::Backlog::new(config.max_backlog));
    let state = AppState {
        placing: placing::Placing::start(db.clone(), backlog.clone()),
        summary: analytics::SummaryFeed::start(db.clone()),
        db,
        fault_injection: config.fault_injection,
        admin_token: config.admin_token.clone(),
        catalog: std::sync::Arc::new(config.catalog.clone()),
        all_transaction_limit: config.all_transaction_limit,
        backlog,
        feed,
    };
    // One bucket per client for both spellings of the path (PURCHASE_RATE_LIMIT).
    let mut purchase_route = post(purchase::purchase);
    if let Some(limit) = config.purchase_rate_limit {
        let limiter = RateLimiter::new(limit, "PURCHASE_RATE_LIMIT");
        purchase_route = purchase_route.route_layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(limiter),
            common::rate_limit::enforce,
        ));
    }
    let operator = config
        .admin_token
        .guard(Router::new().route("/api/inventory/{product}/restock", post(restock::restock)));
    Router::new()
        .route("/api/purchase", purchase_route.clone())
        .route("/api/purchase/", purchase_route)
        .route("/api/all-transaction", get(orders::all_transactions))
        .route("/api/orders", get(orders::list_orders))
        .route("/api/orders/stream", get(stream::stream_orders))
        .route("/api/orders/{id}", get(orders::get_order))
        .route("/api/users/{username}", get(accounts::get_user))
        .route("/api/inventory", get(accounts::inventory))
        .route("/api/analytics/sales", get(analytics::sales))
        .route("/api/analytics/summary", get(analytics::summary))
        .route(
            "/api/analytics/sales-by-product",
            get(analytics::sales_by_product),
        )
        .route(
            "/api/analytics/top-customers",
            get(analytics::top_customers),
        )
        .route("/api/analytics/timeseries", get(analytics::timeseries))
        .route("/api/analytics/stream", get(analytics::stream))
        .merge(operator)
        // The page at `/`: not JSON API, so not in the OpenAPI document.
        .merge(dashboard::router(config.trace_ui_url.clone()))
        // After the routes: it applies to those that exist when it is called.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound("no such path".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            "backend",
            common::telemetry::http::trace_requests,
        ))
        .with_state(state)
        .merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", doc))
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Late-token marketplace",
        description = "Buy late-day tokens. A purchase is accepted at once (202) and completed by a \
saga across the order, payment, inventory and delivery services; follow it at `/api/orders/{id}`. \
Every error is `{\"error\": code, \"detail\": text}`. Any route but the probes may answer \
`503 overloaded` with `Retry-After: 1` while the server handles `HTTP_MAX_REQUESTS_IN_FLIGHT` \
requests already, and a request whose body does not arrive within `HTTP_BODY_TIMEOUT_MS` is \
`408 request_timeout`.",
    ),
    paths(
        purchase::purchase,
        orders::all_transactions,
        orders::list_orders,
        stream::stream_orders,
        orders::get_order,
        accounts::get_user,
        accounts::inventory,
        restock::restock,
        analytics::sales,
        analytics::summary,
        analytics::sales_by_product,
        analytics::top_customers,
        analytics::timeseries,
        analytics::stream,
        dashboard::page_config,
        healthz,
        readyz,
    ),
    components(schemas(ApiError, ErrorBody, common::domain::OrderStatus, crate::feed::OrderEvent, crate::feed::Reset)),
    tags(
        (name = "orders", description = "Place orders and follow them"),
        (name = "accounts", description = "Balances and stock"),
        (name = "analytics", description = "Sales figures"),
        (name = "dashboard", description = "The settings of the dashboard page at `/`"),
        (name = "health", description = "Probes (served by every target, documented here)"),
    )
)]
pub struct ApiDoc;

// `/healthz` and `/readyz` are served by `common::health` on every target; they are only
// described here so that the API's one document lists every path a client can call.

/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = serde_json::Value, example = json!({"status": "ok"})))
)]
#[allow(dead_code)]
fn healthz() {}

/// RabbitMQ and every service's database answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = serde_json::Value,
            example = json!({"ready": true, "services": {"backend": {"rabbitmq": true, "database": true}}})),
        (status = 503, description = "Not ready", body = serde_json::Value,
            example = json!({"ready": false, "services": {"backend": {"rabbitmq": false, "database": true}}})),
    )
)]
#[allow(dead_code)]
fn readyz() {}
