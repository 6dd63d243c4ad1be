//! Overload is absorbed, not turned into failures: a burst far larger than the sagas the
//! manager may run at once waits in its queue and ends all SUCCESS, although each step has
//! only 300 ms; and past the backlog bound the edge refuses a purchase (503, Retry-After)
//! before anything is stored, so that every 202 is an order that completes.

mod support;

use std::{collections::BTreeMap, time::Duration};

use common::{config::Config, shutdown::Shutdown};
use serde_json::{Value, json};
use support::*;

/// `marketplace_<name>` series of the Prometheus text, by their labels.
async fn series(base_url: &str, name: &str) -> BTreeMap<String, f64> {
    let text = client()
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("marketplace_{name}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((
                labels.trim_end_matches('}').to_string(),
                value.parse().ok()?,
            ))
        })
        .collect()
}

/// The tests of this file run one at a time: each runs a burst, and two bursts at once on
/// two cores would measure each other, not the flow control.
static ONE_BURST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_sagas_in_flight_ends_all_success_with_a_short_step_timeout() {
    const BOUND: usize = 8;
    const ORDERS: usize = 300;
    let _alone = ONE_BURST_AT_A_TIME.lock().await;
    // Short enough that without the bound the burst's queued commands time out (each step
    // waits behind up to 300 others); with it, each waits behind at most 8.
    let m = InProcess::start(&[
        ("STEP_TIMEOUT_MS", "300".into()),
        ("MAX_SAGAS_IN_FLIGHT", BOUND.to_string()),
        ("INITIAL_STOCK", "100000".into()),
    ])
    .await;
    let base = m.base_url.clone();

    // The burst: every order accepted at once, far faster than sagas finish.
    let posters: Vec<_> = (0..16)
        .map(|client_no| {
            let base = base.clone();
            tokio::spawn(async move {
                for i in (client_no..ORDERS).step_by(16) {
                    let body =
                        json!({"username": format!("burst-{}", i % 50), "price": 1, "amount": 1});
                    purchase(&base, body).await;
                }
            })
        })
        .collect();
    // Meanwhile the sagas in flight, as the manager's store counts them, stay bounded.
    let mut most_in_flight = 0.0f64;
    let mut finished = 0.0;
    for _ in 0..1200 {
        let in_flight = series(&base, "sagas_in_flight").await;
        most_in_flight = most_in_flight.max(in_flight.values().sum());
        finished = series(&base, "orders_total").await.values().sum();
        if finished >= ORDERS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in posters {
        p.await.unwrap();
    }
    assert_eq!(finished, ORDERS as f64, "every order final within 60 s");
    let statuses = series(&base, "orders_total").await;
    assert_eq!(
        statuses,
        BTreeMap::from([(r#"status="SUCCESS""#.to_string(), ORDERS as f64)]),
        "no order failed for the burst"
    );
    // The room's estimate may trail the store by one batch while it recounts.
    assert!(
        most_in_flight <= (2 * BOUND) as f64,
        "at most {} sagas in flight, saw {most_in_flight}",
        2 * BOUND
    );
    m.stop().await.expect("drains cleanly");
}

/// One target of the marketplace in this process.
struct Target {
    url: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(target: &'static str, env: &std::collections::HashMap<String, String>) -> Target {
    let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(marketplace::serve(
        target,
        config,
        listener,
        shutdown.clone(),
    ));
    wait_for_readyz(&url, target).await;
    Target {
        url,
        shutdown,
        task,
    }
}

async fn orders(base_url: &str) -> Vec<Value> {
    let page: Value = client()
        .get(format!("{base_url}/api/orders?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["orders"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_backlog_bound_a_purchase_is_refused_before_anything_is_stored() {
    let _alone = ONE_BURST_AT_A_TIME.lock().await;
    common::telemetry::init("test");
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let env = environment(&vhost, data.path(), &[("MAX_BACKLOG", "3".into())]);
    // The backend alone: nothing completes, so the backlog only grows.
    let backend = start("backend", &env).await;
    let buy = |user: &str| json!({"username": user, "price": 2, "amount": 1});
    for user in ["ann", "bob", "cat"] {
        purchase(&backend.url, buy(user)).await;
    }
    let refused = client()
        .post(format!("{}/api/purchase/", backend.url))
        .json(&buy("dan"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "overloaded");
    assert!(
        body["detail"].as_str().unwrap().contains("MAX_BACKLOG=3"),
        "{body}"
    );
    assert_eq!(
        orders(&backend.url).await.len(),
        3,
        "nothing stored for dan"
    );

    // The rest of the marketplace starts: the backlog drains, and only what was accepted
    // was published (dan's order never reaches the manager).
    let mut others = Vec::new();
    for target in ["order", "payment", "inventory", "delivery", "manager"] {
        others.push(start(target, &env).await);
    }
    wait_for(
        || async {
            orders(&backend.url)
                .await
                .iter()
                .all(|o| o["status"] == "SUCCESS")
        },
        "the accepted orders complete",
    )
    .await;
    let done = orders(&backend.url).await;
    let users: Vec<&str> = done
        .iter()
        .map(|o| o["username"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 3);
    assert!(!users.contains(&"dan"), "{users:?}");

    // With the backlog gone, purchases are accepted again (once the count is renewed).
    wait_for(
        || async {
            client()
                .post(format!("{}/api/purchase/", backend.url))
                .json(&buy("dan"))
                .send()
                .await
                .unwrap()
                .status()
                == 202
        },
        "a purchase accepted again",
    )
    .await;

    for t in others.into_iter().chain([backend]) {
        t.shutdown.cancel();
        t.task.await.unwrap().expect("drains cleanly");
    }
}
