//! Sales figures count each order once, at its first final update.

mod support;

use axum::http::StatusCode;
use backend::Projection;
use common::{
    bus::{BatchHandler, HandlerError, Incoming},
    domain::{OrderId, OrderStatus},
    messages::{CreditsChanged, Event},
};
use serde_json::json;
use support::{TestApp, order_updated, spawn_app, terms};

async fn finish(
    app: &TestApp,
    id: OrderId,
    price: i64,
    amount: i64,
    status: OrderStatus,
    version: i64,
) {
    let update = order_updated(
        id,
        &terms("tom", price, amount),
        status,
        "done",
        true,
        version,
    );
    app.analytics.record(&update).await.unwrap();
}

async fn sales(app: &TestApp) -> serde_json::Value {
    let r = app.get("/api/analytics/sales").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn no_finished_order_means_zero_figures_for_every_final_status() {
    let app = spawn_app().await;
    assert_eq!(
        sales(&app).await,
        json!({"orders_by_status": {"SUCCESS": 0, "INSUFFICIENT_FUND": 0, "INSUFFICIENT_INVENTORY": 0,
               "TIMEOUT": 0, "UNKNOWN": 0}, "tokens_sold": 0, "revenue": 0})
    );
}

#[tokio::test]
async fn a_success_adds_its_tokens_and_revenue_and_a_failure_only_its_count() {
    let app = spawn_app().await;
    finish(&app, OrderId::new(), 7, 3, OrderStatus::Success, 4).await;
    finish(&app, OrderId::new(), 2, 5, OrderStatus::Success, 4).await;
    finish(
        &app,
        OrderId::new(),
        100,
        9,
        OrderStatus::InsufficientFund,
        4,
    )
    .await;
    finish(&app, OrderId::new(), 100, 9, OrderStatus::Timeout, 4).await;
    let s = sales(&app).await;
    assert_eq!(s["orders_by_status"]["SUCCESS"], 2);
    assert_eq!(s["orders_by_status"]["INSUFFICIENT_FUND"], 1);
    assert_eq!(s["orders_by_status"]["TIMEOUT"], 1);
    assert_eq!(s["tokens_sold"], 8);
    assert_eq!(s["revenue"], 31);
}

#[tokio::test]
async fn an_order_is_counted_once_however_often_its_final_update_arrives() {
    let app = spawn_app().await;
    let id = OrderId::new();
    finish(&app, id, 5, 2, OrderStatus::Success, 4).await;
    finish(&app, id, 5, 2, OrderStatus::Success, 4).await;
    finish(&app, id, 5, 2, OrderStatus::Success, 5).await;
    let s = sales(&app).await;
    assert_eq!(
        (
            &s["orders_by_status"]["SUCCESS"],
            &s["tokens_sold"],
            &s["revenue"]
        ),
        (&json!(1), &json!(2), &json!(10))
    );
}

#[tokio::test]
async fn an_order_still_running_or_compensating_is_not_counted() {
    let app = spawn_app().await;
    let t = terms("uma", 1, 1);
    for (status, phase) in [
        (OrderStatus::Processing, "running"),
        (OrderStatus::Processing, "compensating"),
    ] {
        app.analytics
            .record(&order_updated(OrderId::new(), &t, status, phase, true, 2))
            .await
            .unwrap();
    }
    assert_eq!(sales(&app).await["orders_by_status"]["SUCCESS"], 0);
}

fn incoming(body: &[u8]) -> Incoming {
    Incoming {
        message_id: "m".into(),
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
async fn the_handler_counts_order_updates_ignores_other_events_and_refuses_garbage() {
    let app = spawn_app().await;
    let update = Event::OrderUpdated(order_updated(
        OrderId::new(),
        &terms("vic", 3, 3),
        OrderStatus::Success,
        "done",
        true,
        4,
    ));
    let projection = Projection::new(app.db.clone());
    projection
        .handle_batch(&[incoming(&serde_json::to_vec(&update).unwrap())])
        .await
        .unwrap();
    let other = Event::CreditsChanged(CreditsChanged {
        username: common::domain::Username::parse("vic").unwrap(),
        credits: 1,
        version: 1,
    });
    projection
        .handle_batch(&[incoming(&serde_json::to_vec(&other).unwrap())])
        .await
        .unwrap();
    assert!(matches!(
        projection.handle_batch(&[incoming(b"{}")]).await,
        Err(HandlerError::Permanent(_))
    ));
    assert_eq!(sales(&app).await["revenue"], 9);
}
