//! Reading the accepted orders back at the end of a run, and the server's timestamps on
//! them.

use std::{sync::atomic::Ordering, time::Duration};

use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use super::post::Shared;

/// Concurrent order reads at the end: enough to be quick, few enough not to be a load.
pub(crate) const READ_CONCURRENCY: usize = 32;

/// What the end-of-run read found of one accepted order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OrderState {
    /// Final, with its server-side times (ms since the epoch).
    Final {
        status: String,
        created_ms: i64,
        updated_ms: i64,
    },
    /// Still running when the wait ended, or never readable.
    NotFinal,
    /// 404: the API does not show it.
    NotListed,
}

/// Reads every accepted order, re-reading the ones not final until `deadline`.
pub(crate) async fn read_orders(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    deadline: Instant,
    shared: &Shared,
) -> Vec<OrderState> {
    futures::stream::iter(ids)
        .map(|id| async move {
            let state = read_until_final(client, base, id, deadline).await;
            shared.read.fetch_add(1, Ordering::Relaxed);
            state
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await
}

async fn read_until_final(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    deadline: Instant,
) -> OrderState {
    let url = format!("{base}/api/orders/{id}");
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == 404 {
                return OrderState::NotListed;
            }
            if r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
                && let Some(state) = final_state(&v)
            {
                return state;
            }
        }
        if Instant::now() >= deadline {
            return OrderState::NotFinal;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order's final state, or None while its saga still runs (status PROCESSING, or
/// compensations in progress: phase not `done`).
fn final_state(order: &Value) -> Option<OrderState> {
    let status = order["status"].as_str()?;
    let done = order["phase"].as_str().is_none_or(|p| p == "done");
    if status == "PROCESSING" || !done {
        return None;
    }
    Some(OrderState::Final {
        status: status.to_string(),
        created_ms: parse_rfc3339_ms(order["created_at"].as_str()?)?,
        updated_ms: parse_rfc3339_ms(order["updated_at"].as_str()?)?,
    })
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the server writes them
/// (`2026-12-01T14:25:43.123Z`; `+00:00` and any number of fraction digits are accepted).
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let time = time
        .strip_suffix(['Z', 'z'])
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
