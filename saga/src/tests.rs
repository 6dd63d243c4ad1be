use super::*;
use contracts::domain::{Credits, Quantity, Username};
use contracts::messages::{Fault, Refusal, StepResult};

const TIMING: Timing = Timing {
    step_timeout_ms: 1_000,
    max_retry_ms: 8_000,
};
const PLACED: i64 = 1_000_000;
const T0: i64 = PLACED + 5;

const FAILURES: [OrderStatus; 4] = [
    OrderStatus::InsufficientFund,
    OrderStatus::InsufficientInventory,
    OrderStatus::Timeout,
    OrderStatus::Unknown,
];

// ---- helpers -------------------------------------------------------------------------

fn terms() -> OrderTerms {
    OrderTerms::new(
        Username::parse("alice").unwrap(),
        Credits::new(2).unwrap(),
        Quantity::new(3).unwrap(),
    )
    .unwrap()
}

fn order_id() -> OrderId {
    OrderId::parse("01890a5d-ac96-774b-bcce-b302099a8057").unwrap()
}

fn given_new_saga_with(faults: Faults) -> Saga {
    Saga::start(order_id(), terms(), faults, PLACED, T0, &TIMING).saga
}

fn given_new_saga() -> Saga {
    given_new_saga_with(Faults::default())
}

/// A saga waiting for `step`, every earlier forward step done, at time `T0`.
fn given_running(step: Step) -> Saga {
    let mut saga = given_new_saga();
    while saga.awaited() != Some(step) {
        let awaited = saga.awaited().expect("still running");
        saga = when(&saga, reply(awaited, StepResult::Done), T0).saga;
    }
    saga
}

fn reply(step: Step, result: StepResult) -> Input {
    Input::Reply(StepReply {
        order_id: order_id(),
        step,
        result,
    })
}

fn failed() -> StepResult {
    StepResult::Failed {
        error: "boom".into(),
    }
}

fn dead_letter(step: Option<Step>) -> Input {
    Input::DeadLettered {
        step,
        reason: "delivery limit".into(),
    }
}

fn when(saga: &Saga, input: Input, now: i64) -> Transition {
    saga.apply(input, now, &TIMING)
}

/// The deadline of the state the saga waits in.
fn deadline(saga: &Saga) -> i64 {
    saga.deadline_ms().expect("saga has a deadline")
}

fn command(step: Step, fault: Option<Fault>, reject_status: Option<OrderStatus>) -> StepCommand {
    StepCommand {
        order_id: order_id(),
        step,
        terms: terms(),
        fault,
        reject_status,
    }
}

/// The first command a saga failing with `status` and `pending` to undo sends.
fn first_undo_command(status: OrderStatus, pending: &[Step]) -> StepCommand {
    match pending.first() {
        Some(&head) => command(head, None, None),
        None => command(Step::RejectOrder, None, Some(status)),
    }
}

/// The state a saga failing at `now` with `status` and `pending` to undo moves to.
fn undo_state(status: OrderStatus, pending: &[Step], now: i64) -> SagaState {
    let deadline_ms = now + TIMING.step_timeout_ms;
    if pending.is_empty() {
        SagaState::Rejecting {
            status,
            attempt: 1,
            deadline_ms,
        }
    } else {
        SagaState::Compensating {
            status,
            pending: pending.to_vec(),
            attempt: 1,
            deadline_ms,
        }
    }
}

/// Expected compensations, written out by hand: (failed step, refused, may have run).
fn expected_undo(step: Step, may_have_run: bool) -> Vec<Step> {
    use Step::*;
    match (step, may_have_run) {
        (CreateOrder, _) => vec![],
        (ChargePayment, false) => vec![],
        (ChargePayment, true) => vec![RefundPayment],
        (ReserveStock, false) => vec![RefundPayment],
        (ReserveStock, true) => vec![ReleaseStock, RefundPayment],
        (ScheduleDelivery, false) => vec![ReleaseStock, RefundPayment],
        (ScheduleDelivery, true) | (CompleteOrder, _) => {
            vec![CancelDelivery, ReleaseStock, RefundPayment]
        }
        _ => unreachable!("not a forward step"),
    }
}

fn last_entry(saga: &Saga) -> &TimelineEntry {
    saga.timeline.last().expect("timeline is not empty")
}

fn events(saga: &Saga) -> Vec<(Step, &str)> {
    saga.timeline
        .iter()
        .map(|e| (e.step, e.event.as_str()))
        .collect()
}

/// Answers Done to whatever the saga awaits until it is Done; returns every command sent.
fn drive_to_done(mut saga: Saga, now: i64) -> (Saga, Vec<StepCommand>) {
    let mut sent = Vec::new();
    while let Some(awaited) = saga.awaited() {
        let t = when(&saga, reply(awaited, StepResult::Done), now);
        sent.extend(t.commands);
        saga = t.saga;
    }
    (saga, sent)
}

/// A saga failing with `status` at the step that leads to it.
fn given_failed_with(status: OrderStatus) -> Saga {
    fail_with(status).saga
}

