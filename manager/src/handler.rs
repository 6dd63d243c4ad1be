//! The manager's shell around the pure saga: load, decide, and persist the new state with
//! its commands and its event in one transaction.

use common::{
    bus::{Handler, HandlerError, Incoming},
    db::{Db, Tx},
    domain::OrderId,
    inbox,
    messages::{Event, ManagerMessage, OrderUpdated, PlaceOrder},
    outbox,
    time::now_ms,
    topology,
};

use crate::{
    saga::{Input, Saga, Timing, Transition},
    store,
    timers::Timers,
};

/// How often a transition is retried when another writer moved the saga first.
const MAX_CONFLICTS: usize = 16;

#[derive(Clone)]
pub struct Manager {
    pub db: Db,
    pub timing: Timing,
    pub timers: Timers,
}

impl Handler for Manager {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandlerError> {
        match msg.decode::<ManagerMessage>()? {
            ManagerMessage::PlaceOrder(place) => self.place(&msg.message_id, place).await,
            ManagerMessage::StepReply(reply) => {
                let order_id = reply.order_id;
                self.advance(Some(&msg.message_id), order_id, Input::Reply(reply))
                    .await
            }
            ManagerMessage::DeadLettered(dl) => {
                let input = Input::DeadLettered {
                    step: dl.step,
                    reason: format!("{} (dead letter {})", dl.reason, dl.dead_letter_id),
                };
                self.advance(Some(&msg.message_id), dl.order_id, input)
                    .await
            }
        }
    }
}

impl Manager {
    /// Starts a saga. A second PlaceOrder for the same order changes nothing.
    async fn place(&self, message_id: &str, place: PlaceOrder) -> Result<(), HandlerError> {
        let mut tx = self.db.begin().await?;
        if !inbox::first_delivery(&mut tx, message_id).await? {
            return Ok(());
        }
        let t = Saga::start(
            place.order_id,
            place.terms,
            place.faults,
            place.placed_at_ms,
            now_ms(),
            &self.timing,
        );
        if !store::insert(&mut tx, &t.saga)
            .await
            .map_err(HandlerError::Transient)?
        {
            tracing::warn!(order_id = %place.order_id, "saga exists already; PlaceOrder ignored");
            tx.commit().await?;
            return Ok(());
        }
        self.publish(&mut tx, &t).await?;
        tx.commit().await?;
        self.after_commit(&t);
        Ok(())
    }

    /// Feeds one input to a saga, retrying on a concurrent update.
    pub async fn advance(
        &self,
        message_id: Option<&str>,
        order_id: OrderId,
        input: Input,
    ) -> Result<(), HandlerError> {
        for _ in 0..MAX_CONFLICTS {
            let mut tx = self.db.begin().await?;
            if let Some(id) = message_id
                && !inbox::first_delivery(&mut tx, id).await?
            {
                return Ok(());
            }
            let Some(saga) = store::load(&mut tx, order_id)
                .await
                .map_err(HandlerError::Transient)?
            else {
                tracing::warn!(%order_id, ?input, "input for an unknown saga; ignored");
                tx.commit().await?;
                return Ok(());
            };
            let t = saga.apply(input.clone(), now_ms(), &self.timing);
            if t.ignored {
                tx.commit().await?;
                return Ok(());
            }
            if !store::update(&mut tx, &t.saga, saga.version)
                .await
                .map_err(HandlerError::Transient)?
            {
                tracing::debug!(%order_id, "saga moved concurrently; deciding again");
                continue;
            }
            self.publish(&mut tx, &t).await?;
            tx.commit().await?;
            self.after_commit(&t);
            return Ok(());
        }
        Err(HandlerError::Transient(anyhow::anyhow!(
            "saga {order_id} kept changing under {MAX_CONFLICTS} attempts"
        )))
    }

    /// Writes the transition's commands and the saga's new state (for read models) to the
    /// outbox.
    async fn publish(&self, tx: &mut Tx, t: &Transition) -> Result<(), HandlerError> {
        let id = Some(t.saga.order_id.to_string());
        for cmd in &t.commands {
            outbox::enqueue(
                tx,
                topology::EXCHANGE,
                topology::step_key(cmd.step),
                id.clone(),
                cmd,
            )
            .await?;
        }
        let s = &t.saga;
        let event = Event::OrderUpdated(OrderUpdated {
            order_id: s.order_id,
            terms: s.terms.clone(),
            status: s.status(),
            phase: s.phase().to_string(),
            created: s.created,
            version: s.version,
            placed_at_ms: s.placed_at_ms,
            updated_at_ms: s.updated_at_ms,
            timeline: s.timeline.clone(),
        });
        outbox::enqueue(
            tx,
            topology::EVENTS_EXCHANGE,
            topology::RK_ORDER_UPDATED,
            id,
            &event,
        )
        .await?;
        Ok(())
    }

    fn after_commit(&self, t: &Transition) {
        self.db.wake_outbox();
        if let Some(at) = t.saga.deadline_ms() {
            self.timers.schedule(at, t.saga.order_id);
        }
        if !t.saga.status().is_final() {
            return;
        }
        tracing::info!(order_id = %t.saga.order_id, status = %t.saga.status(), "saga finished");
    }

    /// Fires a deadline, logging (not propagating) a failure: the backstop scan retries.
    pub async fn fire_deadline(&self, order_id: OrderId) {
        if let Err(e) = self.advance(None, order_id, Input::Deadline).await {
            tracing::warn!(%order_id, error = %e, "deadline not processed; will retry");
        }
    }
}
