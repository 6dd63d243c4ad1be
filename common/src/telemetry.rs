//! Telemetry, in one place: logs (`RUST_LOG` levels; `LOG_FORMAT=json` for JSON), and
//! OpenTelemetry traces exported over OTLP as the standard `OTEL_*` variables say.
//!
//! Every log line written inside a span carries that span's `trace_id` and `span_id`, so a
//! log line leads to its trace and a trace to its logs.

mod export;
pub mod http;
mod logs;
mod settings;
mod spans;

pub use export::{flush, install, shutdown, tracer};
pub use logs::{Format, LogFormat};
pub use opentelemetry::{Context, KeyValue, context::FutureExt, trace::SpanKind};
pub use settings::{Protocol, Settings};
pub use spans::{
    Span, extract, inject, new_span_id, record, remote_context, sampled, span_id, trace_id,
    transaction,
};

use tracing_subscriber::{EnvFilter, prelude::*};

/// Installs the global log subscriber once; later calls (tests start many services) are
/// no-ops.
pub fn init(service_name: &str) {
    // lapin is quiet by default: `bus` logs every connection and channel failure itself,
    // with the service and what it does about it, while lapin repeats them at ERROR, and
    // also reports expected events as errors (a declaration the topology check provokes,
    // an ack racing a channel's close at shutdown). `RUST_LOG=info,lapin=warn` shows them.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=off,amq_protocol=off"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let format = if json { Format::Json } else { Format::Text };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().event_format(LogFormat::new(format)))
        .try_init();
    if result.is_ok() {
        tracing::debug!(service = service_name, "telemetry initialised");
    }
}
