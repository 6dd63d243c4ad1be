//! The invariant audit: reads every service's store and checks the five invariants of
//! ARCHITECTURE.md across them, naming the orders involved in any violation.
//!
//! It is an operator's tool (`GET /api/audit`, `marketplace audit`) and the chaos tests'
//! oracle. It reads whole tables, so it costs a scan of each store: fine for an audit run
//! now and then, not for a hot path. It takes no locks across stores, so it reads them one
//! after the other; an order that moves while it reads can look inconsistent for a moment,
//! which is why anything younger than `grace_ms` is reported as in flight, not as a
//! violation. After quiescence (no load, every order final), run it with `grace_ms=0`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
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
    domain::OrderStatus,
    http_error::{ApiError, ErrorBody},
    time::now_ms,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Row, any::AnyRow};
use utoipa::{IntoParams, OpenApi, ToSchema};

/// Whatever is younger than this is in flight, not a violation, unless the caller says
/// otherwise.
pub const DEFAULT_GRACE_MS: i64 = 60_000;

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
    /// The five invariants, in ARCHITECTURE.md's order.
    pub invariants: Vec<Invariant>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invariant {
    pub id: u8,
    pub name: String,
    pub ok: bool,
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Violation {
    pub detail: String,
    /// The orders involved (may be empty when the violation is about a balance as a whole).
    pub orders: Vec<String>,
}

const NAMES: [&str; 5] = [
    "every accepted order reaches a final status",
    "credits: opening = balance + charged - refunded; only SUCCESS orders stay charged",
    "stock: opening = stock + reserved - released; only SUCCESS orders keep their reservation; never negative",
    "no step's effect is applied twice for one order",
    "no message is lost: whatever could not be processed is in the dead-letter store",
];

/// Opens every service's store (read only, without migrating), audits, and closes them.
pub async fn run(config: &Config, grace_ms: i64) -> anyhow::Result<Report> {
    let mut dbs = HashMap::new();
    for service in crate::services() {
        let db = Db::attach(config, service)
            .await
            .with_context(|| format!("opening the {service} store"))?;
        dbs.insert(service, db);
    }
    let result = Snapshot::read(&dbs).await;
    for db in dbs.values() {
        db.pool().close().await;
    }
    let snapshot = result?;
    Ok(check(
        &snapshot,
        config.initial_credits,
        config.initial_stock,
        now_ms(),
        grace_ms,
    ))
}

/// What the audit reads of each store.
#[derive(Debug, Default)]
struct Snapshot {
    /// backend: the accepted orders as users see them.
    orders: Vec<AcceptedOrder>,
    /// manager: order id → saga.
    sagas: HashMap<String, SagaRow>,
    /// order service: order id → (status, created).
    order_records: HashMap<String, (String, bool)>,
    /// payment: username → (credits, opening credits).
    accounts: Vec<(String, i64, Option<i64>)>,
    /// payment: order id → (username, amount, status).
    payments: HashMap<String, (String, i64, String)>,
    /// inventory: product → (stock, opening stock).
    products: Vec<(String, i64, Option<i64>)>,
    /// inventory: order id → (product, amount, status).
    reservations: HashMap<String, (String, i64, String)>,
    /// delivery: order id → status.
    deliveries: HashMap<String, String>,
    /// dead-letter: order ids that have a dead letter, and the counts.
    dead_lettered_orders: HashSet<String>,
    dead_letters: DeadLetterCounts,
    /// service → (waiting messages, oldest created_at_ms).
    outboxes: BTreeMap<String, (i64, Option<i64>)>,
}

#[derive(Debug)]
struct AcceptedOrder {
    order_id: String,
    status: String,
    placed_at_ms: i64,
    updated_at_ms: i64,
}

#[derive(Debug)]
struct SagaRow {
    status: String,
    phase: String,
    updated_at_ms: i64,
    /// (step, event) for every timeline entry.
    timeline: Vec<(String, String)>,
}

fn text(row: &AnyRow, column: &str) -> anyhow::Result<String> {
    Ok(row.try_get::<String, _>(column)?)
}

fn int(row: &AnyRow, column: &str) -> anyhow::Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

impl Snapshot {
    async fn read(dbs: &HashMap<&str, Db>) -> anyhow::Result<Snapshot> {
        let rows = |service: &'static str, sql: &'static str| {
            let pool = dbs[service].pool().clone();
            async move {
                sqlx::query(sql)
                    .fetch_all(&pool)
                    .await
                    .with_context(|| format!("reading the {service} store"))
            }
        };
        let mut s = Snapshot::default();
        // Downstream stores first, the backend last: an order that moves while we read is
        // then seen final downstream no later than upstream, never the other way round.
        for r in rows(
            "dead-letter",
            "SELECT order_id, resolved_at_ms FROM dead_letters",
        )
        .await?
        {
            s.dead_letters.total += 1;
            if r.try_get::<Option<i64>, _>("resolved_at_ms")?.is_none() {
                s.dead_letters.open += 1;
            }
            if let Some(order_id) = r.try_get::<Option<String>, _>("order_id")? {
                s.dead_lettered_orders.insert(order_id);
            }
        }
        for r in rows("delivery", "SELECT order_id, status FROM deliveries").await? {
            s.deliveries
                .insert(text(&r, "order_id")?, text(&r, "status")?);
        }
        for r in rows(
            "inventory",
            "SELECT order_id, product, amount, status FROM reservations",
        )
        .await?
        {
            s.reservations.insert(
                text(&r, "order_id")?,
                (
                    text(&r, "product")?,
                    int(&r, "amount")?,
                    text(&r, "status")?,
                ),
            );
        }
        for r in rows(
            "inventory",
            "SELECT product, stock, opening_stock FROM products",
        )
        .await?
        {
            s.products.push((
                text(&r, "product")?,
                int(&r, "stock")?,
                r.try_get::<Option<i64>, _>("opening_stock")?,
            ));
        }
        for r in rows(
            "payment",
            "SELECT order_id, username, amount, status FROM payments",
        )
        .await?
        {
            s.payments.insert(
                text(&r, "order_id")?,
                (
                    text(&r, "username")?,
                    int(&r, "amount")?,
                    text(&r, "status")?,
                ),
            );
        }
        for r in rows(
            "payment",
            "SELECT username, credits, opening_credits FROM accounts",
        )
        .await?
        {
            s.accounts.push((
                text(&r, "username")?,
                int(&r, "credits")?,
                r.try_get::<Option<i64>, _>("opening_credits")?,
            ));
        }
        for r in rows("order", "SELECT order_id, status, created FROM orders").await? {
            s.order_records.insert(
                text(&r, "order_id")?,
                (text(&r, "status")?, int(&r, "created")? == 1),
            );
        }
        for r in rows(
            "manager",
            "SELECT order_id, status, phase, updated_at_ms, state FROM sagas",
        )
        .await?
        {
            let state: Value =
                serde_json::from_str(&text(&r, "state")?).context("a saga's state is not JSON")?;
            let timeline = state["timeline"]
                .as_array()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            (
                                e["step"].as_str().unwrap_or_default().to_string(),
                                e["event"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            s.sagas.insert(
                text(&r, "order_id")?,
                SagaRow {
                    status: text(&r, "status")?,
                    phase: text(&r, "phase")?,
                    updated_at_ms: int(&r, "updated_at_ms")?,
                    timeline,
                },
            );
        }
        for r in rows(
            "backend",
            "SELECT order_id, status, placed_at_ms, updated_at_ms FROM orders ORDER BY order_id",
        )
        .await?
        {
            s.orders.push(AcceptedOrder {
                order_id: text(&r, "order_id")?,
                status: text(&r, "status")?,
                placed_at_ms: int(&r, "placed_at_ms")?,
                updated_at_ms: int(&r, "updated_at_ms")?,
            });
        }
        for service in crate::services() {
            let r = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox")
                .fetch_one(dbs[service].pool())
                .await
                .with_context(|| format!("reading the {service} outbox"))?;
            s.outboxes.insert(
                service.to_string(),
                (int(&r, "n")?, r.try_get::<Option<i64>, _>("oldest")?),
            );
        }
        Ok(s)
    }
}

fn is_final(status: &str) -> bool {
    OrderStatus::parse(status).is_ok_and(|s| s.is_final())
}

/// The pure part: every invariant over one snapshot.
fn check(
    s: &Snapshot,
    initial_credits: i64,
    initial_stock: i64,
    now: i64,
    grace_ms: i64,
) -> Report {
    let mut found: [Vec<Violation>; 5] = Default::default();
    let mut add = |invariant: usize, detail: String, orders: Vec<String>| {
        found[invariant - 1].push(Violation { detail, orders })
    };
    let old = |at_ms: i64| now - at_ms >= grace_ms;
    // A saga that is final and settled long enough for every store to agree with it.
    let settled = |order_id: &str| {
        s.sagas
            .get(order_id)
            .filter(|saga| is_final(&saga.status) && old(saga.updated_at_ms))
    };

    let mut counts = OrderCounts::default();
    for o in &s.orders {
        counts.accepted += 1;
        *counts.by_status.entry(o.status.clone()).or_default() += 1;
        if is_final(&o.status) {
            counts.r#final += 1;
        } else {
            counts.in_flight += 1;
        }
        let saga = s.sagas.get(&o.order_id);
        // 1: final, and the read model agrees with the saga.
        if !is_final(&o.status) && old(o.placed_at_ms) {
            let why = match saga {
                Some(saga) => format!("saga {} ({})", saga.phase, saga.status),
                None => "no saga".into(),
            };
            add(
                1,
                format!(
                    "still {} {} s after it was placed; {why}",
                    o.status,
                    (now - o.placed_at_ms) / 1000
                ),
                vec![o.order_id.clone()],
            );
        }
        if let Some(saga) = settled(&o.order_id)
            && saga.status != o.status
            && old(o.updated_at_ms)
        {
            add(
                1,
                format!(
                    "the backend shows {} but the saga ended {}",
                    o.status, saga.status
                ),
                vec![o.order_id.clone()],
            );
        }
        // 5: an accepted order whose saga never started was dead-lettered, or it is lost.
        if saga.is_none() && old(o.placed_at_ms) && !s.dead_lettered_orders.contains(&o.order_id) {
            add(
                5,
                "accepted, but the manager never received it and no dead letter holds it".into(),
                vec![o.order_id.clone()],
            );
        }
    }
    let accepted: HashSet<&str> = s.orders.iter().map(|o| o.order_id.as_str()).collect();

    for (order_id, saga) in &s.sagas {
        if !accepted.contains(order_id.as_str()) && old(saga.updated_at_ms) {
            add(
                5,
                "the manager has a saga the backend never accepted (or lost)".into(),
                vec![order_id.clone()],
            );
        }
        // 4: a step done (or failed, refused) twice means it ran twice.
        let mut answers: HashMap<&str, usize> = HashMap::new();
        for (step, event) in &saga.timeline {
            if matches!(event.as_str(), "done" | "refused" | "failed") {
                *answers.entry(step.as_str()).or_default() += 1;
            }
            if event == "dead_lettered" && !s.dead_lettered_orders.contains(order_id) {
                add(
                    5,
                    format!(
                        "the saga saw {step} dead-lettered, but the dead-letter store has nothing for the order"
                    ),
                    vec![order_id.clone()],
                );
            }
        }
        for (step, n) in answers {
            if n > 1 {
                add(
                    4,
                    format!("{step} answered {n} times"),
                    vec![order_id.clone()],
                );
            }
        }
        // Every store agrees with a settled saga: SUCCESS keeps every effect, anything
        // else keeps none.
        let Some(saga) = settled(order_id) else {
            continue;
        };
        let success = saga.status == "SUCCESS";
        if let Some((status, created)) = s.order_records.get(order_id)
            && *created
            && status != &saga.status
        {
            add(
                4,
                format!(
                    "the order service recorded {status}, the saga ended {}",
                    saga.status
                ),
                vec![order_id.clone()],
            );
        }
        match s.payments.get(order_id) {
            Some((_, _, status)) if (status == "CHARGED") != success => add(
                2,
                format!("payment is {status} but the order ended {}", saga.status),
                vec![order_id.clone()],
            ),
            None if success => add(
                2,
                "the order succeeded without a payment".into(),
                vec![order_id.clone()],
            ),
            _ => {}
        }
        match s.reservations.get(order_id) {
            Some((_, _, status)) if (status == "RESERVED") != success => add(
                3,
                format!(
                    "reservation is {status} but the order ended {}",
                    saga.status
                ),
                vec![order_id.clone()],
            ),
            None if success => add(
                3,
                "the order succeeded without a reservation".into(),
                vec![order_id.clone()],
            ),
            _ => {}
        }
        match s.deliveries.get(order_id) {
            Some(status) if (status == "SCHEDULED") != success => add(
                4,
                format!("delivery is {status} but the order ended {}", saga.status),
                vec![order_id.clone()],
            ),
            None if success => add(
                4,
                "the order succeeded without a delivery".into(),
                vec![order_id.clone()],
            ),
            _ => {}
        }
    }

    // 2: each account's books balance (always: a debit and its payment row are one
    // transaction), and no balance is negative.
    let mut charged: HashMap<&str, (i64, Vec<String>)> = HashMap::new();
    for (order_id, (username, amount, status)) in &s.payments {
        let entry = charged.entry(username.as_str()).or_default();
        if status == "CHARGED" {
            entry.0 += amount;
        }
        entry.1.push(order_id.clone());
    }
    for (username, credits, opening) in &s.accounts {
        let opening = opening.unwrap_or(initial_credits);
        let (charged, orders) = charged.remove(username.as_str()).unwrap_or_default();
        if opening != credits + charged {
            add(
                2,
                format!(
                    "{username}: opened with {opening}, holds {credits}, charged {charged} net: \
                     {} credits unaccounted for",
                    opening - credits - charged
                ),
                orders,
            );
        }
        if *credits < 0 {
            add(2, format!("{username}: negative balance {credits}"), vec![]);
        }
    }
    // A refund that came before its charge leaves a tombstone and no account: only money
    // actually taken from a user without an account is a violation.
    for (username, (charged, orders)) in charged {
        if charged != 0 {
            add(
                2,
                format!("{charged} credits charged to {username}, who has no account"),
                orders,
            );
        }
    }

    // 3: the same for stock.
    let mut reserved: HashMap<&str, (i64, Vec<String>)> = HashMap::new();
    for (order_id, (product, amount, status)) in &s.reservations {
        let entry = reserved.entry(product.as_str()).or_default();
        if status == "RESERVED" {
            entry.0 += amount;
        }
        entry.1.push(order_id.clone());
    }
    for (product, stock, opening) in &s.products {
        let opening = opening.unwrap_or(initial_stock);
        let (reserved, orders) = reserved.remove(product.as_str()).unwrap_or_default();
        if opening != stock + reserved {
            add(
                3,
                format!(
                    "{product}: stocked {opening}, holds {stock}, reserved {reserved} net: \
                     {} units unaccounted for",
                    opening - stock - reserved
                ),
                orders,
            );
        }
        if *stock < 0 {
            add(3, format!("{product}: negative stock {stock}"), vec![]);
        }
    }

    // 5: messages that never left a service.
    let mut outbox_backlog = BTreeMap::new();
    for (service, (waiting, oldest)) in &s.outboxes {
        outbox_backlog.insert(service.clone(), *waiting);
        if let Some(oldest) = oldest
            && old(*oldest)
        {
            add(
                5,
                format!(
                    "{waiting} message(s) in the {service} outbox, the oldest unpublished for {} s",
                    (now - oldest) / 1000
                ),
                vec![],
            );
        }
    }

    let invariants: Vec<Invariant> = found
        .into_iter()
        .enumerate()
        .map(|(i, mut violations)| {
            violations.sort_by(|a, b| a.orders.cmp(&b.orders).then(a.detail.cmp(&b.detail)));
            Invariant {
                id: i as u8 + 1,
                name: NAMES[i].into(),
                ok: violations.is_empty(),
                violations,
            }
        })
        .collect();
    Report {
        ok: invariants.iter().all(|i| i.ok),
        checked_at_ms: now,
        grace_ms,
        orders: counts,
        dead_letters: s.dead_letters.clone(),
        outbox_backlog,
        invariants,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
        components(schemas(Report, OrderCounts, DeadLetterCounts, Invariant, Violation)),
        tags((name = "operations", description = "For operators: the invariant audit"))
    )]
    struct Doc;
    Doc::openapi()
}

#[cfg(test)]
mod tests;
