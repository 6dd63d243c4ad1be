//! What the manager counts, read off the timeline entries a committed transition added: the
//! timeline already holds every command sent and every answer with its time, so the
//! metrics need no state of their own and agree with what `/api/orders/{id}` shows.

use common::metrics::Metrics;

use common::messages::{TimelineEntry, TimelineEvent};

use crate::saga::Transition;

/// Records the transition `t`, committed over a saga whose timeline had `before` entries
/// (0 for a saga just inserted). Call it once per committed transition: a saga reaches its
/// final status in exactly one of them (compare-and-set on its version), so orders are
/// counted once even with several manager replicas.
/// The steps `t` closed (its timeline entries from `before` on that end a step: done,
/// refused, failed, timed out, dead-lettered), each with the time since its command was
/// sent. A late reply (`ignored`) answers a command the saga stopped waiting for: it is not
/// a step's latency.
pub(crate) fn step_latencies(
    before: usize,
    t: &Transition,
) -> impl Iterator<Item = (&TimelineEntry, i64)> + '_ {
    let timeline = &t.saga.timeline;
    timeline
        .iter()
        .enumerate()
        .skip(before)
        .filter(|(_, e)| !matches!(e.event, TimelineEvent::Sent | TimelineEvent::Ignored))
        .filter_map(move |(at, entry)| {
            timeline[..at]
                .iter()
                .rev()
                .find(|e| e.step == entry.step && e.event == TimelineEvent::Sent)
                .map(|sent| (entry, entry.at_ms - sent.at_ms))
        })
}

pub(crate) fn record(metrics: &Metrics, before: usize, t: &Transition) {
    let saga = &t.saga;
    for entry in &saga.timeline[before.min(saga.timeline.len())..] {
        if entry.event == TimelineEvent::Sent && entry.step.is_compensation() {
            // A retry carries "attempt N" as its detail; the first attempt none.
            let counter = if entry.detail.is_none() {
                &metrics.compensations
            } else {
                &metrics.compensation_retries
            };
            counter.with_label_values(&[entry.step.name()]).inc();
        }
    }
    for (entry, latency_ms) in step_latencies(before, t) {
        metrics
            .step_seconds
            .with_label_values(&[entry.step.name(), entry.event.as_str()])
            .observe(seconds(latency_ms));
    }
    // A transition out of a final status is never committed (a Done saga ignores every input),
    // so a final status here was reached by this transition.
    let status = saga.status();
    if status.is_final() {
        metrics.orders.with_label_values(&[status.as_str()]).inc();
        metrics
            .saga_seconds
            .with_label_values(&[status.as_str()])
            .observe(seconds(saga.updated_at_ms - saga.placed_at_ms));
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
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
        labels.sort();
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
}
