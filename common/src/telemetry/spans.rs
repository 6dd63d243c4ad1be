//! Spans through the OpenTelemetry API, each with the tracer of the service it belongs to,
//! and W3C trace context in and out of message headers.
//!
//! Parents are passed explicitly (a [`Context`]) rather than taken from `tracing`'s span
//! stack: one process may run seven services, each with its own tracer provider, and a
//! message's context arrives in its headers, not on the stack.

use std::{borrow::Cow, collections::BTreeMap, time::SystemTime};

use opentelemetry::{
    Context, KeyValue,
    propagation::TextMapPropagator,
    trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer,
    },
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::export::tracer;

/// A span this code started, or nothing when tracing is off (then its context is the
/// parent's, so an incoming trace context still travels on). Ends when dropped.
pub struct Span {
    cx: Context,
    own: bool,
}

impl Span {
    pub fn start(
        service: &str,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Span {
        match tracer(service) {
            Some(t) => {
                let span = t
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .start_with_context(&t, parent);
                Span {
                    cx: parent.with_span(span),
                    own: true,
                }
            }
            None => Span {
                cx: parent.clone(),
                own: false,
            },
        }
    }

    /// The context to run the span's work in, and to parent its children.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    pub fn set_attribute(&self, attribute: KeyValue) {
        if self.own {
            self.cx.span().set_attribute(attribute);
        }
    }

    /// Marks the span failed, with why.
    pub fn set_error(&self, description: impl Into<Cow<'static, str>>) {
        if self.own {
            self.cx.span().set_status(Status::error(description));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if self.own {
            self.cx.span().end();
        }
    }
}

/// A span around one database transaction (database client conventions), named after
/// the work it commits, e.g. `payment.charge transaction`; `system` is the database's
/// `db.system.name` (see `Db::system`).
pub fn transaction(service: &str, system: &'static str, what: &str, parent: &Context) -> Span {
    Span::start(
        service,
        format!("{what} transaction"),
        SpanKind::Client,
        parent,
        vec![
            KeyValue::new("db.system.name", system),
            KeyValue::new("db.operation.name", "transaction"),
            KeyValue::new("db.namespace", service.to_string()),
        ],
    )
}

/// Records a span whose id was chosen in advance and whose start and end are known only
/// afterwards: a saga step, opened when its command is sent and closed by its reply or
/// deadline, possibly in another manager replica.
#[allow(clippy::too_many_arguments)]
pub fn record(
    service: &str,
    name: impl Into<Cow<'static, str>>,
    parent: &Context,
    span_id: &str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    error: Option<String>,
) {
    let Some(t) = tracer(service) else { return };
    let Ok(span_id) = SpanId::from_hex(span_id) else {
        return;
    };
    let mut builder = t
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes);
    builder.span_id = Some(span_id);
    let span = builder.start_with_context(&t, parent);
    let cx = Context::new().with_span(span);
    if let Some(e) = error {
        cx.span().set_status(Status::error(e));
    }
    cx.span().end_with_timestamp(end.max(start));
}

/// The current trace context as W3C headers (`traceparent`, maybe `tracestate`); empty
/// when there is none.
pub fn inject(cx: &Context) -> BTreeMap<String, String> {
    let mut headers = std::collections::HashMap::new();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut headers);
    }
    headers.into_iter().collect()
}

/// The trace context carried by `headers`; an empty context when there is none.
pub fn extract<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let map: std::collections::HashMap<String, String> = headers
        .into_iter()
        .filter(|(k, _)| {
            k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if map.is_empty() {
        return Context::new();
    }
    TraceContextPropagator::new().extract_with_context(&Context::new(), &map)
}

/// The trace id (32 hex digits) of `cx`, if it is in a trace.
pub fn trace_id(cx: &Context) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The span id (16 hex digits) of `cx`'s span, if it is in a trace.
pub fn span_id(cx: &Context) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_string())
}

/// Whether `cx` is in a sampled trace.
pub fn sampled(cx: &Context) -> bool {
    cx.span().span_context().is_sampled()
}

/// A fresh random span id (16 hex digits), for a span recorded later with [`record`].
pub fn new_span_id() -> String {
    loop {
        let id = SpanId::from_bytes(rand::random());
        if id != SpanId::INVALID {
            return id.to_string();
        }
    }
}

/// A context whose parent is the span `span_id` of trace `trace_id` (hex), for work that
/// belongs to a trace but has no incoming message (a saga's deadline). Empty if the ids
/// are not valid.
pub fn remote_context(trace_id: &str, span_id: &str, sampled: bool) -> Context {
    match (TraceId::from_hex(trace_id), SpanId::from_hex(span_id)) {
        (Ok(t), Ok(s)) if t != TraceId::INVALID && s != SpanId::INVALID => {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            Context::new().with_remote_span_context(SpanContext::new(
                t,
                s,
                flags,
                true,
                TraceState::default(),
            ))
        }
        _ => Context::new(),
    }
}

#[cfg(test)]
mod tests;
