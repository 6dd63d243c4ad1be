//! `GET /api/orders/stream` over real sockets, against a whole marketplace running in this
//! process (own vhost, own data, own port): sagas streamed step by step, filters, resume,
//! duplicates, and a client that stops reading.
//!
//! No assertion is about time: every wait is bounded, and a stream never ends by itself,
//! so each reader waits for an event it knows will come.

mod support;

use std::{collections::BTreeMap, time::Duration};

use common::{
    domain::{Credits, OrderId, OrderStatus, OrderTerms, Quantity, Username},
    messages::{Event, Events, OrderUpdated, Phase, Step, TimelineEntry, TimelineEvent},
    topology,
};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One event of a stream.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// A stream read over HTTP, an event at a time.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(base_url: &str, query: &str, last_event_id: Option<i64>) -> Stream {
        // No overall timeout: the answer never ends.
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()
            .unwrap();
        let mut req = client.get(format!("{base_url}/api/orders/stream{query}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped); panics if none comes within 30 s.
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(e) = parse_event(&block) {
                    return e;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .expect("the stream reads")
                .expect("the stream goes on");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until `done` says the last one came (included).
    async fn until(&mut self, mut done: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let last = done(&e);
            seen.push(e);
            if last {
                return seen;
            }
        }
    }
}

fn parse_event(block: &str) -> Option<Sse> {
    let (mut id, mut event, mut data) = (None, "message".to_string(), None);
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data = Some(serde_json::from_str(v.trim()).unwrap());
        }
    }
    Some(Sse {
        id,
        event,
        data: data?,
    })
}

fn is_order(e: &Sse, order_id: &str) -> bool {
    e.event == "order" && e.data["order_id"] == order_id
}

