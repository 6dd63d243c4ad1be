//! The invariant checks over hand-built worlds: each violation is found, and named by its
//! orders; what is merely in flight is not a violation; windows of any size find what one
//! window finds, and the report stays bounded.

use super::*;
use super::{
    books::{Books, check_account, check_outboxes, check_product},
    check::{AcceptedOrder, SagaRow, Tally, Window, check_window},
};
use common::{invariants::Invariant, messages::TimelineEvent};
use manager::audit::StoredSaga;

const NOW: i64 = 1_000_000;
const GRACE: i64 = 10_000;

/// What the audit reads: the books, the outboxes, and the orders' rows (here one window).
struct World {
    accounts: Vec<Books>,
    products: Vec<Books>,
    outboxes: BTreeMap<String, (i64, Option<i64>)>,
    orders: Window,
}

fn books(name: &str, held: i64, opening: i64, taken: i64, orders: &[&str]) -> Books {
    Books {
        name: name.into(),
        held: Some(held),
        opening: Some(opening),
        taken,
        order_count: orders.len() as i64,
        orders: orders.iter().map(ToString::to_string).collect(),
    }
}

/// A settled order in every store it reached (`SUCCESS` reaches them all).
fn settled(w: &mut Window, id: &str, status: &str, at: i64) {
    w.orders.push(AcceptedOrder {
        order_id: id.into(),
        status: status.into(),
        placed_at_ms: at,
        updated_at_ms: at,
    });
    w.sagas.insert(
        id.into(),
        SagaRow {
            status: status.into(),
            phase: "done".into(),
            updated_at_ms: at,
            timeline: vec![("order.create".into(), Some(TimelineEvent::Done))],
        },
    );
    w.order_records.insert(id.into(), (status.into(), true));
    if status == "SUCCESS" {
        w.payments.insert(id.into(), "CHARGED".into());
        w.reservations.insert(id.into(), "RESERVED".into());
        w.deliveries.insert(id.into(), "SCHEDULED".into());
    }
}

/// A consistent world: `alice` bought 2 units at 10 (SUCCESS), `bob` was refused for lack of
/// funds (nothing kept), from 500 credits each and 500 units.
fn world() -> World {
    let mut w = Window::default();
    let long_ago = NOW - 60_000;
    settled(&mut w, "o1", "SUCCESS", long_ago);
    settled(&mut w, "o2", "INSUFFICIENT_FUND", long_ago);
    w.payments.insert("o2".into(), "DECLINED".into());
    World {
        accounts: vec![
            books("alice", 480, 500, 20, &["o1"]),
            books("bob", 500, 500, 0, &["o2"]),
        ],
        products: vec![books("late_token", 498, 500, 2, &["o1"])],
        outboxes: [("backend".to_string(), (0, None))].into(),
        orders: w,
    }
}

/// The audit as `Stores::audit` runs it: books, the windows in id order, then outboxes.
fn audit_windows<'a>(w: &World, windows: impl IntoIterator<Item = &'a Window>) -> Report {
    let mut tally = Tally::default();
    for b in &w.accounts {
        for v in check_account(b, 500) {
            tally.push(Invariant::CreditsBalance, v);
        }
    }
    for b in &w.products {
        for v in check_product(b, 500) {
            tally.push(Invariant::StockBalances, v);
        }
    }
    for window in windows {
        tally.add(check_window(window, NOW, GRACE));
    }
    for v in check_outboxes(&w.outboxes, NOW, GRACE) {
        tally.push(Invariant::NothingLost, v);
    }
    let backlog = w
        .outboxes
        .iter()
        .map(|(s, (n, _))| (s.clone(), *n))
        .collect();
    tally.report(NOW, GRACE, DeadLetterCounts::default(), backlog)
}

fn audit(w: &World) -> Report {
    audit_windows(w, [&w.orders])
}

