//! The same system with every target in its own process, as containers would run it; and
//! two manager replicas on one PostgreSQL, which the Kubernetes manifests rely on.

mod support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_in_separate_processes_run_every_outcome_and_stop_on_sigterm() {
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let split = Split::start(&vhost, data.path(), &SPLIT_TARGETS, &[]).await;
    run_scenarios(&split.backend_url).await;
    split.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_manager_replicas_on_one_postgres_never_decide_a_saga_twice() {
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let pg = PgDatabase::create();
    let targets = [
        "order",
        "payment",
        "inventory",
        "delivery",
        "dead-letter",
        "manager",
        "manager",
        "backend",
    ];
    let split = Split::start(&vhost, data.path(), &targets, &[("DATABASE_URL", pg.url())]).await;
    let base = split.backend_url.clone();

    // Every outcome, plus a crowd of purchases racing for the managers' attention.
    run_scenarios(&base).await;
    let crowd = (0..60).map(|i| {
        let base = base.clone();
        async move {
            let mut body = json!({"username": format!("crowd-{}", i % 6), "price": 7, "amount": 1});
            if i % 5 == 0 {
                body["timeout_inventory"] = json!(true);
            }
            let id = purchase(&base, body).await;
            final_order(&base, &id, std::time::Duration::from_secs(20)).await
        }
    });
    let orders = futures::future::join_all(crowd).await;

    // No step of any saga was sent twice, and no saga reached two final decisions.
    for order in &orders {
        let mut sent: HashMap<&str, usize> = HashMap::new();
        for e in order["timeline"].as_array().unwrap() {
            if e["event"] == "sent" && e.get("detail").is_none_or(Value::is_null) {
                *sent.entry(e["step"].as_str().unwrap()).or_default() += 1;
            }
        }
        assert!(
            sent.values().all(|n| *n == 1),
            "a step was decided twice: {order:#}"
        );
        let seqs: Vec<i64> = order["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "one history per saga"
        );
    }
    // Money: each crowd user paid 7 per SUCCESS order, nothing for the others.
    for u in 0..6 {
        let user = format!("crowd-{u}");
        let succeeded = orders
            .iter()
            .filter(|o| o["username"] == user.as_str() && o["status"] == "SUCCESS")
            .count() as i64;
        wait_for(
            || async { credits(&base, &user).await == Some(500 - 7 * succeeded) },
            &user,
        )
        .await;
    }
    split.stop().await;
}
