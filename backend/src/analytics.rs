//! The sales figures: every order counted once, when it first reaches a final status, in
//! the sums by status, by product, by customer and by minute.
//!
//! Fed by the backend's event consumer ([`crate::Projection`]), in the transaction that
//! projects the same events, so a delivery counts once and costs no second copy of the
//! event. Counting is keyed by order id, which absorbs an order's final update arriving
//! twice; [`rebuild`] recomputes the figures from the orders read model (a wiped store, or
//! one added after orders finished) and gives what counting them would have.

use common::{
    bus::HandlerError,
    db::{Db, Tx},
    domain::OrderStatus,
    messages::{OrderUpdated, Phase},
};

use crate::store::{self, analytics::Finished};

/// The sales figures' writer, on the backend's database.
#[derive(Clone)]
pub struct Analytics {
    db: Db,
}

impl Analytics {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Counts `update` if it is the first final update of its order, in a transaction of
    /// its own; ignores the rest.
    pub async fn record(&self, update: &OrderUpdated) -> Result<(), HandlerError> {
        let mut tx = self.db.begin().await?;
        record_in(&mut tx, [update]).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// What `update` adds to the figures, if it is a final one.
pub fn finished(update: &OrderUpdated) -> Option<Finished> {
    if update.phase != Phase::Done || !update.status.is_final() {
        return None;
    }
    let (tokens, revenue) = if update.status == OrderStatus::Success {
        (update.terms.amount.get(), update.terms.total().get())
    } else {
        (0, 0)
    };
    Some(Finished {
        order_id: update.order_id.to_string(),
        status: update.status,
        username: update.terms.username.as_str().to_string(),
        product: update.terms.product.as_str().to_string(),
        tokens,
        revenue,
        final_at_ms: update.updated_at_ms,
    })
}

/// Counts, inside `tx`, the final updates among `updates` whose orders were not counted.
pub async fn record_in<'a>(
    tx: &mut Tx,
    updates: impl IntoIterator<Item = &'a OrderUpdated>,
) -> Result<(), HandlerError> {
    let finished: Vec<Finished> = updates.into_iter().filter_map(finished).collect();
    if !finished.is_empty() {
        store::analytics::count(tx, &finished).await?;
    }
    Ok(())
}

/// Recomputes every figure from the orders read model; returns the orders counted.
pub async fn rebuild(db: &Db) -> Result<i64, sqlx::Error> {
    store::analytics::rebuild(db).await
}

/// Rebuilds the figures if finished orders were never counted (the analytics tables were
/// wiped, or are new beside an older read model). Run at start, before the consumer.
pub async fn catch_up(db: &Db) -> anyhow::Result<()> {
    if store::analytics::behind(db).await? {
        let counted = rebuild(db).await?;
        tracing::info!(
            counted,
            "sales figures rebuilt from the orders read model (finished orders were not counted)"
        );
    }
    Ok(())
}