/// The transition that fails a saga with `status`, at its step's deadline.
fn fail_with(status: OrderStatus) -> Transition {
    let (step, input) = match status {
        OrderStatus::InsufficientFund => (
            Step::ChargePayment,
            reply(
                Step::ChargePayment,
                StepResult::Refused {
                    reason: Refusal::InsufficientFunds,
                },
            ),
        ),
        OrderStatus::InsufficientInventory => (
            Step::ReserveStock,
            reply(
                Step::ReserveStock,
                StepResult::Refused {
                    reason: Refusal::InsufficientStock,
                },
            ),
        ),
        OrderStatus::Timeout => (Step::ScheduleDelivery, Input::Deadline(Link::Steady)),
        _ => (
            Step::ScheduleDelivery,
            reply(Step::ScheduleDelivery, failed()),
        ),
    };
    let saga = given_running(step);
    let now = deadline(&saga);
    when(&saga, input, now)
}

/// A saga compensating with `CancelDelivery` in flight (after a delivery timeout).
fn given_compensating() -> Saga {
    given_failed_with(OrderStatus::Timeout)
}

/// A saga whose compensations are all done and whose `order.reject` is in flight.
fn given_rejecting() -> Saga {
    let saga = given_running(Step::ChargePayment);
    let refused = StepResult::Refused {
        reason: Refusal::InsufficientFunds,
    };
    when(&saga, reply(Step::ChargePayment, refused), T0).saga
}

/// Asserts that the transition moved version and clock forward and recorded its events.
fn assert_recorded(before: &Saga, t: &Transition, now: i64) {
    assert!(!t.ignored);
    assert_eq!(t.saga.version, before.version + 1);
    assert_eq!(t.saga.updated_at_ms, now);
    assert!(t.saga.timeline.len() > before.timeline.len());
    assert_eq!(
        t.saga.timeline[..before.timeline.len()],
        before.timeline[..]
    );
}

fn assert_unchanged(before: &Saga, t: &Transition) {
    assert!(t.ignored);
    assert!(t.commands.is_empty());
    assert_eq!(&t.saga, before);
}

/// Asserts that the input recorded one "ignored" entry and changed nothing else.
fn assert_ignored_with_a_trace(before: &Saga, t: &Transition, step: Step, detail: &str) {
    assert!(!t.ignored);
    assert!(t.commands.is_empty());
    assert_eq!(t.saga.state, before.state);
    assert_eq!(t.saga.created, before.created);
    assert_eq!(t.saga.version, before.version + 1);
    assert_eq!(t.saga.timeline.len(), before.timeline.len() + 1);
    let entry = last_entry(&t.saga);
    assert_eq!((entry.step, entry.event.as_str()), (step, "ignored"));
    assert_eq!(entry.detail.as_deref(), Some(detail));
}

// ---- start and the happy path --------------------------------------------------------

#[test]
fn start_sends_order_create_and_waits_for_it_one_step_timeout() {
    let t = Saga::start(order_id(), terms(), Faults::default(), PLACED, T0, &TIMING);

    assert_eq!(t.commands, vec![command(Step::CreateOrder, None, None)]);
    assert!(!t.ignored);
    assert_eq!(
        t.saga.state,
        SagaState::Running {
            step: Step::CreateOrder,
            deadline_ms: T0 + 1_000
        }
    );
    assert_eq!(
        (t.saga.version, t.saga.placed_at_ms, t.saga.updated_at_ms),
        (1, PLACED, T0)
    );
    assert!(!t.saga.created);
    assert_eq!(t.saga.status(), OrderStatus::Processing);
    assert_eq!(t.saga.phase(), "running");
    assert_eq!(
        t.saga.timeline,
        vec![TimelineEntry {
            seq: 1,
            at_ms: T0,
            step: Step::CreateOrder,
            event: TimelineEvent::Sent,
            detail: None,
            span_id: None,
        }]
    );
}

#[test]
fn happy_path_sends_five_commands_in_order_and_ends_in_success() {
    let start = Saga::start(order_id(), terms(), Faults::default(), PLACED, T0, &TIMING);
    let (saga, rest) = drive_to_done(start.saga, T0 + 10);

    let all: Vec<_> = start.commands.into_iter().chain(rest).collect();
    let expected: Vec<_> = Step::FORWARD.map(|s| command(s, None, None)).into();
    assert_eq!(all, expected);
    assert_eq!(
        saga.state,
        SagaState::Done {
            status: OrderStatus::Success
        }
    );
    assert_eq!(
        (saga.status(), saga.phase(), saga.deadline_ms()),
        (OrderStatus::Success, Phase::Done, None)
    );
    assert!(saga.created);
    assert_eq!(saga.version, 6);
    assert_eq!(saga.timeline.len(), 10);
}

#[test]
fn a_done_reply_to_each_forward_step_sends_the_next_one_with_a_fresh_deadline() {
    for pair in Step::FORWARD.windows(2) {
        let (step, next) = (pair[0], pair[1]);
        let saga = given_running(step);
        let now = T0 + 300;

        let t = when(&saga, reply(step, StepResult::Done), now);

        assert_recorded(&saga, &t, now);
        assert_eq!(t.commands, vec![command(next, None, None)], "{step:?}");
        assert_eq!(
            t.saga.state,
            SagaState::Running {
                step: next,
                deadline_ms: now + 1_000
            }
        );
        assert_eq!(
            events(&t.saga)[saga.timeline.len()..],
            [(step, "done"), (next, "sent")]
        );
    }
}

#[test]
fn completing_the_order_ends_in_success_without_a_command() {
    let saga = given_running(Step::CompleteOrder);

    let t = when(&saga, reply(Step::CompleteOrder, StepResult::Done), T0 + 1);

    assert!(t.commands.is_empty());
    assert_eq!(
        t.saga.state,
        SagaState::Done {
            status: OrderStatus::Success
        }
    );
}

