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
mod tests;
