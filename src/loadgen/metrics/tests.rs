//! Prometheus text parses, escapes and all; snapshots give per-queue deltas and add up.

use super::*;

const METRICS: &str = r#"# HELP marketplace_orders_total Orders finished.
# TYPE marketplace_orders_total counter
marketplace_orders_total{status="SUCCESS"} 10
marketplace_orders_total{status="TIMEOUT"} 2
marketplace_messages_consumed_total{queue="manager",result="ok"} 30
marketplace_messages_consumed_total{queue="manager",result="transient"} 1
marketplace_messages_consumed_total{queue="payment",result="ok"} 12
marketplace_messages_consumed_total{queue="payment",result="permanent"} 1
marketplace_http_requests_total{method="GET",route="/a\"b\\c",status="200"} 5
marketplace_sagas_in_flight 3
histogram_bucket{le="+Inf"} 4 1700000000
"#;

#[test]
fn prometheus_text_parses() {
    let samples = parse_prometheus(METRICS);
    assert_eq!(samples.len(), 9);
    assert_eq!(samples[6].label("route"), Some("/a\"b\\c"));
    assert_eq!(samples[7].name, "marketplace_sagas_in_flight");
    assert_eq!(samples[7].value, 3.0);
    assert_eq!(samples[8].value, 4.0);
    assert!(parse_sample("broken{a=\"x} 1").is_none());
}

#[test]
fn snapshots_give_deltas() {
    let before = Snapshot::parse(METRICS);
    assert_eq!(before.finished(), 12.0);
    let mut after = Snapshot::parse(
        r#"marketplace_orders_total{status="SUCCESS"} 15
marketplace_orders_total{status="UNKNOWN"} 1
marketplace_orders_total{status="TIMEOUT"} 2
marketplace_messages_consumed_total{queue="manager",result="ok"} 50
marketplace_messages_consumed_total{queue="manager",result="transient"} 1
marketplace_messages_consumed_total{queue="payment",result="ok"} 12
marketplace_messages_consumed_total{queue="payment",result="permanent"} 1
marketplace_messages_consumed_total{queue="order",result="ok"} 7
"#,
    );
    assert_eq!(after.finished_since(&before), 6);
    let m = after.messages_since(&before);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["manager", "order"]);
    assert_eq!(
        m["manager"],
        QueueMessages {
            ok: 20,
            transient: 0,
            permanent: 0
        }
    );
    assert_eq!(m["order"].delivered(), 7);
    // A split deployment: counters of several processes add up.
    after.add(&Snapshot::parse(
        "marketplace_messages_consumed_total{queue=\"order\",result=\"ok\"} 3",
    ));
    assert_eq!(after.messages_since(&before)["order"].ok, 10);
}
