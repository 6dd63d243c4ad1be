use common::{
    domain::{Credits, OrderTerms, Quantity, Username},
    messages::Faults,
};
use lapin::BasicProperties;

use super::*;

fn incoming(body: &str, correlation_id: Option<String>) -> Incoming {
    Incoming {
        message_id: "m-1".into(),
        routing_key: "manager.place-order".into(),
        exchange: "marketplace.dlx".into(),
        correlation_id,
        body: body.as_bytes().to_vec(),
        redelivered: false,
        properties: BasicProperties::default(),
        cx: Default::default(),
    }
}

#[test]
fn a_dead_lettered_place_order_carries_the_order_to_the_manager() {
    let place = PlaceOrder {
        order_id: OrderId::new(),
        terms: OrderTerms::new(
            Username::parse("alice").unwrap(),
            Credits::new(3).unwrap(),
            Quantity::new(2).unwrap(),
        )
        .unwrap(),
        faults: Faults::default(),
        placed_at_ms: 7,
    };
    let body = serde_json::to_string(&ManagerMessage::PlaceOrder(place.clone())).unwrap();

    let saga = saga_of(&incoming(&body, None));

    assert_eq!(saga.order_id, Some(place.order_id));
    assert_eq!(saga.step, None);
    assert_eq!(saga.place_order, Some(place));
}

#[test]
fn headers_read_as_plain_json() {
    let mut death = FieldTable::default();
    death.insert("queue".into(), AMQPValue::LongString("payment".into()));
    death.insert("count".into(), AMQPValue::LongLongInt(2));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers.insert(
        "x-first-death-queue".into(),
        AMQPValue::LongString("payment".into()),
    );

    assert_eq!(
        table_json(&headers),
        serde_json::json!({"x-death": [{"count": 2, "queue": "payment"}], "x-first-death-queue": "payment"})
    );
}

#[test]
fn an_undecodable_letter_belongs_to_the_saga_of_its_correlation_id_if_any() {
    let id = OrderId::new();
    assert_eq!(
        saga_of(&incoming("garbage", Some(id.to_string()))),
        SagaOf {
            order_id: Some(id),
            ..SagaOf::default()
        }
    );
    assert_eq!(
        saga_of(&incoming("garbage", Some("not-an-order".into()))),
        SagaOf::default()
    );
}
