//! `marketplace loadgen`, the real binary, against a whole marketplace running in this
//! process (own vhost, own data): the report must be complete and agree with what was
//! sent. Nothing here judges speed.

mod support;

use std::collections::BTreeMap;

use marketplace::loadgen::{Kind, Mix};
use serde_json::Value;
use support::*;

const COUNT: u64 = 40;
const MIX: &str = "insufficient_fund=0.1,out_of_stock=0.05,kill_payment=0.05";
const SEED: u64 = 7;

/// Runs `marketplace loadgen ARGS` and returns its exit code, stdout and stderr.
async fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .arg("loadgen")
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The final status each kind of request must end in.
fn expected_status(kind: Kind) -> &'static str {
    match kind {
        Kind::Plain => "SUCCESS",
        Kind::InsufficientFund => "INSUFFICIENT_FUND",
        Kind::OutOfStock => "INSUFFICIENT_INVENTORY",
        Kind::Fault("kill_payment") => "UNKNOWN",
        other => panic!("no expectation for {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_reports_every_order_final_with_its_status() {
    let m = InProcess::start(&[]).await;
    let amqp_url = m._vhost.amqp_url();
    let (count, seed) = (COUNT.to_string(), SEED.to_string());
    let (code, stdout, stderr) = loadgen(&[
        "--url",
        &m.base_url,
        "--count",
        &count,
        "--concurrency",
        "4",
        "--mix",
        MIX,
        "--seed",
        &seed,
        "--wait",
        "30s",
        "--json",
        "--no-progress",
        "--ceiling",
        "--ceiling-duration",
        "1s",
        "--amqp-url",
        &amqp_url,
    ])
    .await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {stdout}");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    for (key, n) in [("posted", COUNT), ("accepted", COUNT), ("final", COUNT)] {
        assert_eq!(r[key], n, "{key} in {r:#}");
    }
    for key in ["refused", "errors", "skipped", "not_final", "not_listed"] {
        assert_eq!(r[key], 0, "{key} in {r:#}");
    }

    // The seed decides each request's kind: the statuses must be exactly what they make.
    let mix = Mix::parse(MIX).unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..COUNT {
        *expected
            .entry(expected_status(mix.pick(SEED, i)).to_string())
            .or_default() += 1;
    }
    let statuses: BTreeMap<String, u64> =
        serde_json::from_value(r["statuses"].clone()).expect("statuses: status → count");
    assert_eq!(statuses, expected, "{r:#}");

    for key in ["p50", "p90", "p99", "max"] {
        let v = r["latency_ms"][key].as_f64();
        assert!(v.is_some_and(|v| v >= 0.0), "latency_ms.{key} in {r:#}");
    }
    let (p50, max) = (
        r["latency_ms"]["p50"].as_f64().unwrap(),
        r["latency_ms"]["max"].as_f64().unwrap(),
    );
    assert!(p50 <= max, "{r:#}");
    assert!(r["post_latency_ms"]["p99"].is_number(), "{r:#}");
    assert!(
        r["accepted_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{r:#}"
    );
    assert!(
        r["completed_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{r:#}"
    );
    assert!(
        r["messages_per_order"].as_f64().is_some_and(|v| v > 0.0),
        "{r:#}"
    );
    assert!(
        r["messages"]["manager"]["ok"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{r:#}"
    );
    assert_eq!(r["params"]["users"], 100, "{r:#}");
    assert_eq!(r["params"]["seed"], SEED, "{r:#}");

    // The ceiling was measured, set against the run, and its queue is gone.
    let c = &r["ceiling"];
    assert!(c["msg_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r:#}");
    assert!(c["orders_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r:#}");
    assert_eq!(c["messages_per_order_measured"], true, "{r:#}");
    assert!(c["share"].is_number(), "{r:#}");
    let queues = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "-p", &m._vhost.name, "name"])
        .output()
        .expect("rabbitmqctl runs");
    let queues = String::from_utf8_lossy(&queues.stdout);
    assert!(!queues.contains("loadgen.ceiling"), "left behind: {queues}");

    // The table, for people: a second, smaller run of plain purchases.
    let (code, table, stderr) = loadgen(&[
        "--url",
        &m.base_url,
        "--count",
        "5",
        "--concurrency",
        "2",
        "--mix",
        "none",
        "--no-progress",
    ])
    .await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {table}");
    for needle in [
        "closed loop, 2 clients, until 5 orders",
        "final                 5 of 5 accepted  (not final: 0, not listed: 0)",
        "SUCCESS                      5  100.0%",
        "per final order",
    ] {
        assert!(table.contains(needle), "{needle:?} not in\n{table}");
    }

    m.stop().await.expect("drains cleanly");
}

#[tokio::test]
async fn bad_arguments_exit_2_and_help_exits_0() {
    let (code, _, stderr) = loadgen(&["--count", "5"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("--rate or --concurrency"), "{stderr}");
    let (code, stdout, _) = loadgen(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--concurrency N") && stdout.contains("--ceiling"));
}

#[tokio::test]
async fn an_unreachable_marketplace_exits_1() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) = loadgen(&["--url", &url, "--count", "1", "--rate", "1"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is the marketplace running?"), "{stderr}");
}

/// A stand-in marketplace that refuses every other purchase as overloaded (503 with
/// Retry-After) and fails the rest (500): neither is retried, each is counted by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_errors_are_counted_by_kind_and_never_retried() {
    use axum::{
        Json, Router,
        http::{StatusCode, header},
        response::IntoResponse,
        routing::{get, post},
    };
    use std::sync::atomic::{AtomicU64, Ordering};

    static PURCHASES: AtomicU64 = AtomicU64::new(0);
    let purchase = || async {
        if PURCHASES.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            let body = serde_json::json!({"error": "overloaded", "detail": "busy"});
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(body),
            )
                .into_response()
        } else {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    };
    let app = Router::new()
        .route("/metrics", get(|| async { "" }))
        .route(
            "/api/inventory",
            get(|| async { Json(serde_json::json!([{"product": "late_token", "stock": 500}])) }),
        )
        .route("/api/purchase/", post(purchase));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (code, stdout, stderr) = loadgen(&[
        "--url",
        &url,
        "--count",
        "10",
        "--concurrency",
        "2",
        "--json",
        "--no-progress",
    ])
    .await;
    server.abort();
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {stdout}");
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(
        PURCHASES.load(Ordering::SeqCst),
        10,
        "one POST per order: {r:#}"
    );
    assert_eq!(
        (r["posted"].as_u64(), r["accepted"].as_u64()),
        (Some(10), Some(0))
    );
    assert_eq!(r["refused"], 5, "{r:#}");
    assert_eq!(
        r["refused_by_kind"],
        serde_json::json!({"503 overloaded": 5})
    );
    assert_eq!(r["errors"], 5, "{r:#}");
    assert_eq!(r["errors_by_kind"], serde_json::json!({"HTTP 500": 5}));
    assert_eq!(
        (r["final"].as_u64(), r["not_final"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["latency_ms"]["p50"], Value::Null, "nothing final: {r:#}");
}