#[test]
fn only_a_done_order_create_marks_the_order_created() {
    assert!(!given_new_saga().created);
    assert!(given_running(Step::ChargePayment).created);
    for result in [failed(), StepResult::Skipped] {
        let t = when(&given_new_saga(), reply(Step::CreateOrder, result), T0);
        assert!(!t.saga.created);
    }
    let t = when(&given_new_saga(), Input::Deadline(Link::Steady), T0 + 1_000);
    assert!(!t.saga.created);
}

// ---- refusals ------------------------------------------------------------------------

#[test]
fn refused_charge_fails_insufficient_fund_and_rejects_without_refunding() {
    let saga = given_running(Step::ChargePayment);
    let refused = StepResult::Refused {
        reason: Refusal::InsufficientFunds,
    };

    let t = when(&saga, reply(Step::ChargePayment, refused), T0 + 7);

    assert_recorded(&saga, &t, T0 + 7);
    assert_eq!(
        t.commands,
        vec![command(
            Step::RejectOrder,
            None,
            Some(OrderStatus::InsufficientFund)
        )]
    );
    assert_eq!(
        t.saga.state,
        undo_state(OrderStatus::InsufficientFund, &[], T0 + 7)
    );
    assert_eq!(t.saga.status(), OrderStatus::Processing);
    assert_eq!(t.saga.phase(), "compensating");
    let refused_entry = &t.saga.timeline[saga.timeline.len()];
    assert_eq!(refused_entry.event, "refused");
    assert_eq!(refused_entry.detail.as_deref(), Some("insufficient_funds"));
}

#[test]
fn refused_reservation_fails_insufficient_inventory_and_refunds_only_the_charge() {
    let saga = given_running(Step::ReserveStock);
    let refused = StepResult::Refused {
        reason: Refusal::InsufficientStock,
    };

    let t = when(&saga, reply(Step::ReserveStock, refused), T0 + 7);

    assert_eq!(t.commands, vec![command(Step::RefundPayment, None, None)]);
    assert_eq!(
        t.saga.state,
        undo_state(
            OrderStatus::InsufficientInventory,
            &[Step::RefundPayment],
            T0 + 7
        )
    );
}

#[test]
fn a_refusal_at_any_forward_step_compensates_only_the_steps_before_it() {
    for step in Step::FORWARD {
        for (reason, status) in [
            (Refusal::InsufficientFunds, OrderStatus::InsufficientFund),
            (
                Refusal::InsufficientStock,
                OrderStatus::InsufficientInventory,
            ),
        ] {
            let saga = given_running(step);

            let t = when(&saga, reply(step, StepResult::Refused { reason }), T0 + 1);

            let pending = expected_undo(step, false);
            assert_eq!(
                t.commands,
                vec![first_undo_command(status, &pending)],
                "{step:?}"
            );
            assert_eq!(
                t.saga.state,
                undo_state(status, &pending, T0 + 1),
                "{step:?}"
            );
        }
    }
}

// ---- failures, skips, timeouts and dead letters while running --------------------------

/// Checks that `input` at every forward step fails the saga with `status` and undoes
/// that step too, recording `event` for it.
fn assert_each_step_fails_and_undoes_itself(
    input: impl Fn(Step) -> Input,
    status: OrderStatus,
    event: &str,
) {
    for step in Step::FORWARD {
        let saga = given_running(step);
        let now = deadline(&saga);

        let t = when(&saga, input(step), now);

        assert_recorded(&saga, &t, now);
        let pending = expected_undo(step, true);
        assert_eq!(
            t.commands,
            vec![first_undo_command(status, &pending)],
            "{step:?}"
        );
        assert_eq!(t.saga.state, undo_state(status, &pending, now), "{step:?}");
        assert_eq!(t.saga.status(), OrderStatus::Processing);
        let sent = t.commands[0].step;
        assert_eq!(
            events(&t.saga)[saga.timeline.len()..],
            [(step, event), (sent, "sent")]
        );
    }
}

#[test]
fn a_failed_reply_at_each_forward_step_fails_unknown_and_undoes_that_step_too() {
    assert_each_step_fails_and_undoes_itself(
        |step| reply(step, failed()),
        OrderStatus::Unknown,
        "failed",
    );
}

#[test]
fn a_skipped_reply_while_running_is_unexpected_so_it_fails_unknown_and_is_undone() {
    assert_each_step_fails_and_undoes_itself(
        |step| reply(step, StepResult::Skipped),
        OrderStatus::Unknown,
        "skipped",
    );
}

#[test]
fn a_deadline_at_each_forward_step_times_out_and_undoes_that_step_too() {
    assert_each_step_fails_and_undoes_itself(
        |_| Input::Deadline(Link::Steady),
        OrderStatus::Timeout,
        "timed_out",
    );
}

#[test]
fn a_dead_letter_for_the_running_step_fails_unknown_and_undoes_it() {
    assert_each_step_fails_and_undoes_itself(
        |step| dead_letter(Some(step)),
        OrderStatus::Unknown,
        "dead_lettered",
    );
}

#[test]
fn an_unreadable_dead_letter_while_running_counts_against_the_running_step() {
    assert_each_step_fails_and_undoes_itself(
        |_| dead_letter(None),
        OrderStatus::Unknown,
        "dead_lettered",
    );
}

