//! The manager's shell around the pure saga: load, decide, and persist the new state with
//! its commands and its event in one transaction.
//!
//! Messages come in batches (group commit): the replies waiting on the manager's queue, or
//! the new orders the flow-control room admits, are decided in one transaction: one
//! statement records their inbox entries, one loads their sagas, and one writes every
//! command together with one message carrying all their events. A batch that fails is
//! handled message by message by the consume loop, each with the compare-and-set retries
//! of [`Manager::advance`].
//!
//! Store errors are told apart by what they are ([`HandlerError::classify`]): a saga row
//! that cannot be read fails its message for good, which goes to the dead-letter store
//! rather than being retried forever; a lost connection or a lock is retried.

use std::sync::Arc;

use common::metrics::Metrics;
use common::targets::Service;
use common::{
    bus::{BatchHandler, Broker, HandlerError, Incoming},
    db::{Db, Tx},
    domain::OrderId,
    inbox,
    messages::{DeadLettered, ManagerMessage, PlaceOrder},
    outbox::Pending,
    room::Room,
    time::now_ms,
    topology,
};

use crate::{
    saga::{Input, Link, Saga, Timing, Transition},
    store,
    timers::Timers,
    trace::{Closed, annotate, begin_trace},
};
use common::telemetry::{self, Context};

mod commit;
use commit::commands;

/// How often a transition is retried when another writer moved the saga first.
const MAX_CONFLICTS: usize = 16;

#[derive(Clone)]
pub(crate) struct Manager {
    pub(crate) db: Db,
    pub(crate) timing: Timing,
    pub(crate) timers: Timers,
    pub(crate) metrics: Arc<Metrics>,
    /// The manager's own broker connection: a deadline does not count an outage of it.
    pub(crate) broker: Broker,
    /// The sagas in flight, against their bound: a new order is taken from its queue only
    /// when there is room for its saga.
    pub(crate) room: Arc<Room>,
}

/// A transition decided inside a transaction, and what is left to do once it commits.
struct Decided {
    t: Transition,
    /// Its commands, for the outbox.
    commands: Vec<Pending>,
    /// Timeline entries before the transition (0 for a saga just started).
    before: usize,
    closed: Vec<Closed>,
    /// Whether the saga came into being with this transition (it takes a slot of the room).
    started: bool,
}

/// What one input did, inside a transaction.
enum Outcome {
    /// Nothing to do: a duplicate delivery, or an input for no known saga.
    Nothing,
    /// The saga ignored it (a stale deadline, a late reply).
    Ignored {
        saga: Box<Saga>,
        link: Option<Link>,
    },
    /// Another writer moved the saga first: decide again on a fresh transaction.
    Conflict,
    Decided(Box<Decided>),
}

