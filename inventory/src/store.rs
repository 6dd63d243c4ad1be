//! The inventory worker's SQL: stock per product (`products`) and one row per order
//! (`reservations`).

use anyhow::Context;
use common::{
    catalog::Catalog,
    db::{Db, Tx},
    domain::Product,
    messages::{Event, StepCommand, StockChanged},
    outbox,
    rows::ReservationStatus,
    time::now_ms,
    worker,
};
use sqlx::Row;

/// Creates each product of `catalog` that does not exist with its opening stock, and
/// announces the stock of every product (every start: the read models may be new).
pub async fn stock_products(db: &Db, catalog: &Catalog) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    for listing in catalog.listings() {
        sqlx::query(
            "INSERT INTO products (product, stock, version, opening_stock) VALUES ($1, $2, 0, $2) \
             ON CONFLICT (product) DO NOTHING",
        )
        .bind(listing.product.as_str())
        .bind(listing.opening_stock)
        .execute(&mut *tx)
        .await?;
        // Stocked before the column existed: with what the audit would assume.
        sqlx::query(
            "UPDATE products SET opening_stock = $2 WHERE product = $1 AND opening_stock IS NULL",
        )
        .bind(listing.product.as_str())
        .bind(listing.opening_stock)
        .execute(&mut *tx)
        .await?;
    }
    let rows = sqlx::query("SELECT product, stock, version FROM products ORDER BY product")
        .fetch_all(&mut *tx)
        .await?;
    let events = rows
        .iter()
        .map(|row| {
            Ok(Event::StockChanged(StockChanged {
                product: row.try_get("product")?,
                stock: row.try_get("stock")?,
                version: row.try_get("version")?,
            }))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let cx = common::telemetry::Context::current();
    if let Some(message) = worker::events_message(events, &cx)? {
        outbox::enqueue_pending(&mut tx, &message).await?;
    }
    db.commit_and_wake(tx)
        .await
        .context("stocking the products")?;
    Ok(())
}

/// A product's stock after a change, and the change's version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stock {
    pub(crate) stock: i64,
    pub(crate) version: i64,
}

fn stock(row: &sqlx::any::AnyRow) -> Result<Stock, sqlx::Error> {
    Ok(Stock {
        stock: row.try_get("stock")?,
        version: row.try_get("version")?,
    })
}

/// Takes `amount` off the product's stock, never below zero: None when it is too small.
pub(crate) async fn take(
    tx: &mut Tx,
    product: &Product,
    amount: i64,
) -> Result<Option<Stock>, sqlx::Error> {
    sqlx::query(
        "UPDATE products SET stock = stock - $1, version = version + 1 \
         WHERE product = $2 AND stock >= $1 RETURNING stock, version",
    )
    .bind(amount)
    .bind(product.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| stock(&row))
    .transpose()
}

/// Puts `amount` back on the product's stock.
pub(crate) async fn put_back(
    tx: &mut Tx,
    product: &Product,
    amount: i64,
) -> Result<Stock, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE products SET stock = stock + $1, version = version + 1 WHERE product = $2 RETURNING stock, version",
    )
    .bind(amount)
    .bind(product.as_str())
    .fetch_one(&mut **tx)
    .await?;
    stock(&row)
}

/// Inserts the order's reservation row with `status`; false when one existed.
pub(crate) async fn claim(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: ReservationStatus,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO reservations (order_id, product, amount, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(cmd.order_id.to_string())
    .bind(cmd.terms.product.as_str())
    .bind(cmd.terms.amount.get())
    .bind(status.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn set_status(
    tx: &mut Tx,
    cmd: &StepCommand,
    status: ReservationStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET status = $2, updated_at_ms = $3 WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .bind(status.as_str())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// RESERVED becomes RELEASED: the amount to put back, or None when nothing was reserved.
pub(crate) async fn mark_released(
    tx: &mut Tx,
    cmd: &StepCommand,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET status = $2, updated_at_ms = $3 \
         WHERE order_id = $1 AND status = $4 RETURNING amount",
    )
    .bind(cmd.order_id.to_string())
    .bind(ReservationStatus::Released.as_str())
    .bind(now_ms())
    .bind(ReservationStatus::Reserved.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| row.try_get("amount"))
    .transpose()
}

/// The order's reservation status (its row exists: claimed before).
pub(crate) async fn status(
    tx: &mut Tx,
    cmd: &StepCommand,
) -> Result<Option<ReservationStatus>, sqlx::Error> {
    let text: String = sqlx::query("SELECT status FROM reservations WHERE order_id = $1")
        .bind(cmd.order_id.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get("status")?;
    Ok(ReservationStatus::parse(&text))
}
