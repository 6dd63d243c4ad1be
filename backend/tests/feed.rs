//! The order feed and `GET /api/orders/stream`, through the projection and the router (no
//! socket, no broker): each step appears once whatever the deliveries, filters, resume.
//!
//! A stream never ends by itself, so no test waits for "nothing more": each projects a
//! last event it waits for, and what came before it is the whole answer.

mod support;

use std::time::Duration;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use backend::Projection;
use common::{
    bus::{BatchHandler, Incoming},
    domain::{OrderId, OrderStatus, OrderTerms},
    messages::{Event, Events, OrderUpdated, Phase, Step, TimelineEntry, TimelineEvent},
};
use http_body_util::BodyExt;
use serde_json::Value;
use support::{TestApp, assert_error, spawn_app, terms};
use tower::ServiceExt;

/// One event of the stream.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// A stream opened on the router, read an event at a time.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> Stream {
        let mut req = Request::get(path);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let response = app
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped); panics if none comes within 10 s.
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).unwrap());
                    }
                }
                if let Some(data) = data {
                    return Sse { id, event, data };
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }

    /// Waits for a comment line (`:` first: a keep-alive) in a quiet stream; panics if none
    /// comes within `bound`.
    async fn keep_alive(&mut self, bound: Duration) {
        let wait = async {
            loop {
                if self.buffer.lines().any(|l| l.starts_with(':')) {
                    return;
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream goes on")
                    .unwrap();
                if let Ok(bytes) = frame.into_data() {
                    self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
                }
            }
        };
        tokio::time::timeout(bound, wait)
            .await
            .expect("a keep-alive comment");
    }

    /// The `order` events up to and including the first of `order_id` at `version`.
    async fn until(&mut self, order_id: OrderId, version: i64) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            assert_eq!(e.event, "order", "{e:?}");
            let last = e.data["order_id"] == order_id.to_string() && e.data["version"] == version;
            seen.push(e);
            if last {
                return seen;
            }
        }
    }
}

/// The saga's state at `version`, with a timeline of `entries` entries.
fn update(
    id: OrderId,
    t: &OrderTerms,
    version: i64,
    entries: i64,
    status: OrderStatus,
) -> OrderUpdated {
    let steps = [
        (Step::CreateOrder, "sent"),
        (Step::CreateOrder, "done"),
        (Step::ChargePayment, "sent"),
        (Step::ChargePayment, "done"),
        (Step::ReserveStock, "sent"),
        (Step::ReserveStock, "done"),
    ];
    OrderUpdated {
        order_id: id,
        terms: t.clone(),
        status,
        phase: if status == OrderStatus::Processing {
            Phase::Running
        } else {
            Phase::Done
        },
        created: entries >= 2,
        version,
        placed_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000 + version,
        timeline: (0..entries)
            .map(|i| TimelineEntry {
                seq: i + 1,
                at_ms: 1_700_000_000_000 + i,
                step: steps[i as usize].0,
                event: TimelineEvent::parse(steps[i as usize].1).expect("an event"),
                detail: None,
                span_id: None,
            })
            .collect(),
        trace_id: None,
    }
}

fn running(id: OrderId, t: &OrderTerms, version: i64, entries: i64) -> Event {
    Event::OrderUpdated(update(id, t, version, entries, OrderStatus::Processing))
}

fn incoming(message_id: &str, event: &Events) -> Incoming {
    Incoming {
        message_id: message_id.into(),
        routing_key: common::topology::RK_EVENTS.into(),
        exchange: common::topology::EVENTS_EXCHANGE.into(),
        correlation_id: None,
        body: serde_json::to_vec(event).unwrap(),
        redelivered: false,
        properties: lapin::BasicProperties::default(),
        cx: Default::default(),
    }
}

