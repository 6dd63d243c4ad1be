//! Operators' restocks: `amount` more of a product, counted once per `restock_id` however
//! often the message is delivered, and announced like any other stock change.

use common::{
    bus::{HandlerError, Incoming},
    db::{Db, Tx},
    inbox,
    messages::{Event, Restock},
    outbox,
    time::now_ms,
    worker,
};
use sqlx::Row;

use crate::{logic, store::Stock};

/// Applies [`Restock`] messages from [`common::topology::RESTOCK_QUEUE`].
pub struct Restocks {
    pub db: Db,
}

impl common::bus::BatchHandler for Restocks {
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let restocks = batch
            .iter()
            .map(Incoming::decode::<Restock>)
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = batch.iter().map(|m| m.message_id.as_str()).collect();
        let mut first = inbox::first_deliveries(&mut tx, &ids).await?;
        let mut events = Vec::new();
        for (msg, restock) in batch.iter().zip(&restocks) {
            if first.remove(&msg.message_id) {
                apply(&mut tx, restock, &mut events).await?;
            }
        }
        let out: Vec<_> = worker::events_message(events, &batch[0].cx)?
            .into_iter()
            .collect();
        outbox::enqueue_all(&mut tx, &out).await?;
        tx.commit().await?;
        self.db.hand_to_relay(out);
        Ok(())
    }
}

/// Records `restock` and adds it to the stock, unless it was recorded before. A product
/// this inventory does not hold is refused (the message is dead-lettered): the backend
/// checks its catalog, so that means the two were started with different `PRODUCTS`.
async fn apply(
    tx: &mut Tx,
    restock: &Restock,
    events: &mut Vec<Event>,
) -> Result<(), HandlerError> {
    let recorded = sqlx::query(
        "INSERT INTO restocks (restock_id, product, amount, at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (restock_id) DO NOTHING",
    )
    .bind(restock.restock_id.to_string())
    .bind(restock.product.as_str())
    .bind(restock.amount.get())
    .bind(now_ms())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !recorded {
        return Ok(());
    }
    let row = sqlx::query(
        "UPDATE products SET stock = stock + $1, version = version + 1 WHERE product = $2 \
         RETURNING stock, version",
    )
    .bind(restock.amount.get())
    .bind(restock.product.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| {
        HandlerError::Permanent(anyhow::anyhow!(
            "restock of {}: this inventory holds no such product",
            restock.product
        ))
    })?;
    events.push(logic::stock(
        &restock.product,
        Stock {
            stock: row.try_get("stock")?,
            version: row.try_get("version")?,
        },
    ));
    Ok(())
}
