//! Reservations and releases: the only SQL of the inventory worker. Same claim-first
//! pattern as payment (see payment/src/store.rs): the first writer of an order's
//! reservation row decides, and a release before its reserve leaves a tombstone.

use anyhow::Context;
use common::{
    bus::HandlerError,
    catalog::Catalog,
    db::{Db, Tx},
    domain::Product,
    messages::{Event, Refusal, Step, StepCommand, StepResult, StockChanged, Worker},
    outbox,
    time::now_ms,
    worker::{self, StepLogic},
};
use sqlx::Row;

pub struct Inventory;

impl StepLogic for Inventory {
    const WORKER: Worker = Worker::Inventory;

    async fn apply(
        &self,
        tx: &mut Tx,
        cmd: &StepCommand,
        events: &mut Vec<Event>,
    ) -> Result<StepResult, HandlerError> {
        match cmd.step {
            Step::ReserveStock => reserve(tx, cmd, events).await,
            Step::ReleaseStock => release(tx, cmd, events).await,
            other => unreachable!("StepHandler routes only inventory steps, got {other:?}"),
        }
    }
}

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
    tx.commit().await.context("stocking the products")?;
    db.wake_outbox();
    Ok(())
}

async fn reserve(
    tx: &mut Tx,
    cmd: &StepCommand,
    events: &mut Vec<Event>,
) -> Result<StepResult, HandlerError> {
    let order_id = cmd.order_id.to_string();
    let (product, amount) = (&cmd.terms.product, cmd.terms.amount.get());
    if !claim(tx, &order_id, product, amount, "RESERVED").await? {
        return Ok(earlier_answer(tx, &order_id).await?);
    }
    let taken = sqlx::query(
        "UPDATE products SET stock = stock - $1, version = version + 1 \
         WHERE product = $2 AND stock >= $1 RETURNING stock, version",
    )
    .bind(amount)
    .bind(product.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    match taken {
        Some(row) => {
            events.push(stock(
                product,
                row.try_get("stock")?,
                row.try_get("version")?,
            ));
            Ok(StepResult::Done)
        }
        None => {
            sqlx::query("UPDATE reservations SET status = 'REFUSED', updated_at_ms = $2 WHERE order_id = $1")
                .bind(&order_id)
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
            Ok(StepResult::Refused {
                reason: Refusal::InsufficientStock,
            })
        }
    }
}

async fn release(
    tx: &mut Tx,
    cmd: &StepCommand,
    events: &mut Vec<Event>,
) -> Result<StepResult, HandlerError> {
    let order_id = cmd.order_id.to_string();
    let product = &cmd.terms.product;
    if claim(tx, &order_id, product, cmd.terms.amount.get(), "CANCELLED").await? {
        return Ok(StepResult::Done); // tombstone
    }
    let released = sqlx::query(
        "UPDATE reservations SET status = 'RELEASED', updated_at_ms = $2 \
         WHERE order_id = $1 AND status = 'RESERVED' RETURNING amount",
    )
    .bind(&order_id)
    .bind(now_ms())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(row) = released {
        let amount: i64 = row.try_get("amount")?;
        let stock = sqlx::query(
            "UPDATE products SET stock = stock + $1, version = version + 1 WHERE product = $2 RETURNING stock, version",
        )
        .bind(amount)
        .bind(product.as_str())
        .fetch_one(&mut **tx)
        .await?;
        events.push(self::stock(
            product,
            stock.try_get("stock")?,
            stock.try_get("version")?,
        ));
    }
    Ok(StepResult::Done)
}

async fn claim(
    tx: &mut Tx,
    order_id: &str,
    product: &Product,
    amount: i64,
    status: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO reservations (order_id, product, amount, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(product.as_str())
    .bind(amount)
    .bind(status)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn earlier_answer(tx: &mut Tx, order_id: &str) -> Result<StepResult, sqlx::Error> {
    let status: String = sqlx::query("SELECT status FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("status")?;
    Ok(match status.as_str() {
        "RESERVED" => StepResult::Done,
        "REFUSED" => StepResult::Refused {
            reason: Refusal::InsufficientStock,
        },
        _ => StepResult::Skipped,
    })
}

/// The event announcing a product's stock.
pub(crate) fn stock(product: &Product, stock: i64, version: i64) -> Event {
    Event::StockChanged(StockChanged {
        product: product.to_string(),
        stock,
        version,
    })
}
