use super::*;

#[test]
fn due_timers_come_out_in_deadline_order_and_the_next_one_is_reported() {
    let t = Timers::default();
    let (a, b, c) = (OrderId::new(), OrderId::new(), OrderId::new());
    t.schedule(30, c);
    t.schedule(10, a);
    t.schedule(20, b);
    let (due, next) = t.take_due(20);
    assert_eq!(due, vec![a, b]);
    assert_eq!(next, Some(30));
    assert_eq!(t.take_due(29).0, vec![]);
    assert_eq!(t.take_due(30).0, vec![c]);
}

#[test]
fn only_the_deadline_a_saga_was_last_given_fires() {
    let t = Timers::default();
    let (moved, finished, again) = (OrderId::new(), OrderId::new(), OrderId::new());
    t.schedule(10, moved);
    t.schedule(40, moved);
    t.schedule(20, finished);
    t.cancel(finished);
    t.schedule(30, again);
    t.schedule(30, again);
    let (due, next) = t.take_due(35);
    assert_eq!(
        due,
        vec![again],
        "stale and cancelled deadlines are dropped"
    );
    assert_eq!(next, Some(40));
    assert_eq!(t.take_due(40).0, vec![moved]);
    assert_eq!(t.take_due(100).0, vec![], "a fired deadline fires once");
}
