//! The manager's shell around the pure saga: load, decide, and persist the new state with
//! its commands and its event in one transaction.

use std::sync::Arc;

use common::metrics::Metrics;
use common::{
    bus::{Broker, Handler, HandlerError, Incoming},
    db::{Db, Tx},
    domain::OrderId,
    inbox,
    messages::{DeadLettered, Event, ManagerMessage, OrderUpdated, PlaceOrder},
    outbox,
    time::now_ms,
    topology,
};

use crate::{
    saga::{Input, Link, Saga, Timing, Transition},
    store,
    timers::Timers,
};
use common::telemetry::{self, Context, KeyValue};

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
            ManagerMessage::DeadLettered(dl) => self.dead_lettered(&msg.message_id, dl).await,
        }
    }
}

impl Manager {
    /// Starts a saga. A second PlaceOrder for the same order changes nothing.
    async fn place(&self, message_id: &str, place: PlaceOrder) -> Result<(), HandlerError> {
        let _tx_span = telemetry::transaction("manager", &self.db, "saga", &Context::current());
        let mut tx = self.db.begin().await?;
        if !inbox::first_delivery(&mut tx, message_id).await? {
            return Ok(());
        }
        let mut t = Saga::start(
            place.order_id,
            place.terms,
            place.faults,
            place.placed_at_ms,
            now_ms(),
            &self.timing,
        );
        begin_trace(&mut t, &Context::current());
        let closed = annotate(&mut t, 0, &Context::current());
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
        record_closed(closed);
        self.after_commit(&t);
        crate::metrics::record(&self.metrics, 0, &t);
        Ok(())
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
            .map_err(HandlerError::Transient)?
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
                .map_err(HandlerError::Transient)?
            {
                self.publish(&mut tx, &t).await?;
                tx.commit().await?;
                tracing::warn!(%order_id, "PlaceOrder dead-lettered before its saga started; order finished UNKNOWN");
                self.after_commit(&t);
                crate::metrics::record(&self.metrics, 0, &t);
                return Ok(());
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
            let _tx_span = transaction_span(&self.db, &saga);
            let mut t = saga.apply(input.clone(), now_ms(), &self.timing);
            if t.ignored {
                tx.commit().await?;
                if let Input::Deadline(link) = input {
                    self.deadline_held(&saga, link);
                }
                return Ok(());
            }
            let closed = annotate(&mut t, saga.timeline.len(), &Context::current());
            if !store::update(&mut tx, &t.saga, saga.version)
                .await
                .map_err(HandlerError::Transient)?
            {
                tracing::debug!(%order_id, "saga moved concurrently; deciding again");
                continue;
            }
            self.publish(&mut tx, &t).await?;
            tx.commit().await?;
            record_closed(closed);
            self.after_commit(&t);
            crate::metrics::record(&self.metrics, saga.timeline.len(), &t);
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
            outbox::enqueue_in(
                tx,
                &command_context(&t.saga, cmd.step),
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
            trace_id: s.trace.as_ref().map(|trace| trace.trace_id.clone()),
        });
        outbox::enqueue_in(
            tx,
            &work_context(&t.saga),
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

// ---- the order's trace -----------------------------------------------------------------
//
// One order is one trace. The saga has a span of its own, child of the manager's
// consumption of `PlaceOrder`; each step attempt is a span, child of the saga's, opened
// when its command is sent (the command travels in it) and closed by its reply, deadline
// or dead letter, possibly much later and in another replica. Their ids are chosen when
// they open and kept in the saga (`SagaTrace`), so the timeline can show them at once and
// the spans are recorded, with their real start and end, when they close.

/// A span closed by a transition, recorded once that transition is committed.
struct Closed {
    name: String,
    span_id: String,
    parent: Context,
    start_ms: i64,
    end_ms: i64,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

/// Starts the saga's trace under `cx`, the span that is starting the saga.
fn begin_trace(t: &mut Transition, cx: &Context) {
    let (Some(trace_id), Some(parent_span_id)) = (telemetry::trace_id(cx), telemetry::span_id(cx))
    else {
        return;
    };
    t.saga.trace = Some(crate::saga::SagaTrace {
        trace_id,
        parent_span_id,
        span_id: telemetry::new_span_id(),
        sampled: telemetry::sampled(cx),
        started_at_ms: t.saga.updated_at_ms,
        open: None,
    });
}

/// The saga's span, as a parent.
fn saga_context(saga: &Saga) -> Context {
    match &saga.trace {
        Some(trace) => telemetry::remote_context(&trace.trace_id, &trace.span_id, trace.sampled),
        None => Context::new(),
    }
}

/// The context of the work at hand: the message being handled, or, for a deadline (no
/// message), the saga's span.
fn work_context(saga: &Saga) -> Context {
    let current = Context::current();
    if telemetry::trace_id(&current).is_some() {
        current
    } else {
        saga_context(saga)
    }
}

/// The span a step's command is sent in: the step attempt's, when it is the one open.
fn command_context(saga: &Saga, step: common::messages::Step) -> Context {
    match saga.trace.as_ref().and_then(|trace| trace.open.as_ref()) {
        Some(open) if open.step == step => {
            let trace = saga.trace.as_ref().expect("open implies a trace");
            telemetry::remote_context(&trace.trace_id, &open.span_id, trace.sampled)
        }
        _ => work_context(saga),
    }
}

/// A span around the saga's transaction, in the order's trace even for a deadline.
fn transaction_span(db: &Db, saga: &Saga) -> telemetry::Span {
    telemetry::transaction("manager", db, "saga", &work_context(saga))
}

/// Gives each timeline entry the transition added (from `old_len`) its span id: a `sent`
/// opens a step attempt's span, the outcome of the open step closes it, and any other entry
/// gets the span of the work that recorded it. Returns the spans closed, the saga's own
/// when it finished.
fn annotate(t: &mut Transition, old_len: usize, cx: &Context) -> Vec<Closed> {
    let saga_cx = saga_context(&t.saga);
    let order_id = t.saga.order_id.to_string();
    let (status, now_ms) = (t.saga.status(), t.saga.updated_at_ms);
    let Some(trace) = t.saga.trace.as_mut() else {
        return Vec::new();
    };
    let work_span = telemetry::span_id(cx).or_else(|| telemetry::span_id(&saga_cx));
    let mut closed = Vec::new();
    let close = |open: crate::saga::OpenStep, end_ms: i64, outcome: &str, detail: Option<&str>| {
        let mut attributes = vec![
            KeyValue::new("marketplace.order_id", order_id.clone()),
            KeyValue::new("marketplace.step", open.step.name()),
            KeyValue::new("marketplace.step.compensation", open.step.is_compensation()),
            KeyValue::new("marketplace.step.outcome", outcome.to_string()),
        ];
        if let Some(d) = &open.detail {
            attributes.push(KeyValue::new("marketplace.step.attempt", d.clone()));
        }
        if let Some(d) = detail {
            attributes.push(KeyValue::new("marketplace.step.detail", d.to_string()));
        }
        let failed = matches!(outcome, "failed" | "timed_out" | "dead_lettered" | "resent");
        Closed {
            name: open.step.name().to_string(),
            span_id: open.span_id,
            parent: saga_cx.clone(),
            start_ms: open.sent_at_ms,
            end_ms,
            attributes,
            error: failed.then(|| format!("{} {outcome}", open.step.name())),
        }
    };
    for entry in t.saga.timeline.iter_mut().skip(old_len) {
        if entry.event == "sent" {
            if let Some(open) = trace.open.take() {
                closed.push(close(open, entry.at_ms, "resent", None));
            }
            let span_id = telemetry::new_span_id();
            entry.span_id = Some(span_id.clone());
            trace.open = Some(crate::saga::OpenStep {
                step: entry.step,
                span_id,
                sent_at_ms: entry.at_ms,
                detail: entry.detail.clone(),
            });
        } else if entry.event != "ignored"
            && trace.open.as_ref().is_some_and(|o| o.step == entry.step)
        {
            let open = trace.open.take().expect("checked above");
            entry.span_id = Some(open.span_id.clone());
            closed.push(close(
                open,
                entry.at_ms,
                &entry.event,
                entry.detail.as_deref(),
            ));
        } else {
            entry.span_id = work_span.clone();
        }
    }
    if status.is_final() {
        if let Some(open) = trace.open.take() {
            closed.push(close(open, now_ms, "abandoned", None));
        }
        let parent =
            telemetry::remote_context(&trace.trace_id, &trace.parent_span_id, trace.sampled);
        let failed = matches!(
            status,
            common::domain::OrderStatus::Timeout | common::domain::OrderStatus::Unknown
        );
        closed.push(Closed {
            name: "saga".to_string(),
            span_id: trace.span_id.clone(),
            parent,
            start_ms: trace.started_at_ms,
            end_ms: now_ms,
            attributes: vec![
                KeyValue::new("marketplace.order_id", order_id.clone()),
                KeyValue::new("marketplace.order.status", status.as_str()),
            ],
            error: failed.then(|| format!("order finished {}", status.as_str())),
        });
    }
    closed
}

fn record_closed(closed: Vec<Closed>) {
    let at = |ms: i64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    for c in closed {
        telemetry::record(
            "manager",
            c.name,
            &c.parent,
            &c.span_id,
            at(c.start_ms),
            at(c.end_ms),
            c.attributes,
            c.error,
        );
    }
}
