//! The backend's one event consumer: every event updates the read models (orders, users,
//! products) and, for a final order update, the sales figures, in one transaction.
//!
//! Each event carries the whole state it reports and a version, so applying it is an
//! upsert that keeps the highest version: duplicates and reordering cannot regress a row.
//! The inbox records each message, so a redelivery costs no write at all; the sales
//! figures are keyed by order id besides, so an order is counted once even when its final
//! update arrives in two messages. Events come alone or several to a message
//! ([`Events`]); the deliveries waiting on the queue are applied in one transaction.

use common::{
    bus::{BatchHandler, HandlerError, Incoming},
    db::{Db, Tx},
    inbox,
    messages::{Event, Events, newest_only},
    telemetry::{self, Context},
    topology,
};

use crate::{analytics, store};

/// Applies events from [`common::topology::BACKEND_EVENTS_QUEUE`] to the read models and
/// the sales figures.
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
        if inbox::first_delivery(&mut tx, message_id).await? {
            apply_events(&mut tx, std::slice::from_ref(event)).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The events a message carries, by its routing key.
fn events(msg: &Incoming) -> Result<Vec<Event>, HandlerError> {
    if msg.routing_key == topology::RK_EVENTS {
        Ok(msg.decode::<Events>()?.events)
    } else {
        Ok(vec![msg.decode::<Event>()?])
    }
}

/// Applies `events` to the read models, and their final order updates to the sales figures.
async fn apply_events(tx: &mut Tx, events: &[Event]) -> Result<(), HandlerError> {
    for event in events {
        apply_event(tx, event).await?;
    }
    let updates = events.iter().filter_map(|e| match e {
        Event::OrderUpdated(u) => Some(u),
        _ => None,
    });
    analytics::record_in(tx, updates).await
}

async fn apply_event(tx: &mut Tx, event: &Event) -> Result<(), HandlerError> {
    let changed = match event {
        Event::OrderUpdated(u) => store::orders::apply_update(tx, u).await?,
        Event::CreditsChanged(c) => store::accounts::apply_credits(tx, c).await?,
        Event::StockChanged(s) => store::accounts::apply_stock(tx, s).await?,
    };
    if !changed {
        tracing::debug!("event older than the read model; ignored");
    }
    Ok(())
}

impl BatchHandler for Projection {
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let decoded = batch.iter().map(events).collect::<Result<Vec<_>, _>>()?;
        let _span = telemetry::transaction("backend", &self.db, "projection", &batch[0].cx);
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = batch.iter().map(|m| m.message_id.as_str()).collect();
        let mut first = inbox::first_deliveries(&mut tx, &ids).await?;
        let fresh = batch
            .iter()
            .zip(decoded)
            .filter(|(msg, _)| first.remove(&msg.message_id))
            .flat_map(|(_, events)| events)
            .collect();
        // Applying the others would be overwritten in the same transaction (an order's
        // final update is its newest).
        apply_events(&mut tx, &newest_only(fresh)).await?;
        tx.commit().await?;
        Ok(())
    }
}
