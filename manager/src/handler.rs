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
use common::{
    bus::{BatchHandler, Broker, HandlerError, Incoming},
    db::{Db, Tx},
    domain::OrderId,
    inbox,
    messages::{DeadLettered, Event, Events, ManagerMessage, OrderUpdated, PlaceOrder},
    outbox::{self, Pending},
    room::Room,
    time::now_ms,
    topology,
};

use crate::{
    saga::{Input, Link, Saga, Timing, Transition},
    store,
    timers::Timers,
    trace::{
        Closed, annotate, begin_trace, command_context, record_closed, transaction_span,
        work_context,
    },
};
use common::telemetry::{self, Context};

/// How often a transition is retried when another writer moved the saga first.
const MAX_CONFLICTS: usize = 16;

#[derive(Clone)]
pub struct Manager {
    pub db: Db,
    pub timing: Timing,
    pub timers: Timers,
    pub metrics: Arc<Metrics>,
    /// The manager's own broker connection: a deadline does not count an outage of it.
    pub broker: Broker,
    /// The sagas in flight, against their bound: a new order is taken from its queue only
    /// when there is room for its saga.
    pub room: Arc<Room>,
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
            .map(|m| m.decode::<ManagerMessage>())
            .collect::<Result<Vec<_>, _>>()?;
        if let ([msg], [message]) = (batch, messages.as_slice()) {
            let work = self.handle_one(msg, message.clone());
            return telemetry::FutureExt::with_context(work, msg.cx.clone()).await;
        }
        let _tx_span =
            telemetry::transaction("manager", self.db.system(), "saga batch", &batch[0].cx);
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
        let _tx_span = telemetry::transaction("manager", self.db.system(), "saga", &cx);
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
                reason.clone(),
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
    pub async fn advance(
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

    /// Feeds `input` to `saga` and writes the new state (compare-and-set on its version)
    /// inside `tx`, in the trace of `cx` (the work at hand).
    async fn decide(
        &self,
        tx: &mut Tx,
        saga: &Saga,
        input: Input,
        cx: &Context,
    ) -> Result<Outcome, HandlerError> {
        let _tx_span = transaction_span(&self.db, saga, cx);
        let link = match &input {
            Input::Deadline(link) => Some(*link),
            _ => None,
        };
        let mut t = saga.apply(input, now_ms(), &self.timing);
        if t.ignored {
            return Ok(Outcome::Ignored {
                saga: Box::new(saga.clone()),
                link,
            });
        }
        let before = saga.timeline.len();
        let closed = annotate(&mut t, before, cx);
        if !store::update(tx, &t.saga, saga.version)
            .await
            .map_err(HandlerError::classify)?
        {
            return Ok(Outcome::Conflict);
        }
        Ok(Outcome::Decided(Box::new(Decided {
            commands: commands(&t)?,
            t,
            before,
            closed,
            started: false,
        })))
    }

    /// Commits a transaction that decided one input; false on a conflict (nothing
    /// committed: the caller decides again).
    async fn commit_one(&self, mut tx: Tx, outcome: Outcome) -> Result<bool, HandlerError> {
        match outcome {
            Outcome::Conflict => return Ok(false),
            Outcome::Nothing => tx.commit().await?,
            Outcome::Ignored { saga, link } => {
                tx.commit().await?;
                if let Some(link) = link {
                    self.deadline_held(&saga, link);
                }
            }
            Outcome::Decided(d) => {
                let decided = [*d];
                let written = self.write(&mut tx, &decided, &Context::current()).await?;
                tx.commit().await?;
                self.db.hand_to_relay(written);
                let [d] = decided;
                self.committed(d);
            }
        }
        Ok(true)
    }

    /// Writes the decided transitions' commands, and one message carrying all their sagas'
    /// new states (for read models), to the outbox in one statement; returns what it wrote,
    /// for the relay once committed.
    async fn write(
        &self,
        tx: &mut Tx,
        decided: &[Decided],
        cx: &Context,
    ) -> Result<Vec<Pending>, HandlerError> {
        if decided.is_empty() {
            return Ok(Vec::new());
        }
        let mut out: Vec<Pending> = decided
            .iter()
            .flat_map(|d| d.commands.iter().cloned())
            .collect();
        out.push(events_message(decided, cx)?);
        outbox::enqueue_all(tx, &out).await?;
        Ok(out)
    }

    /// What follows a committed transition: the next deadline armed, the spans it closed
    /// recorded, the metrics counted and the room adjusted.
    fn committed(&self, d: Decided) {
        record_closed(d.closed);
        let t = &d.t;
        match t.saga.deadline_ms() {
            Some(at) => self.timers.schedule(at, t.saga.order_id),
            None => self.timers.cancel(t.saga.order_id),
        }
        crate::metrics::record(&self.metrics, d.before, t);
        // How long the workers took to answer steers how many sagas run at once. A step
        // that timed out or was dead-lettered says nothing of queues (a stalled or broken
        // worker does that alone); only answers do.
        for (entry, latency_ms) in crate::metrics::step_latencies(d.before, t) {
            if entry.event.is_answer() {
                self.room
                    .observe(latency_ms, self.timing.step_timeout_ms, entry.at_ms);
            }
        }
        let finished = t.saga.status().is_final();
        match (d.started, finished) {
            (true, false) => self.room.take(1),
            (false, true) if d.before > 0 => self.room.release(1),
            _ => {}
        }
        if finished {
            tracing::info!(order_id = %t.saga.order_id, status = %t.saga.status(), "saga finished");
        }
    }

    /// Fires a deadline, logging (not propagating) a failure: the backstop scan retries.
    pub async fn fire_deadline(&self, order_id: OrderId) {
        if let Err(e) = self
            .advance(None, order_id, Input::Deadline(self.link()))
            .await
        {
            tracing::warn!(%order_id, error = %e, "deadline not processed; will retry");
        }
    }

    /// The manager's link to the broker, as a deadline sees it. Not reached yet since
    /// this process started is not an outage: a restarted manager fires what is overdue.
    fn link(&self) -> Link {
        if self.broker.is_in_outage() {
            return Link::Down;
        }
        self.broker
            .restored_at_ms()
            .map_or(Link::Steady, Link::RestoredAt)
    }

    /// A deadline that fired and changed nothing: when an outage of the link moved it
    /// later, the timer is set for the new time. While the link is down, the backstop scan
    /// (the deadline in the database is past) asks again every second.
    fn deadline_held(&self, saga: &Saga, link: Link) {
        let (Some(deadline), Some(due)) = (saga.deadline_ms(), saga.due_at(link, &self.timing))
        else {
            if link == Link::Down && saga.deadline_ms().is_some_and(|d| d <= now_ms()) {
                tracing::debug!(order_id = %saga.order_id, "deadline held: no link to the broker");
            }
            return;
        };
        if due > deadline {
            tracing::debug!(order_id = %saga.order_id, due_in_ms = due - now_ms(), "deadline moved by a broker outage");
            self.timers.schedule(due, saga.order_id);
        }
    }
}

/// The transition's commands, each in its step's span.
fn commands(t: &Transition) -> Result<Vec<Pending>, HandlerError> {
    let id = Some(t.saga.order_id.to_string());
    let commands = t
        .commands
        .iter()
        .map(|cmd| {
            outbox::message(
                &command_context(&t.saga, cmd.step),
                topology::EXCHANGE,
                topology::step_key(cmd.step),
                id.clone(),
                cmd,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(commands)
}

/// The sagas' new states, for the read models, in one message: it travels in the trace of
/// `cx` or else the first saga's, since one message cannot be in several.
fn events_message(decided: &[Decided], cx: &Context) -> Result<Pending, HandlerError> {
    let events = decided
        .iter()
        .map(|d| {
            let s = &d.t.saga;
            Event::OrderUpdated(OrderUpdated {
                order_id: s.order_id,
                terms: s.terms.clone(),
                status: s.status(),
                phase: s.phase(),
                created: s.created,
                version: s.version,
                placed_at_ms: s.placed_at_ms,
                updated_at_ms: s.updated_at_ms,
                timeline: s.timeline.clone(),
                trace_id: s.trace.as_ref().map(|trace| trace.trace_id.clone()),
            })
        })
        .collect();
    let cx = work_context(&decided[0].t.saga, cx);
    let id = (decided.len() == 1).then(|| decided[0].t.saga.order_id.to_string());
    Ok(outbox::message(
        &cx,
        topology::EVENTS_EXCHANGE,
        topology::RK_EVENTS,
        id,
        &Events { events },
    )?)
}
