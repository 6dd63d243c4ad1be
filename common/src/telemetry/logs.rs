//! Log lines with the trace context of the work they describe.
//!
//! The ids come from the OpenTelemetry context current while the line is written (the
//! bus and the HTTP layer run every handler inside its span's context), not from
//! `tracing` spans, which this code base does not use for traces.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Compact, Writer},
    },
    registry::LookupSpan,
};

/// `LOG_FORMAT`: human-readable text (the default) or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The event formatter: tracing-subscriber's compact text, or JSON, plus `trace_id` and
/// `span_id` whenever the line is written inside a span.
pub struct LogFormat {
    format: Format,
    text: format::Format<Compact>,
}

impl LogFormat {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            text: format::Format::default().compact(),
        }
    }
}

fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = current_ids();
        match self.format {
            Format::Text => {
                let mut line = String::new();
                self.text.format_event(ctx, Writer::new(&mut line), event)?;
                writer.write_str(line.trim_end_matches('\n'))?;
                if let Some((trace_id, span_id)) = ids {
                    write!(writer, " trace_id={trace_id} span_id={span_id}")?;
                }
                writeln!(writer)
            }
            Format::Json => {
                let meta = event.metadata();
                let mut map = serde_json::Map::new();
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                map.insert("timestamp".into(), now.into());
                map.insert("level".into(), meta.level().as_str().into());
                map.insert("target".into(), meta.target().into());
                event.record(&mut JsonFields(&mut map));
                if let Some((trace_id, span_id)) = ids {
                    map.insert("trace_id".into(), trace_id.into());
                    map.insert("span_id".into(), span_id.into());
                }
                writeln!(writer, "{}", serde_json::Value::Object(map))
            }
        }
    }
}

/// Collects an event's fields as JSON values.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests;
