//! The sales consumer: counts every order once, when it first reaches a final status.
//!
//! It shares the backend's database with the projection but not its inbox: both queues
//! receive the same messages (same message ids), so recording them in one inbox would make
//! whichever consumer comes second skip them. Counting is keyed by order id instead, which
//! also absorbs redeliveries.

use common::{
    bus::{Handler, HandlerError, Incoming},
    db::Db,
    domain::OrderStatus,
    messages::{Event, OrderUpdated},
};

use crate::store;

/// Consumes [`common::topology::ANALYTICS_QUEUE`] into the sales figures.
#[derive(Clone)]
pub struct Analytics {
    db: Db,
}

impl Analytics {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Counts `update` if it is the first final update of its order; ignores the rest.
    pub async fn record(&self, update: &OrderUpdated) -> Result<(), HandlerError> {
        if update.phase != "done" || !update.status.is_final() {
            return Ok(());
        }
        let (tokens, revenue) = if update.status == OrderStatus::Success {
            (update.terms.amount.get(), update.terms.total().get())
        } else {
            (0, 0)
        };
        let mut tx = self.db.begin().await?;
        store::analytics::count_final(&mut tx, update.order_id, update.status, tokens, revenue)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Handler for Analytics {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        match msg.decode::<Event>()? {
            Event::OrderUpdated(update) => self.record(&update).await,
            // The queue is bound to order updates only; anything else is simply not ours.
            Event::CreditsChanged(_) | Event::StockChanged(_) => Ok(()),
        }
    }
}