#[test]
fn the_failure_detail_is_kept_in_the_timeline() {
    let saga = given_running(Step::ReserveStock);

    let failed_t = when(&saga, reply(Step::ReserveStock, failed()), T0);
    let dead_t = when(&saga, dead_letter(None), T0);

    let failed_entry = &failed_t.saga.timeline[saga.timeline.len()];
    assert_eq!(failed_entry.detail.as_deref(), Some("boom"));
    let dead_entry = &dead_t.saga.timeline[saga.timeline.len()];
    assert_eq!(dead_entry.step, Step::ReserveStock);
    assert_eq!(dead_entry.detail.as_deref(), Some("delivery limit"));
}

#[test]
fn a_stale_deadline_at_each_forward_step_changes_nothing() {
    for step in Step::FORWARD {
        let saga = given_running(step);

        let t = when(&saga, Input::Deadline(Link::Steady), deadline(&saga) - 1);

        assert_unchanged(&saga, &t);
    }
}

// ---- deadlines and the manager's link to the broker ----------------------------------

#[test]
fn no_deadline_fires_while_the_managers_link_is_down() {
    let mut waiting: Vec<Saga> = Step::FORWARD.into_iter().map(given_running).collect();
    let mut compensating = given_compensating();
    waiting.push(compensating.clone());
    while compensating.awaited() != Some(Step::RejectOrder) {
        let awaited = compensating.awaited().unwrap();
        compensating = when(&compensating, reply(awaited, StepResult::Done), T0).saga;
    }
    waiting.push(compensating);
    for saga in waiting {
        let long_after = deadline(&saga) + 3_600_000;

        let t = when(&saga, Input::Deadline(Link::Down), long_after);

        assert_unchanged(&saga, &t);
        assert_eq!(saga.due_at(Link::Down, &TIMING), None);
    }
}

#[test]
fn after_an_outage_the_awaited_step_gets_its_whole_timeout_again() {
    for step in Step::FORWARD {
        let saga = given_running(step);
        let restored = deadline(&saga) - 100;
        let link = Link::RestoredAt(restored);
        let due = restored + TIMING.step_timeout_ms;
        assert_eq!(saga.due_at(link, &TIMING), Some(due));

        assert_unchanged(&saga, &when(&saga, Input::Deadline(link), deadline(&saga)));
        assert_unchanged(&saga, &when(&saga, Input::Deadline(link), due - 1));
        let t = when(&saga, Input::Deadline(link), due);

        assert_eq!(t.saga.status(), OrderStatus::Processing);
        assert_eq!(t.saga.phase(), "compensating", "{step:?}");
        assert!(
            events(&t.saga).contains(&(step, "timed_out")),
            "{:?}",
            events(&t.saga)
        );
    }
}

#[test]
fn an_outage_that_ended_a_whole_wait_before_the_deadline_moves_nothing() {
    let saga = given_running(Step::ChargePayment);
    let link = Link::RestoredAt(deadline(&saga) - TIMING.step_timeout_ms);

    assert_eq!(saga.due_at(link, &TIMING), Some(deadline(&saga)));
    let t = when(&saga, Input::Deadline(link), deadline(&saga));

    assert!(events(&t.saga).contains(&(Step::ChargePayment, "timed_out")));
}

#[test]
fn after_an_outage_a_compensation_waits_its_attempts_backoff_again() {
    let saga = given_compensating();
    let failed_twice = {
        let once = when(&saga, reply(Step::CancelDelivery, failed()), T0).saga;
        when(&once, Input::Deadline(Link::Steady), deadline(&once)).saga
    };
    let restored = deadline(&failed_twice) - 1;
    let link = Link::RestoredAt(restored);

    // Attempt 2 waits 2 s; it is resent 2 s after the link came back, not before.
    assert_eq!(failed_twice.due_at(link, &TIMING), Some(restored + 2_000));
    let early = when(&failed_twice, Input::Deadline(link), restored + 1_999);
    assert_unchanged(&failed_twice, &early);
    let t = when(&failed_twice, Input::Deadline(link), restored + 2_000);
    assert_eq!(t.commands, vec![command(Step::CancelDelivery, None, None)]);
}

#[test]
fn a_dead_letter_for_another_step_while_running_is_recorded_and_ignored() {
    for step in Step::FORWARD {
        let saga = given_running(step);
        for other in Step::ALL.into_iter().filter(|&s| s != step) {
            let t = when(&saga, dead_letter(Some(other)), T0 + 2);

            assert_ignored_with_a_trace(&saga, &t, other, "dead letter: delivery limit");
        }
    }
}

#[test]
fn a_late_reply_after_a_timeout_is_recorded_but_changes_nothing() {
    for step in Step::FORWARD {
        let running = given_running(step);
        let timed_out = when(&running, Input::Deadline(Link::Steady), deadline(&running)).saga;
        for (result, detail) in [
            (StepResult::Done, "late reply: done"),
            (failed(), "late reply: failed: boom"),
            (StepResult::Skipped, "late reply: skipped"),
        ] {
            let t = when(&timed_out, reply(step, result), deadline(&running) + 50);

            assert_ignored_with_a_trace(&timed_out, &t, step, detail);
        }
    }
}

#[test]
fn a_duplicate_reply_is_recorded_but_changes_nothing() {
    for pair in Step::FORWARD.windows(2) {
        let (step, next) = (pair[0], pair[1]);
        let saga = given_running(next);

        let t = when(&saga, reply(step, StepResult::Done), T0 + 3);

        assert_ignored_with_a_trace(&saga, &t, step, "late reply: done");
    }
}

