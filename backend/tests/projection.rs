//! The read models follow the newest event whatever the delivery order, and only list an
//! order once its creation succeeded.

mod support;

use axum::http::StatusCode;
use backend::Projection;
use common::{
    bus::{BatchHandler, HandlerError, Incoming},
    domain::{OrderId, OrderStatus},
    messages::{Event, Step, TimelineEntry, TimelineEvent},
};
use serde_json::json;
use support::{order_updated, spawn_app, spawn_app_with, terms};

#[tokio::test]
async fn an_older_update_delivered_after_a_newer_one_does_not_regress_the_order() {
    let app = spawn_app().await;
    let t = terms("liam", 3, 2);
    let id = app.buy("liam", 3, 2).await;
    app.project(Event::OrderUpdated(order_updated(
        id,
        &t,
        OrderStatus::Success,
        "done",
        true,
        4,
    )))
    .await;
    app.project(Event::OrderUpdated(order_updated(
        id,
        &t,
        OrderStatus::Processing,
        "running",
        true,
        2,
    )))
    .await;

    let order = app.get(&format!("/api/orders/{id}")).await;
    assert_eq!(order.status, StatusCode::OK);
    assert_eq!(order.body["status"], "SUCCESS");
    assert_eq!(order.body["phase"], "done");
    assert_eq!(order.body["timeline"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn all_transaction_answers_the_newest_orders_up_to_its_limit_oldest_first() {
    let app = spawn_app_with(&[("ALL_TRANSACTION_LIMIT", "2")]).await;
    let mut ids = Vec::new();
    for user in ["ann", "bob", "cid"] {
        let t = terms(user, 1, 1);
        let id = app.buy(user, 1, 1).await;
        app.project(Event::OrderUpdated(order_updated(
            id,
            &t,
            OrderStatus::Success,
            "done",
            true,
            4,
        )))
        .await;
        ids.push(id.to_string());
    }
    let listed = app.get("/api/all-transaction").await.body;
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    // The compatibility contract reads the last element: it is still the newest order.
    assert_eq!(listed, [ids[1].as_str(), ids[2].as_str()]);
}

#[tokio::test]
async fn an_order_is_listed_in_all_transaction_only_once_created() {
    let app = spawn_app().await;
    let t = terms("mia", 3, 1);
    let id = app.buy("mia", 3, 1).await;
    app.project(Event::OrderUpdated(order_updated(
        id,
        &t,
        OrderStatus::Processing,
        "running",
        false,
        1,
    )))
    .await;
    assert_eq!(app.get("/api/all-transaction").await.body, json!([]));

    app.project(Event::OrderUpdated(order_updated(
        id,
        &t,
        OrderStatus::Success,
        "done",
        true,
        4,
    )))
    .await;
    let listed = app.get("/api/all-transaction").await;
    assert_eq!(listed.status, StatusCode::OK);
    let listed = listed.body.as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.to_string());
    assert_eq!(
        (
            &listed[0]["username"],
            &listed[0]["price"],
            &listed[0]["amount"],
            &listed[0]["status"]
        ),
        (&json!("mia"), &json!(3), &json!(1), &json!("SUCCESS"))
    );
    // When the POST accepted it, which the saga's updates do not move.
    let order = app.get(&format!("/api/orders/{id}")).await.body;
    assert_eq!(listed[0]["created_at"], order["created_at"]);
    assert!(listed[0]["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_failed_create_is_visible_by_id_but_never_listed() {
    let app = spawn_app().await;
    let t = terms("noah", 1, 1);
    let id = app.buy("noah", 1, 1).await;
    app.project(Event::OrderUpdated(order_updated(
        id,
        &t,
        OrderStatus::Unknown,
        "done",
        false,
        3,
    )))
    .await;
    assert_eq!(
        app.get(&format!("/api/orders/{id}")).await.body["status"],
        "UNKNOWN"
    );
    assert_eq!(app.get("/api/all-transaction").await.body, json!([]));
}

#[tokio::test]
async fn all_transaction_lists_oldest_first() {
    let app = spawn_app().await;
    let t = terms("olga", 1, 1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.buy("olga", 1, 1).await);
    }
    // Projected newest first: the list order must come from the ids, not from arrival.
    for id in ids.iter().rev() {
        app.project(Event::OrderUpdated(order_updated(
            *id,
            &t,
            OrderStatus::Success,
            "done",
            true,
            4,
        )))
        .await;
    }
    let listed: Vec<String> = app
        .get("/api/all-transaction")
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        ids.iter().map(OrderId::to_string).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_timeline_is_served_with_step_names_and_rfc3339_times() {
    let app = spawn_app().await;
    let t = terms("pia", 251, 2);
    let id = app.buy("pia", 251, 2).await;
    let mut update = order_updated(id, &t, OrderStatus::InsufficientFund, "done", true, 4);
    update.timeline[3] = TimelineEntry {
        seq: 4,
        at_ms: 1_700_000_000_003,
        step: Step::ChargePayment,
        event: TimelineEvent::Refused,
        detail: Some("insufficient_funds".into()),
        span_id: None,
    };
    app.project(Event::OrderUpdated(update)).await;
    let order = app.get(&format!("/api/orders/{id}")).await.body;
    assert_eq!(order["total"], 502);
    assert_eq!(
        order["timeline"][0],
        json!({"seq": 1, "at": "2023-11-14T22:13:20.000Z", "step": "order.create", "event": "sent"})
    );
    assert_eq!(
        order["timeline"][3],
        json!({"seq": 4, "at": "2023-11-14T22:13:20.003Z", "step": "payment.charge", "event": "refused",
               "detail": "insufficient_funds"})
    );
}

#[tokio::test]
async fn an_update_of_an_order_this_database_never_saw_is_projected_whole() {
    let app = spawn_app().await;
    let id = OrderId::new();
    let t = terms("quinn", 4, 5);
    app.project(Event::OrderUpdated(order_updated(
        id,
        &t,
        OrderStatus::Success,
        "done",
        true,
        4,
    )))
    .await;
    let order = app.get(&format!("/api/orders/{id}")).await.body;
    assert_eq!(
        (&order["username"], &order["total"], &order["status"]),
        (&json!("quinn"), &json!(20), &json!("SUCCESS"))
    );
}

#[tokio::test]
async fn a_redelivered_message_is_not_applied_again() {
    let app = spawn_app().await;
    let t = terms("rita", 1, 1);
    let id = app.buy("rita", 1, 1).await;
    app.project_as(
        "message-1",
        Event::OrderUpdated(order_updated(
            id,
            &t,
            OrderStatus::Processing,
            "running",
            true,
            2,
        )),
    )
    .await;
    // Same message id, even with other content: the inbox recognises the delivery.
    app.project_as(
        "message-1",
        Event::OrderUpdated(order_updated(id, &t, OrderStatus::Success, "done", true, 4)),
    )
    .await;
    assert_eq!(
        app.get(&format!("/api/orders/{id}")).await.body["status"],
        "PROCESSING"
    );
}

fn incoming(message_id: &str, body: &[u8]) -> Incoming {
    Incoming {
        message_id: message_id.into(),
        routing_key: common::topology::RK_ORDER_UPDATED.into(),
        exchange: common::topology::EVENTS_EXCHANGE.into(),
        correlation_id: None,
        body: body.to_vec(),
        redelivered: false,
        properties: lapin::BasicProperties::default(),
        cx: Default::default(),
    }
}

#[tokio::test]
async fn an_undecodable_event_is_a_permanent_error_for_the_dead_letter_store() {
    let app = spawn_app().await;
    let projection = Projection::new(app.db.clone());
    for body in [&b"not json"[..], br#"{"type": "place_order"}"#] {
        let result = projection.handle_batch(&[incoming("m", body)]).await;
        assert!(
            matches!(result, Err(HandlerError::Permanent(_))),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn an_event_delivered_through_the_handler_is_projected() {
    let app = spawn_app().await;
    let t = terms("sam", 1, 1);
    let id = OrderId::new();
    let event = Event::OrderUpdated(order_updated(id, &t, OrderStatus::Timeout, "done", true, 4));
    let body = serde_json::to_vec(&event).unwrap();
    Projection::new(app.db.clone())
        .handle_batch(&[incoming("m-1", &body)])
        .await
        .unwrap();
    assert_eq!(
        app.get(&format!("/api/orders/{id}")).await.body["status"],
        "TIMEOUT"
    );
}
