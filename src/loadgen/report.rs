//! The report: what a run sustained, built from what each phase observed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    ceiling::CeilingMeasure,
    metrics::QueueMessages,
    options::{Load, Options},
    orders::OrderState,
    post::Posting,
};

/// Deliveries the least a five-step saga costs, for a ceiling without a measured figure:
/// the order's placement, five commands and five replies.
pub(crate) const MIN_MESSAGES_PER_ORDER: f64 = 11.0;

/// The nearest-rank percentile `p` (0..100] of ascending `sorted`; None when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p90, p99 and max, in milliseconds; null in JSON when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Latency {
    pub(super) fn of(mut values: Vec<f64>) -> Latency {
        values.sort_by(f64::total_cmp);
        let at = |p| percentile(&values, p).map(round3);
        Latency {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: values.last().copied().map(round3),
        }
    }
}

/// Three decimals: microseconds of a millisecond figure, and no float noise in the JSON.
pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The ceiling against the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Ceiling {
    pub duration_s: f64,
    pub published_per_s: f64,
    pub consumed_per_s: f64,
    pub msg_per_s: f64,
    /// What the orders/s ceiling is divided by: measured, or [`MIN_MESSAGES_PER_ORDER`].
    pub messages_per_order_used: f64,
    pub messages_per_order_measured: bool,
    pub orders_per_s: f64,
    /// The run's completed/s ÷ orders_per_s.
    pub share: Option<f64>,
}

impl Ceiling {
    /// The measured ceiling in orders/s, dividing by `messages_per_order` (or the least a
    /// saga needs), and the run's `completed_per_s` as a share of it.
    fn of(
        c: &CeilingMeasure,
        messages_per_order: Option<f64>,
        completed_per_s: Option<f64>,
    ) -> Ceiling {
        let used = messages_per_order.unwrap_or(MIN_MESSAGES_PER_ORDER);
        let orders_per_s = c.msg_per_s() / used;
        Ceiling {
            duration_s: round3(c.duration_s),
            published_per_s: round3(c.published_per_s),
            consumed_per_s: round3(c.consumed_per_s),
            msg_per_s: round3(c.msg_per_s()),
            messages_per_order_used: round3(used),
            messages_per_order_measured: messages_per_order.is_some(),
            orders_per_s: round3(orders_per_s),
            share: completed_per_s
                .filter(|_| orders_per_s > 0.0)
                .map(|c| c / orders_per_s),
        }
    }
}

/// The run's parameters, as the report repeats them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Params {
    pub url: String,
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub users: u64,
    pub price: i64,
    pub amount: i64,
    pub mix: BTreeMap<String, f64>,
    pub seed: u64,
    pub wait_s: f64,
    pub metrics_urls: Vec<String>,
}

impl Params {
    pub(super) fn of(o: &Options, seed: u64) -> Params {
        let (mode, rate, concurrency) = match o.load {
            Load::Rate(r) => ("rate", Some(r), None),
            Load::Concurrency(c) => ("concurrency", None, Some(c)),
        };
        Params {
            url: o.url.clone(),
            mode,
            rate,
            concurrency,
            duration_s: o.duration.map(|d| d.as_secs_f64()),
            count: o.count,
            users: o.users,
            price: o.price,
            amount: o.amount,
            mix: o.mix.as_map(),
            seed,
            wait_s: o.wait.as_secs_f64(),
            metrics_urls: o.metrics_urls.clone(),
        }
    }
}

/// The report: stable key names (scripts read the JSON form).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    pub run_id: String,
    pub params: Params,
    pub posted: u64,
    pub accepted: u64,
    pub refused: u64,
    pub refused_by_kind: BTreeMap<String, u64>,
    pub skipped: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub posting_s: f64,
    pub accepted_per_s: f64,
    /// Client-side POST answer times, from each request's scheduled start.
    pub post_latency_ms: Latency,
    #[serde(rename = "final")]
    pub final_orders: u64,
    pub not_final: u64,
    pub not_listed: u64,
    /// Final orders by status.
    pub statuses: BTreeMap<String, u64>,
    /// Earliest created_at to latest final updated_at (server clock).
    pub completion_window_s: Option<f64>,
    pub completed_per_s: Option<f64>,
    /// Per final order: updated_at − created_at (server clock).
    pub latency_ms: Latency,
    pub messages_per_order: Option<f64>,
    pub messages: BTreeMap<String, QueueMessages>,
    pub stock_before: Option<i64>,
    pub stock_after: Option<i64>,
    pub ceiling: Option<Ceiling>,
    pub warnings: Vec<String>,
}

