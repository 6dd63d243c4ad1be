use super::*;
use crate::saga::{Input, Saga, Timing};
use common::{
    domain::{Credits, OrderId, OrderTerms, Quantity, Username},
    messages::{Faults, Step, StepReply, StepResult},
};

const TIMING: Timing = Timing {
    step_timeout_ms: 1_000,
    max_retry_ms: 8_000,
};

fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = metrics.render();
    // The exposition lists labels by name.
    let mut labels = labels.to_vec();
    labels.sort_unstable();
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",");
    let prefix = format!("{name}{{{selector}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Feeds `inputs` at 10 ms intervals, recording every transition as the handler does.
fn run(metrics: &Metrics, faults: Faults, replies: &[(Step, StepResult)]) -> Saga {
    let terms = OrderTerms::new(
        Username::parse("alice").unwrap(),
        Credits::new(10).unwrap(),
        Quantity::new(1).unwrap(),
    )
    .unwrap();
    let t = Saga::start(OrderId::new(), terms, faults, 0, 5, &TIMING);
    record(metrics, 0, &t);
    let mut saga = t.saga;
    for (i, (step, result)) in replies.iter().enumerate() {
        let reply = StepReply {
            order_id: saga.order_id,
            step: *step,
            result: result.clone(),
        };
        let t = saga.apply(Input::Reply(reply), 15 + 10 * i as i64, &TIMING);
        assert!(!t.ignored, "{step:?}");
        record(metrics, saga.timeline.len(), &t);
        saga = t.saga;
    }
    saga
}

#[test]
fn a_successful_saga_counts_one_order_and_times_each_step() {
    let m = Metrics::new();
    let done = Step::FORWARD.map(|s| (s, StepResult::Done));
    run(&m, Faults::default(), &done);
    let label = [("status", "SUCCESS")];
    assert_eq!(value(&m, "marketplace_orders_total", &label), 1.0);
    assert_eq!(
        value(&m, "marketplace_saga_duration_seconds_count", &label),
        1.0
    );
    // Placed at 0, finished at 55 ms.
    assert_eq!(
        value(&m, "marketplace_saga_duration_seconds_sum", &label),
        0.055
    );
    for step in Step::FORWARD {
        let labels = [("step", step.name()), ("outcome", "done")];
        let count = "marketplace_saga_step_duration_seconds_count";
        assert_eq!(value(&m, count, &labels), 1.0, "{step:?}");
        let sum = "marketplace_saga_step_duration_seconds_sum";
        assert_eq!(value(&m, sum, &labels), 0.01, "{step:?}");
    }
    assert!(!m.render().contains("marketplace_compensations_total"));
}

#[test]
fn a_failed_step_counts_each_compensation_and_the_failure_outcome() {
    let m = Metrics::new();
    let failed = StepResult::Failed {
        error: "boom".into(),
    };
    let replies = [
        (Step::CreateOrder, StepResult::Done),
        (Step::ChargePayment, StepResult::Done),
        (Step::ReserveStock, failed),
        (Step::ReleaseStock, StepResult::Done),
        (Step::RefundPayment, StepResult::Done),
        (Step::RejectOrder, StepResult::Done),
    ];
    let saga = run(&m, Faults::default(), &replies);
    assert_eq!(saga.status().as_str(), "UNKNOWN");
    assert_eq!(
        value(&m, "marketplace_orders_total", &[("status", "UNKNOWN")]),
        1.0
    );
    for step in ["inventory.release", "payment.refund", "order.reject"] {
        let labels = [("step", step)];
        assert_eq!(
            value(&m, "marketplace_compensations_total", &labels),
            1.0,
            "{step}"
        );
    }
    let labels = [("step", "inventory.reserve"), ("outcome", "failed")];
    let count = "marketplace_saga_step_duration_seconds_count";
    assert_eq!(value(&m, count, &labels), 1.0);
}
