//! Server times parse to the millisecond; an order is final only once its saga is done.

use serde_json::json;

use super::*;

#[test]
fn server_times_parse() {
    assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.500Z"), Some(1500));
    assert_eq!(
        parse_rfc3339_ms("2026-11-21T08:52:07.800Z"),
        Some(1_795_251_127_800)
    );
    assert_eq!(
        parse_rfc3339_ms("2026-11-21T08:52:07.8+00:00"),
        Some(1_795_251_127_800)
    );
    assert_eq!(
        parse_rfc3339_ms("2024-02-29T00:00:00Z"),
        Some(1_709_164_800_000)
    );
    assert_eq!(
        parse_rfc3339_ms("2026-11-21T08:52:07.8001234Z"),
        Some(1_795_251_127_800)
    );
    for bad in [
        "",
        "2026-13-01T00:00:00Z",
        "2026-11-21T08:52:07+02:00",
        "2026-11-21 x",
    ] {
        assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
    }
}

#[test]
fn orders_are_final_only_when_done() {
    let order = |status: &str, phase: &str| {
        json!({"status": status, "phase": phase,
               "created_at": "1970-01-01T00:00:01.000Z", "updated_at": "1970-01-01T00:00:01.250Z"})
    };
    assert_eq!(final_state(&order("PROCESSING", "running")), None);
    assert_eq!(final_state(&order("PROCESSING", "compensating")), None);
    assert_eq!(final_state(&order("TIMEOUT", "compensating")), None);
    assert_eq!(
        final_state(&order("SUCCESS", "done")),
        Some(OrderState::Final {
            status: "SUCCESS".into(),
            created_ms: 1000,
            updated_ms: 1250
        })
    );
}
