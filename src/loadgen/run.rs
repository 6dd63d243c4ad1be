//! A whole run: the ceiling, then posting, waiting, reading and counting, in that order.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use tokio::{task::JoinHandle, time::Instant};

use super::{
    ceiling::{CeilingMeasure, measure_ceiling},
    metrics::{QueueMessages, Snapshot},
    options::{MAX_OUTSTANDING, Options, planned_orders},
    orders::{OrderState, read_orders},
    post::{PHASE_READING, PHASE_WAITING, Shared, post},
    progress,
    report::{Observed, Params, Report, summarize},
    scrape::{scrape, settled_metrics, stock, wait_for_counters},
};
use crate::cli::progress::Progress;

/// Runs the whole measurement: ceiling, posting, waiting, reading, counting.
pub(crate) async fn run(o: &Options) -> anyhow::Result<Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let seed = o
        .seed
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let client = http_client()?;
    let mut warnings = Vec::new();

    // Before anything: the marketplace must answer, and the counters are the baseline.
    let before = scrape(&client, &o.metrics_urls)
        .await
        .context("reading /metrics before the run (is the marketplace running?)")?;
    let stock_before = stock(&client, &o.url).await;
    warnings.extend(stock_warning(o, stock_before));
    for w in &warnings {
        eprintln!("marketplace loadgen: warning: {w}");
    }

    let interactive = o.progress && std::io::stderr().is_terminal();
    let ceiling = ceiling_if_asked(o, interactive).await?;

    let shared = Arc::new(Shared::default());
    let progress = progress::start(interactive, o.count, shared.clone());
    // Final-so-far for the progress bar; the wait below polls on its own.
    let poller = progress
        .shown()
        .then(|| spawn_final_poller(&client, &o.metrics_urls, &before, &shared));

    let posting = post(o, &client, &run_id, seed, &shared).await;
    if let Some(p) = poller {
        p.abort();
    }
    let accepted = posting.accepted.len() as u64;
    let orders = wait_and_read(o, &client, &before, &posting.accepted, &shared, &progress).await;
    progress.finish();

    let after = settled_metrics(&client, &o.metrics_urls).await;
    let messages = messages_over_run(after.as_ref(), &before, accepted, &mut warnings);
    let stock_after = stock(&client, &o.url).await;
    let seen = Observed {
        posting,
        orders,
        messages,
        stock_before,
        stock_after,
        ceiling,
        warnings,
    };
    Ok(summarize(&run_id, Params::of(o, seed), seen))
}

/// The HTTP client of a run, carrying `ADMIN_TOKEN` when the environment has one.
fn http_client() -> anyhow::Result<reqwest::Client> {
    // Fault flags in the mix are an operator's tool: with ADMIN_TOKEN in the environment
    // every request carries it (a marketplace without a token admits loopback clients).
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("ADMIN_TOKEN")
        && !token.trim().is_empty()
    {
        let mut value: reqwest::header::HeaderValue = format!("Bearer {}", token.trim())
            .parse()
            .context("ADMIN_TOKEN is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_OUTSTANDING)
        .no_proxy()
        .build()?;
    Ok(client)
}

/// A warning when the run may buy more tokens than `stock_before` holds.
fn stock_warning(o: &Options, stock_before: Option<i64>) -> Option<String> {
    let planned = planned_orders(o.load, o.duration, o.count);
    let plain_share = 1.0 - o.mix.as_map().values().sum::<f64>();
    let stock = stock_before?;
    let wanted = (planned as f64 * plain_share).ceil() as i64 * o.amount;
    (wanted > stock).then(|| {
        format!(
            "stock is {stock} and the run may buy up to {wanted} tokens: orders beyond \
             the stock end INSUFFICIENT_INVENTORY (start the marketplace with a larger \
             INITIAL_STOCK on fresh data to measure successes)"
        )
    })
}

/// The broker ceiling, measured when `--ceiling` asks for it.
async fn ceiling_if_asked(
    o: &Options,
    interactive: bool,
) -> anyhow::Result<Option<CeilingMeasure>> {
    if !o.ceiling {
        return Ok(None);
    }
    if interactive {
        eprintln!(
            "measuring the broker ceiling for {:.1} s…",
            o.ceiling_duration.as_secs_f64()
        );
    }
    let measured = measure_ceiling(&o.amqp_url, o.ceiling_duration)
        .await
        .context("measuring the broker ceiling")?;
    Ok(Some(measured))
}

/// Polls `/metrics` every 500 ms for the sagas finished since `before`, into `shared`.
fn spawn_final_poller(
    client: &reqwest::Client,
    urls: &[String],
    before: &Snapshot,
    shared: &Arc<Shared>,
) -> JoinHandle<()> {
    let (client, urls, before, shared) = (
        client.clone(),
        urls.to_vec(),
        before.clone(),
        shared.clone(),
    );
    tokio::spawn(async move {
        loop {
            if let Ok(now) = scrape(&client, &urls).await {
                shared
                    .final_seen
                    .store(now.finished_since(&before), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Waits for the `accepted` orders to be final, then reads each back, by `--wait` at most.
async fn wait_and_read(
    o: &Options,
    client: &reqwest::Client,
    before: &Snapshot,
    accepted: &[String],
    shared: &Shared,
    progress: &Progress,
) -> Vec<OrderState> {
    let n = accepted.len() as u64;
    shared.phase.store(PHASE_WAITING, Ordering::Relaxed);
    progress.set_length(n);
    let deadline = Instant::now() + o.wait;
    wait_for_counters(client, &o.metrics_urls, before, n, deadline, shared).await;

    shared.phase.store(PHASE_READING, Ordering::Relaxed);
    read_orders(client, &o.url, accepted, deadline, shared).await
}

/// Deliveries handled per queue since `before`, with a warning when they cannot be counted.
fn messages_over_run(
    after: Option<&Snapshot>,
    before: &Snapshot,
    accepted: u64,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, QueueMessages> {
    let messages = match after {
        Some(after) => after.messages_since(before),
        None => {
            warnings.push("could not read /metrics after the run".into());
            BTreeMap::new()
        }
    };
    if after.is_some() && messages.is_empty() && accepted > 0 {
        warnings.push(
            "no marketplace_messages_consumed_total moved: in a split deployment pass \
             --metrics-url of every process"
                .into(),
        );
    }
    messages
}
