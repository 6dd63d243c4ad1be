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
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::telemetry::remote_context;

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_written(format: Format, emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(LogFormat::new(format))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    #[test]
    fn json_lines_inside_a_span_carry_its_trace_and_span_ids_and_others_do_not() {
        let lines = lines_written(Format::Json, || {
            tracing::info!(order_id = "o-1", n = 3, "outside");
            let _inside = remote_context(TRACE, SPAN, true).attach();
            tracing::warn!(order_id = "o-1", "inside");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let outside: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(outside["message"], "outside");
        assert_eq!(outside["n"], 3);
        assert_eq!(outside["level"], "INFO");
        assert!(outside.get("trace_id").is_none(), "{outside}");
        let inside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["order_id"], "o-1");
        assert_eq!(inside["trace_id"], TRACE);
        assert_eq!(inside["span_id"], SPAN);
    }

    #[test]
    fn text_lines_inside_a_span_end_with_its_ids() {
        let lines = lines_written(Format::Text, || {
            let _inside = remote_context(TRACE, SPAN, true).attach();
            tracing::info!("hello");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("hello"), "{}", lines[0]);
        assert!(
            lines[0].ends_with(&format!(" trace_id={TRACE} span_id={SPAN}")),
            "{}",
            lines[0]
        );
    }
}