/// The (step, event) pairs an order's feed events list, and their seqs.
fn steps_of(events: &[Sse], order_id: &str) -> (Vec<i64>, Vec<(String, String)>) {
    let steps: Vec<&Value> = events
        .iter()
        .filter(|e| is_order(e, order_id))
        .flat_map(|e| e.data["steps"].as_array().unwrap())
        .collect();
    (
        steps.iter().map(|s| s["seq"].as_i64().unwrap()).collect(),
        steps
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap().to_string(),
                    s["event"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

fn ids(events: &[Sse]) -> Vec<i64> {
    events.iter().filter_map(|e| e.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_streams_every_step_once_in_order_filtered_and_resumable() {
    sagas_stream_every_step_once(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_streams_the_same_on_postgresql() {
    let pg = PgDatabase::create();
    sagas_stream_every_step_once(&[("DATABASE_URL", pg.url())]).await;
}

async fn sagas_stream_every_step_once(extra: &[(&str, String)]) {
    let m = InProcess::start(extra).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (alice, bob) = (format!("alice-{run}"), format!("bob-{run}"));
    let mut all = Stream::open(&m.base_url, "", None).await;
    let mut alices = Stream::open(&m.base_url, &format!("?username={alice}"), None).await;

    let good = purchase(
        &m.base_url,
        json!({"username": alice, "price": 10, "amount": 2}),
    )
    .await;
    // More than bob's credits: refused by payment, compensated, final.
    let broke = purchase(
        &m.base_url,
        json!({"username": bob, "price": 300, "amount": 2}),
    )
    .await;
    let finished = |e: &Sse, id: &str| is_order(e, id) && e.data["phase"] == "done";
    let mut done = (false, false);
    let seen = all
        .until(|e| {
            done.0 |= finished(e, &good);
            done.1 |= finished(e, &broke);
            done == (true, true)
        })
        .await;

    for (id, status) in [(&good, "SUCCESS"), (&broke, "INSUFFICIENT_FUND")] {
        let order = final_order(&m.base_url, id, Duration::from_secs(30)).await;
        assert_eq!(order["status"], status);
        let events: Vec<&Sse> = seen.iter().filter(|e| is_order(e, id)).collect();
        assert_eq!(events[0].data["status"], "PROCESSING", "{events:#?}");
        assert!(events.iter().all(|e| e.data["product"] == "late_token"));
        assert_eq!(events.last().unwrap().data["status"], status);
        // Versions grow, and every entry of the timeline is there once, in order: the
        // stream says what GET /api/orders/{id} says.
        let versions: Vec<i64> = events
            .iter()
            .map(|e| e.data["version"].as_i64().unwrap())
            .collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        let (seqs, steps) = steps_of(&seen, id);
        let timeline = order["timeline"].as_array().unwrap();
        assert_eq!(seqs, (1..=timeline.len() as i64).collect::<Vec<_>>());
        let expected: Vec<(String, String)> = timeline
            .iter()
            .map(|t| {
                (
                    t["step"].as_str().unwrap().to_string(),
                    t["event"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(steps, expected, "{id}");
    }
    let all_ids = ids(&seen);
    assert!(all_ids.windows(2).all(|w| w[1] == w[0] + 1), "{all_ids:?}");

    // Filtered by user: alice's order only, all of it.
    let theirs = alices.until(|e| finished(e, &good)).await;
    assert!(theirs.iter().all(|e| e.data["username"] == alice.as_str()));
    assert_eq!(steps_of(&theirs, &good), steps_of(&seen, &good));
    // Filtered by order, from the start of the feed.
    let mut one = Stream::open(
        &m.base_url,
        &format!("?order_id={broke}&last_event_id=0"),
        None,
    )
    .await;
    let its = one.until(|e| finished(e, &broke)).await;
    assert!(its.iter().all(|e| is_order(e, &broke)));
    assert_eq!(steps_of(&its, &broke), steps_of(&seen, &broke));

    // Resumed after an id: exactly the events after it, in the header or the parameter.
    let k = all_ids[all_ids.len() / 2];
    let last = *all_ids.last().unwrap();
    let expected: Vec<i64> = all_ids.iter().copied().filter(|id| *id > k).collect();
    let mut resumed = Stream::open(&m.base_url, "", Some(k)).await;
    assert_eq!(ids(&resumed.until(|e| e.id == Some(last)).await), expected);
    let mut resumed = Stream::open(&m.base_url, &format!("?last_event_id={k}"), None).await;
    assert_eq!(ids(&resumed.until(|e| e.id == Some(last)).await), expected);

    m.stop().await.unwrap();
}

fn terms(username: &str) -> OrderTerms {
    OrderTerms::new(
        Username::parse(username).unwrap(),
        Credits::new(1).unwrap(),
        Quantity::new(1).unwrap(),
    )
    .unwrap()
}

/// An order's state at `version` with a timeline of `entries` entries, each with a detail
/// of `detail_len` characters (to make rows as large as a test needs).
fn update(id: OrderId, t: &OrderTerms, version: i64, entries: usize, detail_len: usize) -> Event {
    Event::OrderUpdated(OrderUpdated {
        order_id: id,
        terms: t.clone(),
        status: OrderStatus::Processing,
        phase: Phase::Running,
        created: true,
        version,
        placed_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000 + version,
        timeline: (0..entries)
            .map(|i| TimelineEntry {
                seq: i as i64 + 1,
                at_ms: 1_700_000_000_000 + i as i64,
                step: Step::CreateOrder,
                event: TimelineEvent::Sent,
                detail: (detail_len > 0).then(|| "x".repeat(detail_len)),
                span_id: None,
            })
            .collect(),
        trace_id: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_or_repeated_event_adds_no_feed_row() {
    let m = InProcess::start(&[]).await;
    let (_conn, channel) = confirming_channel(&m._vhost).await;
    let id = OrderId::new();
    let t = terms(&format!(
        "dup-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let publish = |message_id: &'static str, event: Event| {
        let channel = channel.clone();
        async move {
            let body = serde_json::to_vec(&Events {
                events: vec![event],
            })
            .unwrap();
            publish_confirmed(
                &channel,
                topology::EVENTS_EXCHANGE,
                topology::RK_EVENTS,
                Some(message_id),
                None,
                &body,
            )
            .await;
        }
    };
    // The same message twice (a redelivery), the same event under another message id (a
    // repeated publish), then the next version.
    publish("dup-1", update(id, &t, 1, 1, 0)).await;
    publish("dup-1", update(id, &t, 1, 1, 0)).await;
    publish("dup-2", update(id, &t, 1, 1, 0)).await;
    publish("dup-3", update(id, &t, 2, 2, 0)).await;
    let mut stream = Stream::open(
        &m.base_url,
        &format!("?order_id={id}&last_event_id=0"),
        None,
    )
    .await;
    let events = stream
        .until(|e| is_order(e, &id.to_string()) && e.data["version"] == 2)
        .await;
    // One row per applied version at most (versions 1 and 2 may share one, when they were
    // applied in one batch), and each step once.
    assert!(events.len() <= 2, "{events:#?}");
    assert_eq!(steps_of(&events, &id.to_string()).0, [1, 2]);
    m.stop().await.unwrap();
}

/// A client that sends its request, reads the answer's head, and then never reads again
/// (its receive buffer made small, so that its connection fills up soon).
async fn stalled_client(base_url: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let addr: std::net::SocketAddr = base_url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/orders/stream HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer's head")
            .unwrap();
        assert_eq!(n, 1, "the connection stays open");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (stream, head)
}

/// How many stream clients the marketplace dropped because their connection did not
/// drain (`/metrics`).
async fn dropped_as_stalled(base_url: &str) -> f64 {
    let text = client()
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("marketplace_order_stream_dropped_total{")
                && l.contains("reason=\"stalled\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The id of the last whole event in what a stream's connection carried.
fn last_whole_event_id(raw: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(raw);
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.pop(); // After the last blank line: an event cut short, or nothing.
    blocks.iter().rev().find_map(|b| {
        b.lines()
            .find_map(|l| l.strip_prefix("id: ").map(|v| v.trim().parse().unwrap()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_nobody_waits_for_it() {
    const BULK_ORDERS: usize = 1000;
    const PER_MESSAGE: usize = 25;
    let m = InProcess::start(&[]).await;
    let mut healthy = Stream::open(&m.base_url, "", None).await;
    let (mut stalled, _head) = stalled_client(&m.base_url).await;

    // Enough rows (about 8 KB each) to fill the stalled client's socket, its connection's
    // buffers and its buffer in the server several times over; they are projected like any
    // event. Real orders go through the saga meanwhile.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let t = terms(&format!("bulk-{run}"));
    let bulk: Vec<OrderId> = (0..BULK_ORDERS).map(|_| OrderId::new()).collect();
    let (_conn, channel) = confirming_channel(&m._vhost).await;
    let mut orders = Vec::new();
    for (i, chunk) in bulk.chunks(PER_MESSAGE).enumerate() {
        let events = Events {
            events: chunk.iter().map(|id| update(*id, &t, 1, 40, 150)).collect(),
        };
        let message_id = format!("bulk-{run}-{i}");
        publish_confirmed(
            &channel,
            topology::EVENTS_EXCHANGE,
            topology::RK_EVENTS,
            Some(&message_id),
            None,
            &serde_json::to_vec(&events).unwrap(),
        )
        .await;
        if i % 10 == 0 {
            let body = json!({"username": format!("buyer-{run}-{i}"), "price": 1, "amount": 1});
            orders.push(purchase(&m.base_url, body).await);
        }
    }

    // The other client gets every event: each bulk row, and each real order to its end.
    let mut bulk_seen = std::collections::HashSet::new();
    let mut finals: BTreeMap<String, String> = BTreeMap::new();
    let seen = healthy
        .until(|e| {
            let id = e.data["order_id"].as_str().unwrap().to_string();
            if e.data["username"] == t.username.as_str() {
                bulk_seen.insert(id);
            } else if e.data["phase"] == "done" {
                finals.insert(id, e.data["status"].as_str().unwrap().to_string());
            }
            bulk_seen.len() == BULK_ORDERS && finals.len() == orders.len()
        })
        .await;
    let seen_ids = ids(&seen);
    assert!(
        seen_ids.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless, in order"
    );
    // The sagas were not held up: each ended as it would alone.
    for id in &orders {
        assert_eq!(finals[id], "SUCCESS");
        let order = final_order(&m.base_url, id, Duration::from_secs(30)).await;
        assert_eq!(order["status"], "SUCCESS");
    }

    // The stalled client is disconnected (the server counts it; reading its socket before
    // would let it catch up), and its connection ends after what it still holds.
    let mut waited = 0;
    while dropped_as_stalled(&m.base_url).await < 1.0 {
        waited += 1;
        assert!(
            waited < 600,
            "the stalled client was not dropped within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut raw = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stalled.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled client is still connected ({} bytes read)",
        raw.len()
    );
    // It got less than the healthy one, and may resume from its last whole event.
    let last = last_whole_event_id(&raw).expect("some events reached it");
    let newest = *seen_ids.last().unwrap();
    assert!(last < newest, "{last} < {newest}");
    let mut resumed = Stream::open(&m.base_url, "", Some(last)).await;
    let rest = ids(&resumed.until(|e| e.id == Some(newest)).await);
    assert_eq!(rest, (last + 1..=newest).collect::<Vec<_>>());
    m.stop().await.unwrap();
}