/// What the phases of a run observed, for [`summarize`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub posting: Posting,
    /// One per accepted order.
    pub orders: Vec<OrderState>,
    /// Handler outcomes per queue over the run.
    pub messages: BTreeMap<String, QueueMessages>,
    pub stock_before: Option<i64>,
    pub stock_after: Option<i64>,
    pub ceiling: Option<CeilingMeasure>,
    pub warnings: Vec<String>,
}

/// Builds the report from what each phase observed.
pub(crate) fn summarize(run_id: &str, params: Params, seen: Observed) -> Report {
    let Observed {
        posting,
        orders,
        messages,
        stock_before,
        stock_after,
        ceiling,
        warnings,
    } = seen;
    let Tally {
        statuses,
        not_final,
        not_listed,
        latencies,
        first_created,
        last_final,
    } = Tally::of(&orders);
    let final_orders = latencies.len() as u64;
    let window_s = (final_orders > 0).then(|| (last_final - first_created).max(0) as f64 / 1000.0);
    let completed_per_s = window_s
        .filter(|w| *w > 0.0)
        .map(|w| final_orders as f64 / w);
    let delivered: u64 = messages.values().map(QueueMessages::delivered).sum();
    let messages_per_order =
        (final_orders > 0 && delivered > 0).then(|| delivered as f64 / final_orders as f64);
    let posting_s = posting.elapsed.as_secs_f64();
    let accepted = posting.accepted.len() as u64;
    let ceiling = ceiling.map(|c| Ceiling::of(&c, messages_per_order, completed_per_s));
    Report {
        run_id: run_id.to_string(),
        params,
        posted: posting.sent - posting.skipped,
        accepted,
        refused: posting.refused.values().sum(),
        refused_by_kind: posting.refused.clone(),
        skipped: posting.skipped,
        errors: posting.errors.values().sum(),
        errors_by_kind: posting.errors.clone(),
        posting_s: round3(posting_s),
        accepted_per_s: if posting_s > 0.0 {
            round3(accepted as f64 / posting_s)
        } else {
            0.0
        },
        post_latency_ms: Latency::of(posting.post_ms.clone()),
        final_orders,
        not_final,
        not_listed,
        statuses,
        completion_window_s: window_s,
        completed_per_s: completed_per_s.map(round3),
        latency_ms: Latency::of(latencies),
        messages_per_order: messages_per_order.map(round3),
        messages,
        stock_before,
        stock_after,
        ceiling,
        warnings,
    }
}

/// The accepted orders counted: the final ones by status, their latencies and time span.
struct Tally {
    statuses: BTreeMap<String, u64>,
    not_final: u64,
    not_listed: u64,
    /// Per final order, in ms (server clock).
    latencies: Vec<f64>,
    /// Earliest created_at of a final order, in ms.
    first_created: i64,
    /// Latest updated_at of a final order, in ms.
    last_final: i64,
}

impl Tally {
    /// Counts `orders`.
    fn of(orders: &[OrderState]) -> Tally {
        let mut t = Tally {
            statuses: BTreeMap::new(),
            not_final: 0,
            not_listed: 0,
            latencies: Vec::new(),
            first_created: i64::MAX,
            last_final: i64::MIN,
        };
        for o in orders {
            match o {
                OrderState::Final {
                    status,
                    created_ms,
                    updated_ms,
                } => {
                    *t.statuses.entry(status.clone()).or_default() += 1;
                    t.latencies.push((updated_ms - created_ms).max(0) as f64);
                    t.first_created = t.first_created.min(*created_ms);
                    t.last_final = t.last_final.max(*updated_ms);
                }
                OrderState::NotFinal => t.not_final += 1,
                OrderState::NotListed => t.not_listed += 1,
            }
        }
        t
    }
}

#[cfg(test)]
mod tests;
