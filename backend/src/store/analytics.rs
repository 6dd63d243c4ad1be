//! Sales figures: counted once per order, at its first final update.

use common::{
    db::{Db, Tx},
    domain::{OrderId, OrderStatus},
    time::now_ms,
};
use sqlx::Row;

/// One row of the sales figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusFigures {
    pub status: String,
    pub orders: i64,
    pub tokens: i64,
    pub revenue: i64,
}

/// Counts a finished order in the sales figures, unless it was counted before (a
/// redelivered or repeated final update). `tokens` and `revenue` are what it sold: zero
/// unless it succeeded. Returns whether it was counted now.
pub async fn count_final(
    tx: &mut Tx,
    id: OrderId,
    status: OrderStatus,
    tokens: i64,
    revenue: i64,
) -> Result<bool, sqlx::Error> {
    let first = sqlx::query(
        "INSERT INTO analytics_orders (order_id, status, counted_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(status.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO sales (status, orders, tokens, revenue) VALUES ($1, 1, $2, $3) \
         ON CONFLICT (status) DO UPDATE SET orders = sales.orders + 1, \
         tokens = sales.tokens + excluded.tokens, revenue = sales.revenue + excluded.revenue",
    )
    .bind(status.as_str())
    .bind(tokens)
    .bind(revenue)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// The figures of every status that has at least one finished order.
pub async fn figures(db: &Db) -> Result<Vec<StatusFigures>, sqlx::Error> {
    let rows = sqlx::query("SELECT status, orders, tokens, revenue FROM sales ORDER BY status")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok(StatusFigures {
                status: r.try_get("status")?,
                orders: r.try_get("orders")?,
                tokens: r.try_get("tokens")?,
                revenue: r.try_get("revenue")?,
            })
        })
        .collect()
}
