//! `backend::start` against a real RabbitMQ: a purchase leaves through the outbox for the
//! manager's queue, and events come back into the read models and the sales figures.
//!
//! Needs a vhost of its own: `TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/<vhost>`
//! (e.g. after `rabbitmqctl add_vhost backend-test && rabbitmqctl set_permissions -p
//! backend-test guest '.*' '.*' '.*'`). Without it the test says so and passes.

mod support;

use std::time::Duration;

use axum::{
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use common::{
    bus::{Broker, Publisher},
    config::Config,
    domain::{OrderId, OrderStatus},
    messages::{Event, ManagerMessage},
    outbox::Pending,
    shutdown::Shutdown,
    topology,
};
use http_body_util::BodyExt;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use serde_json::{Value, json};
use support::{order_updated, terms};
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls `probe` every 20 ms until it holds, for at most 5 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut probe: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_purchase_reaches_the_manager_and_its_events_reach_the_read_models() {
    let Some(amqp_url) = std::env::var("TEST_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: set TEST_AMQP_URL to a vhost of this test's own");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_string_lossy().to_string();
    let config = Config::from_lookup(|name| match name {
        "AMQP_URL" => Some(amqp_url.clone()),
        "DATA_DIR" => Some(data_dir.clone()),
        _ => None,
    })
    .unwrap();
    let shutdown = Shutdown::new();
    let backend_broker = Broker::start(&amqp_url, "backend", shutdown.clone());
    let (running, router) = backend::start(config, backend_broker, shutdown.clone(), Vec::new())
        .await
        .unwrap();

    // The purchase leaves through the outbox for the manager's queue.
    let (status, body) = call(
        &router,
        Method::POST,
        "/api/purchase/",
        Some(json!({"username": "wes", "price": 4, "amount": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = OrderId::parse(body["order_id"].as_str().unwrap()).unwrap();

    let probe_stop = Shutdown::new();
    let broker = Broker::start(&amqp_url, "backend-test", probe_stop.clone());
    let conn = broker.connection(&probe_stop).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut placed = None;
    eventually("PlaceOrder in the orders queue", async || {
        if let Some(got) = channel
            .basic_get(topology::ORDERS_QUEUE.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            got.delivery.ack(BasicAckOptions::default()).await.unwrap();
            placed = Some(serde_json::from_slice::<ManagerMessage>(&got.delivery.data).unwrap());
        }
        placed.is_some()
    })
    .await;
    match placed.unwrap() {
        ManagerMessage::PlaceOrder(p) => assert_eq!(p.order_id, id),
        other => panic!("not a PlaceOrder: {other:?}"),
    }
    assert_eq!(
        common::outbox::backlog(&running.readiness.db)
            .await
            .unwrap(),
        0
    );

    // The manager's final update comes back as an event.
    let event = Event::OrderUpdated(order_updated(
        id,
        &terms("wes", 4, 3),
        OrderStatus::Success,
        "done",
        true,
        4,
    ));
    let mut publisher = Publisher::new(broker.clone());
    let pending = Pending {
        id: uuid::Uuid::now_v7().to_string(),
        exchange: topology::EVENTS_EXCHANGE.into(),
        routing_key: topology::RK_ORDER_UPDATED.into(),
        correlation_id: Some(id.to_string()),
        payload: serde_json::to_string(&event).unwrap(),
        headers: None,
    };
    assert_eq!(publisher.publish_all(&[pending]).await.unwrap().len(), 1);

    eventually("the order projected as SUCCESS", async || {
        call(&router, Method::GET, &format!("/api/orders/{id}"), None)
            .await
            .1["status"]
            == "SUCCESS"
    })
    .await;
    eventually("the order counted in the sales", async || {
        call(&router, Method::GET, "/api/analytics/sales", None)
            .await
            .1["revenue"]
            == 12
    })
    .await;
    let listed = call(&router, Method::GET, "/api/all-transaction", None)
        .await
        .1;
    assert_eq!(listed[0]["id"], id.to_string());

    probe_stop.cancel();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("the backend drains within 10 s")
        .unwrap();
}
