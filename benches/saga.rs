//! Saga latency and throughput, measured against real RabbitMQ and SQLite (or PostgreSQL
//! with `BENCH_DATABASE_URL`), the whole marketplace in this process. Prints figures; passes
//! or fails on nothing.
//!
//!     cargo bench --bench saga                      # defaults
//!     BENCH_ORDERS=2000 BENCH_CLIENTS=32 cargo bench --bench saga
//!
//! Latency: sequential SUCCESS orders, one at a time, each timed from the POST to the saga's
//! last update (the manager's own clock, in the order's timeline), and per step from
//! `sent` to `done`. Throughput: `BENCH_CLIENTS` clients placing `BENCH_ORDERS` orders as
//! fast as the API accepts them, then waiting until all are final.

#[path = "../tests/support.rs"]
mod support;

use std::{collections::BTreeMap, time::Instant};

use common::messages::TimelineEvent;
use serde_json::{Value, json};
use support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  {name:<28} n={:<5} p50={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        values.len(),
        percentile(&values, 0.5),
        percentile(&values, 0.9),
        percentile(&values, 0.99),
        values.last().copied().unwrap_or(f64::NAN),
    );
}

async fn order(base_url: &str, id: &str) -> Value {
    client()
        .get(format!("{base_url}/api/orders/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Milliseconds of the day of an RFC 3339 UTC time (`…T12:00:00.127Z`): enough for
/// differences within one saga (a day boundary is corrected where differences are taken).
fn at_ms(at: &Value) -> i64 {
    let at = at.as_str().expect("a timeline time");
    let time = at
        .split('T')
        .nth(1)
        .expect("RFC 3339")
        .trim_end_matches('Z');
    let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().unwrap());
    let (h, m, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let ms: i64 = format!("{ms:0<3}")[..3].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1000 + ms
}

/// `later - earlier` in ms, across midnight if need be.
fn ms_between(earlier: i64, later: i64) -> f64 {
    (later - earlier).rem_euclid(86_400_000) as f64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let sequential = env_usize("BENCH_SEQUENTIAL", 200);
    let orders = env_usize("BENCH_ORDERS", 1000);
    let clients = env_usize("BENCH_CLIENTS", 16);
    let mut extra = vec![
        // Enough credits and stock for every order of the run.
        ("INITIAL_STOCK", "1000000".to_string()),
        ("INITIAL_CREDITS", "1000000000".to_string()),
    ];
    let store = match std::env::var("BENCH_DATABASE_URL") {
        Ok(url) => {
            extra.push(("DATABASE_URL", url));
            "PostgreSQL"
        }
        Err(_) => "SQLite",
    };
    let m = InProcess::start(&extra).await;
    println!(
        "saga benchmark: all-in-one, {store}, release={}",
        !cfg!(debug_assertions)
    );

    // Warm up connections and caches.
    for i in 0..20 {
        let id = purchase(
            &m.base_url,
            json!({"username": format!("warm{i}"), "price": 1, "amount": 1}),
        )
        .await;
        final_order(&m.base_url, &id, std::time::Duration::from_secs(10)).await;
    }

    latency(&m.base_url, sequential).await;
    throughput(&m.base_url, orders, clients).await;
    m.stop().await.expect("drains cleanly");
}

/// `sequential` orders one after the other: POST → final as the client sees it, the saga
/// from its first to its last timeline entry, and each step from command to reply.
async fn latency(base_url: &str, sequential: usize) {
    println!("latency: {sequential} sequential SUCCESS orders");
    let mut end_to_end = Vec::new();
    let mut saga = Vec::new();
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..sequential {
        let started = Instant::now();
        let id = purchase(
            base_url,
            json!({"username": format!("seq{}", i % 10), "price": 1, "amount": 1}),
        )
        .await;
        let done = final_order(base_url, &id, std::time::Duration::from_secs(10)).await;
        end_to_end.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(done["status"], "SUCCESS");
        let o = order(base_url, &id).await;
        let timeline = o["timeline"].as_array().unwrap();
        let first = at_ms(&timeline.first().unwrap()["at"]);
        let last = at_ms(&timeline.last().unwrap()["at"]);
        saga.push(ms_between(first, last));
        record_steps(timeline, &mut steps);
    }
    summary("POST -> final seen by client", end_to_end);
    summary("saga (first -> last entry)", saga);
    for (step, values) in steps {
        summary(&format!("step {step}"), values);
    }
}

/// Adds each step's time from its command (`sent`) to its reply (`done`) in `timeline`.
fn record_steps(timeline: &[Value], steps: &mut BTreeMap<String, Vec<f64>>) {
    let mut sent: BTreeMap<&str, i64> = BTreeMap::new();
    for e in timeline {
        let step = e["step"].as_str().unwrap();
        let at = at_ms(&e["at"]);
        match TimelineEvent::parse(e["event"].as_str().unwrap()) {
            Some(TimelineEvent::Sent) => {
                sent.insert(step, at);
            }
            Some(TimelineEvent::Done) => {
                if let Some(s) = sent.get(step) {
                    steps
                        .entry(step.to_string())
                        .or_default()
                        .push(ms_between(*s, at));
                }
            }
            _ => {}
        }
    }
}

/// `orders` orders from `clients` concurrent clients: how fast they are accepted, and how
/// fast they are all final.
async fn throughput(base_url: &str, orders: usize, clients: usize) {
    println!("throughput: {orders} orders from {clients} concurrent clients");
    let started = Instant::now();
    let per_client = orders / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let base = base_url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                ids.push(
                    purchase(
                        &base,
                        json!({"username": format!("load{c}"), "price": 1, "amount": 1}),
                    )
                    .await,
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let accepted_in = started.elapsed();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let o = final_order(base_url, id, std::time::Duration::from_secs(120)).await;
        *statuses
            .entry(o["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let all_final_in = started.elapsed();
    println!(
        "  accepted {} orders in {:.2} s ({:.0}/s); all final after {:.2} s ({:.0} orders/s end to end)",
        ids.len(),
        accepted_in.as_secs_f64(),
        ids.len() as f64 / accepted_in.as_secs_f64(),
        all_final_in.as_secs_f64(),
        ids.len() as f64 / all_final_in.as_secs_f64(),
    );
    // Under load a step can miss its deadline (STEP_TIMEOUT_MS): that is a TIMEOUT, with
    // its compensations, not an error of the benchmark.
    println!("  final statuses: {statuses:?}");
}