fn seqs(e: &Sse) -> Vec<i64> {
    e.data["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn each_step_is_in_the_feed_once_however_its_updates_arrive() {
    let app = spawn_app().await;
    // Placed through the API: the read model holds the order, with an empty timeline.
    let id = app.buy("ann", 1, 1).await;
    let t = terms("ann", 1, 1);
    app.project_as("m-1", running(id, &t, 1, 1)).await;
    // Redelivered: the inbox drops it.
    app.project_as("m-1", running(id, &t, 1, 1)).await;
    app.project_as("m-2", running(id, &t, 2, 2)).await;
    // The same update published again under another message id: not newer, no row.
    app.project_as("m-2-again", running(id, &t, 2, 2)).await;
    // Versions 3 and 5 in one message and 4 in another, in one batch: only 5 is applied,
    // and its row carries the entries of 3 and 4 too.
    let projection = Projection::new(app.db.clone());
    let together = Events {
        events: vec![running(id, &t, 3, 3), running(id, &t, 5, 5)],
    };
    let alone = Events {
        events: vec![running(id, &t, 4, 4)],
    };
    projection
        .handle_batch(&[incoming("m-35", &together), incoming("m-4", &alone)])
        .await
        .unwrap();
    // Late: older than what the read model holds.
    app.project_as("m-4-late", running(id, &t, 4, 4)).await;
    app.project_as(
        "m-6",
        Event::OrderUpdated(update(id, &t, 6, 6, OrderStatus::Success)),
    )
    .await;

    let mut stream = Stream::open(&app, "/api/orders/stream?last_event_id=0", None).await;
    let events = stream.until(id, 6).await;
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e.data["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 5, 6], "{events:#?}");
    let steps: Vec<Vec<i64>> = events.iter().map(seqs).collect();
    assert_eq!(steps, [vec![1], vec![2], vec![3, 4, 5], vec![6]]);
    // Ids increase by one: the feed has no gap.
    let ids: Vec<i64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (ids[0]..ids[0] + 4).collect::<Vec<_>>());
    let last = &events[3].data;
    assert_eq!(last["status"], "SUCCESS");
    assert_eq!(last["phase"], "done");
    assert_eq!(last["username"], "ann");
    assert_eq!(last["product"], "late_token");
    assert_eq!(last["steps"][0]["step"], "inventory.reserve");
    assert_eq!(last["steps"][0]["event"], "done");
}

#[tokio::test]
async fn an_order_never_placed_here_is_in_the_feed_from_its_first_update() {
    let app = spawn_app().await;
    let (id, t) = (OrderId::new(), terms("cyd", 1, 1));
    app.project(running(id, &t, 3, 3)).await;
    let mut stream = Stream::open(&app, "/api/orders/stream?last_event_id=0", None).await;
    let events = stream.until(id, 3).await;
    assert_eq!(events.len(), 1);
    assert_eq!(seqs(&events[0]), [1, 2, 3]);
}

#[tokio::test]
async fn a_live_stream_gets_what_is_applied_after_it_opened_filtered_by_user_or_order() {
    let app = spawn_app().await;
    let (ann, bob) = (terms("ann", 1, 1), terms("bob", 1, 1));
    let (a1, a2, b1) = (OrderId::new(), OrderId::new(), OrderId::new());
    // From now on: what is applied once they are open. (A row committed just before a
    // stream opened, that the tailer had not read yet, may come too: "now" is when the
    // stream joins the live feed.)
    let mut everything = Stream::open(&app, "/api/orders/stream", None).await;
    let mut anns = Stream::open(&app, "/api/orders/stream?username=ann", None).await;
    let mut one = Stream::open(&app, &format!("/api/orders/stream?order_id={a1}"), None).await;
    app.project(running(a1, &ann, 1, 1)).await;
    app.project(running(b1, &bob, 1, 1)).await;
    app.project(running(a1, &ann, 2, 2)).await;
    app.project(running(a2, &ann, 1, 1)).await;
    app.project(running(b1, &bob, 2, 2)).await;
    app.project(running(a1, &ann, 3, 3)).await;
    app.project(running(a2, &ann, 2, 2)).await;

    let key = |e: &Sse| {
        (
            e.data["order_id"].as_str().unwrap().to_string(),
            e.data["version"].as_i64().unwrap(),
        )
    };
    let seen: Vec<_> = everything.until(a2, 2).await.iter().map(key).collect();
    let expected = |orders: &[(OrderId, i64)]| -> Vec<(String, i64)> {
        orders.iter().map(|(o, v)| (o.to_string(), *v)).collect()
    };
    assert_eq!(
        seen,
        expected(&[
            (a1, 1),
            (b1, 1),
            (a1, 2),
            (a2, 1),
            (b1, 2),
            (a1, 3),
            (a2, 2)
        ])
    );
    let seen: Vec<_> = anns.until(a2, 2).await.iter().map(key).collect();
    assert_eq!(
        seen,
        expected(&[(a1, 1), (a1, 2), (a2, 1), (a1, 3), (a2, 2)])
    );
    let seen: Vec<_> = one.until(a1, 3).await.iter().map(key).collect();
    assert_eq!(seen, expected(&[(a1, 1), (a1, 2), (a1, 3)]));
}

#[tokio::test]
async fn a_resumed_stream_starts_right_after_its_id() {
    let app = spawn_app().await;
    let t = terms("dee", 1, 1);
    let id = OrderId::new();
    for v in 1..=5 {
        app.project(running(id, &t, v, v)).await;
    }
    let mut all = Stream::open(&app, "/api/orders/stream?last_event_id=0", None).await;
    let ids: Vec<i64> = all
        .until(id, 5)
        .await
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(ids.len(), 5);

    // The header, the parameter, and both (the header wins).
    for (path, header) in [
        ("/api/orders/stream".to_string(), Some(ids[1].to_string())),
        (format!("/api/orders/stream?last_event_id={}", ids[1]), None),
        (
            "/api/orders/stream?last_event_id=0".to_string(),
            Some(ids[1].to_string()),
        ),
    ] {
        let mut resumed = Stream::open(&app, &path, header.as_deref()).await;
        let got: Vec<i64> = resumed
            .until(id, 5)
            .await
            .iter()
            .map(|e| e.id.unwrap())
            .collect();
        assert_eq!(got, ids[2..], "{path} {header:?}");
    }
    // Resuming after the last one: only what comes next.
    let mut resumed = Stream::open(&app, "/api/orders/stream", Some(&ids[4].to_string())).await;
    app.project(running(id, &t, 6, 6)).await;
    let got = resumed.until(id, 6).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, Some(ids[4] + 1));
}

#[tokio::test]
async fn an_id_this_feed_never_had_is_answered_with_a_reset_first() {
    let app = spawn_app().await;
    let t = terms("eve", 1, 1);
    let id = OrderId::new();
    app.project(running(id, &t, 1, 1)).await;
    let mut stream = Stream::open(&app, "/api/orders/stream", Some("999999")).await;
    let reset = stream.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id, None);
    assert_eq!(reset.data["reason"], "unknown_id");
    assert_eq!(reset.data["last_event_id"], 999999);
    let after = reset.data["resumes_after"].as_i64().unwrap();
    app.project(running(id, &t, 2, 2)).await;
    let next = stream.until(id, 2).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, Some(after + 1));
}

