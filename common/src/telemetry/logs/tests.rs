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
