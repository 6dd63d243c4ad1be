//! The invariant checks over hand-built snapshots: each violation is found, and named by
//! its orders; what is merely in flight is not a violation.

use super::*;

const NOW: i64 = 1_000_000;
const GRACE: i64 = 10_000;

/// A consistent world: `alice` bought 2 units at 10 (SUCCESS), `bob` was refused for lack of
/// funds (nothing kept), from 500 credits each and 500 units.
fn world() -> Snapshot {
    let mut s = Snapshot::default();
    let long_ago = NOW - 60_000;
    for (id, status) in [("o1", "SUCCESS"), ("o2", "INSUFFICIENT_FUND")] {
        s.orders.push(AcceptedOrder {
            order_id: id.into(),
            status: status.into(),
            placed_at_ms: long_ago,
            updated_at_ms: long_ago,
        });
        s.sagas.insert(
            id.into(),
            SagaRow {
                status: status.into(),
                phase: "done".into(),
                updated_at_ms: long_ago,
                timeline: vec![("order.create".into(), "done".into())],
            },
        );
        s.order_records.insert(id.into(), (status.into(), true));
    }
    s.accounts.push(("alice".into(), 480, Some(500)));
    s.accounts.push(("bob".into(), 500, Some(500)));
    s.payments
        .insert("o1".into(), ("alice".into(), 20, "CHARGED".into()));
    s.payments
        .insert("o2".into(), ("bob".into(), 9000, "DECLINED".into()));
    s.products.push(("late_token".into(), 498, Some(500)));
    s.reservations
        .insert("o1".into(), ("late_token".into(), 2, "RESERVED".into()));
    s.deliveries.insert("o1".into(), "SCHEDULED".into());
    s.outboxes.insert("backend".into(), (0, None));
    s
}

fn audit(s: &Snapshot) -> Report {
    check(s, 500, 500, NOW, GRACE)
}

/// The violations of invariant `id`, as (detail, orders).
fn violations(r: &Report, id: u8) -> Vec<(String, Vec<String>)> {
    r.invariants[id as usize - 1]
        .violations
        .iter()
        .map(|v| (v.detail.clone(), v.orders.clone()))
        .collect()
}

fn only_violated(r: &Report) -> Vec<u8> {
    r.invariants
        .iter()
        .filter(|i| !i.ok)
        .map(|i| i.id)
        .collect()
}

#[test]
fn a_consistent_world_passes() {
    let r = audit(&world());
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.invariants.len(), 5);
    assert_eq!(r.orders.accepted, 2);
    assert_eq!(r.orders.r#final, 2);
    assert_eq!(r.orders.by_status["SUCCESS"], 1);
}

#[test]
fn an_order_in_flight_is_fine_until_the_grace_runs_out() {
    let mut s = world();
    s.orders.push(AcceptedOrder {
        order_id: "o3".into(),
        status: "PROCESSING".into(),
        placed_at_ms: NOW - 1_000,
        updated_at_ms: NOW - 1_000,
    });
    let r = audit(&s);
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.orders.in_flight, 1);

    s.orders.last_mut().unwrap().placed_at_ms = NOW - 2 * GRACE;
    let r = audit(&s);
    assert_eq!(only_violated(&r), vec![1, 5], "{r:#?}");
    assert_eq!(violations(&r, 1)[0].1, vec!["o3".to_string()]);
    assert!(violations(&r, 1)[0].0.contains("no saga"));
}

#[test]
fn a_dead_lettered_place_order_is_not_a_lost_message() {
    let mut s = world();
    s.orders.push(AcceptedOrder {
        order_id: "o3".into(),
        status: "UNKNOWN".into(),
        placed_at_ms: NOW - 2 * GRACE,
        updated_at_ms: NOW - 2 * GRACE,
    });
    assert_eq!(only_violated(&audit(&s)), vec![5]);
    s.dead_lettered_orders.insert("o3".into());
    assert!(audit(&s).ok);
}

#[test]
fn a_read_model_that_disagrees_with_the_saga_is_found() {
    let mut s = world();
    s.orders[1].status = "SUCCESS".into();
    let r = audit(&s);
    assert_eq!(only_violated(&r), vec![1]);
    assert_eq!(violations(&r, 1)[0].1, vec!["o2".to_string()]);
}

#[test]
fn a_charge_applied_twice_unbalances_the_account() {
    let mut s = world();
    s.accounts[0].1 = 460;
    let r = audit(&s);
    assert_eq!(only_violated(&r), vec![2]);
    let (detail, orders) = &violations(&r, 2)[0];
    assert!(
        detail.contains("alice") && detail.contains("20 credits unaccounted"),
        "{detail}"
    );
    assert_eq!(orders, &vec!["o1".to_string()]);
}

#[test]
fn a_failed_order_that_stays_charged_is_found() {
    let mut s = world();
    s.payments.get_mut("o2").unwrap().2 = "CHARGED".into();
    s.payments.get_mut("o2").unwrap().1 = 0;
    let r = audit(&s);
    assert_eq!(only_violated(&r), vec![2]);
    assert!(violations(&r, 2)[0].0.contains("CHARGED"));
}

#[test]
fn a_release_applied_twice_and_negative_stock_are_found() {
    let mut s = world();
    s.products[0].1 = 500;
    let r = audit(&s);
    assert_eq!(only_violated(&r), vec![3]);
    assert!(violations(&r, 3)[0].0.contains("-2 units"));

    let mut s = world();
    s.products[0] = ("late_token".into(), -2, Some(496));
    let r = audit(&s);
    assert!(
        violations(&r, 3)
            .iter()
            .any(|(d, _)| d.contains("negative")),
        "{r:#?}"
    );
}

#[test]
fn a_step_answered_twice_is_found() {
    let mut s = world();
    s.sagas
        .get_mut("o1")
        .unwrap()
        .timeline
        .push(("order.create".into(), "done".into()));
    let r = audit(&s);
    assert_eq!(only_violated(&r), vec![4]);
    assert_eq!(violations(&r, 4)[0].1, vec!["o1".to_string()]);
}

#[test]
fn a_success_without_its_delivery_is_found() {
    let mut s = world();
    s.deliveries.clear();
    assert_eq!(only_violated(&audit(&s)), vec![4]);
}

#[test]
fn a_message_stuck_in_an_outbox_is_found_after_the_grace() {
    let mut s = world();
    s.outboxes.insert("manager".into(), (3, Some(NOW - 1_000)));
    let r = audit(&s);
    assert!(r.ok);
    assert_eq!(r.outbox_backlog["manager"], 3);
    s.outboxes
        .insert("manager".into(), (3, Some(NOW - 2 * GRACE)));
    assert_eq!(only_violated(&audit(&s)), vec![5]);
}

#[test]
fn a_dead_lettered_step_must_be_in_the_store() {
    let mut s = world();
    s.sagas
        .get_mut("o2")
        .unwrap()
        .timeline
        .push(("payment.charge".into(), "dead_lettered".into()));
    assert_eq!(only_violated(&audit(&s)), vec![5]);
    s.dead_lettered_orders.insert("o2".into());
    assert!(audit(&s).ok);
}

#[tokio::test]
async fn a_second_audit_while_one_runs_is_429_with_retry_after() {
    let config = Config::from_lookup(|_| None).unwrap();
    let auditor = Auditor {
        config,
        running: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    let _first = auditor.running.clone().try_acquire_owned().unwrap();
    let response = super::audit(State(auditor), Ok(Query(AuditQuery { grace_ms: Some(0) }))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
}
