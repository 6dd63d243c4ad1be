//! The invariant audit: reads every service's store and checks the five invariants of
//! docs/ARCHITECTURE.md across them, naming the orders involved in any violation.
//!
//! It is an operator's tool (`GET /api/audit`, `marketplace audit`) and the chaos tests'
//! oracle. It takes no locks across stores, so it reads them one after the other; an order
//! that moves while it reads can look inconsistent for a moment, which is why anything
//! younger than `grace_ms` is reported as in flight, not as a violation. After quiescence
//! (no load, every order final), run it with `grace_ms=0`.
//!
//! Its memory does not grow with the number of orders stored:
//! - the per-order checks run per window of order ids, `(lo, hi]`, holding at most
//!   [`WINDOW`] rows of each store at a time: `hi` is the smallest of each store's
//!   [`WINDOW`]-th order id after `lo` (not the backend's alone: a store may hold ids the
//!   backend does not), and the last window is open-ended, so the windows partition the
//!   whole id space (a row whose order the backend never had is read too). Each store
//!   compares ids in its own collation: bytewise on SQLite, and for UUIDs (lowercase hex
//!   at fixed places) any PostgreSQL collation orders them the same;
//! - the books (credits per user, stock per product) are summed by the payment and
//!   inventory stores themselves (`GROUP BY`, one statement each, so each account is read
//!   consistently with its payments) and streamed row by row;
//! - the report lists at most [`LISTED`] violations per invariant and counts the others.
//!
//! The checks are a pure core, one function per invariant (`check`: the orders of a
//! window; `books`: each user's and product's books, the outboxes): data and time in,
//! findings out. `read` reads the stores.

