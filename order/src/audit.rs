//! What the order store shows the audit: each order's record, its status and whether the
//! order step created it.

use common::snapshot::{self, OrderWindow};
use sqlx::{AnyPool, Row};

/// The table keyed by order id.
pub const TABLE: &str = "orders";

/// `(order id, (status, created))` of the orders in `window`.
pub async fn records(
    pool: &AnyPool,
    window: OrderWindow<'_>,
) -> Result<Vec<(String, (String, bool))>, sqlx::Error> {
    snapshot::rows_in(pool, "SELECT order_id, status, created FROM orders", window)
        .await?
        .iter()
        .map(|r| {
            let created: i64 = r.try_get("created")?;
            Ok((r.try_get("order_id")?, (r.try_get("status")?, created == 1)))
        })
        .collect()
}