/// `w` cut into windows of `size` order ids, as the stores' windows cut them: every row
/// of an id, whatever its store, falls in the window of that id.
fn split(w: &mut Window, size: usize) -> Vec<Window> {
    let ids: std::collections::BTreeSet<String> = w
        .orders
        .iter()
        .map(|o| o.order_id.clone())
        .chain(w.sagas.keys().cloned())
        .chain(w.order_records.keys().cloned())
        .chain(w.payments.keys().cloned())
        .chain(w.reservations.keys().cloned())
        .chain(w.deliveries.keys().cloned())
        .chain(w.dead_lettered_orders.iter().cloned())
        .collect();
    let ids: Vec<String> = ids.into_iter().collect();
    let mut orders: HashMap<String, AcceptedOrder> = w
        .orders
        .drain(..)
        .map(|o| (o.order_id.clone(), o))
        .collect();
    ids.chunks(size)
        .map(|chunk| {
            let mut part = Window::default();
            for id in chunk {
                part.orders.extend(orders.remove(id));
                if let Some(s) = w.sagas.remove(id) {
                    part.sagas.insert(id.clone(), s);
                }
                if let Some(r) = w.order_records.remove(id) {
                    part.order_records.insert(id.clone(), r);
                }
                if let Some(p) = w.payments.remove(id) {
                    part.payments.insert(id.clone(), p);
                }
                if let Some(r) = w.reservations.remove(id) {
                    part.reservations.insert(id.clone(), r);
                }
                if let Some(d) = w.deliveries.remove(id) {
                    part.deliveries.insert(id.clone(), d);
                }
                if w.dead_lettered_orders.remove(id) {
                    part.dead_lettered_orders.insert(id.clone());
                }
            }
            part
        })
        .collect()
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
    assert!(r.invariants.iter().all(|i| i.unlisted == 0));
}

#[test]
fn an_order_in_flight_is_fine_until_the_grace_runs_out() {
    let mut w = world();
    w.orders.orders.push(AcceptedOrder {
        order_id: "o3".into(),
        status: "PROCESSING".into(),
        placed_at_ms: NOW - 1_000,
        updated_at_ms: NOW - 1_000,
    });
    let r = audit(&w);
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.orders.in_flight, 1);

    w.orders.orders.last_mut().unwrap().placed_at_ms = NOW - 2 * GRACE;
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![1, 5], "{r:#?}");
    assert_eq!(violations(&r, 1)[0].1, vec!["o3".to_string()]);
    assert!(violations(&r, 1)[0].0.contains("no saga"));
}

#[test]
fn a_dead_lettered_place_order_is_not_a_lost_message() {
    let mut w = world();
    w.orders.orders.push(AcceptedOrder {
        order_id: "o3".into(),
        status: "UNKNOWN".into(),
        placed_at_ms: NOW - 2 * GRACE,
        updated_at_ms: NOW - 2 * GRACE,
    });
    assert_eq!(only_violated(&audit(&w)), vec![5]);
    w.orders.dead_lettered_orders.insert("o3".into());
    assert!(audit(&w).ok);
}

#[test]
fn a_saga_the_backend_never_accepted_is_found() {
    let mut w = world();
    let lost = w.orders.orders.remove(1);
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![5]);
    assert_eq!(violations(&r, 5)[0].1, vec![lost.order_id]);
}

#[test]
fn a_read_model_that_disagrees_with_the_saga_is_found() {
    let mut w = world();
    w.orders.orders[1].status = "SUCCESS".into();
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![1]);
    assert_eq!(violations(&r, 1)[0].1, vec!["o2".to_string()]);
}

#[test]
fn a_charge_applied_twice_unbalances_the_account() {
    let mut w = world();
    w.accounts[0].held = Some(460);
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![2]);
    let (detail, orders) = &violations(&r, 2)[0];
    assert!(
        detail.contains("alice") && detail.contains("20 credits unaccounted"),
        "{detail}"
    );
    assert_eq!(orders, &vec!["o1".to_string()]);
}

#[test]
fn an_unbalanced_account_with_many_orders_names_its_first_ones() {
    let mut w = world();
    let first: Vec<String> = (0..BOOK_ORDERS).map(|i| format!("o{i:04}")).collect();
    w.accounts[0] = Books {
        held: Some(460),
        order_count: 523,
        orders: first.clone(),
        ..w.accounts[0].clone()
    };
    let r = audit(&w);
    let (detail, orders) = &violations(&r, 2)[0];
    assert!(
        detail.ends_with("; the first 100 of its 523 orders listed"),
        "{detail}"
    );
    assert_eq!(orders, &first);
}