#[test]
fn a_reply_for_a_step_not_yet_sent_is_ignored_too() {
    let saga = given_running(Step::ChargePayment);
    let refused = StepResult::Refused {
        reason: Refusal::InsufficientStock,
    };

    let t = when(&saga, reply(Step::ReserveStock, refused), T0);

    assert_ignored_with_a_trace(
        &saga,
        &t,
        Step::ReserveStock,
        "late reply: refused: insufficient_stock",
    );
}

#[test]
fn a_reply_for_another_order_leaves_no_trace() {
    let saga = given_running(Step::ChargePayment);
    let stray = Input::Reply(StepReply {
        order_id: OrderId::parse("01890a5d-ac96-774b-bcce-b302099a8058").unwrap(),
        step: Step::ChargePayment,
        result: StepResult::Done,
    });

    assert_unchanged(&saga, &when(&saga, stray, T0));
}

// ---- named failure scenarios ---------------------------------------------------------

#[test]
fn payment_timeout_refunds_and_releases_nothing_else() {
    let saga = given_running(Step::ChargePayment);
    let t = when(&saga, Input::Deadline(Link::Steady), deadline(&saga));
    assert_eq!(t.commands, vec![command(Step::RefundPayment, None, None)]);

    let (done, rest) = drive_to_done(t.saga, deadline(&saga) + 10);

    assert_eq!(
        rest,
        vec![command(Step::RejectOrder, None, Some(OrderStatus::Timeout))]
    );
    assert_eq!(done.status(), OrderStatus::Timeout);
}

#[test]
fn delivery_timeout_cancels_releases_and_refunds_newest_first() {
    let saga = given_running(Step::ScheduleDelivery);
    let t = when(&saga, Input::Deadline(Link::Steady), deadline(&saga));

    let (done, rest) = drive_to_done(t.saga, deadline(&saga) + 10);

    let all: Vec<_> = t.commands.into_iter().chain(rest).collect();
    assert_eq!(
        all,
        vec![
            command(Step::CancelDelivery, None, None),
            command(Step::ReleaseStock, None, None),
            command(Step::RefundPayment, None, None),
            command(Step::RejectOrder, None, Some(OrderStatus::Timeout)),
        ]
    );
    assert_eq!(done.status(), OrderStatus::Timeout);
}

#[test]
fn create_failure_rejects_straight_away_and_never_lists_the_order() {
    let saga = given_new_saga();
    let t = when(&saga, reply(Step::CreateOrder, failed()), T0);

    let (done, rest) = drive_to_done(t.saga, T0 + 1);

    assert_eq!(
        t.commands,
        vec![command(Step::RejectOrder, None, Some(OrderStatus::Unknown))]
    );
    assert!(rest.is_empty());
    assert_eq!(done.status(), OrderStatus::Unknown);
    assert!(!done.created);
}

#[test]
fn compensation_chain_ends_done_with_the_failure_status_after_rejecting_with_it() {
    for status in FAILURES {
        let failing = fail_with(status);
        let pending = match &failing.saga.state {
            SagaState::Compensating { pending, .. } => pending.clone(),
            SagaState::Rejecting { .. } => vec![],
            other => panic!("{status:?}: not undoing: {other:?}"),
        };

        let (done, rest) = drive_to_done(failing.saga, T0 + 10_000);

        let sent: Vec<_> = failing.commands.into_iter().chain(rest).collect();
        let mut expected: Vec<_> = pending.iter().map(|&s| command(s, None, None)).collect();
        expected.push(command(Step::RejectOrder, None, Some(status)));
        assert_eq!(sent, expected, "{status:?}");
        assert_eq!(done.state, SagaState::Done { status });
        assert_eq!(
            (done.status(), done.phase(), done.deadline_ms()),
            (status, Phase::Done, None)
        );
    }
}

// ---- compensations -------------------------------------------------------------------

#[test]
fn a_done_compensation_sends_the_next_one_with_a_fresh_first_attempt() {
    let saga = given_compensating();

    let t = when(
        &saga,
        reply(Step::CancelDelivery, StepResult::Done),
        T0 + 20_000,
    );

    assert_recorded(&saga, &t, T0 + 20_000);
    assert_eq!(t.commands, vec![command(Step::ReleaseStock, None, None)]);
    assert_eq!(
        t.saga.state,
        undo_state(
            OrderStatus::Timeout,
            &[Step::ReleaseStock, Step::RefundPayment],
            T0 + 20_000
        )
    );
}

#[test]
fn a_skipped_compensation_counts_as_done() {
    let saga = given_compensating();

    let t = when(&saga, reply(Step::CancelDelivery, StepResult::Skipped), T0);

    assert_eq!(t.commands, vec![command(Step::ReleaseStock, None, None)]);
    assert_eq!(last_entry(&t.saga).step, Step::ReleaseStock);
    assert_eq!(
        events(&t.saga)[saga.timeline.len()],
        (Step::CancelDelivery, "skipped")
    );
}

#[test]
fn the_last_compensation_done_sends_the_rejection_with_the_status() {
    let saga = given_failed_with(OrderStatus::InsufficientInventory);

    let t = when(&saga, reply(Step::RefundPayment, StepResult::Done), T0 + 9);

    assert_eq!(
        t.commands,
        vec![command(
            Step::RejectOrder,
            None,
            Some(OrderStatus::InsufficientInventory)
        )]
    );
    assert_eq!(
        t.saga.state,
        undo_state(OrderStatus::InsufficientInventory, &[], T0 + 9)
    );
    assert_eq!(t.saga.phase(), "compensating");
}

