//! What a service shows the audit of its store: its rows keyed by order id, read one window
//! of order ids at a time so that the audit's memory does not grow with the orders. Each
//! service exports its own snapshot (`<service>::audit`), next to the tables it owns; this
//! module only knows how to read a window, not what is in it.

use sqlx::{AnyPool, Row, any::AnyRow};

/// The order ids in `(lo, hi]`; `None` leaves that side open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderWindow<'a> {
    pub lo: Option<&'a str>,
    pub hi: Option<&'a str>,
}

impl<'a> OrderWindow<'a> {
    /// `WHERE` for the window's order ids, with its binds.
    pub fn filter(&self) -> (String, Vec<&'a str>) {
        let mut clauses = vec!["order_id IS NOT NULL".to_string()];
        let mut binds = Vec::new();
        if let Some(lo) = self.lo {
            binds.push(lo);
            clauses.push(format!("order_id > ${}", binds.len()));
        }
        if let Some(hi) = self.hi {
            binds.push(hi);
            clauses.push(format!("order_id <= ${}", binds.len()));
        }
        (format!("WHERE {}", clauses.join(" AND ")), binds)
    }
}

/// The rows `select` (a `SELECT … FROM table` without a `WHERE`) finds in `window`.
pub async fn rows_in(
    pool: &AnyPool,
    select: &str,
    window: OrderWindow<'_>,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    fetch(pool, select, window, "").await
}

/// The `size`-th order id of `table` after `lo`, if it has that many.
pub async fn nth_after(
    pool: &AnyPool,
    table: &str,
    lo: Option<&str>,
    size: usize,
) -> Result<Option<String>, sqlx::Error> {
    let select = format!("SELECT order_id FROM {table}");
    let tail = format!(
        "ORDER BY order_id LIMIT 1 OFFSET {}",
        size.saturating_sub(1)
    );
    let rows = fetch(pool, &select, OrderWindow { lo, hi: None }, &tail).await?;
    rows.first()
        .map(|r| r.try_get::<String, _>("order_id"))
        .transpose()
}

async fn fetch(
    pool: &AnyPool,
    select: &str,
    window: OrderWindow<'_>,
    tail: &str,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    let (filter, binds) = window.filter();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("{select} {filter} {tail}")));
    for bind in binds {
        query = query.bind(bind.to_string());
    }
    query.fetch_all(pool).await
}

/// `(order id, status)` of the rows of `table` in `window`: the snapshot of a step worker,
/// whose table holds one status per order.
pub async fn statuses(
    pool: &AnyPool,
    table: &str,
    window: OrderWindow<'_>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    rows_in(
        pool,
        &format!("SELECT order_id, status FROM {table}"),
        window,
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get("order_id")?, r.try_get("status")?)))
    .collect()
}

/// A store's books: `sums` yields one row per holder (an account, a product) with
/// `name`, `held`, `opening`, `taken` and `order_count`; `orders` (bound to a holder's
/// name) lists that holder's order ids.
#[derive(Debug, Clone, Copy)]
pub struct BooksSql {
    pub sums: &'static str,
    pub orders: &'static str,
}

#[cfg(test)]
mod tests;
