//! Every outcome of the compatibility contract, end to end through real RabbitMQ, with the
//! whole marketplace in this process: on SQLite (the default) and on PostgreSQL.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_reaches_its_final_status_with_its_compensations_on_sqlite() {
    let m = InProcess::start(&[]).await;
    run_scenarios(&m.base_url).await;
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_reaches_its_final_status_with_its_compensations_on_postgres() {
    let db = PgDatabase::create();
    let m = InProcess::start(&[("DATABASE_URL", db.url())]).await;
    run_scenarios(&m.base_url).await;
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_marketplace_keeps_balances_stock_and_orders() {
    let vhost_and_data = InProcess::start(&[]).await;
    let base = vhost_and_data.base_url.clone();
    let id = purchase(
        &base,
        serde_json::json!({"username": "keeper", "price": 5, "amount": 3}),
    )
    .await;
    final_order(&base, &id, std::time::Duration::from_secs(10)).await;
    wait_for(
        || async { credits(&base, "keeper").await == Some(485) },
        "credits",
    )
    .await;
    // Restart on the same data directory and vhost.
    let InProcess {
        shutdown,
        task,
        _data,
        _vhost,
        ..
    } = vhost_and_data;
    shutdown.cancel();
    task.await.unwrap().expect("drains cleanly");
    let env = environment(&_vhost, _data.path(), &[]);
    let config = common::config::Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = common::shutdown::Shutdown::new();
    let task = tokio::spawn(marketplace::serve(
        "all",
        config,
        listener,
        shutdown.clone(),
    ));
    wait_until_ready(&base).await;
    assert_eq!(credits(&base, "keeper").await, Some(485));
    assert_eq!(stock(&base).await, 497);
    let order = final_order(&base, &id, std::time::Duration::from_secs(5)).await;
    assert_eq!(order["status"], "SUCCESS");
    shutdown.cancel();
    task.await.unwrap().expect("drains cleanly");
}

/// With no OTLP endpoint nothing is exported, but the order still has a trace id and its
/// steps span ids (the W3C context crosses every service; log lines carry the same ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_carries_its_trace_id_without_a_collector() {
    let m = InProcess::start(&[]).await;
    let id = purchase(
        &m.base_url,
        serde_json::json!({"username": "traced", "price": 1, "amount": 1}),
    )
    .await;
    let order = final_order(&m.base_url, &id, std::time::Duration::from_secs(5)).await;
    let hex = |v: &serde_json::Value, len: usize| {
        v.as_str()
            .is_some_and(|s| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit()))
    };
    assert!(hex(&order["trace_id"], 32), "{order:#}");
    let timeline = order["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().all(|e| hex(&e["span_id"], 16)),
        "every step has its span: {timeline:#?}"
    );
    m.stop().await.expect("drains cleanly");
}
