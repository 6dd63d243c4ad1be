//! What the marketplace says of itself over HTTP besides its orders: the `/metrics`
//! counters, the wait on them, and the stock.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Context;
use serde_json::Value;
use tokio::time::Instant;

use super::{metrics::Snapshot, post::Shared};

/// The cheap wait: one `/metrics` read per poll until as many sagas finished since
/// `before` as were accepted, or `deadline`. It gives up early when the counter stands still
/// for 5 s (a deployment whose manager is not behind `--metrics-url`, or a slow tail): the
/// per-order reads that follow go on until the deadline anyway.
pub(crate) async fn wait_for_counters(
    client: &reqwest::Client,
    urls: &[String],
    before: &Snapshot,
    accepted: u64,
    deadline: Instant,
    shared: &Shared,
) {
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        let Ok(now) = scrape(client, urls).await else {
            return;
        };
        let finished = now.finished_since(before);
        shared.final_seen.store(finished, Ordering::Relaxed);
        if finished >= accepted {
            return;
        }
        if finished != last.0 {
            last = (finished, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every `/metrics` in `urls`, summed.
pub(crate) async fn scrape(client: &reqwest::Client, urls: &[String]) -> anyhow::Result<Snapshot> {
    let mut total = Snapshot::default();
    for url in urls {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .with_context(|| format!("GET {url}/metrics"))?
            .error_for_status()?
            .text()
            .await?;
        total.add(&Snapshot::parse(&text));
    }
    Ok(total)
}

/// The counters once deliveries have stopped moving (the last events of the final orders
/// are still being consumed when the last status shows), waiting at most 3 s.
pub(crate) async fn settled_metrics(client: &reqwest::Client, urls: &[String]) -> Option<Snapshot> {
    let give_up = Instant::now() + Duration::from_secs(3);
    let mut last = scrape(client, urls).await.ok()?;
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = scrape(client, urls).await.ok()?;
        if now.consumed == last.consumed {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// The stock of the first product, if the marketplace reports one.
pub(crate) async fn stock(client: &reqwest::Client, base: &str) -> Option<i64> {
    let v: Value = client
        .get(format!("{base}/api/inventory"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v[0]["stock"].as_i64()
}
