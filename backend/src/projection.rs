//! The read models' consumer: every `Event` updates the orders, users or products table.
//!
//! Each event carries the whole state it reports and a version, so applying it is an
//! upsert that keeps the highest version: duplicates and reordering cannot regress a row.
//! The inbox still records the message, so a redelivery costs no write at all.

use common::{
    bus::{Handler, HandlerError, Incoming},
    db::Db,
    inbox,
    messages::Event,
    telemetry::{self, Context},
};

use crate::store;

/// Applies events from [`common::topology::BACKEND_EVENTS_QUEUE`] to the read models.
#[derive(Clone)]
pub struct Projection {
    db: Db,
}

impl Projection {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Applies one event, in one transaction with its inbox record. `message_id` identifies
    /// the delivery: a second call with the same id changes nothing.
    pub async fn apply(&self, message_id: &str, event: &Event) -> Result<(), HandlerError> {
        let _span = telemetry::transaction("backend", &self.db, "projection", &Context::current());
        let mut tx = self.db.begin().await?;
        if !inbox::first_delivery(&mut tx, message_id).await? {
            return Ok(());
        }
        let changed = match event {
            Event::OrderUpdated(u) => store::orders::apply_update(&mut tx, u).await?,
            Event::CreditsChanged(c) => store::accounts::apply_credits(&mut tx, c).await?,
            Event::StockChanged(s) => store::accounts::apply_stock(&mut tx, s).await?,
        };
        tx.commit().await?;
        if !changed {
            tracing::debug!(message_id, "event older than the read model; ignored");
        }
        Ok(())
    }
}

impl Handler for Projection {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        let event: Event = msg.decode()?;
        self.apply(&msg.message_id, &event).await
    }
}
