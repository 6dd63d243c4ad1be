//! Balances and stock as payment and inventory last reported them.

use common::{
    db::{Db, Tx},
    messages::{CreditsChanged, StockChanged},
};
use sqlx::Row;

/// Records a balance unless a newer one is already known. Returns whether it changed.
pub(crate) async fn apply_credits(
    tx: &mut Tx,
    change: &CreditsChanged,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO users (username, credits, version) VALUES ($1, $2, $3) \
         ON CONFLICT (username) DO UPDATE SET credits = excluded.credits, version = excluded.version \
         WHERE users.version < excluded.version",
    )
    .bind(change.username.as_str().to_string())
    .bind(change.credits)
    .bind(change.version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a stock level unless a newer one is already known. Returns whether it changed.
pub(crate) async fn apply_stock(tx: &mut Tx, change: &StockChanged) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO products (product, stock, version) VALUES ($1, $2, $3) \
         ON CONFLICT (product) DO UPDATE SET stock = excluded.stock, version = excluded.version \
         WHERE products.version < excluded.version",
    )
    .bind(change.product.clone())
    .bind(change.stock)
    .bind(change.version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The balance of a user payment has reported on, if any.
pub(crate) async fn credits(db: &Db, username: &str) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT credits FROM users WHERE username = $1")
        .bind(username.to_string())
        .fetch_optional(db.pool())
        .await?;
    row.map(|r| r.try_get("credits")).transpose()
}

/// `(product, stock)` of every product inventory has reported on, by name.
pub(crate) async fn inventory(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT product, stock FROM products ORDER BY product")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("product")?, r.try_get("stock")?)))
        .collect()
}