#[test]
fn a_failed_or_refused_compensation_is_recorded_and_waits_for_its_deadline() {
    let refused = StepResult::Refused {
        reason: Refusal::InsufficientFunds,
    };
    for result in [failed(), refused] {
        let saga = given_compensating();

        let t = when(&saga, reply(Step::CancelDelivery, result), T0 + 1);

        assert_recorded(&saga, &t, T0 + 1);
        assert!(t.commands.is_empty());
        assert_eq!(t.saga.state, saga.state);
        assert_eq!(t.saga.timeline.len(), saga.timeline.len() + 1);
    }
}

#[test]
fn a_failed_compensation_is_retried_at_its_deadline() {
    let saga = given_compensating();
    let failed_once = when(&saga, reply(Step::CancelDelivery, failed()), T0).saga;
    let now = deadline(&failed_once);

    let t = when(&failed_once, Input::Deadline(Link::Steady), now);

    assert_recorded(&failed_once, &t, now);
    assert_eq!(t.commands, vec![command(Step::CancelDelivery, None, None)]);
    assert_eq!(
        t.saga.state,
        SagaState::Compensating {
            status: OrderStatus::Timeout,
            pending: vec![
                Step::CancelDelivery,
                Step::ReleaseStock,
                Step::RefundPayment
            ],
            attempt: 2,
            deadline_ms: now + 2_000,
        }
    );
    let entry = last_entry(&t.saga);
    assert_eq!(
        (entry.step, entry.event.as_str()),
        (Step::CancelDelivery, "sent")
    );
    assert_eq!(entry.detail.as_deref(), Some("attempt 2"));
}

#[test]
fn compensation_retry_backoff_doubles_and_caps_at_max_retry() {
    let mut saga = given_compensating();
    let mut waits = Vec::new();
    for _ in 0..6 {
        let now = deadline(&saga);
        let t = when(&saga, Input::Deadline(Link::Steady), now);
        assert_eq!(t.commands, vec![command(Step::CancelDelivery, None, None)]);
        waits.push(deadline(&t.saga) - now);
        saga = t.saga;
    }

    assert_eq!(waits, [2_000, 4_000, 8_000, 8_000, 8_000, 8_000]);
    let SagaState::Compensating { attempt, .. } = saga.state else {
        panic!("stopped compensating: {:?}", saga.state);
    };
    assert_eq!(attempt, 7);
}

#[test]
fn backoff_saturates_instead_of_overflowing() {
    let huge = Timing {
        step_timeout_ms: i64::MAX / 2,
        max_retry_ms: i64::MAX,
    };
    assert_eq!(TIMING.backoff_ms(0), 1_000);
    assert_eq!(TIMING.backoff_ms(1), 1_000);
    assert_eq!(TIMING.backoff_ms(4), 8_000);
    assert_eq!(TIMING.backoff_ms(64), 8_000);
    assert_eq!(TIMING.backoff_ms(u32::MAX), 8_000);
    assert_eq!(huge.backoff_ms(3), i64::MAX);

    let mut saga = given_compensating();
    if let SagaState::Compensating {
        attempt,
        deadline_ms,
        ..
    } = &mut saga.state
    {
        *attempt = u32::MAX;
        *deadline_ms = i64::MAX - 1;
    }
    let t = when(&saga, Input::Deadline(Link::Steady), i64::MAX - 1);
    assert_eq!(t.saga.deadline_ms(), Some(i64::MAX));
}

#[test]
fn a_stale_deadline_while_undoing_records_nothing() {
    for saga in [given_compensating(), given_rejecting()] {
        let t = when(&saga, Input::Deadline(Link::Steady), deadline(&saga) - 1);

        assert_unchanged(&saga, &t);
    }
}

#[test]
fn a_dead_lettered_compensation_is_postponed_not_failed() {
    for input in [dead_letter(Some(Step::CancelDelivery)), dead_letter(None)] {
        let saga = given_compensating();
        let now = T0 + 50_000;

        let t = when(&saga, input, now);

        assert_recorded(&saga, &t, now);
        assert!(t.commands.is_empty());
        assert_eq!(
            t.saga.state,
            SagaState::Compensating {
                status: OrderStatus::Timeout,
                pending: vec![
                    Step::CancelDelivery,
                    Step::ReleaseStock,
                    Step::RefundPayment
                ],
                attempt: 1,
                deadline_ms: now + 1_000,
            }
        );
        let entry = last_entry(&t.saga);
        assert_eq!(
            (entry.step, entry.event.as_str()),
            (Step::CancelDelivery, "dead_lettered")
        );

        let retried = when(&t.saga, Input::Deadline(Link::Steady), now + 1_000);
        assert_eq!(
            retried.commands,
            vec![command(Step::CancelDelivery, None, None)]
        );
    }
}

#[test]
fn a_reply_or_dead_letter_for_a_compensation_not_in_flight_is_recorded_and_ignored() {
    let saga = given_compensating();

    let reply_t = when(&saga, reply(Step::ReleaseStock, StepResult::Done), T0);
    let dead_t = when(&saga, dead_letter(Some(Step::RefundPayment)), T0);

    assert_ignored_with_a_trace(&saga, &reply_t, Step::ReleaseStock, "late reply: done");
    assert_ignored_with_a_trace(
        &saga,
        &dead_t,
        Step::RefundPayment,
        "dead letter: delivery limit",
    );
}

