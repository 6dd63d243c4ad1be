use super::*;
use crate::domain::{Credits, Quantity};

fn terms() -> OrderTerms {
    OrderTerms::new(
        Username::parse("alice").unwrap(),
        Credits::new(2).unwrap(),
        Quantity::new(3).unwrap(),
    )
    .unwrap()
}

#[test]
fn every_forward_step_but_create_and_complete_has_a_compensation_of_the_same_worker() {
    for step in Step::FORWARD {
        if let Some(c) = step.compensation() {
            assert!(c.is_compensation());
            assert_eq!(c.worker(), step.worker());
        }
    }
    assert_eq!(Step::CreateOrder.compensation(), None);
    assert_eq!(Step::CompleteOrder.compensation(), None);
}

#[test]
fn kill_wins_over_stall_and_flags_map_to_their_steps() {
    let f = Faults {
        kill_payment: true,
        timeout_payment: true,
        timeout_deliver: true,
        ..Faults::default()
    };
    assert_eq!(f.for_step(Step::ChargePayment), Some(Fault::Kill));
    assert_eq!(f.for_step(Step::ScheduleDelivery), Some(Fault::Stall));
    assert_eq!(f.for_step(Step::ReserveStock), None);
    assert_eq!(f.for_step(Step::RefundPayment), None);
}

#[test]
fn manager_messages_round_trip_as_tagged_json() {
    let reply = ManagerMessage::StepReply(StepReply {
        order_id: OrderId::new(),
        step: Step::ChargePayment,
        result: StepResult::Refused {
            reason: Refusal::InsufficientFunds,
        },
    });
    let json = serde_json::to_string(&reply).unwrap();
    assert!(json.contains(r#""type":"step_reply""#), "{json}");
    assert!(json.contains(r#""result":"refused""#), "{json}");
    assert_eq!(
        serde_json::from_str::<ManagerMessage>(&json).unwrap(),
        reply
    );

    let place = ManagerMessage::PlaceOrder(PlaceOrder {
        order_id: OrderId::new(),
        terms: terms(),
        faults: Faults::default(),
        placed_at_ms: 1,
    });
    let json = serde_json::to_string(&place).unwrap();
    assert_eq!(
        serde_json::from_str::<ManagerMessage>(&json).unwrap(),
        place
    );
}

#[test]
fn a_message_of_another_queue_does_not_decode() {
    let cmd = StepCommand {
        order_id: OrderId::new(),
        step: Step::CreateOrder,
        terms: terms(),
        fault: None,
        reject_status: None,
    };
    let json = serde_json::to_string(&cmd).unwrap();
    assert!(serde_json::from_str::<ManagerMessage>(&json).is_err());
    assert!(serde_json::from_str::<Event>(&json).is_err());
}
