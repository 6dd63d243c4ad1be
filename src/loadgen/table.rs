//! The report as a table for people (`--json` prints the report itself).

use std::{collections::BTreeMap, fmt::Write};

use super::{
    options::MAX_OUTSTANDING,
    report::{Ceiling, Latency, Report},
};

/// The report as a table for people.
pub(crate) fn render_table(r: &Report) -> String {
    let mut s = String::new();
    write_params(&mut s, r);
    write_posting(&mut s, r);
    write_completion(&mut s, r);
    write_statuses(&mut s, r);
    write_messages(&mut s, r);
    if let Some(c) = &r.ceiling {
        write_ceiling(&mut s, c);
    }
    write_warnings(&mut s, &r.warnings);
    s
}

/// A figure with `digits` decimals, or `-` when there is none.
fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".to_string(),
    }
}

/// p50, p90, p99 and max on one line.
fn lat(l: &Latency) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        num(l.p50, 1),
        num(l.p90, 1),
        num(l.p99, 1),
        num(l.max, 1)
    )
}

/// Counts by kind in parentheses, or nothing when there are none.
fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("  ({})", parts.join(", "))
    }
}

/// The heading: the run, its load and bound, its orders and its mix.
fn write_params(s: &mut String, r: &Report) {
    let p = &r.params;
    let _ = writeln!(s, "marketplace loadgen: run {} against {}", r.run_id, p.url);
    let load = match (p.rate, p.concurrency) {
        (Some(rate), _) => format!("open loop, {rate} POST/s"),
        (_, Some(c)) => format!("closed loop, {c} clients"),
        _ => String::new(),
    };
    let mut bound = Vec::new();
    if let Some(d) = p.duration_s {
        bound.push(format!("{d} s"));
    }
    if let Some(c) = p.count {
        bound.push(format!("{c} orders"));
    }
    let _ = writeln!(s, "  {:<22}{load}, until {}", "load", bound.join(" or "));
    let _ = writeln!(
        s,
        "  {:<22}{} users (lg-{}-*), price {}, amount {}",
        "orders", p.users, r.run_id, p.price, p.amount
    );
    let mix: Vec<String> = p.mix.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mix = if mix.is_empty() {
        "none".to_string()
    } else {
        mix.join(" ")
    };
    let _ = writeln!(s, "  {:<22}{mix} (seed {})", "mix", p.seed);
}

/// The posting section: posted, accepted, refused, errors, skipped, answer times.
fn write_posting(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\nposting");
    let _ = writeln!(s, "  {:<22}{} in {:.2} s", "posted", r.posted, r.posting_s);
    let _ = writeln!(
        s,
        "  {:<22}{}  ({:.1}/s)",
        "accepted", r.accepted, r.accepted_per_s
    );
    let _ = writeln!(
        s,
        "  {:<22}{}{}",
        "refused (429/503)",
        r.refused,
        counts(&r.refused_by_kind)
    );
    let _ = writeln!(s, "  {:<22}{}", "errors", r.errors);
    for (kind, n) in &r.errors_by_kind {
        let _ = writeln!(s, "    {kind:<20}{n}");
    }
    if r.skipped > 0 {
        let _ = writeln!(
            s,
            "  {:<22}{} (over {MAX_OUTSTANDING} outstanding)",
            "skipped arrivals", r.skipped
        );
    }
    let _ = writeln!(s, "  {:<22}{}", "POST answer ms", lat(&r.post_latency_ms));
}

/// The completion section: final orders, completed/s, POST→final times, the stock.
fn write_completion(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\ncompletion (server clock)");
    let _ = writeln!(
        s,
        "  {:<22}{} of {} accepted  (not final: {}, not listed: {})",
        "final", r.final_orders, r.accepted, r.not_final, r.not_listed
    );
    let _ = writeln!(
        s,
        "  {:<22}{}  (first created → last final: {} s)",
        "completed/s",
        num(r.completed_per_s, 1),
        num(r.completion_window_s, 2)
    );
    let _ = writeln!(s, "  {:<22}{}", "POST→final ms", lat(&r.latency_ms));
    if let (Some(b), Some(a)) = (r.stock_before, r.stock_after) {
        let _ = writeln!(s, "  {:<22}{b} → {a}", "stock");
    }
}

/// The statuses section: final orders by status, with their shares.
fn write_statuses(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\nstatuses");
    for (status, n) in &r.statuses {
        let share = 100.0 * *n as f64 / r.final_orders.max(1) as f64;
        let _ = writeln!(s, "  {status:<22}{n:>8}  {share:>5.1}%");
    }
    if r.statuses.is_empty() {
        let _ = writeln!(s, "  (none final)");
    }
}

/// The messages section: deliveries per final order, and outcomes by queue.
fn write_messages(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\nmessages (deliveries handled, all queues)");
    let _ = writeln!(
        s,
        "  {:<22}{}",
        "per final order",
        num(r.messages_per_order, 2)
    );
    if !r.messages.is_empty() {
        let _ = writeln!(
            s,
            "  {:<22}{:>8} {:>10} {:>10}",
            "queue", "ok", "transient", "permanent"
        );
        for (q, m) in &r.messages {
            let _ = writeln!(
                s,
                "  {q:<22}{:>8} {:>10} {:>10}",
                m.ok, m.transient, m.permanent
            );
        }
    }
}

/// The broker ceiling section: messages/s, the orders/s they allow, the run's share.
fn write_ceiling(s: &mut String, c: &Ceiling) {
    let _ = writeln!(s, "\nbroker ceiling ({:.1} s measured)", c.duration_s);
    let _ = writeln!(
        s,
        "  {:<22}{:.0}  (published {:.0}/s, consumed {:.0}/s)",
        "messages/s", c.msg_per_s, c.published_per_s, c.consumed_per_s
    );
    let _ = writeln!(
        s,
        "  {:<22}{:.1}  (÷ {:.2} messages per order{})",
        "orders/s allowed",
        c.orders_per_s,
        c.messages_per_order_used,
        if c.messages_per_order_measured {
            ", measured"
        } else {
            ", the least a saga needs"
        }
    );
    let _ = writeln!(
        s,
        "  {:<22}{}",
        "completed/s share",
        c.share
            .map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
    );
}

/// The warnings section, when there are warnings.
fn write_warnings(s: &mut String, warnings: &[String]) {
    if !warnings.is_empty() {
        let _ = writeln!(s, "\nwarnings");
        for w in warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
}
