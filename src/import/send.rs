//! Placing the purchases: `POST /api/purchase/` with each line's `Idempotency-Key`, a few
//! at a time, retrying what may pass later.
//!
//! Every retry is safe because of the key: a purchase that was placed although its answer
//! was lost (a timeout, a dropped connection) is answered again, not placed again. So
//! transport errors and `5xx` are retried too, not only the `429`/`503` that ask for it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use super::report::{Outcome, Tally};
use crate::cli::transport_error;

/// Attempts per purchase before it is reported as not placed.
pub(crate) const MAX_ATTEMPTS: u32 = 8;
/// The longest wait between attempts, whatever `Retry-After` asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// One purchase to place.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub line: u64,
    pub body: Value,
    pub key: String,
}

/// Places `jobs` on `url` with `concurrency` requests in flight; each outcome is added to
/// `tally` as it comes (the progress bar reads it). Returns once every job has one.
pub(crate) async fn place_all(
    client: &reqwest::Client,
    url: &str,
    jobs: Vec<Job>,
    concurrency: usize,
    tally: &Arc<Mutex<Tally>>,
) {
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let endpoint = format!("{url}/api/purchase/");
    let workers: Vec<_> = (0..concurrency.min(jobs.len()).max(1))
        .map(|_| {
            let (client, endpoint, jobs, next, tally) = (
                client.clone(),
                endpoint.clone(),
                jobs.clone(),
                next.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let outcome = place(&client, &endpoint, job).await;
                    tally.lock().expect("not poisoned").add(job.line, outcome);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker does not panic");
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Outcome),
    /// May pass later: after this long (the server's `Retry-After`, else a backoff).
    Again {
        why: String,
        after: Option<Duration>,
    },
}

/// Places one purchase, retrying up to [`MAX_ATTEMPTS`].
async fn place(client: &reqwest::Client, endpoint: &str, job: &Job) -> Outcome {
    let mut backoff = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        match attempt_once(client, endpoint, job).await {
            Attempt::Done(outcome) => return outcome,
            Attempt::Again { why, after } => {
                last = why;
                if attempt == MAX_ATTEMPTS {
                    break;
                }
                let wait = after.unwrap_or(backoff).min(MAX_WAIT);
                backoff = (backoff * 2).min(MAX_WAIT);
                tokio::time::sleep(wait).await;
            }
        }
    }
    Outcome::NotPlaced {
        detail: format!("{last} (gave up after {MAX_ATTEMPTS} attempts)"),
    }
}

async fn attempt_once(client: &reqwest::Client, endpoint: &str, job: &Job) -> Attempt {
    let response = match client
        .post(endpoint)
        .header("idempotency-key", &job.key)
        .json(&job.body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Again {
                why: transport_error(&e),
                after: None,
            };
        }
    };
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => {
            return Attempt::Again {
                why: format!("HTTP {status}, {}", transport_error(&e)),
                after: None,
            };
        }
    };
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match status {
        202 => match json["order_id"].as_str() {
            Some(id) => Attempt::Done(Outcome::Placed {
                order_id: id.to_string(),
                replayed,
            }),
            None => Attempt::Again {
                why: "202 without an order_id".into(),
                after: None,
            },
        },
        429 | 503 => Attempt::Again {
            why: refusal_text(status, &json, &text),
            after: retry_after.or(Some(Duration::from_secs(1))),
        },
        400..=499 => Attempt::Done(Outcome::Refused {
            status,
            error: json["error"].as_str().unwrap_or("refused").to_string(),
            detail: json["detail"]
                .as_str()
                .map_or_else(|| excerpt(&text), str::to_string),
        }),
        _ => Attempt::Again {
            why: refusal_text(status, &json, &text),
            after: None,
        },
    }
}

/// `503 overloaded: …` from an error body, or the status and what the body starts with.
fn refusal_text(status: u16, json: &Value, text: &str) -> String {
    match (json["error"].as_str(), json["detail"].as_str()) {
        (Some(error), Some(detail)) => format!("{status} {error}: {detail}"),
        _ => format!("HTTP {status}: {}", excerpt(text)),
    }
}

fn excerpt(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    if t.is_empty() { "(no body)".into() } else { t }
}