#[tokio::test]
async fn a_bad_parameter_is_400_naming_it() {
    let app = spawn_app().await;
    for (path, header, field) in [
        ("/api/orders/stream?order_id=nope", None, "order_id"),
        ("/api/orders/stream?username=%20ann", None, "username"),
        ("/api/orders/stream?last_event_id=-1", None, "last_event_id"),
        ("/api/orders/stream?last_event_id=x", None, "last_event_id"),
        ("/api/orders/stream", Some("soon"), "Last-Event-ID"),
    ] {
        let mut req = Request::get(path);
        if let Some(h) = header {
            req = req.header("last-event-id", h);
        }
        let response = app
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let reply = support::Reply {
            status,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        };
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request", Some(field));
    }
    // Repeated: which one was meant is not guessed.
    let r = app.get("/api/orders/stream?username=a&username=b").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
}

#[tokio::test]
async fn the_stream_is_documented() {
    let app = spawn_app().await;
    let doc = app.get("/api-docs/openapi.json").await.body;
    let op = &doc["paths"]["/api/orders/stream"]["get"];
    let ok = &op["responses"]["200"]["content"]["text/event-stream"];
    assert!(
        ok["example"].as_str().unwrap().contains("event: order"),
        "{op:#}"
    );
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["username", "order_id", "last_event_id", "Last-Event-ID"] {
        assert!(params.contains(&name), "{name} in {params:?}");
    }
    assert!(op["responses"]["400"].is_object());
    assert!(doc["components"]["schemas"]["OrderEvent"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_the_same_orders_applied_concurrently_put_each_step_in_the_feed_once() {
    // As two replicas' projections would, on PostgreSQL each in a transaction of its own at
    // the same time (the pool has several connections); SQLite takes them in turn.
    const ORDERS: usize = 6;
    const VERSIONS: i64 = 6;
    let app = spawn_app().await;
    let t = terms("fay", 1, 1);
    let ids: Vec<OrderId> = (0..ORDERS).map(|_| OrderId::new()).collect();
    let mut tasks = Vec::new();
    for replica in 0..2 {
        let (projection, ids, t) = (app.projection.clone(), ids.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for v in (1..=VERSIONS).filter(|v| v % 2 == replica) {
                for id in &ids {
                    let event = running(*id, &t, v, v);
                    projection
                        .apply(&uuid::Uuid::now_v7().to_string(), &event)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Every order's last version, projected again: the feed's last rows may be either
    // replica's, so the reader waits for a sentinel written after both finished.
    let sentinel = OrderId::new();
    app.project(running(sentinel, &t, 1, 1)).await;
    let mut stream = Stream::open(&app, "/api/orders/stream?last_event_id=0", None).await;
    let events = stream.until(sentinel, 1).await;
    let ids_seen: Vec<i64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(
        ids_seen.windows(2).all(|w| w[1] == w[0] + 1),
        "{ids_seen:?}"
    );
    for id in &ids {
        let steps: Vec<i64> = events
            .iter()
            .filter(|e| e.data["order_id"] == id.to_string())
            .flat_map(seqs)
            .collect();
        assert_eq!(steps, (1..=VERSIONS).collect::<Vec<_>>(), "order {id}");
    }
}

/// Both streams, left quiet, send a comment line every 15 s, so that proxies and clients do
/// not take them for dead.
#[tokio::test]
async fn quiet_streams_send_keep_alive_comments() {
    let app = spawn_app().await;
    let mut orders = Stream::open(&app, "/api/orders/stream", None).await;
    let mut summary = Stream::open(&app, "/api/analytics/stream", None).await;
    // The summary stream starts with the figures; the order stream has nothing to say.
    assert_eq!(summary.next().await.event, "summary");
    let bound = backend::api::stream::KEEP_ALIVE + Duration::from_secs(10);
    tokio::join!(orders.keep_alive(bound), summary.keep_alive(bound));
}
