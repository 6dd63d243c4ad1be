//! The invariant audit against real stores: it passes after every outcome, finds a
//! balance someone tampered with (naming the user and orders), and `marketplace audit`
//! says the same from the command line.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

async fn audit(base_url: &str) -> Value {
    let r = client()
        .get(format!("{base_url}/api/audit?grace_ms=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The audit once the system is quiet: no saga in flight and every outbox empty. An order
/// can be final while a late reply (say, to a step that timed out) is still on its way out
/// of a worker's outbox, and at `grace_ms=0` such a row counts as a violation. Waiting for
/// quiescence first is what an operator does too; a violation that stays is still reported.
async fn quiescent_audit(base_url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = audit(base_url).await;
        let busy = report["orders"]["in_flight"] != 0
            || report["outbox_backlog"]
                .as_object()
                .unwrap()
                .values()
                .any(|n| n != 0);
        if !busy || tokio::time::Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A configuration that finds the stores through `variable` (DATA_DIR, DATABASE_URL).
fn store_config(variable: &str, value: &str) -> common::config::Config {
    common::config::Config::from_lookup(|k| (k == variable).then(|| value.to_string())).unwrap()
}

/// The audit as `marketplace::audit::run` does it at `grace_ms=0`, with windows of
/// `window` order ids.
async fn windowed_audit(config: &common::config::Config, window: usize) -> Value {
    let report = marketplace::audit::run_windowed(config, 0, window)
        .await
        .unwrap();
    serde_json::to_value(report).unwrap()
}

fn violations(report: &Value, invariant: u64) -> Vec<Value> {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == invariant)
        .unwrap()["violations"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_passes_after_every_outcome_and_finds_a_tampered_balance() {
    let m = InProcess::start(&[]).await;
    run_scenarios(&m.base_url).await;
    let report = quiescent_audit(&m.base_url).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["invariants"].as_array().unwrap().len(), 5);
    assert_eq!(report["orders"]["in_flight"], 0);
    assert_eq!(report["orders"]["accepted"], report["orders"]["final"]);
    assert!(report["orders"]["by_status"]["SUCCESS"].as_i64().unwrap() >= 1);

    // Someone takes 7 credits behind the payment service's back.
    let order = purchase(
        &m.base_url,
        json!({"username": "tampered", "price": 3, "amount": 2}),
    )
    .await;
    final_order(&m.base_url, &order, Duration::from_secs(5)).await;
    let payment = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        m._data.path().join("payment.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE accounts SET credits = credits - 7 WHERE username = 'tampered'")
        .execute(&payment)
        .await
        .unwrap();
    payment.close().await;

    let report = quiescent_audit(&m.base_url).await;
    assert_eq!(report["ok"], false);
    let found = violations(&report, 2);
    assert_eq!(found.len(), 1, "{report:#}");
    assert!(
        found[0]["detail"].as_str().unwrap().contains("tampered")
            && found[0]["detail"].as_str().unwrap().contains("7 credits"),
        "{found:?}"
    );
    assert_eq!(found[0]["orders"], json!([order]));

    // The command line reads the same stores and says the same, with exit code 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(["audit", "--grace-ms", "0"])
        .env("DATA_DIR", m._data.path())
        .env("AMQP_URL", m._vhost.amqp_url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(violations(&cli, 2), found);

    // Windows of 3 order ids (several windows for these orders) find the same as one.
    let config = store_config("DATA_DIR", &m._data.path().display().to_string());
    let whole = windowed_audit(&config, 1_000_000).await;
    assert_eq!(violations(&whole, 2), found);
    let windowed = windowed_audit(&config, 3).await;
    assert!(
        report["orders"]["accepted"].as_i64().unwrap() > 6,
        "{report:#}"
    );
    assert_eq!(windowed["orders"], whole["orders"]);
    assert_eq!(windowed["invariants"], whole["invariants"]);

    let bad = client()
        .get(format!("{}/api/audit?grace_ms=-1", m.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("grace_ms"));
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_passes_on_postgres() {
    let db = PgDatabase::create();
    let m = InProcess::start(&[("DATABASE_URL", db.url())]).await;
    run_scenarios(&m.base_url).await;
    let report = quiescent_audit(&m.base_url).await;
    assert_eq!(report["ok"], true, "{report:#}");
    // The books' sums (BIGINT sums are NUMERIC on PostgreSQL) and the windows.
    let windowed = windowed_audit(&store_config("DATABASE_URL", &db.url()), 2).await;
    assert_eq!(windowed["ok"], true, "{windowed:#}");
    assert_eq!(windowed["orders"], report["orders"]);
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_a_database_per_service_through_one_url() {
    let prefix = format!("test_{}", uuid::Uuid::new_v4().simple());
    // `{service}` in a database name is the service with `_` for `-`.
    let _databases: Vec<PgDatabase> = marketplace::services()
        .map(|s| PgDatabase::create_named(&format!("{prefix}_{}", s.replace('-', "_"))))
        .collect();
    let url = format!("postgres://postgres@127.0.0.1:5432/{prefix}_{{service}}");
    let m = InProcess::start(&[("DATABASE_URL", url)]).await;
    let order = purchase(
        &m.base_url,
        json!({"username": "spread", "price": 2, "amount": 2}),
    )
    .await;
    final_order(&m.base_url, &order, Duration::from_secs(5)).await;
    let report = quiescent_audit(&m.base_url).await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["orders"]["accepted"], 1);
    // Each service wrote its own database.
    let out = std::process::Command::new("psql")
        .args([
            &format!("postgres://postgres@127.0.0.1:5432/{prefix}_payment"),
            "-tAc",
            "SELECT credits FROM payment.accounts WHERE username = 'spread'",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "496");
    m.stop().await.expect("drains cleanly");
}

#[test]
fn the_audit_command_fails_clearly_without_stores() {
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(["audit"])
        .env("DATA_DIR", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no database"), "{stderr}");
}
