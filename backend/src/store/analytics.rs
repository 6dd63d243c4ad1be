//! Sales figures: every finished order counted once (`analytics_orders`), and the sums
//! the API reads, kept per final status, per product, per customer and per minute.
//!
//! Two writers keep the same sums: the event consumer adds the orders of a batch
//! ([`count`]), and [`rebuild`] recomputes every sum from the orders read model. They
//! agree because both sum the same rows the same way: a rebuild after a wipe, or after
//! the analytics started late, gives the figures the consumer would have.

use std::collections::BTreeMap;

use common::{
    db::{Backend, Db, Tx},
    domain::OrderStatus,
    time::now_ms,
};
use sqlx::Row;

/// A minute in milliseconds: the grain of the per-minute figures.
pub(crate) const MINUTE_MS: i64 = 60_000;

/// What one finished order contributes to the figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub order_id: String,
    pub status: OrderStatus,
    pub username: String,
    pub product: String,
    /// Tokens and credits sold: zero unless the order succeeded.
    pub tokens: i64,
    pub revenue: i64,
    /// When it reached its final status.
    pub final_at_ms: i64,
}

/// Orders, tokens and credits: one line of any of the sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sums {
    pub orders: i64,
    pub tokens: i64,
    pub revenue: i64,
}

impl Sums {
    fn add(&mut self, o: &Finished) {
        self.orders += 1;
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.revenue = self.revenue.saturating_add(o.revenue);
    }

    fn of(row: &sqlx::any::AnyRow, revenue: &str) -> Result<Self, sqlx::Error> {
        Ok(Self {
            orders: row.try_get("orders")?,
            tokens: row.try_get("tokens")?,
            revenue: row.try_get(revenue)?,
        })
    }
}

/// Counts the orders of `finished` not counted before (a redelivered or repeated final
/// update counts nothing) and adds them to every sum, one statement per sum and key.
/// Returns how many were counted now.
pub(crate) async fn count(tx: &mut Tx, finished: &[Finished]) -> Result<usize, sqlx::Error> {
    let mut fresh = Vec::new();
    for chunk in finished.chunks(128) {
        let ids = claim(tx, chunk).await?;
        fresh.extend(chunk.iter().filter(|o| ids.contains(&o.order_id)));
    }
    let mut by_status: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut by_product: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut by_customer: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut by_minute: BTreeMap<(i64, &str), Sums> = BTreeMap::new();
    for o in &fresh {
        let status = o.status.as_str();
        by_status.entry(status).or_default().add(o);
        by_minute
            .entry((minute(o.final_at_ms), status))
            .or_default()
            .add(o);
        if o.status == OrderStatus::Success {
            by_product.entry(&o.product).or_default().add(o);
            by_customer.entry(&o.username).or_default().add(o);
        }
    }
    for (status, s) in by_status {
        add(tx, "sales", "status", "revenue", status, s).await?;
    }
    for (product, s) in by_product {
        add(tx, "sales_by_product", "product", "revenue", product, s).await?;
    }
    for (username, s) in by_customer {
        add(tx, "sales_by_customer", "username", "spent", username, s).await?;
    }
    for ((minute_ms, status), s) in by_minute {
        sqlx::query(
            "INSERT INTO sales_by_minute (minute_ms, status, orders, tokens, revenue) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (minute_ms, status) DO UPDATE SET \
             orders = sales_by_minute.orders + excluded.orders, \
             tokens = sales_by_minute.tokens + excluded.tokens, \
             revenue = sales_by_minute.revenue + excluded.revenue",
        )
        .bind(minute_ms)
        .bind(status)
        .bind(s.orders)
        .bind(s.tokens)
        .bind(s.revenue)
        .execute(&mut **tx)
        .await?;
    }
    Ok(fresh.len())
}

