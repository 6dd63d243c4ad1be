//! A whole run: the ceiling, then posting, waiting, reading and counting, in that order.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use tokio::time::Instant;

use super::{
    ceiling::measure_ceiling,
    options::{MAX_OUTSTANDING, Options, planned_orders},
    orders::read_orders,
    post::{PHASE_READING, PHASE_WAITING, Shared, post},
    progress,
    report::{Observed, Params, Report, summarize},
    scrape::{scrape, settled_metrics, stock, wait_for_counters},
};

/// Runs the whole measurement: ceiling, posting, waiting, reading, counting.
pub(crate) async fn run(o: &Options) -> anyhow::Result<Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let seed = o
        .seed
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
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
    let mut warnings = Vec::new();

    // Before anything: the marketplace must answer, and the counters are the baseline.
    let before = scrape(&client, &o.metrics_urls)
        .await
        .context("reading /metrics before the run (is the marketplace running?)")?;
    let stock_before = stock(&client, &o.url).await;
    let planned = planned_orders(o.load, o.duration, o.count);
    let plain_share = 1.0 - o.mix.as_map().values().sum::<f64>();
    if let Some(stock) = stock_before {
        let wanted = (planned as f64 * plain_share).ceil() as i64 * o.amount;
        if wanted > stock {
            warnings.push(format!(
                "stock is {stock} and the run may buy up to {wanted} tokens: orders beyond \
                 the stock end INSUFFICIENT_INVENTORY (start the marketplace with a larger \
                 INITIAL_STOCK on fresh data to measure successes)"
            ));
        }
    }
    for w in &warnings {
        eprintln!("marketplace loadgen: warning: {w}");
    }

    let interactive = o.progress && std::io::stderr().is_terminal();
    let ceiling = if o.ceiling {
        if interactive {
            eprintln!(
                "measuring the broker ceiling for {:.1} s…",
                o.ceiling_duration.as_secs_f64()
            );
        }
        Some(
            measure_ceiling(&o.amqp_url, o.ceiling_duration)
                .await
                .context("measuring the broker ceiling")?,
        )
    } else {
        None
    };

    let shared = Arc::new(Shared::default());
    let progress = progress::start(interactive, o.count, shared.clone());
    // Final-so-far for the progress bar; the wait below polls on its own.
    let poller = progress.shown().then(|| {
        let (client, urls, before, shared) = (
            client.clone(),
            o.metrics_urls.clone(),
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
    });

    let posting = post(o, &client, &run_id, seed, &shared).await;
    if let Some(p) = poller {
        p.abort();
    }
    let accepted = posting.accepted.len() as u64;

    shared.phase.store(PHASE_WAITING, Ordering::Relaxed);
    progress.set_length(accepted);
    let deadline = Instant::now() + o.wait;
    wait_for_counters(
        &client,
        &o.metrics_urls,
        &before,
        accepted,
        deadline,
        &shared,
    )
    .await;

    shared.phase.store(PHASE_READING, Ordering::Relaxed);
    let orders = read_orders(&client, &o.url, &posting.accepted, deadline, &shared).await;
    progress.finish();

    let after = settled_metrics(&client, &o.metrics_urls).await;
    let messages = match &after {
        Some(after) => after.messages_since(&before),
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
