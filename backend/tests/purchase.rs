//! POST /api/purchase/: what an accepted purchase writes, and what a refused one does not.

mod support;

use axum::http::{Method, StatusCode};
use common::{
    domain::OrderStatus,
    messages::{ManagerMessage, PlaceOrder},
    topology,
};
use serde_json::{Value, json};
use sqlx::Row;
use support::{TestApp, assert_error, spawn_app, spawn_app_with};

/// The messages waiting in the outbox: `(exchange, routing key, correlation id, body)`.
async fn outbox(app: &TestApp) -> Vec<(String, String, Option<String>, ManagerMessage)> {
    let rows = sqlx::query(
        "SELECT exchange, routing_key, correlation_id, payload FROM outbox ORDER BY id",
    )
    .fetch_all(app.db.pool())
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            let payload: String = r.get("payload");
            (
                r.get("exchange"),
                r.get("routing_key"),
                r.get("correlation_id"),
                serde_json::from_str(&payload).unwrap(),
            )
        })
        .collect()
}

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(
        app.outbox_backlog().await,
        0,
        "a refused request queued a message"
    );
    let page = app.get("/api/orders").await;
    assert_eq!(
        page.body["orders"],
        json!([]),
        "a refused request created an order"
    );
}

#[tokio::test]
async fn an_accepted_purchase_is_202_processing_and_queues_exactly_one_place_order() {
    let app = spawn_app().await;
    let r = app
        .post_json(
            "/api/purchase/",
            &json!({"username": "alice", "price": 7, "amount": 3, "kill_payment": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["status"], "PROCESSING");
    let id = r.body["order_id"].as_str().unwrap().to_string();

    let queued = outbox(&app).await;
    assert_eq!(queued.len(), 1);
    let (exchange, key, correlation, message) = &queued[0];
    assert_eq!(
        (exchange.as_str(), key.as_str()),
        (topology::EXCHANGE, topology::RK_PLACE_ORDER)
    );
    assert_eq!(correlation.as_deref(), Some(id.as_str()));
    let ManagerMessage::PlaceOrder(PlaceOrder {
        order_id,
        terms,
        faults,
        ..
    }) = message
    else {
        panic!("not a PlaceOrder: {message:?}");
    };
    assert_eq!(order_id.to_string(), id);
    assert_eq!(
        (
            terms.username.as_str(),
            terms.price.get(),
            terms.amount.get()
        ),
        ("alice", 7, 3)
    );
    assert!(faults.kill_payment && !faults.kill_create);
}

#[tokio::test]
async fn an_accepted_order_reads_back_at_once_as_processing_but_is_not_listed_yet() {
    let app = spawn_app().await;
    let id = app.buy("bob", 2, 5).await;
    let order = app.get(&format!("/api/orders/{id}")).await;
    assert_eq!(order.status, StatusCode::OK, "{}", order.text);
    assert_eq!(order.body["id"], id.to_string());
    assert_eq!(order.body["status"], OrderStatus::Processing.as_str());
    assert_eq!(order.body["phase"], "running");
    assert_eq!(
        (order.body["price"].as_i64(), order.body["amount"].as_i64()),
        (Some(2), Some(5))
    );
    assert_eq!(order.body["total"], 10);
    assert_eq!(order.body["timeline"], json!([]));
    assert!(order.body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(app.get("/api/all-transaction").await.body, json!([]));
}

#[tokio::test]
async fn the_path_without_a_trailing_slash_is_the_same_operation() {
    let app = spawn_app().await;
    let r = app
        .post_json(
            "/api/purchase",
            &json!({"username": "carol", "price": 1, "amount": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(app.outbox_backlog().await, 1);
}

#[tokio::test]
async fn a_body_is_read_as_json_whatever_its_content_type() {
    let app = spawn_app().await;
    let body = json!({"username": "dave", "price": 1, "amount": 1}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = app
            .request(Method::POST, "/api/purchase/", content_type, body.clone())
            .await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "{content_type:?}: {}",
            r.text
        );
    }
    assert_eq!(app.outbox_backlog().await, 3);
}

#[tokio::test]
async fn malformed_json_is_400_and_writes_nothing() {
    let app = spawn_app().await;
    for raw in [
        "{\"username\": \"bob\", \"price\": 1,",
        "not json",
        "[1, 2",
        "",
        "[]",
        "\"purchase\"",
        // One value per key: the last would win, unseen by whoever read the first.
        r#"{"username": "bob", "price": 1, "amount": 1, "kill_payment": false, "kill_payment": true}"#,
        r#"{"username": "bob", "username": "alice", "price": 1, "amount": 1}"#,
    ] {
        let r = app
            .request(
                Method::POST,
                "/api/purchase/",
                Some("application/json"),
                raw,
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "malformed_json", None);
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn an_invalid_field_is_422_naming_it_and_writes_nothing() {
    let app = spawn_app().await;
    let valid = json!({"username": "erin", "price": 1, "amount": 1});
    let cases: Vec<(&str, Option<Value>)> = vec![
        ("username", None),
        ("price", None),
        ("amount", None),
        ("price", Some(json!("ten"))),
        ("price", Some(json!(1.5))),
        ("price", Some(json!(9_223_372_036_854_775_808u64))),
        ("price", Some(json!(-1))),
        ("amount", Some(json!(0))),
        ("amount", Some(json!([1]))),
        ("username", Some(json!(""))),
        ("username", Some(json!("x".repeat(65)))),
        ("username", Some(json!("bob\u{0}"))),
        ("username", Some(json!("alice\u{200b}"))),
        ("username", Some(json!("\u{feff}alice"))),
        ("username", Some(json!("ali\u{202e}ecil"))),
        ("username", Some(json!(" alice"))),
        ("username", Some(json!("alice "))),
        ("kill_payment", Some(json!("yes"))),
        ("timeout_deliver", Some(json!(1))),
    ];
    for (field, value) in cases {
        let mut body = valid.clone();
        match value {
            Some(v) => body[field] = v,
            None => {
                body.as_object_mut().unwrap().remove(field);
            }
        }
        let r = app.post_json("/api/purchase/", &body).await;
        assert_error(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        );
    }
    let overflow = app
        .post_json(
            "/api/purchase/",
            &json!({"username": "erin", "price": i64::MAX, "amount": 2}),
        )
        .await;
    assert_error(
        &overflow,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("price"),
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_body_over_64_kib_is_413_json_and_writes_nothing() {
    let app = spawn_app().await;
    let big =
        json!({"username": "frank", "price": 1, "amount": 1, "padding": "x".repeat(65 * 1024)});
    let r = app.post_json("/api/purchase/", &big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None);
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_large_body_under_64_kib_is_judged_on_its_fields() {
    let app = spawn_app().await;
    let r = app
        .post_json(
            "/api/purchase/",
            &json!({"username": "y".repeat(60 * 1024), "price": 1, "amount": 1}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("username"),
    );
}

#[tokio::test]
async fn a_fault_flag_is_403_naming_it_when_fault_injection_is_off_and_writes_nothing() {
    let app = spawn_app_with(&[("FAULT_INJECTION", "off")]).await;
    for flag in backend::api::purchase::FAULT_FLAGS {
        let r = app
            .post_json(
                "/api/purchase/",
                &json!({"username": "gina", "price": 1, "amount": 1, flag: true}),
            )
            .await;
        assert_error(
            &r,
            StatusCode::FORBIDDEN,
            "fault_injection_disabled",
            Some(flag),
        );
        assert_eq!(
            r.body["detail"],
            format!("{flag}: fault injection is disabled (FAULT_INJECTION=off)")
        );
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn false_fault_flags_are_accepted_when_fault_injection_is_off() {
    let app = spawn_app_with(&[("FAULT_INJECTION", "off")]).await;
    let mut body = json!({"username": "hank", "price": 1, "amount": 1});
    for flag in backend::api::purchase::FAULT_FLAGS {
        body[flag] = json!(false);
    }
    let r = app.post_json("/api/purchase/", &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(app.outbox_backlog().await, 1);
}

#[tokio::test]
async fn a_product_must_be_in_the_catalog_and_bought_at_its_catalog_price() {
    let app = support::spawn_app_with(&[("PRODUCTS", "late_token=5,early_token=3@7")]).await;
    for (body, field) in [
        (
            json!({"username": "ann", "price": 7, "amount": 1, "product": "gold"}),
            "product",
        ),
        (
            json!({"username": "ann", "price": 7, "amount": 1, "product": "bad name"}),
            "product",
        ),
        (
            json!({"username": "ann", "price": 7, "amount": 1, "product": 3}),
            "product",
        ),
        (
            json!({"username": "ann", "price": 6, "amount": 1, "product": "early_token"}),
            "price",
        ),
    ] {
        let r = app.post_json("/api/purchase/", &body).await;
        support::assert_error(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some(field),
        );
    }
    assert_eq!(
        app.outbox_backlog().await,
        0,
        "a refused purchase stores nothing"
    );

    let r = app
        .post_json(
            "/api/purchase/",
            &json!({"username": "ann", "price": 7, "amount": 1, "product": "early_token"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let order = app
        .get(&format!(
            "/api/orders/{}",
            r.body["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(order.body["product"], "early_token");
    // Without a product: late_token, at the buyer's price (the compatibility contract).
    let id = app.buy("bob", 0, 1).await;
    let order = app.get(&format!("/api/orders/{id}")).await;
    assert_eq!(order.body["product"], "late_token");
}

#[tokio::test]
async fn the_document_lists_the_catalog_as_the_products_a_purchase_may_name() {
    let app = support::spawn_app_with(&[("PRODUCTS", "late_token=5,early_token=3@7")]).await;
    let doc = app.get("/api-docs/openapi.json").await.body;
    let product = &doc["components"]["schemas"]["PurchaseRequest"]["properties"]["product"];
    let text = product.to_string();
    assert!(
        text.contains(r#""enum":["late_token","early_token"]"#),
        "{product:#}"
    );
}
