//! The backend's one event consumer: every event updates the read models (orders, users,
//! products) and, for a final order update, the sales figures, in one transaction.
//!
//! Each event carries the whole state it reports and a version, so applying it is an
//! upsert that keeps the highest version: duplicates and reordering cannot regress a row.
//! The inbox records each message, so a redelivery costs no write at all; the sales
//! figures are keyed by order id besides, so an order is counted once even when its final
//! update arrives in two messages. Events come alone or several to a message
//! ([`Events`]); the deliveries waiting on the queue are applied in one transaction.
//!
//! Each `OrderUpdated` applied also writes a row of the order feed ([`crate::feed`]), in
//! the same transaction: the status and the timeline entries the read model did not hold
//! yet (those above its stored newest seq). So each entry is in the feed exactly once
//! whatever the delivery: a redelivery is dropped by the inbox, a stale update changes
//! nothing and writes no row, and of several updates of one order in a batch only the
//! newest is applied, its row carrying the entries of the ones it supersedes. The rows of a
//! batch are appended in one statement, last in the transaction (`store::feed::append`).

use std::collections::HashMap;

use common::targets::Service;
use common::{
    bus::{BatchHandler, HandlerError, Incoming},
    db::{Db, Tx},
    domain::OrderId,
    inbox,
    messages::{Event, Events, OrderUpdated, newest_only},
    telemetry::{self, Context},
    time::now_ms,
    topology,
};

use crate::{
    analytics,
    feed::{FeedWake, OrderEvent},
    store::{self, feed::NewRow, orders::Held},
};

/// Applies events from [`common::topology::BACKEND_EVENTS_QUEUE`] to the read models and
/// the sales figures.
#[derive(Clone)]
pub struct Projection {
    db: Db,
    /// Rung after a commit that wrote feed rows (none: the feed's tailer polls).
    feed: Option<FeedWake>,
}

impl Projection {
    pub fn new(db: Db) -> Self {
        Self { db, feed: None }
    }

    /// A projection that wakes the feed's tailer of this process after each commit that
    /// wrote feed rows, so that they are streamed at once.
    pub fn with_feed(db: Db, feed: FeedWake) -> Self {
        Self {
            db,
            feed: Some(feed),
        }
    }

    /// Applies one event, in one transaction with its inbox record. `message_id` identifies
    /// the delivery: a second call with the same id changes nothing.
    pub async fn apply(&self, message_id: &str, event: &Event) -> Result<(), HandlerError> {
        let _span = telemetry::transaction(
            Service::Backend.name(),
            self.db.system(),
            "projection",
            &Context::current(),
        );
        let mut tx = self.db.begin().await?;
        let fed = if inbox::first_delivery(&mut tx, message_id).await? {
            self.apply_events(&mut tx, std::slice::from_ref(event))
                .await?
        } else {
            false
        };
        tx.commit().await?;
        self.committed(fed);
        Ok(())
    }

    /// Applies `events` (at most one per subject: see [`newest_only`]) to the read models,
    /// their final order updates to the sales figures, and appends their feed rows (last:
    /// see `store::feed::append`); returns whether it appended any.
    async fn apply_events(&self, tx: &mut Tx, events: &[Event]) -> Result<bool, HandlerError> {
        let updates = || {
            events.iter().filter_map(|e| match e {
                Event::OrderUpdated(u) => Some(u),
                _ => None,
            })
        };
        let orders: Vec<&OrderUpdated> = updates().collect();
        let mut held = store::orders::held(tx, self.db.backend(), &orders).await?;
        let mut feed = Vec::new();
        for event in events {
            apply_event(tx, event, &mut held, &mut feed).await?;
        }
        analytics::record_in(tx, updates()).await?;
        store::feed::append(tx, self.db.backend(), &feed, now_ms()).await?;
        Ok(!feed.is_empty())
    }

    fn committed(&self, fed: bool) {
        if fed && let Some(wake) = &self.feed {
            wake.notify();
        }
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

/// Applies `event`; an order update that changed the read model adds its feed row to
/// `feed`, with the timeline entries above what `held` says the row held.
async fn apply_event(
    tx: &mut Tx,
    event: &Event,
    held: &mut HashMap<OrderId, Held>,
    feed: &mut Vec<NewRow>,
) -> Result<(), HandlerError> {
    let changed = match event {
        Event::OrderUpdated(u) => {
            let changed = store::orders::apply_update(tx, u).await?;
            if changed {
                let held_seq = held.get(&u.order_id).map_or(0, |h| h.timeline_seq);
                let payload = serde_json::to_string(&OrderEvent::of(u, held_seq))
                    .map_err(|e| HandlerError::Permanent(e.into()))?;
                feed.push(NewRow {
                    order_id: u.order_id,
                    username: u.terms.username.as_str().to_string(),
                    payload,
                });
                held.insert(
                    u.order_id,
                    Held {
                        version: u.version,
                        timeline_seq: u.timeline.iter().map(|e| e.seq).max().unwrap_or(0),
                    },
                );
            }
            changed
        }
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
        let _span = telemetry::transaction(
            Service::Backend.name(),
            self.db.system(),
            "projection",
            &batch[0].cx,
        );
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
        let fed = self.apply_events(&mut tx, &newest_only(fresh)).await?;
        tx.commit().await?;
        self.committed(fed);
        Ok(())
    }
}
