//! The order's trace, which the manager keeps for the saga.
//!
//! One order is one trace. The saga has a span of its own, child of the manager's
//! consumption of `PlaceOrder`; each step attempt is a span, child of the saga's, opened
//! when its command is sent (the command travels in it) and closed by its reply, deadline
//! or dead letter, possibly much later and in another replica. Their ids are chosen when
//! they open and kept in the saga (`SagaTrace`), so the timeline can show them at once and
//! the spans are recorded, with their real start and end, when they close.

use common::targets::Service;
use common::{
    db::Db,
    messages::TimelineEvent,
    telemetry::{self, Context, KeyValue},
};

use crate::saga::{Saga, Transition};

/// A span closed by a transition, recorded once that transition is committed.
pub(crate) struct Closed {
    name: String,
    span_id: String,
    parent: Context,
    start_ms: i64,
    end_ms: i64,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

/// Starts the saga's trace under `cx`, the span that is starting the saga.
pub(crate) fn begin_trace(t: &mut Transition, cx: &Context) {
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
pub(crate) fn saga_context(saga: &Saga) -> Context {
    match &saga.trace {
        Some(trace) => telemetry::remote_context(&trace.trace_id, &trace.span_id, trace.sampled),
        None => Context::new(),
    }
}

/// The context of the work at hand: the message being handled, or, for a deadline (no
/// message), the saga's span.
pub(crate) fn work_context(saga: &Saga, cx: &Context) -> Context {
    if telemetry::trace_id(cx).is_some() {
        cx.clone()
    } else {
        saga_context(saga)
    }
}

/// The span a step's command is sent in: the step attempt's, when it is the one open.
pub(crate) fn command_context(saga: &Saga, step: common::messages::Step) -> Context {
    match saga.trace.as_ref().and_then(|trace| trace.open.as_ref()) {
        Some(open) if open.step == step => {
            let trace = saga.trace.as_ref().expect("open implies a trace");
            telemetry::remote_context(&trace.trace_id, &open.span_id, trace.sampled)
        }
        _ => work_context(saga, &Context::current()),
    }
}

/// A span around the saga's transaction, in the order's trace even for a deadline.
pub(crate) fn transaction_span(db: &Db, saga: &Saga, cx: &Context) -> telemetry::Span {
    telemetry::transaction(
        Service::Manager.name(),
        db.system(),
        "saga",
        &work_context(saga, cx),
    )
}

/// Gives each timeline entry the transition added (from `old_len`) its span id: a `sent`
/// opens a step attempt's span, the outcome of the open step closes it, and any other entry
/// gets the span of the work that recorded it. Returns the spans closed, the saga's own
/// when it finished.
pub(crate) fn annotate(t: &mut Transition, old_len: usize, cx: &Context) -> Vec<Closed> {
    let saga_cx = saga_context(&t.saga);
    let order_id = t.saga.order_id.to_string();
    let (status, now_ms) = (t.saga.status(), t.saga.updated_at_ms);
    let Some(trace) = t.saga.trace.as_mut() else {
        return Vec::new();
    };
    let work_span = telemetry::span_id(cx).or_else(|| telemetry::span_id(&saga_cx));
    let mut closed = Vec::new();
    let close = |open, end_ms, outcome: &str, detail: Option<&str>| {
        step_span(open, &saga_cx, &order_id, end_ms, outcome, detail)
    };
    for entry in t.saga.timeline.iter_mut().skip(old_len) {
        if entry.event == TimelineEvent::Sent {
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
        } else if entry.event != TimelineEvent::Ignored
            && trace.open.as_ref().is_some_and(|o| o.step == entry.step)
        {
            let open = trace.open.take().expect("checked above");
            entry.span_id = Some(open.span_id.clone());
            closed.push(close(
                open,
                entry.at_ms,
                entry.event.as_str(),
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
        closed.push(saga_span(trace, &order_id, status, now_ms));
    }
    closed
}

/// The span of a step from its command to `end_ms`, ended by `outcome`.
fn step_span(
    open: crate::saga::OpenStep,
    saga_cx: &Context,
    order_id: &str,
    end_ms: i64,
    outcome: &str,
    detail: Option<&str>,
) -> Closed {
    let mut attributes = vec![
        KeyValue::new("marketplace.order_id", order_id.to_string()),
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
}

/// The span of the whole saga, from the order's placing to its final `status`.
fn saga_span(
    trace: &crate::saga::SagaTrace,
    order_id: &str,
    status: common::domain::OrderStatus,
    end_ms: i64,
) -> Closed {
    let parent = telemetry::remote_context(&trace.trace_id, &trace.parent_span_id, trace.sampled);
    let failed = matches!(
        status,
        common::domain::OrderStatus::Timeout | common::domain::OrderStatus::Unknown
    );
    Closed {
        name: "saga".to_string(),
        span_id: trace.span_id.clone(),
        parent,
        start_ms: trace.started_at_ms,
        end_ms,
        attributes: vec![
            KeyValue::new("marketplace.order_id", order_id.to_string()),
            KeyValue::new("marketplace.order.status", status.as_str()),
        ],
        error: failed.then(|| format!("order finished {}", status.as_str())),
    }
}

pub(crate) fn record_closed(closed: Vec<Closed>) {
    let at = |ms: i64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    for c in closed {
        telemetry::record(
            Service::Manager.name(),
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