/// Inserts the rows of `orders` that are not counted yet; returns their ids.
async fn claim(
    tx: &mut Tx,
    orders: &[Finished],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let rows: Vec<String> = (0..orders.len())
        .map(|i| {
            let p = 2 + i * 7;
            let ps: Vec<String> = (p..p + 7).map(|n| format!("${n}")).collect();
            format!("({}, $1)", ps.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO analytics_orders (order_id, status, username, product, tokens, revenue, \
         final_at_ms, counted_at_ms) VALUES {} ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
        rows.join(", ")
    );
    // Not kept prepared: one statement per batch size would crowd the statement cache.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .persistent(false)
        .bind(now_ms());
    for o in orders {
        query = query
            .bind(o.order_id.clone())
            .bind(o.status.as_str())
            .bind(o.username.clone())
            .bind(o.product.clone())
            .bind(o.tokens)
            .bind(o.revenue)
            .bind(o.final_at_ms);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter().map(|r| r.try_get("order_id")).collect()
}

/// Adds `s` to the row `key` of `table` (whose credits column is `credits`).
async fn add(
    tx: &mut Tx,
    table: &str,
    key_column: &str,
    credits: &str,
    key: &str,
    s: Sums,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {table} ({key_column}, orders, tokens, {credits}) VALUES ($1, $2, $3, $4) \
         ON CONFLICT ({key_column}) DO UPDATE SET orders = {table}.orders + excluded.orders, \
         tokens = {table}.tokens + excluded.tokens, {credits} = {table}.{credits} + excluded.{credits}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .bind(s.orders)
        .bind(s.tokens)
        .bind(s.revenue)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn minute(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(MINUTE_MS)
}

/// The statuses an order ends with, as SQL: `'SUCCESS', 'INSUFFICIENT_FUND', …`.
fn final_statuses() -> String {
    OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Recomputes every figure from the orders read model, in one transaction: what a wiped
/// or late analytics store would have counted. Returns the orders counted.
pub(crate) async fn rebuild(db: &Db) -> Result<i64, sqlx::Error> {
    let mut tx = db.begin().await?;
    if db.backend() == Backend::Postgres {
        // The event consumer's counting waits until the rebuild is committed (on SQLite
        // the transaction's write lock does that).
        sqlx::query("LOCK TABLE analytics_orders IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
    }
    for table in [
        "analytics_orders",
        "sales",
        "sales_by_product",
        "sales_by_customer",
        "sales_by_minute",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *tx)
            .await?;
    }
    let success = OrderStatus::Success.as_str();
    let counted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO analytics_orders (order_id, status, username, product, tokens, revenue, \
         final_at_ms, counted_at_ms) \
         SELECT order_id, status, username, product, \
                CASE WHEN status = '{success}' THEN amount ELSE 0 END, \
                CASE WHEN status = '{success}' THEN price * amount ELSE 0 END, \
                updated_at_ms, $1 \
         FROM orders WHERE phase = 'done' AND status IN ({})",
        final_statuses()
    )))
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    for sql in [
        "INSERT INTO sales (status, orders, tokens, revenue) \
         SELECT status, COUNT(*), SUM(tokens), SUM(revenue) FROM analytics_orders GROUP BY status"
            .to_string(),
        format!(
            "INSERT INTO sales_by_product (product, orders, tokens, revenue) \
             SELECT product, COUNT(*), SUM(tokens), SUM(revenue) FROM analytics_orders \
             WHERE status = '{success}' GROUP BY product"
        ),
        format!(
            "INSERT INTO sales_by_customer (username, orders, tokens, spent) \
             SELECT username, COUNT(*), SUM(tokens), SUM(revenue) FROM analytics_orders \
             WHERE status = '{success}' GROUP BY username"
        ),
        format!(
            "INSERT INTO sales_by_minute (minute_ms, status, orders, tokens, revenue) \
             SELECT final_at_ms - final_at_ms % {MINUTE_MS}, status, COUNT(*), SUM(tokens), \
             SUM(revenue) FROM analytics_orders \
             GROUP BY final_at_ms - final_at_ms % {MINUTE_MS}, status"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(i64::try_from(counted).unwrap_or(i64::MAX))
}

/// Whether the figures are not those of the read model's finished orders: some finished
/// order is not counted (the analytics store was wiped, or started after orders finished),
/// or the sums do not add up to the orders counted (only the sums were wiped).
pub(crate) async fn behind(db: &Db) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT COUNT(*) FROM orders WHERE phase = 'done' AND status IN ({})) AS finished, \
                (SELECT COUNT(*) FROM analytics_orders) AS counted, \
                (SELECT CAST(COALESCE(SUM(orders), 0) AS BIGINT) FROM sales) AS summed",
        final_statuses()
    )))
    .fetch_one(db.pool())
    .await?;
    let finished: i64 = row.try_get("finished")?;
    let counted: i64 = row.try_get("counted")?;
    let summed: i64 = row.try_get("summed")?;
    Ok(counted < finished || summed != counted)
}

/// Finished orders per final status (those with at least one).
pub(crate) async fn by_status(db: &Db) -> Result<Vec<(String, Sums)>, sqlx::Error> {
    let rows = sqlx::query("SELECT status, orders, tokens, revenue FROM sales ORDER BY status")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("status")?, Sums::of(r, "revenue")?)))
        .collect()
}

/// How many customers bought successfully.
pub(crate) async fn customers(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM sales_by_customer")
        .fetch_one(db.pool())
        .await?
        .try_get("n")
}

/// `column` ordered by the bytes of its UTF-8, whatever the database's collation: SQLite
/// compares text that way by default, PostgreSQL by its locale (`en_US` puts `adam` before
/// `Zoe`, the bytes the other way round) unless told `COLLATE "C"`.
fn bytewise(db: &Db, column: &str) -> String {
    match db.backend() {
        Backend::Sqlite => column.to_string(),
        Backend::Postgres => format!("{column} COLLATE \"C\""),
    }
}

/// Successful sales per product, by revenue (highest first), then by name (byte order).
pub(crate) async fn by_product(db: &Db) -> Result<Vec<(String, Sums)>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT product, orders, tokens, revenue FROM sales_by_product \
         ORDER BY revenue DESC, {}",
        bytewise(db, "product")
    )))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("product")?, Sums::of(r, "revenue")?)))
        .collect()
}

/// The `limit` customers who spent most; ties by username (byte order).
pub(crate) async fn top_customers(db: &Db, limit: i64) -> Result<Vec<(String, Sums)>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT username, orders, tokens, spent FROM sales_by_customer \
         ORDER BY spent DESC, {} LIMIT $1",
        bytewise(db, "username")
    )))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("username")?, Sums::of(r, "spent")?)))
        .collect()
}

/// The per-minute figures from `since_ms` on: `(minute_ms, status, sums)`, oldest first.
pub(crate) async fn minutes(
    db: &Db,
    since_ms: i64,
) -> Result<Vec<(i64, String, Sums)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT minute_ms, status, orders, tokens, revenue FROM sales_by_minute \
         WHERE minute_ms >= $1 ORDER BY minute_ms, status",
    )
    .bind(since_ms)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("minute_ms")?,
                r.try_get("status")?,
                Sums::of(r, "revenue")?,
            ))
        })
        .collect()
}
