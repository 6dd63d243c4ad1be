//! Deciding inside the transaction and committing: the new saga state, its commands and
//! one events message written together; after the commit, the timers, the room and the
//! spans are brought up to date.

use common::telemetry::Context;
use common::{
    bus::HandlerError,
    db::Tx,
    messages::{Event, Events, OrderUpdated},
    outbox::{self, Pending},
    time::now_ms,
    topology,
};

use super::{Decided, Manager, Outcome};
use crate::{
    saga::{Input, Link, Saga, Transition},
    store,
    trace::{annotate, command_context, record_closed, transaction_span, work_context},
};

impl Manager {
    /// Feeds `input` to `saga` and writes the new state (compare-and-set on its version)
    /// inside `tx`, in the trace of `cx` (the work at hand).
    pub(super) async fn decide(
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
    pub(super) async fn commit_one(
        &self,
        mut tx: Tx,
        outcome: Outcome,
    ) -> Result<bool, HandlerError> {
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
    pub(super) async fn write(
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
    pub(super) fn committed(&self, d: Decided) {
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

    /// The manager's link to the broker, as a deadline sees it. Not reached yet since
    /// this process started is not an outage: a restarted manager fires what is overdue.
    pub(super) fn link(&self) -> Link {
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
pub(super) fn commands(t: &Transition) -> Result<Vec<Pending>, HandlerError> {
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