mod books;
mod check;
mod read;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use common::{
    config::Config,
    db::Db,
    http_error::{ApiError, ErrorBody},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

/// Whatever is younger than this is in flight, not a violation, unless the caller says
/// otherwise.
pub const DEFAULT_GRACE_MS: i64 = 60_000;

/// Order ids per window: the audit holds at most this many rows of each store at a time
/// (plus whatever is written into the last, open-ended, window while it reads it).
pub const WINDOW: usize = 2_000;

/// Violations listed per invariant; the others are only counted (`Invariant::unlisted`).
pub const LISTED: usize = 100;

/// Orders named by a violation of a user's or a product's books: its first ones by id.
pub const BOOK_ORDERS: usize = 100;

/// The audit's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// True when no invariant is violated.
    pub ok: bool,
    pub checked_at_ms: i64,
    pub grace_ms: i64,
    pub orders: OrderCounts,
    pub dead_letters: DeadLetterCounts,
    /// Messages waiting in each service's outbox.
    pub outbox_backlog: BTreeMap<String, i64>,
    /// The five invariants, in docs/ARCHITECTURE.md's order.
    pub invariants: Vec<InvariantReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderCounts {
    /// Orders the backend accepted (answered 202).
    pub accepted: i64,
    /// Accepted orders whose status is final in the backend's read model.
    pub r#final: i64,
    /// Accepted orders not final yet.
    pub in_flight: i64,
    /// Accepted orders by status, as the backend shows them.
    pub by_status: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterCounts {
    /// Dead letters not resolved yet.
    pub open: i64,
    pub total: i64,
}

/// One invariant and what violates it. The report is bounded: at most 100 violations are
/// listed per invariant, and `unlisted` counts the others; `ok` is false whenever any
/// violation was found, listed or not. Which are listed: the violations of a user's or a
/// product's books first (by username, product), then those of single orders (by order
/// id), then those of the outboxes; the list is then sorted by orders and detail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Invariant)]
pub struct InvariantReport {
    pub id: u8,
    pub name: String,
    /// True when no violation was found (listed or not).
    pub ok: bool,
    /// At most 100 of the violations found.
    pub violations: Vec<Violation>,
    /// Violations found but not listed in `violations` (beyond the first 100).
    #[serde(default)]
    pub unlisted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Violation {
    pub detail: String,
    /// The orders involved (may be empty when the violation is about a balance as a whole).
    /// For the books of a user or a product: its first 100 orders by id, the detail saying
    /// how many it has when there are more.
    pub orders: Vec<String>,
}

/// Opens every service's store (read only, without migrating), audits, and closes them.
pub async fn run(config: &Config, grace_ms: i64) -> anyhow::Result<Report> {
    run_windowed(config, grace_ms, WINDOW).await
}

/// [`run`] with windows of `window` order ids (at least 1; at most `i64::MAX`, which makes
/// one window): tests make it small, to cross many windows with a few orders.
pub async fn run_windowed(config: &Config, grace_ms: i64, window: usize) -> anyhow::Result<Report> {
    let mut dbs = HashMap::new();
    for service in crate::services() {
        let db = Db::attach(config, service)
            .await
            .with_context(|| format!("opening the {service} store"))?;
        dbs.insert(service, db);
    }
    let stores = read::Stores {
        pools: dbs.iter().map(|(s, db)| (*s, db.pool().clone())).collect(),
    };
    let result = stores
        .audit(config, grace_ms, window.clamp(1, i64::MAX as usize))
        .await;
    for db in dbs.values() {
        db.pool().close().await;
    }
    result
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Orders and messages younger than this (ms) are in flight, not violations.
    /// Default 60000; 0 after quiescence.
    #[param(minimum = 0)]
    pub grace_ms: Option<i64>,
}

/// What the audit route holds: where the stores are, and the one audit that may run.
#[derive(Clone)]
struct Auditor {
    config: Config,
    /// One audit at a time: it reads every store, and callers in a loop must not multiply
    /// that (a second concurrent call is 429).
    running: Arc<tokio::sync::Semaphore>,
}

/// `GET /api/audit`: needs `config` to find every service's store. Behind the operator's
/// token ([`common::operator`]).
pub fn router(config: Config) -> Router {
    let token = config.admin_token.clone();
    token.guard(
        Router::new()
            .route("/api/audit", get(audit))
            .with_state(Auditor {
                config,
                running: Arc::new(tokio::sync::Semaphore::new(1)),
            }),
    )
}

/// Checks the five invariants across every service's store.
///
/// Always 200 when the stores could be read, with `ok: false` and the violations (each
/// naming its orders) when an invariant does not hold; 503 when a store cannot be read.
#[utoipa::path(
    get,
    path = "/api/audit",
    tag = "operations",
    params(AuditQuery),
    security(("operator_token" = [])),
    responses(
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ErrorBody),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ErrorBody),
        (status = 200, description = "The audit, with any violations", body = Report),
        (status = 400, description = "A parameter is invalid or repeated", body = ErrorBody),
        (status = 429, description = "Another audit is running; retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A store could not be read", body = ErrorBody),
    )
)]
async fn audit(
    State(auditor): State<Auditor>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let grace_ms = match query {
        Ok(Query(q)) => q.grace_ms.unwrap_or(DEFAULT_GRACE_MS),
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    if grace_ms < 0 {
        return ApiError::BadRequest("grace_ms: must be 0 or more".into()).into_response();
    }
    let Ok(_running) = auditor.running.try_acquire() else {
        return ApiError::Busy {
            detail: "an audit is already running".into(),
            retry_after_s: 1,
        }
        .into_response();
    };
    match run(&auditor.config, grace_ms).await {
        Ok(report) => Json(report).into_response(),
        // A store that cannot be read: the audit can be retried.
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: "unavailable".into(),
                detail: format!("{e:#}"),
            }),
        )
            .into_response(),
    }
}

/// The audit's OpenAPI document, merged into the one at `/docs`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    #[derive(OpenApi)]
    #[openapi(
        paths(audit),
        components(schemas(Report, OrderCounts, DeadLetterCounts, InvariantReport, Violation)),
        tags((name = "operations", description = "For operators: the invariant audit"))
    )]
    struct Doc;
    Doc::openapi()
}

#[cfg(test)]
mod tests;
