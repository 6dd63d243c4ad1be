//! Several products, end to end: each order takes stock of its own product, a catalog
//! price binds the buyer, an operator's restock counts once however often it is delivered,
//! and the audit balances every product's books with the restocks.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const BOUND: Duration = Duration::from_secs(20);

async fn inventory(base_url: &str) -> Value {
    get_json(base_url, "/api/inventory").await
}

/// The stock of `product` as the read model shows it.
async fn stock_of(base_url: &str, product: &str) -> Option<i64> {
    inventory(base_url)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["product"] == product)
        .and_then(|p| p["stock"].as_i64())
}

async fn wait_for_stock(base_url: &str, product: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let now = stock_of(base_url, product).await;
        if now == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{product}: stock {now:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(base_url: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base_url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Restocks one early token and waits until the stock is `want`: restocks are applied in
/// order, so anything sent before this one has been applied by then.
async fn one_more_early_token(base_url: &str, want: i64) {
    let (status, body) = post(
        base_url,
        "/api/inventory/early_token/restock",
        json!({"amount": 1}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_for_stock(base_url, "early_token", want).await;
}

async fn audit_ok(base_url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let report = get_json(base_url, "/api/audit?grace_ms=0").await;
        if report["ok"] == true || tokio::time::Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_product_keeps_its_own_stock_prices_bind_and_restocks_count_once() {
    let m = InProcess::start(&[("PRODUCTS", "late_token=5, early_token=3@7".into())]).await;
    let url = m.base_url.as_str();
    wait_for_stock(url, "early_token", 3).await;
    let listed = inventory(url).await;
    assert_eq!(
        listed,
        json!([{"product": "early_token", "stock": 3, "price": 7},
               {"product": "late_token", "stock": 5, "price": null}])
    );

    // Refused before anything is stored: another price than the catalog's, or no such product.
    let (status, body) = post(
        url,
        "/api/purchase/",
        json!({"username": "ann", "price": 6, "amount": 1, "product": "early_token"}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("invalid_field"))
    );
    assert!(
        body["detail"].as_str().unwrap().starts_with("price: "),
        "{body}"
    );
    let (status, body) = post(
        url,
        "/api/purchase/",
        json!({"username": "ann", "price": 1, "amount": 1, "product": "gold"}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("product: no product named \"gold\""),
        "{body}"
    );

    // An early token at its price takes early stock only; the default is late_token.
    let early = purchase(
        url,
        json!({"username": "ann", "price": 7, "amount": 2, "product": "early_token"}),
    )
    .await;
    let late = purchase(url, json!({"username": "bob", "price": 1, "amount": 1})).await;
    for (id, product) in [(&early, "early_token"), (&late, "late_token")] {
        let order = final_order(url, id, BOUND).await;
        assert_eq!(order["status"], "SUCCESS", "{order}");
        assert_eq!(order["product"], product);
    }
    wait_for_stock(url, "early_token", 1).await;
    wait_for_stock(url, "late_token", 4).await;
    // More than is left of early_token: refused by the inventory, whatever late_token holds.
    let short = purchase(
        url,
        json!({"username": "cid", "price": 7, "amount": 2, "product": "early_token"}),
    )
    .await;
    let order = final_order(url, &short, BOUND).await;
    assert_eq!(order["status"], "INSUFFICIENT_INVENTORY", "{order}");

    // A restock, from an operator (loopback here); a bad one names what is wrong.
    let (status, body) = post(url, "/api/inventory/gold/restock", json!({"amount": 5})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = post(
        url,
        "/api/inventory/early_token/restock",
        json!({"amount": 0}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("amount: "));
    let (status, restock) = post(
        url,
        "/api/inventory/early_token/restock",
        json!({"amount": 10}),
    )
    .await;
    assert_eq!(status, 202, "{restock}");
    assert_eq!(restock["product"], "early_token");
    wait_for_stock(url, "early_token", 11).await;

    // The same restock delivered again under another message id (a republish) adds nothing.
    let (_conn, channel) = confirming_channel(&m._vhost).await;
    let again = json!({
        "restock_id": restock["restock_id"],
        "product": "early_token",
        "amount": 10,
        "requested_at_ms": 0,
    });
    let message_id = uuid::Uuid::now_v7().to_string();
    publish_confirmed(
        &channel,
        common::topology::EXCHANGE,
        common::topology::RK_RESTOCK,
        Some(&message_id),
        None,
        again.to_string().as_bytes(),
    )
    .await;
    // A later restock is applied after the republished one (one queue, in order).
    one_more_early_token(url, 12).await;

    // With an Idempotency-Key, a retried restock adds once; the key cannot name another.
    let keyed = |amount: i64| {
        client()
            .post(format!("{url}/api/inventory/early_token/restock"))
            .header("idempotency-key", "restock-key-1")
            .json(&json!({"amount": amount}))
            .send()
    };
    let first = keyed(3).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = keyed(3).await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = keyed(4).await.unwrap();
    assert_eq!(other.status(), 409);
    assert!(
        other.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key: ")
    );
    // A later restock lands after anything the retries could have sent (one queue, in
    // order): 16, not 19.
    one_more_early_token(url, 16).await;

    let report = audit_ok(url).await;
    assert_eq!(report["ok"], true, "{report:#}");

    // A restock on the books whose stock never arrived: the audit finds the product that
    // does not balance.
    let inventory_db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        m._data.path().join("inventory.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO restocks (restock_id, product, amount, at_ms) \
         VALUES ('phantom', 'early_token', 4, 0)",
    )
    .execute(&inventory_db)
    .await
    .unwrap();
    inventory_db.close().await;
    let report = get_json(url, "/api/audit?grace_ms=0").await;
    assert_eq!(report["ok"], false, "{report:#}");
    let stock = report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == 3)
        .unwrap();
    let found = stock["violations"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{stock:#}");
    assert!(
        found[0]["detail"].as_str().unwrap().contains("early_token"),
        "{stock:#}"
    );
    m.stop().await.unwrap();
}

/// The figures a sale of each product and a refusal leave.
async fn figures(base_url: &str) -> Value {
    json!({
        "summary": get_json(base_url, "/api/analytics/summary").await,
        "by_product": get_json(base_url, "/api/analytics/sales-by-product").await,
        "top": get_json(base_url, "/api/analytics/top-customers?limit=10").await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketplace_analytics_rebuild_recounts_wiped_figures_from_the_read_model() {
    let m = InProcess::start(&[("PRODUCTS", "late_token=50, early_token=30@7".into())]).await;
    let url = m.base_url.as_str();
    let orders = [
        json!({"username": "ann", "price": 2, "amount": 3}),
        json!({"username": "bob", "price": 7, "amount": 2, "product": "early_token"}),
        json!({"username": "cid", "price": 7, "amount": 100, "product": "early_token"}),
    ];
    for body in orders {
        let id = purchase(url, body).await;
        final_order(url, &id, BOUND).await;
    }
    let counted = figures(url).await;
    assert_eq!(counted["summary"]["orders"], 3, "{counted:#}");
    assert_eq!(counted["summary"]["revenue"], 20, "{counted:#}");

    // The sums are wiped; which orders were counted is kept, so the store does not look
    // behind by its count of orders: only a rebuild puts the sums back.
    let backend = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        m._data.path().join("backend.db").display()
    ))
    .await
    .unwrap();
    for table in [
        "sales",
        "sales_by_product",
        "sales_by_customer",
        "sales_by_minute",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&backend)
            .await
            .unwrap();
    }
    backend.close().await;
    assert_eq!(get_json(url, "/api/analytics/summary").await["orders"], 0);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(["analytics", "rebuild"])
        .env("DATA_DIR", m._data.path())
        .env("PRODUCTS", "late_token=50, early_token=30@7")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["orders_counted"], 3, "{report:#}");
    assert_eq!(report["summary"], counted["summary"]);
    assert_eq!(figures(url).await, counted);
    m.stop().await.unwrap();
}
