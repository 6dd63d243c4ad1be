//! What the dead-letter store shows the audit: which orders have a dead letter, and how
//! many letters there are, open and in all.

use common::snapshot::{self, OrderWindow};
use sqlx::{AnyPool, Row};

/// The table keyed by order id (a letter without one, unreadable garbage, has none).
pub const TABLE: &str = "dead_letters";

/// The orders in `window` that have at least one dead letter.
pub async fn orders(pool: &AnyPool, window: OrderWindow<'_>) -> Result<Vec<String>, sqlx::Error> {
    snapshot::rows_in(pool, "SELECT DISTINCT order_id FROM dead_letters", window)
        .await?
        .iter()
        .map(|r| r.try_get("order_id"))
        .collect()
}

/// The letters not yet resolved, and all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub open: i64,
    pub total: i64,
}

pub async fn counts(pool: &AnyPool) -> Result<Counts, sqlx::Error> {
    let r = sqlx::query(
        "SELECT COUNT(*) AS total, COUNT(*) - COUNT(resolved_at_ms) AS open FROM dead_letters",
    )
    .fetch_one(pool)
    .await?;
    Ok(Counts {
        open: r.try_get("open")?,
        total: r.try_get("total")?,
    })
}
