//! The posting phase: purchases sent in an open or a closed loop, and what their answers
//! were; [`Shared`] is what the phases and the progress bar see of it while it runs.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::time::Instant;

use super::{
    mix::{purchase_body, username},
    options::{Load, MAX_OUTSTANDING, Options},
};
use crate::cli::transport_error;

/// What the posting phase saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Posting {
    pub sent: u64,
    pub accepted: Vec<String>,
    /// By status and the body's `error` code (`503 overloaded`, `503 unavailable`).
    pub refused: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub skipped: u64,
    /// Each answer's time from its (scheduled, in an open loop) start, in ms.
    pub post_ms: Vec<f64>,
    /// First POST to last answer.
    pub elapsed: Duration,
}

pub(crate) const PHASE_POSTING: u8 = 0;
pub(crate) const PHASE_WAITING: u8 = 1;
pub(crate) const PHASE_READING: u8 = 2;

/// What the posting tasks, the poller and the progress bar share.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) posting: Mutex<Posting>,
    pub(crate) final_seen: AtomicU64,
    pub(crate) read: AtomicU64,
    pub(crate) phase: AtomicU8,
}

/// The answer to one POST.
enum Outcome {
    Accepted(String),
    /// Status and error code.
    Refused(String),
    Error(String),
}

impl Shared {
    fn sent(&self) {
        self.posting.lock().expect("not poisoned").sent += 1;
    }

    fn record(&self, outcome: Outcome, took: Duration) {
        let mut p = self.posting.lock().expect("not poisoned");
        p.post_ms.push(took.as_secs_f64() * 1000.0);
        match outcome {
            Outcome::Accepted(id) => p.accepted.push(id),
            Outcome::Refused(kind) => *p.refused.entry(kind).or_default() += 1,
            Outcome::Error(kind) => *p.errors.entry(kind).or_default() += 1,
        }
    }
}

/// The posting phase, open or closed loop; returns once every POST has its answer.
pub(crate) async fn post(
    o: &Options,
    client: &reqwest::Client,
    run_id: &str,
    seed: u64,
    shared: &Arc<Shared>,
) -> Posting {
    let started = Instant::now();
    let bound = Bound {
        end: o.duration.map(|d| started + d),
        count: o.count.unwrap_or(u64::MAX),
    };
    let url = format!("{}/api/purchase/", o.url);
    let request = requests(o, run_id, seed);
    match o.load {
        Load::Concurrency(clients) => {
            closed_loop(client, &url, request, shared, clients, bound).await;
        }
        Load::Rate(rate) => {
            open_loop(client, &url, request, shared, rate, started, bound).await;
        }
    }
    // A copy: the progress bar goes on showing the counts.
    let mut p = shared.posting.lock().expect("not poisoned").clone();
    p.elapsed = started.elapsed();
    p
}

/// Where the posting phase ends: after `count` POSTs or at `end`, whichever comes first.
#[derive(Clone, Copy)]
struct Bound {
    end: Option<Instant>,
    count: u64,
}

/// The body of the request of each index: its buyer, and its kind from the mix.
fn requests(
    o: &Options,
    run_id: &str,
    seed: u64,
) -> impl Fn(u64) -> Value + Clone + Send + 'static {
    let (mix, run_id, users, price, amount) = (
        o.mix.clone(),
        run_id.to_string(),
        o.users,
        o.price,
        o.amount,
    );
    move |i: u64| {
        let user = username(&run_id, i, users);
        purchase_body(mix.pick(seed, i), &user, price, amount)
    }
}

/// Closed loop: `clients` tasks, each posting as soon as its last answer came.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    request: impl Fn(u64) -> Value + Clone + Send + 'static,
    shared: &Arc<Shared>,
    clients: usize,
    bound: Bound,
) {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, shared, next, request) = (
                client.clone(),
                url.to_string(),
                shared.clone(),
                next.clone(),
                request.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bound.count || bound.end.is_some_and(|e| Instant::now() >= e) {
                        break;
                    }
                    shared.sent();
                    let at = Instant::now();
                    let outcome = post_one(&client, &url, &request(i)).await;
                    shared.record(outcome, at.elapsed());
                }
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
}

/// Open loop: `rate` arrivals per second from `started`, whatever the answers take, at most
/// [`MAX_OUTSTANDING`] outstanding; returns once every request is answered.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    request: impl Fn(u64) -> Value,
    shared: &Arc<Shared>,
    rate: f64,
    started: Instant,
    bound: Bound,
) {
    let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING));
    let mut i = 0u64;
    while i < bound.count {
        // Fixed arrival times: a late answer never moves the next arrival.
        let at = started + Duration::from_secs_f64(i as f64 / rate);
        if bound.end.is_some_and(|e| at >= e) {
            break;
        }
        tokio::time::sleep_until(at).await;
        shared.sent();
        match outstanding.clone().try_acquire_owned() {
            Ok(permit) => {
                let (client, url, shared, body) =
                    (client.clone(), url.to_string(), shared.clone(), request(i));
                tokio::spawn(async move {
                    let outcome = post_one(&client, &url, &body).await;
                    // From the scheduled arrival: time spent behind a late
                    // scheduler counts, as it would for a real client.
                    shared.record(outcome, at.elapsed());
                    drop(permit);
                });
            }
            Err(_) => shared.posting.lock().expect("not poisoned").skipped += 1,
        }
        i += 1;
    }
    // Every permit back: every request answered.
    let _ = outstanding.acquire_many(MAX_OUTSTANDING as u32).await;
}

async fn post_one(client: &reqwest::Client, url: &str, body: &Value) -> Outcome {
    let response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Error(transport_error(&e)),
    };
    match response.status().as_u16() {
        202 => match response.json::<Value>().await {
            Ok(v) => match v["order_id"].as_str() {
                Some(id) => Outcome::Accepted(id.to_string()),
                None => Outcome::Error("202 without order_id".into()),
            },
            Err(e) => Outcome::Error(format!("202 body: {}", transport_error(&e))),
        },
        // Admission control: the server asked us to back off. Not retried: the load
        // generator measures what is accepted, it does not make it through.
        status @ (429 | 503) => {
            // The error code tells an overload from a database that does not answer.
            let code = match response.json::<Value>().await {
                Ok(v) => v["error"].as_str().map(str::to_string),
                Err(_) => None,
            };
            Outcome::Refused(match code {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            })
        }
        status => Outcome::Error(format!("HTTP {status}")),
    }
}
