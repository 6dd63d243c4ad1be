//! Reading the stores: one window of order ids at a time, and the books as each store
//! sums them (see the module's documentation in `audit.rs`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use common::{config::Config, invariants::Invariant, messages::TimelineEvent, time::now_ms};
use futures::TryStreamExt;
use serde::Deserialize;
use sqlx::{AnyPool, Row, any::AnyRow};

use super::{
    BOOK_ORDERS, DeadLetterCounts, LISTED, Report, Violation,
    books::{Books, check_account, check_outboxes, check_product},
    check::{AcceptedOrder, SagaRow, Tally, Window, check_window},
};

fn text(row: &AnyRow, column: &str) -> anyhow::Result<String> {
    Ok(row.try_get::<String, _>(column)?)
}

fn int(row: &AnyRow, column: &str) -> anyhow::Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

/// The part of a saga's state (`sagas.state`, JSON) the audit needs; the rest is skipped.
#[derive(Deserialize)]
pub(super) struct StoredSaga {
    #[serde(default)]
    pub(super) timeline: Vec<StoredEntry>,
}

#[derive(Deserialize)]
pub(super) struct StoredEntry {
    #[serde(default)]
    pub(super) step: String,
    #[serde(default)]
    pub(super) event: String,
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
pub(super) fn in_window<'a>(lo: Option<&'a str>, hi: Option<&'a str>) -> (String, Vec<&'a str>) {
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
pub(super) struct Stores {
    pub(super) pools: HashMap<&'static str, AnyPool>,
}

impl Stores {
    pub(super) async fn audit(
        &self,
        config: &Config,
        grace_ms: i64,
        window: usize,
    ) -> anyhow::Result<Report> {
        let mut tally = Tally::default();
        let dead_letters = self.dead_letter_counts().await?;

        // The books first: a few of their violations are what matters most in invariants 2
        // and 3 when many orders disagree.
        self.books(
            &mut tally,
            Invariant::CreditsBalance,
            "payment",
            ACCOUNTS_SQL,
            ACCOUNT_ORDERS_SQL,
            |b| check_account(b, config.initial_credits),
        )
        .await?;
        self.books(
            &mut tally,
            Invariant::CreditsBalance,
            "payment",
            UNOWNED_CHARGES_SQL,
            ACCOUNT_ORDERS_SQL,
            |b| check_account(b, config.initial_credits),
        )
        .await?;
        self.books(
            &mut tally,
            Invariant::StockBalances,
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
            tally.push(Invariant::NothingLost, v);
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
        invariant: Invariant,
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
