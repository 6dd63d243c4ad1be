//! What the backend's store shows the audit: the accepted orders, as users see them.

use common::{
    invariants::AcceptedOrder,
    snapshot::{self, OrderWindow},
};
use sqlx::{AnyPool, Row};

/// The table keyed by order id: the orders read model.
pub const TABLE: &str = "orders";

/// The accepted orders in `window`.
pub async fn accepted(
    pool: &AnyPool,
    window: OrderWindow<'_>,
) -> Result<Vec<AcceptedOrder>, sqlx::Error> {
    let select = "SELECT order_id, status, placed_at_ms, updated_at_ms FROM orders";
    snapshot::rows_in(pool, select, window)
        .await?
        .iter()
        .map(|r| {
            Ok(AcceptedOrder {
                order_id: r.try_get("order_id")?,
                status: r.try_get("status")?,
                placed_at_ms: r.try_get("placed_at_ms")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            })
        })
        .collect()
}
