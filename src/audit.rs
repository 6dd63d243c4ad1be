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
//! The checks are a pure core (`Tally`, `check_window`, `check_account`, `check_product`,
//! `check_outboxes`): data and time in, findings out.

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
    messages::TimelineEvent,
    rows::{DeliveryStatus, PaymentStatus, ReservationStatus},
    time::now_ms,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row, any::AnyRow};
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
    pub invariants: Vec<Invariant>,
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
pub struct Invariant {
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

const NAMES: [&str; 5] = [
    "every accepted order reaches a final status",
    "credits: opening = balance + charged - refunded; only SUCCESS orders stay charged",
    "stock: opening + restocks = stock + reserved - released; only SUCCESS orders keep their reservation; never negative",
    "no step's effect is applied twice for one order",
    "no message is lost: whatever could not be processed is in the dead-letter store",
];

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
    let stores = Stores {
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

// ---- the pure core ----------------------------------------------------------------------

/// What the audit reads of every store for one window of order ids.
#[derive(Debug, Default)]
struct Window {
    /// backend: the accepted orders as users see them.
    orders: Vec<AcceptedOrder>,
    /// manager: order id → saga.
    sagas: HashMap<String, SagaRow>,
    /// order service: order id → (status, created).
    order_records: HashMap<String, (String, bool)>,
    /// payment: order id → status.
    payments: HashMap<String, String>,
    /// inventory: order id → status.
    reservations: HashMap<String, String>,
    /// delivery: order id → status.
    deliveries: HashMap<String, String>,
    /// dead-letter: order ids that have a dead letter.
    dead_lettered_orders: HashSet<String>,
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
    /// (step, event) for every timeline entry; None for an event the audit does not know.
    timeline: Vec<(String, Option<TimelineEvent>)>,
}

/// One user's or one product's books, as its store sums them.
#[derive(Debug, Clone, Default)]
struct Books {
    /// The username or the product.
    name: String,
    /// Credits or stock held now; None for payments of a user who has no account.
    held: Option<i64>,
    /// What the account or product opened with; None for those opened before the column
    /// existed (the configured initial amount is assumed).
    opening: Option<i64>,
    /// Σ amount of its CHARGED payments, or of its RESERVED reservations.
    taken: i64,
    /// How many payments or reservations it has, whatever their status.
    order_count: i64,
    /// Its first orders by id (at most [`BOOK_ORDERS`]): read only for a violation listed.
    orders: Vec<String>,
}

/// What one window's checks found: its counts and, per invariant, its violations sorted
/// by orders then detail.
#[derive(Debug, Default)]
struct Findings {
    counts: OrderCounts,
    violations: [Vec<Violation>; 5],
}

/// The audit so far: counts summed over the windows, and per invariant the violations
/// listed (the first [`LISTED`] found) and how many others there are.
#[derive(Debug, Default)]
struct Tally {
    counts: OrderCounts,
    listed: [Vec<Violation>; 5],
    unlisted: [u64; 5],
}

impl Tally {
    /// Records a violation of invariant `id` (1 to 5).
    fn push(&mut self, id: u8, violation: Violation) {
        let i = usize::from(id - 1);
        if self.listed[i].len() < LISTED {
            self.listed[i].push(violation);
        } else {
            self.unlisted[i] += 1;
        }
    }

    /// Counts violations of invariant `id` that are not listed.
    fn unlisted(&mut self, id: u8, n: usize) {
        self.unlisted[usize::from(id - 1)] += n as u64;
    }

    /// Whether a violation of invariant `id` found now would be listed.
    fn has_room(&self, id: u8) -> bool {
        self.listed[usize::from(id - 1)].len() < LISTED
    }

    /// Adds one window's findings. Windows added in order of their ids list the violations
    /// with the smallest order ids, whatever the window size.
    fn add(&mut self, findings: Findings) {
        let Findings { counts, violations } = findings;
        self.counts.accepted += counts.accepted;
        self.counts.r#final += counts.r#final;
        self.counts.in_flight += counts.in_flight;
        for (status, n) in counts.by_status {
            *self.counts.by_status.entry(status).or_default() += n;
        }
        for (i, found) in violations.into_iter().enumerate() {
            for v in found {
                self.push(i as u8 + 1, v);
            }
        }
    }

    fn report(
        self,
        now: i64,
        grace_ms: i64,
        dead_letters: DeadLetterCounts,
        outbox_backlog: BTreeMap<String, i64>,
    ) -> Report {
        let invariants: Vec<Invariant> = self
            .listed
            .into_iter()
            .zip(self.unlisted)
            .enumerate()
            .map(|(i, (mut violations, unlisted))| {
                violations.sort_by(|a, b| a.orders.cmp(&b.orders).then(a.detail.cmp(&b.detail)));
                Invariant {
                    id: i as u8 + 1,
                    name: NAMES[i].into(),
                    ok: violations.is_empty() && unlisted == 0,
                    violations,
                    unlisted,
                }
            })
            .collect();
        Report {
            ok: invariants.iter().all(|i| i.ok),
            checked_at_ms: now,
            grace_ms,
            orders: self.counts,
            dead_letters,
            outbox_backlog,
            invariants,
        }
    }
}

fn is_final(status: &str) -> bool {
    OrderStatus::parse(status).is_ok_and(|s| s.is_final())
}

/// The per-order invariants over one window (1, 4, 5, and the parts of 2 and 3 that are
/// about one order), with its counts.
fn check_window(w: &Window, now: i64, grace_ms: i64) -> Findings {
    let mut found: [Vec<Violation>; 5] = Default::default();
    let mut add = |invariant: usize, detail: String, orders: Vec<String>| {
        found[invariant - 1].push(Violation { detail, orders })
    };
    let old = |at_ms: i64| now - at_ms >= grace_ms;
    // A saga that is final and settled long enough for every store to agree with it.
    let settled = |order_id: &str| {
        w.sagas
            .get(order_id)
            .filter(|saga| is_final(&saga.status) && old(saga.updated_at_ms))
    };

    let mut counts = OrderCounts::default();
    for o in &w.orders {
        counts.accepted += 1;
        *counts.by_status.entry(o.status.clone()).or_default() += 1;
        if is_final(&o.status) {
            counts.r#final += 1;
        } else {
            counts.in_flight += 1;
        }
        let saga = w.sagas.get(&o.order_id);
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
        if saga.is_none() && old(o.placed_at_ms) && !w.dead_lettered_orders.contains(&o.order_id) {
            add(
                5,
                "accepted, but the manager never received it and no dead letter holds it".into(),
                vec![o.order_id.clone()],
            );
        }
    }
    let accepted: HashSet<&str> = w.orders.iter().map(|o| o.order_id.as_str()).collect();

    for (order_id, saga) in &w.sagas {
        if !accepted.contains(order_id.as_str()) && old(saga.updated_at_ms) {
            add(
                5,
                "the manager has a saga the backend never accepted (or lost)".into(),
                vec![order_id.clone()],
            );
        }
        // 4: a step done (or failed, refused) twice means it ran twice.
        let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
        for (step, event) in &saga.timeline {
            if event.is_some_and(TimelineEvent::is_answer) {
                *answers.entry(step.as_str()).or_default() += 1;
            }
            if *event == Some(TimelineEvent::DeadLettered)
                && !w.dead_lettered_orders.contains(order_id)
            {
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
        let success = saga.status == OrderStatus::Success.as_str();
        if let Some((status, created)) = w.order_records.get(order_id)
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
        match w.payments.get(order_id) {
            Some(status) if (status == PaymentStatus::Charged.as_str()) != success => add(
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
        match w.reservations.get(order_id) {
            Some(status) if (status == ReservationStatus::Reserved.as_str()) != success => add(
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
        match w.deliveries.get(order_id) {
            Some(status) if (status == DeliveryStatus::Scheduled.as_str()) != success => add(
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
    for violations in &mut found {
        violations.sort_by(|a, b| a.orders.cmp(&b.orders).then(a.detail.cmp(&b.detail)));
    }
    Findings {
        counts,
        violations: found,
    }
}

/// "; the first 100 of its 523 orders listed" when `b` has more orders than it names.
fn more_orders(b: &Books) -> String {
    if b.order_count > b.orders.len() as i64 && !b.orders.is_empty() {
        format!(
            "; the first {} of its {} orders listed",
            b.orders.len(),
            b.order_count
        )
    } else {
        String::new()
    }
}

/// 2, for one user: the books balance (always: a debit and its payment row are one
/// transaction), and the balance is not negative. A refund that came before its charge
/// leaves a tombstone and no account: only money actually taken from a user without an
/// account is a violation.
fn check_account(b: &Books, initial_credits: i64) -> Vec<Violation> {
    let mut found = Vec::new();
    let name = &b.name;
    let charged = b.taken;
    let Some(credits) = b.held else {
        if charged != 0 {
            found.push(Violation {
                detail: format!(
                    "{charged} credits charged to {name}, who has no account{}",
                    more_orders(b)
                ),
                orders: b.orders.clone(),
            });
        }
        return found;
    };
    let opening = b.opening.unwrap_or(initial_credits);
    if opening != credits + charged {
        found.push(Violation {
            detail: format!(
                "{name}: opened with {opening}, holds {credits}, charged {charged} net: \
                 {} credits unaccounted for{}",
                opening - credits - charged,
                more_orders(b)
            ),
            orders: b.orders.clone(),
        });
    }
    if credits < 0 {
        found.push(Violation {
            detail: format!("{name}: negative balance {credits}"),
            orders: vec![],
        });
    }
    found
}

/// 3, for one product: the same for stock.
fn check_product(b: &Books, initial_stock: i64) -> Vec<Violation> {
    let mut found = Vec::new();
    let Some(stock) = b.held else {
        return found;
    };
    let (product, reserved) = (&b.name, b.taken);
    let opening = b.opening.unwrap_or(initial_stock);
    if opening != stock + reserved {
        found.push(Violation {
            detail: format!(
                "{product}: stocked {opening}, holds {stock}, reserved {reserved} net: \
                 {} units unaccounted for{}",
                opening - stock - reserved,
                more_orders(b)
            ),
            orders: b.orders.clone(),
        });
    }
    if stock < 0 {
        found.push(Violation {
            detail: format!("{product}: negative stock {stock}"),
            orders: vec![],
        });
    }
    found
}

/// 5: messages that never left a service. `outboxes`: service → (waiting messages, oldest
/// created_at_ms).
fn check_outboxes(
    outboxes: &BTreeMap<String, (i64, Option<i64>)>,
    now: i64,
    grace_ms: i64,
) -> Vec<Violation> {
    outboxes
        .iter()
        .filter_map(|(service, (waiting, oldest))| {
            let oldest = (*oldest).filter(|oldest| now - oldest >= grace_ms)?;
            Some(Violation {
                detail: format!(
                    "{waiting} message(s) in the {service} outbox, the oldest unpublished for {} s",
                    (now - oldest) / 1000
                ),
                orders: vec![],
            })
        })
        .collect()
}

// ---- reading the stores -----------------------------------------------------------------

fn text(row: &AnyRow, column: &str) -> anyhow::Result<String> {
    Ok(row.try_get::<String, _>(column)?)
}

fn int(row: &AnyRow, column: &str) -> anyhow::Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

/// The part of a saga's state (`sagas.state`, JSON) the audit needs; the rest is skipped.
#[derive(Deserialize)]
struct StoredSaga {
    #[serde(default)]
    timeline: Vec<StoredEntry>,
}

#[derive(Deserialize)]
struct StoredEntry {
    #[serde(default)]
    step: String,
    #[serde(default)]
    event: String,
}

/// Where each store's table keyed by order id is, downstream first and the backend last:
/// an order that moves while a window is read is then seen final downstream no later than
/// upstream, never the other way round.
const BY_ORDER: [(&str, &str); 7] = [
    ("dead-letter", "dead_letters"),
    ("delivery", "deliveries"),
    ("inventory", "reservations"),
    ("payment", "payments"),
    ("order", "orders"),
    ("manager", "sagas"),
    ("backend", "orders"),
];

/// `WHERE` for the order ids in `(lo, hi]` (None: unbounded), with its binds.
fn in_window<'a>(lo: Option<&'a str>, hi: Option<&'a str>) -> (String, Vec<&'a str>) {
    let mut clauses = vec!["order_id IS NOT NULL".to_string()];
    let mut binds = Vec::new();
    if let Some(lo) = lo {
        binds.push(lo);
        clauses.push(format!("order_id > ${}", binds.len()));
    }
    if let Some(hi) = hi {
        binds.push(hi);
        clauses.push(format!("order_id <= ${}", binds.len()));
    }
    (format!("WHERE {}", clauses.join(" AND ")), binds)
}

/// The stores, one pool each (a single connection: nothing else runs on it while a
/// query streams).
struct Stores {
    pools: HashMap<&'static str, AnyPool>,
}

impl Stores {
    async fn audit(&self, config: &Config, grace_ms: i64, window: usize) -> anyhow::Result<Report> {
        let mut tally = Tally::default();
        let dead_letters = self.dead_letter_counts().await?;

        // The books first: a few of their violations are what matters most in invariants 2
        // and 3 when many orders disagree.
        self.books(
            &mut tally,
            2,
            "payment",
            ACCOUNTS_SQL,
            ACCOUNT_ORDERS_SQL,
            |b| check_account(b, config.initial_credits),
        )
        .await?;
        self.books(
            &mut tally,
            2,
            "payment",
            UNOWNED_CHARGES_SQL,
            ACCOUNT_ORDERS_SQL,
            |b| check_account(b, config.initial_credits),
        )
        .await?;
        self.books(
            &mut tally,
            3,
            "inventory",
            PRODUCTS_SQL,
            PRODUCT_ORDERS_SQL,
            |b| check_product(b, config.initial_stock),
        )
        .await?;

        let mut lo: Option<String> = None;
        loop {
            let hi = self.window_end(lo.as_deref(), window).await?;
            let w = self.window(lo.as_deref(), hi.as_deref()).await?;
            tally.add(check_window(&w, now_ms(), grace_ms));
            match hi {
                Some(hi) => lo = Some(hi),
                None => break,
            }
        }
        // The outboxes last: a reply written late (a step that timed out, then ran), while
        // the windows were read, is then still waiting in its outbox, or already relayed.
        let outboxes = self.outboxes().await?;
        let now = now_ms();
        for v in check_outboxes(&outboxes, now, grace_ms) {
            tally.push(5, v);
        }
        let outbox_backlog = outboxes
            .into_iter()
            .map(|(service, (waiting, _))| (service, waiting))
            .collect();
        Ok(tally.report(now, grace_ms, dead_letters, outbox_backlog))
    }

    async fn rows(
        &self,
        service: &str,
        sql: String,
        binds: &[&str],
    ) -> anyhow::Result<Vec<AnyRow>> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(bind.to_string());
        }
        query
            .fetch_all(&self.pools[service])
            .await
            .with_context(|| format!("reading the {service} store"))
    }

    /// The end of the window that starts after `lo`: the smallest of each store's
    /// `window`-th order id after `lo`, so that no store has more than `window` rows in
    /// it; None (open-ended) when every store has fewer.
    async fn window_end(&self, lo: Option<&str>, window: usize) -> anyhow::Result<Option<String>> {
        let (filter, binds) = in_window(lo, None);
        let mut end: Option<String> = None;
        for (service, table) in BY_ORDER {
            let sql = format!(
                "SELECT order_id FROM {table} {filter} ORDER BY order_id LIMIT 1 OFFSET {}",
                window - 1
            );
            if let Some(row) = self.rows(service, sql, &binds).await?.first() {
                let id = text(row, "order_id")?;
                if end.as_ref().is_none_or(|end| &id < end) {
                    end = Some(id);
                }
            }
        }
        Ok(end)
    }

    /// Every store's rows with an order id in `(lo, hi]`.
    async fn window(&self, lo: Option<&str>, hi: Option<&str>) -> anyhow::Result<Window> {
        let (filter, binds) = in_window(lo, hi);
        let rows = |service: &'static str, select: &str| {
            self.rows(service, format!("{select} {filter}"), &binds)
        };
        let mut w = Window::default();
        for r in rows("dead-letter", "SELECT DISTINCT order_id FROM dead_letters").await? {
            w.dead_lettered_orders.insert(text(&r, "order_id")?);
        }
        for r in rows("delivery", "SELECT order_id, status FROM deliveries").await? {
            w.deliveries
                .insert(text(&r, "order_id")?, text(&r, "status")?);
        }
        for r in rows("inventory", "SELECT order_id, status FROM reservations").await? {
            w.reservations
                .insert(text(&r, "order_id")?, text(&r, "status")?);
        }
        for r in rows("payment", "SELECT order_id, status FROM payments").await? {
            w.payments
                .insert(text(&r, "order_id")?, text(&r, "status")?);
        }
        for r in rows("order", "SELECT order_id, status, created FROM orders").await? {
            w.order_records.insert(
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
            let state: StoredSaga = serde_json::from_str(&text(&r, "state")?)
                .context("a saga's state is not JSON with a timeline")?;
            w.sagas.insert(
                text(&r, "order_id")?,
                SagaRow {
                    status: text(&r, "status")?,
                    phase: text(&r, "phase")?,
                    updated_at_ms: int(&r, "updated_at_ms")?,
                    timeline: state
                        .timeline
                        .into_iter()
                        .map(|e| (e.step, TimelineEvent::parse(&e.event)))
                        .collect(),
                },
            );
        }
        for r in rows(
            "backend",
            "SELECT order_id, status, placed_at_ms, updated_at_ms FROM orders",
        )
        .await?
        {
            w.orders.push(AcceptedOrder {
                order_id: text(&r, "order_id")?,
                status: text(&r, "status")?,
                placed_at_ms: int(&r, "placed_at_ms")?,
                updated_at_ms: int(&r, "updated_at_ms")?,
            });
        }
        Ok(w)
    }

    /// Streams the books `sql` sums in `service`'s store, checks each, and lists the
    /// violations of the first [`LISTED`] that have any, each naming its first orders
    /// (`orders_sql`, read once the stream is done: the store has one connection).
    async fn books(
        &self,
        tally: &mut Tally,
        invariant: u8,
        service: &'static str,
        sql: &'static str,
        orders_sql: &'static str,
        check: impl Fn(&Books) -> Vec<Violation>,
    ) -> anyhow::Result<()> {
        let pool = &self.pools[service];
        let mut listed = Vec::new();
        {
            let mut rows = sqlx::query(sql).fetch(pool);
            while let Some(r) = rows
                .try_next()
                .await
                .with_context(|| format!("summing the {service} store's books"))?
            {
                let books = Books {
                    name: text(&r, "name")?,
                    held: r.try_get::<Option<i64>, _>("held")?,
                    opening: r.try_get::<Option<i64>, _>("opening")?,
                    taken: int(&r, "taken")?,
                    order_count: int(&r, "order_count")?,
                    orders: vec![],
                };
                let found = check(&books);
                if found.is_empty() {
                    continue;
                }
                if listed.len() < LISTED && tally.has_room(invariant) {
                    listed.push(books);
                } else {
                    tally.unlisted(invariant, found.len());
                }
            }
        }
        for mut books in listed {
            let sql = format!("{orders_sql} ORDER BY order_id LIMIT {BOOK_ORDERS}");
            books.orders = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(books.name.clone())
                .fetch_all(pool)
                .await
                .with_context(|| format!("reading the {service} store"))?
                .iter()
                .map(|r| text(r, "order_id"))
                .collect::<anyhow::Result<_>>()?;
            for v in check(&books) {
                tally.push(invariant, v);
            }
        }
        Ok(())
    }

    async fn dead_letter_counts(&self) -> anyhow::Result<DeadLetterCounts> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS total, COUNT(*) - COUNT(resolved_at_ms) AS open FROM dead_letters",
        )
        .fetch_one(&self.pools["dead-letter"])
        .await
        .context("reading the dead-letter store")?;
        Ok(DeadLetterCounts {
            open: int(&r, "open")?,
            total: int(&r, "total")?,
        })
    }

    /// service → (waiting messages, oldest created_at_ms).
    async fn outboxes(&self) -> anyhow::Result<BTreeMap<String, (i64, Option<i64>)>> {
        let mut outboxes = BTreeMap::new();
        for service in crate::services() {
            let r = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox")
                .fetch_one(&self.pools[service])
                .await
                .with_context(|| format!("reading the {service} outbox"))?;
            outboxes.insert(
                service.to_string(),
                (int(&r, "n")?, r.try_get::<Option<i64>, _>("oldest")?),
            );
        }
        Ok(outboxes)
    }
}

/// Each account with the sums of its payments: one statement, so an account and its
/// payments (written in one transaction) are read consistently. PostgreSQL sums BIGINT
/// as NUMERIC: hence the casts.
const ACCOUNTS_SQL: &str = "\
    SELECT a.username AS name, a.credits AS held, a.opening_credits AS opening,
           COALESCE(p.taken, 0) AS taken, COALESCE(p.order_count, 0) AS order_count
    FROM accounts a LEFT JOIN (
        SELECT username,
               CAST(SUM(CASE WHEN status = 'CHARGED' THEN amount ELSE 0 END) AS BIGINT) AS taken,
               COUNT(*) AS order_count
        FROM payments GROUP BY username
    ) p ON p.username = a.username
    ORDER BY a.username";

/// The payments of users who have no account.
const UNOWNED_CHARGES_SQL: &str = "\
    SELECT p.username AS name, CAST(NULL AS BIGINT) AS held, CAST(NULL AS BIGINT) AS opening,
           CAST(SUM(CASE WHEN p.status = 'CHARGED' THEN p.amount ELSE 0 END) AS BIGINT) AS taken,
           COUNT(*) AS order_count
    FROM payments p
    WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.username = p.username)
    GROUP BY p.username
    ORDER BY p.username";

/// A user's orders (the first [`BOOK_ORDERS`] by id are read).
const ACCOUNT_ORDERS_SQL: &str = "SELECT order_id FROM payments WHERE username = $1";

/// Each product with the sums of its reservations; what it opened with counts the
/// operators' restocks.
const PRODUCTS_SQL: &str = "\
    SELECT pr.product AS name, pr.stock AS held,
           pr.opening_stock + COALESCE(rs.restocked, 0) AS opening,
           COALESCE(r.taken, 0) AS taken, COALESCE(r.order_count, 0) AS order_count
    FROM products pr LEFT JOIN (
        SELECT product,
               CAST(SUM(CASE WHEN status = 'RESERVED' THEN amount ELSE 0 END) AS BIGINT) AS taken,
               COUNT(*) AS order_count
        FROM reservations GROUP BY product
    ) r ON r.product = pr.product
    LEFT JOIN (
        SELECT product, CAST(SUM(amount) AS BIGINT) AS restocked FROM restocks GROUP BY product
    ) rs ON rs.product = pr.product
    ORDER BY pr.product";

/// A product's orders (the first [`BOOK_ORDERS`] by id are read).
const PRODUCT_ORDERS_SQL: &str = "SELECT order_id FROM reservations WHERE product = $1";

// ---- the route --------------------------------------------------------------------------

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
