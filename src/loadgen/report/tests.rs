//! The report from hand-made observations: counts, rates, the ceiling, the JSON keys and
//! the table.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};

use super::*;
use crate::loadgen::{options::Command, table::render_table};

/// The options of a command line.
fn parse(s: &str) -> Result<Options, String> {
    let args: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    match Options::parse(&args, |_| None)? {
        Command::Run(o) => Ok(*o),
        Command::Help => Err("help".into()),
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), Some(50.0));
    assert_eq!(percentile(&v, 90.0), Some(90.0));
    assert_eq!(percentile(&v, 99.0), Some(99.0));
    assert_eq!(percentile(&v, 100.0), Some(100.0));
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    assert_eq!(percentile(&[], 50.0), None);
    let l = Latency::of(vec![5.0, 1.0, 3.0]);
    assert_eq!((l.p50, l.max), (Some(3.0), Some(5.0)));
    assert_eq!(Latency::of(vec![]), Latency::default());
}

fn sample_report(ceiling: bool) -> Report {
    let o = parse("--concurrency 4 --count 4 --seed 1 --mix insufficient_fund=0.25").unwrap();
    let posting = Posting {
        sent: 5,
        accepted: vec!["a".into(), "b".into(), "c".into()],
        refused: BTreeMap::from([("503 overloaded".to_string(), 1)]),
        errors: BTreeMap::from([("HTTP 500".to_string(), 1)]),
        skipped: 0,
        post_ms: vec![2.0, 3.0, 4.0, 5.0, 6.0],
        elapsed: Duration::from_millis(500),
    };
    let fin = |status: &str, created_ms, updated_ms| OrderState::Final {
        status: status.into(),
        created_ms,
        updated_ms,
    };
    let orders = [
        fin("SUCCESS", 1_000, 1_010),
        fin("INSUFFICIENT_FUND", 1_100, 1_130),
        OrderState::NotFinal,
    ];
    let messages = BTreeMap::from([(
        "manager".to_string(),
        QueueMessages {
            ok: 20,
            transient: 1,
            permanent: 2,
        },
    )]);
    let measure = CeilingMeasure {
        duration_s: 5.0,
        published_per_s: 1100.0,
        consumed_per_s: 1000.0,
    };
    let seen = Observed {
        posting,
        orders: orders.to_vec(),
        messages,
        stock_before: Some(500),
        stock_after: Some(499),
        ceiling: ceiling.then_some(measure),
        warnings: vec!["a warning".into()],
    };
    summarize("r1", Params::of(&o, 1), seen)
}

#[test]
fn the_report_counts_and_rates() {
    let r = sample_report(true);
    assert_eq!((r.posted, r.accepted, r.refused, r.errors), (5, 3, 1, 1));
    assert_eq!((r.final_orders, r.not_final, r.not_listed), (2, 1, 0));
    assert_eq!(r.accepted_per_s, 6.0);
    assert_eq!(r.completion_window_s, Some(0.13));
    assert_eq!(r.completed_per_s, Some(15.385)); // 2 / 0.13 s
    assert_eq!(
        (r.latency_ms.p50, r.latency_ms.max),
        (Some(10.0), Some(30.0))
    );
    assert_eq!(r.messages_per_order, Some(11.0));
    let c = r.ceiling.as_ref().unwrap();
    assert_eq!((c.msg_per_s, c.orders_per_s), (1000.0, 90.909));
    assert!(c.messages_per_order_measured);
    assert!((c.share.unwrap() - r.completed_per_s.unwrap() / c.orders_per_s).abs() < 1e-3);
}

#[test]
fn the_json_report_has_stable_keys() {
    let v = serde_json::to_value(sample_report(false)).unwrap();
    for key in [
        "run_id",
        "params",
        "posted",
        "accepted",
        "refused",
        "refused_by_kind",
        "skipped",
        "errors",
        "errors_by_kind",
        "accepted_per_s",
        "final",
        "not_final",
        "not_listed",
        "statuses",
        "completed_per_s",
        "latency_ms",
        "post_latency_ms",
        "messages_per_order",
        "messages",
        "ceiling",
        "warnings",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v:#}");
    }
    assert_eq!(v["statuses"], json!({"INSUFFICIENT_FUND": 1, "SUCCESS": 1}));
    assert_eq!(
        v["latency_ms"],
        json!({"p50": 10.0, "p90": 30.0, "p99": 30.0, "max": 30.0})
    );
    assert_eq!(v["params"]["mode"], "concurrency");
    assert_eq!(v["params"]["mix"], json!({"insufficient_fund": 0.25}));
    assert_eq!(v["errors_by_kind"], json!({"HTTP 500": 1}));
    assert_eq!(v["ceiling"], Value::Null);
}

#[test]
fn the_table_shows_every_section() {
    let t = render_table(&sample_report(true));
    for needle in [
        "run r1",
        "closed loop, 4 clients, until 4 orders",
        "accepted              3  (6.0/s)",
        "refused (429/503)     1  (503 overloaded: 1)",
        "HTTP 500",
        "final                 2 of 3 accepted  (not final: 1, not listed: 0)",
        "POST→final ms         p50 10.0  p90 30.0  p99 30.0  max 30.0",
        "INSUFFICIENT_FUND",
        "per final order       11.00",
        "orders/s allowed      90.9",
        "completed/s share",
        "a warning",
    ] {
        assert!(t.contains(needle), "{needle:?} not in\n{t}");
    }
}