// ---- rejection -----------------------------------------------------------------------

#[test]
fn rejection_is_retried_with_the_same_status_and_growing_waits() {
    let saga = given_rejecting();
    let now = deadline(&saga);

    let t = when(&saga, Input::Deadline(Link::Steady), now);

    assert_eq!(
        t.commands,
        vec![command(
            Step::RejectOrder,
            None,
            Some(OrderStatus::InsufficientFund)
        )]
    );
    assert_eq!(
        t.saga.state,
        SagaState::Rejecting {
            status: OrderStatus::InsufficientFund,
            attempt: 2,
            deadline_ms: now + 2_000
        }
    );
    assert_eq!(last_entry(&t.saga).detail.as_deref(), Some("attempt 2"));
}

#[test]
fn a_failed_rejection_stays_rejecting_until_its_deadline() {
    let saga = given_rejecting();

    let t = when(&saga, reply(Step::RejectOrder, failed()), T0 + 1);

    assert_recorded(&saga, &t, T0 + 1);
    assert!(t.commands.is_empty());
    assert_eq!(t.saga.state, saga.state);
}

#[test]
fn a_dead_lettered_rejection_is_postponed_not_failed() {
    let saga = given_rejecting();
    let now = T0 + 30_000;

    let t = when(&saga, dead_letter(Some(Step::RejectOrder)), now);

    assert!(t.commands.is_empty());
    assert_eq!(
        t.saga.state,
        SagaState::Rejecting {
            status: OrderStatus::InsufficientFund,
            attempt: 1,
            deadline_ms: now + 1_000
        }
    );
}

#[test]
fn a_skipped_rejection_still_finishes_the_saga() {
    let saga = given_rejecting();

    let t = when(&saga, reply(Step::RejectOrder, StepResult::Skipped), T0);

    assert!(t.commands.is_empty());
    assert_eq!(t.saga.status(), OrderStatus::InsufficientFund);
}

// ---- after done ----------------------------------------------------------------------

#[test]
fn nothing_after_done_changes_the_saga_or_its_version() {
    let success = drive_to_done(given_new_saga(), T0).0;
    let rejected = drive_to_done(given_compensating(), T0).0;
    for saga in [success, rejected] {
        let mut inputs = vec![Input::Deadline(Link::Steady), dead_letter(None)];
        for step in Step::ALL {
            inputs.push(dead_letter(Some(step)));
            inputs.push(reply(step, StepResult::Done));
            inputs.push(reply(step, failed()));
            inputs.push(reply(step, StepResult::Skipped));
        }
        for input in inputs {
            let t = when(&saga, input.clone(), i64::MAX);

            assert_unchanged(&saga, &t);
        }
    }
}

// ---- a dead-lettered PlaceOrder ------------------------------------------------------

fn never_placed() -> Transition {
    Saga::never_placed(
        order_id(),
        terms(),
        Faults::default(),
        PLACED,
        "rejected (dead letter 42)",
        T0,
    )
}

#[test]
fn a_place_order_dead_lettered_before_the_saga_started_finishes_unknown_without_a_command() {
    let t = never_placed();

    assert!(!t.ignored);
    assert!(t.commands.is_empty(), "nothing ran, so nothing to undo");
    assert_eq!(
        t.saga.state,
        SagaState::Done {
            status: OrderStatus::Unknown
        }
    );
    assert_eq!(
        (t.saga.status(), t.saga.phase(), t.saga.deadline_ms()),
        (OrderStatus::Unknown, Phase::Done, None)
    );
    assert!(!t.saga.created, "never listed by /api/all-transaction");
    assert_eq!(
        t.saga.version, 1,
        "a version above the backend's PROCESSING row"
    );
    assert_eq!((t.saga.placed_at_ms, t.saga.updated_at_ms), (PLACED, T0));
    assert_eq!(events(&t.saga), vec![(Step::CreateOrder, "dead_lettered")]);
    assert!(
        last_entry(&t.saga)
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("never placed") && d.contains("dead letter 42")),
        "{:?}",
        t.saga.timeline
    );
}

#[test]
fn a_never_placed_saga_ignores_every_later_input() {
    let saga = never_placed().saga;
    let inputs = [
        Input::Deadline(Link::Steady),
        reply(Step::CreateOrder, StepResult::Done),
        dead_letter(None),
        dead_letter(Some(Step::CreateOrder)),
        Input::PlaceOrderDeadLettered {
            reason: "again".into(),
        },
    ];
    for input in inputs {
        let t = when(&saga, input.clone(), T0 + 1);

        assert_unchanged(&saga, &t);
    }
}

const DUPLICATE: &str = "dead letter of a duplicate PlaceOrder: rejected";

#[test]
fn a_duplicate_place_order_dead_lettered_while_running_is_recorded_and_changes_nothing() {
    for step in Step::FORWARD {
        let saga = given_running(step);

        let t = when(
            &saga,
            Input::PlaceOrderDeadLettered {
                reason: "rejected".into(),
            },
            T0 + 5,
        );

        assert_ignored_with_a_trace(&saga, &t, Step::CreateOrder, DUPLICATE);
    }
    let compensating = given_compensating();
    let t = when(
        &compensating,
        Input::PlaceOrderDeadLettered {
            reason: "rejected".into(),
        },
        T0 + 5,
    );
    assert_ignored_with_a_trace(&compensating, &t, Step::CreateOrder, DUPLICATE);
}