impl BatchHandler for Manager {
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        let messages = batch
            .iter()
            .map(common::bus::Incoming::decode::<ManagerMessage>)
            .collect::<Result<Vec<_>, _>>()?;
        if let ([msg], [message]) = (batch, messages.as_slice()) {
            let work = self.handle_one(msg, message.clone());
            return telemetry::FutureExt::with_context(work, msg.cx.clone()).await;
        }
        let _tx_span = telemetry::transaction(
            Service::Manager.name(),
            self.db.system(),
            "saga batch",
            &batch[0].cx,
        );
        let mut tx = self.db.begin().await?;
        let ids: Vec<&str> = batch.iter().map(|m| m.message_id.as_str()).collect();
        let mut first = inbox::first_deliveries(&mut tx, &ids).await?;
        let awaited: Vec<OrderId> = messages
            .iter()
            .filter_map(|m| match m {
                ManagerMessage::StepReply(r) => Some(r.order_id),
                _ => None,
            })
            .collect();
        let mut sagas = store::load_many(&mut tx, &awaited)
            .await
            .map_err(HandlerError::classify)?;
        let mut decided = Vec::new();
        for (msg, message) in batch.iter().zip(messages) {
            if !first.remove(&msg.message_id) {
                continue;
            }
            let outcome = match message {
                ManagerMessage::PlaceOrder(place) => self.start(&mut tx, place, &msg.cx).await?,
                ManagerMessage::StepReply(reply) => {
                    let Some(saga) = sagas.get(&reply.order_id) else {
                        tracing::warn!(order_id = %reply.order_id, "reply for an unknown saga; ignored");
                        continue;
                    };
                    self.decide(&mut tx, saga, Input::Reply(reply), &msg.cx)
                        .await?
                }
                // Any error hands the batch to the one-by-one path, where this one works.
                ManagerMessage::DeadLettered(_) => {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "a dead letter is handled alone"
                    )));
                }
            };
            match outcome {
                Outcome::Nothing | Outcome::Ignored { .. } => {}
                // Deciding again on the fresh state resolves it.
                Outcome::Conflict => {
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "a saga of the batch moved concurrently"
                    )));
                }
                Outcome::Decided(d) => {
                    // A later message of the batch for the same saga sees this state.
                    sagas.insert(d.t.saga.order_id, d.t.saga.clone());
                    decided.push(*d);
                }
            }
        }
        let written = self.write(&mut tx, &decided, &batch[0].cx).await?;
        tx.commit().await?;
        self.db.hand_to_relay(written);
        for d in decided {
            self.committed(d);
        }
        Ok(())
    }

    fn apart(&self, msg: &Incoming) -> bool {
        // Rare, and with a path of its own (a dead `PlaceOrder` may start a saga).
        msg.routing_key == topology::RK_DEAD_LETTERED
    }
}

impl Manager {
    /// One message in a transaction of its own, retried on a concurrent update.
    async fn handle_one(
        &self,
        msg: &Incoming,
        message: ManagerMessage,
    ) -> Result<(), HandlerError> {
        match message {
            ManagerMessage::PlaceOrder(place) => self.place(&msg.message_id, place).await,
            ManagerMessage::StepReply(reply) => {
                let order_id = reply.order_id;
                self.advance(Some(&msg.message_id), order_id, Input::Reply(reply))
                    .await
            }
            ManagerMessage::DeadLettered(dl) => self.dead_lettered(&msg.message_id, dl).await,
        }
    }

    /// Starts a saga. A second PlaceOrder for the same order changes nothing.
    async fn place(&self, message_id: &str, place: PlaceOrder) -> Result<(), HandlerError> {
        let cx = Context::current();
        let _tx_span =
            telemetry::transaction(Service::Manager.name(), self.db.system(), "saga", &cx);
        let mut tx = self.db.begin().await?;
        let outcome = if inbox::first_delivery(&mut tx, message_id).await? {
            self.start(&mut tx, place, &cx).await?
        } else {
            Outcome::Nothing
        };
        self.commit_one(tx, outcome).await.map(|_| ())
    }

    /// Starts the saga of `place` inside `tx`, in the trace of `cx` (its message's).
    async fn start(
        &self,
        tx: &mut Tx,
        place: PlaceOrder,
        cx: &Context,
    ) -> Result<Outcome, HandlerError> {
        let mut t = Saga::start(
            place.order_id,
            place.terms,
            place.faults,
            place.placed_at_ms,
            now_ms(),
            &self.timing,
        );
        begin_trace(&mut t, cx);
        let closed = annotate(&mut t, 0, cx);
        if !store::insert(tx, &t.saga)
            .await
            .map_err(HandlerError::classify)?
        {
            tracing::warn!(order_id = %place.order_id, "saga exists already; PlaceOrder ignored");
            return Ok(Outcome::Nothing);
        }
        Ok(Outcome::Decided(Box::new(Decided {
            commands: commands(&t)?,
            t,
            before: 0,
            closed,
            started: true,
        })))
    }