#[test]
fn money_charged_to_a_user_without_an_account_is_found() {
    let mut w = world();
    let unowned = Books {
        name: "carol".into(),
        held: None,
        opening: None,
        taken: 6,
        order_count: 1,
        orders: vec!["o9".into()],
    };
    w.accounts.push(unowned.clone());
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![2]);
    assert_eq!(
        violations(&r, 2),
        vec![(
            "6 credits charged to carol, who has no account".to_string(),
            vec!["o9".to_string()]
        )]
    );
    // A refund that came before its charge: a tombstone, no account, nothing taken.
    *w.accounts.last_mut().unwrap() = Books {
        taken: 0,
        ..unowned
    };
    assert!(audit(&w).ok);
}

#[test]
fn a_failed_order_that_stays_charged_is_found() {
    let mut w = world();
    w.orders.payments.insert("o2".into(), "CHARGED".into());
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![2]);
    assert!(violations(&r, 2)[0].0.contains("CHARGED"));
}

#[test]
fn a_release_applied_twice_and_negative_stock_are_found() {
    let mut w = world();
    w.products[0].held = Some(500);
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![3]);
    assert!(violations(&r, 3)[0].0.contains("-2 units"));

    let mut w = world();
    w.products[0] = books("late_token", -2, 496, 2, &["o1"]);
    let r = audit(&w);
    assert!(
        violations(&r, 3)
            .iter()
            .any(|(d, _)| d.contains("negative")),
        "{r:#?}"
    );
}

#[test]
fn a_step_answered_twice_is_found() {
    let mut w = world();
    w.orders
        .sagas
        .get_mut("o1")
        .unwrap()
        .timeline
        .push(("order.create".into(), Some(TimelineEvent::Done)));
    let r = audit(&w);
    assert_eq!(only_violated(&r), vec![4]);
    assert_eq!(violations(&r, 4)[0].1, vec!["o1".to_string()]);
}

#[test]
fn a_success_without_its_delivery_is_found() {
    let mut w = world();
    w.orders.deliveries.clear();
    assert_eq!(only_violated(&audit(&w)), vec![4]);
}

#[test]
fn a_message_stuck_in_an_outbox_is_found_after_the_grace() {
    let mut w = world();
    w.outboxes.insert("manager".into(), (3, Some(NOW - 1_000)));
    let r = audit(&w);
    assert!(r.ok);
    assert_eq!(r.outbox_backlog["manager"], 3);
    w.outboxes
        .insert("manager".into(), (3, Some(NOW - 2 * GRACE)));
    assert_eq!(only_violated(&audit(&w)), vec![5]);
}

#[test]
fn a_dead_lettered_step_must_be_in_the_store() {
    let mut w = world();
    w.orders
        .sagas
        .get_mut("o2")
        .unwrap()
        .timeline
        .push(("payment.charge".into(), Some(TimelineEvent::DeadLettered)));
    assert_eq!(only_violated(&audit(&w)), vec![5]);
    w.orders.dead_lettered_orders.insert("o2".into());
    assert!(audit(&w).ok);
}

/// Ten orders and something wrong with most of them, in every invariant.
fn a_troubled_world() -> World {
    let mut w = world();
    let long_ago = NOW - 60_000;
    for i in 3..=12 {
        settled(&mut w.orders, &format!("o{i:02}"), "SUCCESS", long_ago);
    }
    let o = &mut w.orders;
    o.orders[2].status = "PROCESSING".into(); // o03: 1, the saga ended SUCCESS
    o.payments.insert("o04".into(), "REFUNDED".into()); // 2
    o.reservations.remove("o05"); // 3
    o.deliveries.insert("o06".into(), "CANCELLED".into()); // 4
    o.orders.retain(|a| a.order_id != "o07"); // 5: a saga the backend never accepted
    o.sagas.remove("o08"); // 5: accepted, never received; and its rows have no saga
    o.sagas
        .get_mut("o09")
        .unwrap()
        .timeline
        .push(("payment.charge".into(), Some(TimelineEvent::DeadLettered))); // 5
    o.dead_lettered_orders.insert("o10".into()); // fine: a dead letter for a good order
    o.payments.insert("o99".into(), "CHARGED".into()); // a row of an order nobody else has
    w.accounts[0].held = Some(470); // 2: alice's books
    w
}