// ---- faults --------------------------------------------------------------------------

#[test]
fn kill_payment_makes_the_charge_command_carry_a_kill_and_nothing_else() {
    let faults = Faults {
        kill_payment: true,
        ..Faults::default()
    };
    let start = Saga::start(order_id(), terms(), faults, PLACED, T0, &TIMING);
    let (_, rest) = drive_to_done(start.saga, T0);

    let faulted: Vec<_> = start
        .commands
        .iter()
        .chain(&rest)
        .map(|c| (c.step, c.fault))
        .filter(|(_, f)| f.is_some())
        .collect();
    assert_eq!(faulted, vec![(Step::ChargePayment, Some(Fault::Kill))]);
}

#[test]
fn timeout_inventory_makes_the_reserve_command_carry_a_stall() {
    let faults = Faults {
        timeout_inventory: true,
        ..Faults::default()
    };
    let saga = given_new_saga_with(faults);
    let saga = when(&saga, reply(Step::CreateOrder, StepResult::Done), T0).saga;

    let t = when(&saga, reply(Step::ChargePayment, StepResult::Done), T0);

    assert_eq!(
        t.commands,
        vec![command(Step::ReserveStock, Some(Fault::Stall), None)]
    );
}

#[test]
fn compensations_and_the_rejection_never_carry_a_fault() {
    let all = Faults {
        kill_create: false,
        kill_payment: true,
        timeout_payment: true,
        kill_inventory: true,
        timeout_inventory: true,
        kill_deliver: true,
        timeout_deliver: true,
    };
    let mut saga = given_new_saga_with(all);
    for step in [Step::CreateOrder, Step::ChargePayment, Step::ReserveStock] {
        saga = when(&saga, reply(step, StepResult::Done), T0).saga;
    }
    let t = when(&saga, reply(Step::ScheduleDelivery, failed()), T0);
    let (_, rest) = drive_to_done(t.saga, T0);

    let undo: Vec<_> = t.commands.iter().chain(&rest).collect();
    assert_eq!(undo.len(), 4);
    assert!(undo.iter().all(|c| c.fault.is_none()), "{undo:?}");
}

// ---- bookkeeping ---------------------------------------------------------------------

#[test]
fn timeline_seq_counts_from_one_and_every_command_is_recorded_as_sent() {
    use Step::*;
    let saga = given_running(Step::ScheduleDelivery);
    let t = when(&saga, Input::Deadline(Link::Steady), deadline(&saga));
    let retried = when(&t.saga, Input::Deadline(Link::Steady), deadline(&t.saga));
    let (done, _) = drive_to_done(retried.saga, T0 + 99_000);

    let seqs: Vec<_> = done.timeline.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=done.timeline.len() as i64).collect::<Vec<_>>());
    let sent: Vec<_> = events(&done)
        .into_iter()
        .filter(|(_, e)| *e == "sent")
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        sent,
        [
            CreateOrder,
            ChargePayment,
            ReserveStock,
            ScheduleDelivery,
            CancelDelivery,
            CancelDelivery,
            ReleaseStock,
            RefundPayment,
            RejectOrder
        ]
    );
    assert!(done.timeline.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
}

#[test]
fn status_phase_and_deadline_follow_the_state() {
    let running = given_running(Step::ReserveStock);
    let compensating = given_compensating();
    let rejecting = given_rejecting();
    let done = drive_to_done(given_rejecting(), T0).0;

    let view = |s: &Saga| (s.status(), s.phase(), s.deadline_ms().is_some());
    assert_eq!(
        view(&running),
        (OrderStatus::Processing, Phase::Running, true)
    );
    assert_eq!(
        view(&compensating),
        (OrderStatus::Processing, Phase::Compensating, true)
    );
    assert_eq!(
        view(&rejecting),
        (OrderStatus::Processing, Phase::Compensating, true)
    );
    assert_eq!(
        view(&done),
        (OrderStatus::InsufficientFund, Phase::Done, false)
    );
    assert_eq!(running.awaited(), Some(Step::ReserveStock));
    assert_eq!(compensating.awaited(), Some(Step::CancelDelivery));
    assert_eq!(rejecting.awaited(), Some(Step::RejectOrder));
    assert_eq!(done.awaited(), None);
}

#[test]
fn compensations_for_lists_what_may_have_run_newest_first() {
    for step in Step::FORWARD {
        for may_have_run in [false, true] {
            assert_eq!(
                compensations_for(step, may_have_run),
                expected_undo(step, may_have_run),
                "{step:?} {may_have_run}"
            );
        }
    }
}

#[test]
fn a_saga_round_trips_through_json_in_every_state() {
    let faults = Faults {
        timeout_deliver: true,
        ..Faults::default()
    };
    let sagas = [
        given_new_saga_with(faults),
        given_compensating(),
        given_rejecting(),
        drive_to_done(given_compensating(), T0).0,
    ];
    for saga in sagas {
        let json = serde_json::to_string(&saga).unwrap();

        let back: Saga = serde_json::from_str(&json).unwrap();

        assert_eq!(back, saga, "{json}");
    }
    let json = serde_json::to_value(given_compensating().state).unwrap();
    assert_eq!(json["state"], "compensating");
    assert_eq!(json["status"], "TIMEOUT");
    assert_eq!(json["pending"][0], "cancel_delivery");
}
