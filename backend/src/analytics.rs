//! The sales figures: every order counted once, when it first reaches a final status.
//!
//! Fed by the backend's event consumer ([`crate::Projection`]), in the transaction that
//! projects the same event. Counting is keyed by order id, which absorbs an order's final
//! update arriving twice.

use common::{
    bus::HandlerError,
    db::{Db, Tx},
    domain::OrderStatus,
    messages::OrderUpdated,
};

use crate::store;

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
        record_in(&mut tx, update).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Counts `update` inside `tx` if it is the first final update of its order.
pub async fn record_in(tx: &mut Tx, update: &OrderUpdated) -> Result<(), HandlerError> {
    if update.phase != "done" || !update.status.is_final() {
        return Ok(());
    }
    let (tokens, revenue) = if update.status == OrderStatus::Success {
        (update.terms.amount.get(), update.terms.total().get())
    } else {
        (0, 0)
    };
    store::analytics::count_final(tx, update.order_id, update.status, tokens, revenue).await?;
    Ok(())
}