#[test]
fn windows_of_any_size_find_what_one_window_finds() {
    let whole = audit(&a_troubled_world());
    let found: Vec<usize> = whole
        .invariants
        .iter()
        .map(|i| i.violations.len())
        .collect();
    assert_eq!(found, [2, 2, 1, 1, 3], "{whole:#?}");
    assert_eq!(whole.orders.accepted, 11);
    for size in [1, 2, 3, 5, 100] {
        let mut w = a_troubled_world();
        let windows = split(&mut w.orders, size);
        assert!(size > 5 || windows.len() > 2, "{size}: {}", windows.len());
        let r = audit_windows(&w, &windows);
        assert_eq!(r.orders, whole.orders, "window of {size}");
        for (a, b) in r.invariants.iter().zip(&whole.invariants) {
            assert_eq!(
                (a.ok, &a.violations, a.unlisted),
                (b.ok, &b.violations, b.unlisted),
                "invariant {} with a window of {size}",
                a.id
            );
        }
    }
}

#[test]
fn the_report_lists_the_first_violations_and_counts_the_others() {
    let mut w = world();
    // 250 orders lost before their saga started: invariants 1 and 5 for each.
    for i in 0..250 {
        w.orders.orders.push(AcceptedOrder {
            order_id: format!("x{i:03}"),
            status: "PROCESSING".into(),
            placed_at_ms: NOW - 2 * GRACE,
            updated_at_ms: NOW - 2 * GRACE,
        });
    }
    // Seen in windows of 7: the violations listed are those of the smallest order ids.
    let windows = split(&mut w.orders, 7);
    let r = audit_windows(&w, &windows);
    assert!(!r.ok);
    assert_eq!(r.orders.accepted, 252);
    assert_eq!(r.orders.in_flight, 250);
    for id in [1, 5] {
        let invariant = &r.invariants[id - 1];
        assert!(!invariant.ok);
        assert_eq!(invariant.violations.len(), LISTED);
        assert_eq!(invariant.unlisted, 150);
        let named: Vec<String> = invariant
            .violations
            .iter()
            .flat_map(|v| v.orders.clone())
            .collect();
        let first: Vec<String> = (0..LISTED).map(|i| format!("x{i:03}")).collect();
        assert_eq!(named, first, "invariant {id}");
    }
    assert!(r.invariants[1].ok && r.invariants[1].unlisted == 0);
}

#[test]
fn an_invariant_with_only_unlisted_violations_is_not_ok() {
    let mut tally = Tally::default();
    tally.unlisted(Invariant::StockBalances, 2);
    let r = tally.report(NOW, GRACE, DeadLetterCounts::default(), BTreeMap::new());
    assert!(!r.ok);
    assert_eq!(only_violated(&r), vec![3]);
    assert_eq!(r.invariants[2].unlisted, 2);
    assert!(r.invariants[2].violations.is_empty());
}

#[test]
fn a_saga_state_is_read_for_its_timeline_only() {
    let state = r#"{"order_id":"o1","terms":{"username":"a","price":1,"amount":1},
        "state":{"state":"done","status":"SUCCESS"},"version":3,
        "timeline":[{"seq":1,"at_ms":5,"step":"create_order","event":"sent","span_id":"ab"},
                    {"seq":2,"at_ms":6,"step":"create_order","event":"done"}],
        "trace":{"trace_id":"x","parent_span_id":"y","span_id":"z","sampled":true,"started_at_ms":5}}"#;
    let saga: StoredSaga = serde_json::from_str(state).unwrap();
    let timeline: Vec<(&str, &str)> = saga
        .timeline
        .iter()
        .map(|e| (e.step.as_str(), e.event.as_str()))
        .collect();
    assert_eq!(
        timeline,
        [("create_order", "sent"), ("create_order", "done")]
    );
    let empty: StoredSaga = serde_json::from_str(r#"{"order_id":"o1"}"#).unwrap();
    assert!(empty.timeline.is_empty());
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

#[test]
fn the_report_documents_its_invariants_under_their_old_schema_name() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["Invariant"].is_object(), "{schemas}");
    assert_eq!(
        schemas["Report"]["properties"]["invariants"]["items"]["$ref"],
        "#/components/schemas/Invariant"
    );
}
