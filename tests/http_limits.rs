//! The HTTP listener's limits, over real TCP sockets against a whole marketplace started
//! with small limits: slow or silent clients are cut off, idle connections closed, the
//! connections and requests in flight bounded, and purchases rate limited per client when
//! (and only when) that is configured.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{InProcess, client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The longest any test waits for an outcome (the limits under test are far shorter).
const BOUND: Duration = Duration::from_secs(5);

fn addr(m: &InProcess) -> String {
    m.base_url.trim_start_matches("http://").to_string()
}

async fn connect(m: &InProcess) -> TcpStream {
    TcpStream::connect(addr(m)).await.expect("connects")
}

/// A complete HTTP/1.1 request (kept alive, as HTTP/1.1 is by default).
fn request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent
/// before; None if it was still open after `bound`.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, until_closed).await.ok()?;
    Some(got)
}

/// One HTTP answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The head's header lines, lowercased.
    headers: String,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Reads one answer (head and Content-Length body); panics if none comes within `bound`.
async fn read_answer(s: &mut TcpStream, bound: Duration) -> Answer {
    let read = async {
        let mut got: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + length {
                    let body = &got[end + 4..end + 4 + length];
                    return Answer {
                        status,
                        headers: head,
                        body: serde_json::from_slice(body).unwrap_or(Value::Null),
                    };
                }
            }
            let n = s.read(&mut buf).await.expect("reads");
            assert!(
                n > 0,
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(bound, read)
        .await
        .expect("an answer within the bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_half_a_header_is_closed_within_the_header_timeout() {
    let m = InProcess::start(&[("HTTP_HEADER_TIMEOUT_MS", "300".into())]).await;
    let mut slow = connect(&m).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let sent = closed_within(&mut slow, BOUND)
        .await
        .expect("closed, not held open");
    assert!(sent.is_empty(), "closed without an answer: {sent:?}");

    // A whole request on a fresh connection is still answered.
    let mut quick = connect(&m).await;
    quick
        .write_all(request("GET", "/healthz", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut quick, BOUND).await.status, 200);
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_32_kib_is_refused_431_and_the_connection_closed() {
    let m = InProcess::start(&[]).await;
    let mut big = connect(&m).await;
    // common::http_server::MAX_HEAD_BYTES, spelled out so that this file builds on a
    // server without the bound (and fails there).
    let padding = "a".repeat(32 * 1024);
    big.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {padding}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_answer(&mut big, BOUND).await;
    assert_eq!(answer.status, 431, "{answer:?}");
    assert!(
        closed_within(&mut big, BOUND).await.is_some(),
        "the connection is closed after the 431"
    );
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_within_the_header_timeout() {
    let m = InProcess::start(&[("HTTP_HEADER_TIMEOUT_MS", "300".into())]).await;
    let mut silent = connect(&m).await;
    let sent = closed_within(&mut silent, BOUND)
        .await
        .expect("closed, not held open");
    assert!(sent.is_empty(), "closed without an answer: {sent:?}");
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_body_is_answered_408_and_the_connection_closed() {
    let m = InProcess::start(&[("HTTP_BODY_TIMEOUT_MS", "300".into())]).await;
    let mut slow = connect(&m).await;
    slow.write_all(
        b"POST /api/purchase/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"username\": \"slow\",",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut slow, BOUND).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.body["error"], "request_timeout", "{answer:?}");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP_BODY_TIMEOUT_MS"),
        "{answer:?}"
    );
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        closed_within(&mut slow, BOUND).await.is_some(),
        "the connection is closed after the 408"
    );
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_within_the_idle_timeout() {
    // A long header timeout: only the idle timeout can close this connection.
    let m = InProcess::start(&[
        ("HTTP_IDLE_TIMEOUT_MS", "300".into()),
        ("HTTP_HEADER_TIMEOUT_MS", "60000".into()),
    ])
    .await;
    let mut kept = connect(&m).await;
    kept.write_all(request("GET", "/healthz", "").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut kept, BOUND).await;
    assert_eq!(answer.status, 200);
    assert_ne!(answer.header("connection"), Some("close"), "kept alive");
    let after = closed_within(&mut kept, BOUND)
        .await
        .expect("the idle connection is closed");
    assert!(after.is_empty(), "{after:?}");
    m.stop().await.expect("drains cleanly");
}

/// Starts a purchase whose body is held open on a connection of its own: a request in
/// flight for as long as the test wants. Returns the connection and the rest of the body.
async fn hold_a_request_in_flight(m: &InProcess) -> (TcpStream, &'static str) {
    // Complete, the body is a JSON object without fields: 422, without touching a store.
    let (head, rest) = ("{\"held\": ", "true}");
    let mut held = connect(m).await;
    held.write_all(
        format!(
            "POST /api/purchase/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{head}",
            head.len() + rest.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    (held, rest)
}

/// Polls `GET /api/inventory` until it is refused with 503 (the held request has reached
/// the server and holds the one slot), and returns that refusal.
async fn first_refusal(m: &InProcess) -> reqwest::Response {
    let started = tokio::time::Instant::now();
    loop {
        let r = client()
            .get(format!("{}/api/inventory", m.base_url))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            return r;
        }
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < BOUND,
            "no request refused while one is held in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_requests_in_flight_bound_requests_get_503_overloaded_and_the_probes_answer() {
    let m = InProcess::start(&[
        ("HTTP_MAX_REQUESTS_IN_FLIGHT", "1".into()),
        ("HTTP_BODY_TIMEOUT_MS", "60000".into()),
    ])
    .await;
    let (mut held, rest) = hold_a_request_in_flight(&m).await;

    let refused = first_refusal(&m).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "overloaded", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP_MAX_REQUESTS_IN_FLIGHT=1"),
        "{body}"
    );
    // Refused, not queued: while the request is held, every other one is refused at once.
    let purchase = client()
        .post(format!("{}/api/purchase/", m.base_url))
        .json(&json!({"username": "refused", "price": 1, "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(purchase.status(), 503);
    // The probes and the metrics are exempt.
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = client()
            .get(format!("{}{probe}", m.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }

    // The held request completes; its slot is free again.
    held.write_all(rest.as_bytes()).await.unwrap();
    let answer = read_answer(&mut held, BOUND).await;
    assert_eq!(answer.status, 422, "{answer:?}");
    let r = client()
        .get(format!("{}/api/inventory", m.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_shutdown_is_answered_then_the_listener_drains() {
    // The in-flight bound tells when the held request has reached its handler.
    let m = InProcess::start(&[
        ("HTTP_MAX_REQUESTS_IN_FLIGHT", "1".into()),
        ("HTTP_BODY_TIMEOUT_MS", "60000".into()),
    ])
    .await;
    let (mut held, rest) = hold_a_request_in_flight(&m).await;
    first_refusal(&m).await;

    m.shutdown.cancel();
    // No new connection is served once the shutdown has begun.
    let started = tokio::time::Instant::now();
    while TcpStream::connect(addr(&m)).await.is_ok() {
        assert!(started.elapsed() < BOUND, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.write_all(rest.as_bytes()).await.unwrap();
    let answer = read_answer(&mut held, BOUND).await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(
        closed_within(&mut held, BOUND).await.is_some(),
        "the connection closes after its answer"
    );
    m.task
        .await
        .expect("marketplace task")
        .expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_bound_a_connection_waits_until_one_closes() {
    const MAX: usize = 2;
    let m = InProcess::start(&[("HTTP_MAX_CONNECTIONS", MAX.to_string())]).await;
    // Each served once and kept alive: they hold every slot (the readiness checks'
    // connections, closed by their clients, have left theirs).
    let mut kept = Vec::new();
    for _ in 0..MAX {
        let mut c = connect(&m).await;
        c.write_all(request("GET", "/healthz", "").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_answer(&mut c, BOUND).await.status, 200);
        kept.push(c);
    }
    // One more connects (the kernel's backlog takes it) but is not served…
    let mut waiting = connect(&m).await;
    waiting
        .write_all(request("GET", "/healthz", "").as_bytes())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(1), waiting.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "a connection past the bound was served: {early:?}"
    );
    // …until one of the others closes.
    drop(kept.pop());
    assert_eq!(read_answer(&mut waiting, BOUND).await.status, 200);
    m.stop().await.expect("drains cleanly");
}

async fn post_purchase(m: &InProcess, username: &str) -> reqwest::Response {
    client()
        .post(format!("{}/api/purchase/", m.base_url))
        .json(&json!({"username": username, "price": 1, "amount": 1}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_burst_a_client_gets_429_with_retry_after_and_is_allowed_again_later() {
    const BURST: usize = 3;
    let m = InProcess::start(&[
        ("PURCHASE_RATE_LIMIT", "1".into()),
        ("PURCHASE_RATE_BURST", BURST.to_string()),
    ])
    .await;
    // The burst passes; a token comes back every second, so a slow machine may pass one
    // or two more before the refusal.
    let mut accepted = 0;
    let refused = loop {
        let r = post_purchase(&m, "eager").await;
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 202);
        accepted += 1;
        assert!(
            accepted <= 2 * BURST,
            "{accepted} purchases and none refused"
        );
    };
    assert!(accepted >= BURST, "only {accepted} of the burst accepted");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("PURCHASE_RATE_LIMIT=1"),
        "{body}"
    );
    // Only purchases are limited.
    let r = client()
        .get(format!("{}/api/inventory", m.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // After the Retry-After, the client may purchase again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let started = tokio::time::Instant::now();
    loop {
        let r = post_purchase(&m, "eager").await;
        if r.status() == 202 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(started.elapsed() < BOUND, "still refused after Retry-After");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_rate_limit_unset_a_burst_that_the_limit_refuses_is_all_accepted() {
    const BURST: usize = 20;
    let limit = [("PURCHASE_RATE_LIMIT", "1".to_string())];
    let (unlimited, limited) = tokio::join!(InProcess::start(&[]), InProcess::start(&limit));
    let statuses = |m: &InProcess| {
        let base = m.base_url.clone();
        async move {
            let posts = (0..BURST).map(|i| {
                let base = base.clone();
                async move {
                    client()
                        .post(format!("{base}/api/purchase/"))
                        .json(&json!({"username": format!("burst-{i}"), "price": 1, "amount": 1}))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                }
            });
            futures::future::join_all(posts).await
        }
    };
    let limited_statuses = statuses(&limited).await;
    assert!(
        limited_statuses.contains(&429),
        "the same burst is limited with PURCHASE_RATE_LIMIT=1: {limited_statuses:?}"
    );
    let unlimited_statuses = statuses(&unlimited).await;
    assert_eq!(
        unlimited_statuses,
        vec![202; BURST],
        "without PURCHASE_RATE_LIMIT nothing is limited"
    );
    unlimited.stop().await.expect("drains cleanly");
    limited.stop().await.expect("drains cleanly");
}