    /// A message of a saga was dead-lettered. When it was the saga's own `PlaceOrder` and no
    /// saga exists, the saga never started: the order is recorded as finished UNKNOWN (with
    /// nothing to compensate), so it does not stay PROCESSING, and a later `PlaceOrder` for
    /// it (a replay) is ignored by [`Manager::place`] like any duplicate.
    async fn dead_lettered(&self, message_id: &str, dl: DeadLettered) -> Result<(), HandlerError> {
        let reason = format!("{} (dead letter {})", dl.reason, dl.dead_letter_id);
        let Some(place) = dl.place_order else {
            let input = Input::DeadLettered {
                step: dl.step,
                reason,
            };
            return self.advance(Some(message_id), dl.order_id, input).await;
        };
        let order_id = place.order_id;
        let mut tx = self.db.begin().await?;
        if !inbox::first_delivery(&mut tx, message_id).await? {
            return Ok(());
        }
        let exists = store::load(&mut tx, order_id)
            .await
            .map_err(HandlerError::classify)?
            .is_some();
        if !exists {
            let t = Saga::never_placed(
                order_id,
                place.terms,
                place.faults,
                place.placed_at_ms,
                &reason,
                now_ms(),
            );
            if store::insert(&mut tx, &t.saga)
                .await
                .map_err(HandlerError::classify)?
            {
                tracing::warn!(%order_id, "PlaceOrder dead-lettered before its saga started; order finished UNKNOWN");
                let decided = Decided {
                    commands: commands(&t)?,
                    t,
                    before: 0,
                    closed: Vec::new(),
                    // Finished as it began: it never held a slot.
                    started: false,
                };
                let outcome = Outcome::Decided(Box::new(decided));
                return self.commit_one(tx, outcome).await.map(|_| ());
            }
        }
        // The saga exists (or was just started by a copy of the PlaceOrder): the dead letter
        // was a duplicate. The rollback drops the inbox record, which `advance` writes again.
        drop(tx);
        self.advance(
            Some(message_id),
            order_id,
            Input::PlaceOrderDeadLettered { reason },
        )
        .await
    }

    /// Feeds one input to a saga, retrying on a concurrent update.
    pub(crate) async fn advance(
        &self,
        message_id: Option<&str>,
        order_id: OrderId,
        input: Input,
    ) -> Result<(), HandlerError> {
        for _ in 0..MAX_CONFLICTS {
            let mut tx = self.db.begin().await?;
            let outcome = self
                .advance_in(&mut tx, message_id, order_id, input.clone())
                .await?;
            if self.commit_one(tx, outcome).await? {
                return Ok(());
            }
            tracing::debug!(%order_id, "saga moved concurrently; deciding again");
        }
        // Contention, not a fault of the input: the consume loop's retries try again.
        Err(HandlerError::Transient(anyhow::anyhow!(
            "saga {order_id} kept changing under {MAX_CONFLICTS} attempts"
        )))
    }

    /// Records the message in the inbox, loads the saga and decides, inside `tx`.
    async fn advance_in(
        &self,
        tx: &mut Tx,
        message_id: Option<&str>,
        order_id: OrderId,
        input: Input,
    ) -> Result<Outcome, HandlerError> {
        if let Some(id) = message_id
            && !inbox::first_delivery(tx, id).await?
        {
            return Ok(Outcome::Nothing);
        }
        let Some(saga) = store::load(tx, order_id)
            .await
            .map_err(HandlerError::classify)?
        else {
            tracing::warn!(%order_id, ?input, "input for an unknown saga; ignored");
            return Ok(Outcome::Nothing);
        };
        self.decide(tx, &saga, input, &Context::current()).await
    }

    /// Fires a deadline, logging (not propagating) a failure: the backstop scan retries.
    pub(crate) async fn fire_deadline(&self, order_id: OrderId) {
        if let Err(e) = self
            .advance(None, order_id, Input::Deadline(self.link()))
            .await
        {
            tracing::warn!(%order_id, error = %e, "deadline not processed; will retry");
        }
    }
}
