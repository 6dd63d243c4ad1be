//! The dead-letter service against real RabbitMQ and SQLite: what reaches the dead-letter
//! exchange is stored and served by `/api/dead-letters`; a replay keeps the original
//! message id (so the consumer's inbox still holds); a dead-lettered `PlaceOrder` finishes
//! its order UNKNOWN instead of leaving it PROCESSING.
//!
//! Targets run in-process with `marketplace::serve`, several of them over one vhost and one
//! data directory, so a test can start a consumer only after it has dead-lettered what that
//! consumer would otherwise have taken.

mod support;

use std::{path::Path, time::Duration};

use common::{
    bus::Broker,
    config::Config,
    domain::{Credits, OrderId, OrderTerms, Quantity, Username},
    messages::{ManagerMessage, Step, StepCommand},
    shutdown::Shutdown,
    topology,
};
use lapin::{
    Channel,
    options::{BasicGetOptions, BasicRejectOptions, ConfirmSelectOptions},
};
use serde_json::{Value, json};
use support::{InProcess, Vhost, client, publish_confirmed, wait_for, wait_for_readyz};

// ---- helpers ------------------------------------------------------------------------------

/// Targets of one marketplace started one by one in this process, sharing a vhost and a
/// data directory (as separate processes would).
struct Targets {
    vhost: Vhost,
    data: tempfile::TempDir,
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Targets {
    fn new() -> Targets {
        common::telemetry::init("test");
        Targets {
            vhost: Vhost::create(),
            data: tempfile::tempdir().unwrap(),
            shutdown: Shutdown::new(),
            tasks: Vec::new(),
        }
    }

    /// Starts `target` and returns its base URL once `/readyz` answers 200.
    async fn start(&mut self, target: &'static str) -> String {
        let env = support::environment(&self.vhost, self.data.path(), &[]);
        let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        self.tasks.push(tokio::spawn(marketplace::serve(
            target,
            config,
            listener,
            self.shutdown.clone(),
        )));
        wait_for_readyz(&url, target).await;
        url
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
    }
}

/// A channel with publisher confirms on `amqp_url`.
async fn channel(amqp_url: &str) -> (Channel, Shutdown) {
    let stop = Shutdown::new();
    let broker = Broker::start(amqp_url, "dead-letters-test", stop.clone());
    let conn = broker.connection(&stop).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (channel, stop)
}

/// Takes the next message of `queue` (waiting for one) and rejects it: the broker
/// dead-letters it as `rejected`, as it would a consumer's permanent failure.
async fn reject_next(channel: &Channel, queue: &str) -> Vec<u8> {
    for _ in 0..400 {
        if let Some(got) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let body = got.delivery.data.clone();
            got.delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .unwrap();
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing arrived in {queue} within 10 s");
}

async fn get(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn send(method: reqwest::Method, url: &str) -> (u16, Value) {
    let r = client().request(method, url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The letters (any status) whose message id is `message_id`.
async fn letters_of(base: &str, message_id: &str) -> Vec<Value> {
    let (status, page) = get(&format!("{base}/api/dead-letters?status=all&limit=500")).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["message_id"] == message_id)
        .cloned()
        .collect()
}

/// Waits until exactly one letter has `message_id`, and returns it.
async fn stored_letter(base: &str, message_id: &str) -> Value {
    wait_for(
        || async { letters_of(base, message_id).await.len() == 1 },
        &format!("dead letter {message_id} stored"),
    )
    .await;
    letters_of(base, message_id).await.remove(0)
}

async fn sqlite(data: &Path, service: &str) -> sqlx::SqlitePool {
    let url = format!(
        "sqlite://{}?mode=ro",
        data.join(format!("{service}.db")).display()
    );
    sqlx::SqlitePool::connect(&url).await.unwrap()
}

async fn count(pool: &sqlx::SqlitePool, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(bind.to_string())
        .fetch_one(pool)
        .await
        .unwrap()
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

// ---- the API ------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_in_worker_queues_is_stored_listed_filtered_paged_shown_and_resolved() {
    let m = InProcess::start(&[]).await;
    let base = &m.base_url;
    let (ch, _stop) = channel(&m._vhost.amqp_url()).await;
    let run = uuid::Uuid::new_v4().simple().to_string();

    // Three undecodable bodies straight into the order queue (default exchange), two into
    // payment through the marketplace exchange, one without any message id.
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = format!("garbage-order-{run}-{i}");
        publish_confirmed(
            &ch,
            "",
            topology::ORDER_QUEUE,
            Some(&id),
            None,
            b"not json {",
        )
        .await;
        ids.push(id);
    }
    for i in 0..2 {
        let id = format!("garbage-payment-{run}-{i}");
        let body = format!("{{\"garbage\": {i}}}");
        publish_confirmed(
            &ch,
            topology::EXCHANGE,
            "command.payment",
            Some(&id),
            None,
            body.as_bytes(),
        )
        .await;
        ids.push(id);
    }
    publish_confirmed(
        &ch,
        "",
        topology::DELIVERY_QUEUE,
        None,
        None,
        b"\xff\xfe no id",
    )
    .await;

    let order_letter = stored_letter(base, &ids[0]).await;
    assert_eq!(order_letter["original_queue"], "order", "{order_letter}");
    assert_eq!(order_letter["exchange"], "", "{order_letter}");
    assert_eq!(order_letter["reason"], "rejected", "{order_letter}");
    assert_eq!(order_letter["status"], "open");
    assert_eq!(order_letter["times_seen"], 1);
    assert_eq!(order_letter["order_id"], Value::Null);
    assert_eq!(order_letter["payload_preview"], "not json {");
    let payment_letter = stored_letter(base, &ids[4]).await;
    assert_eq!(payment_letter["original_queue"], "payment");
    assert_eq!(payment_letter["exchange"], "marketplace");
    assert_eq!(payment_letter["routing_key"], "command.payment");
    for id in &ids {
        stored_letter(base, id).await;
    }
    let all = || async {
        get(&format!("{base}/api/dead-letters?limit=500")).await.1["items"]
            .as_array()
            .unwrap()
            .clone()
    };
    wait_for(|| async { all().await.len() == 6 }, "six letters").await;
    let no_id = all()
        .await
        .into_iter()
        .find(|l| l["original_queue"] == "delivery")
        .unwrap();
    assert!(
        no_id["message_id"].as_str().unwrap().starts_with("no-id:"),
        "{no_id}"
    );

    // Filters.
    let ids_of = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, by_queue) = get(&format!("{base}/api/dead-letters?queue=order")).await;
    let mut got = ids_of(&by_queue);
    got.sort();
    assert_eq!(got, ids[..3].to_vec());
    let (_, by_reason) = get(&format!(
        "{base}/api/dead-letters?reason=rejected&limit=500"
    ))
    .await;
    assert_eq!(ids_of(&by_reason).len(), 6);
    let (_, by_other_reason) = get(&format!("{base}/api/dead-letters?reason=expired")).await;
    assert!(ids_of(&by_other_reason).is_empty());
    let (_, by_order) = get(&format!(
        "{base}/api/dead-letters?order_id={}",
        OrderId::new()
    ))
    .await;
    assert!(ids_of(&by_order).is_empty(), "{by_order}");

    // Pagination: newest first, every letter once, the last page points nowhere.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            None => format!("{base}/api/dead-letters?limit=4"),
            Some(c) => format!("{base}/api/dead-letters?limit=4&cursor={c}"),
        };
        let (status, page) = get(&url).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 4);
        seen.extend(items.iter().map(|l| l["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first);

    // One letter, whole: headers (with the broker's x-death) and the body.
    let id = payment_letter["id"].as_str().unwrap();
    let (status, one) = get(&format!("{base}/api/dead-letters/{id}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["payload"], "{\"garbage\": 1}");
    assert_eq!(one["headers"]["x-first-death-queue"], "payment", "{one}");
    assert!(one["headers"]["x-death"].is_array(), "{one}");
    assert_eq!(one["message_id"], ids[4]);

    // Resolve, twice: the same answer, and it leaves the open list.
    let (status, resolved) = send(
        reqwest::Method::DELETE,
        &format!("{base}/api/dead-letters/{id}"),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    let at = resolved["resolved_at_ms"].as_i64().expect("resolved_at_ms");
    let (status, again) = send(
        reqwest::Method::DELETE,
        &format!("{base}/api/dead-letters/{id}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["resolved_at_ms"].as_i64(), Some(at), "idempotent");
    assert_eq!(all().await.len(), 5);
    let (_, resolved_page) = get(&format!("{base}/api/dead-letters?status=resolved")).await;
    assert_eq!(ids_of(&resolved_page), vec![ids[4].clone()]);
    let (_, everything) = get(&format!("{base}/api/dead-letters?status=all&limit=500")).await;
    assert_eq!(ids_of(&everything).len(), 6);

    // A resolved letter is not replayed.
    let (status, body) = send(
        reqwest::Method::POST,
        &format!("{base}/api/dead-letters/{id}/replay"),
    )
    .await;
    assert_error(status, &body, 409, "conflict");

    // Unknown and malformed ids, bad parameters.
    let unknown = uuid::Uuid::now_v7();
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/dead-letters/{unknown}")),
        (
            reqwest::Method::DELETE,
            format!("/api/dead-letters/{unknown}"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/dead-letters/{unknown}/replay"),
        ),
    ] {
        let (status, body) = send(method, &format!("{base}{path}")).await;
        assert_error(status, &body, 404, "not_found");
        let (status, body) = send(
            reqwest::Method::GET,
            &format!("{base}/api/dead-letters/nope"),
        )
        .await;
        assert_error(status, &body, 400, "bad_request");
    }
    for query in [
        "limit=0",
        "limit=501",
        "limit=x",
        "status=closed",
        "cursor=garbage",
        "order_id=42",
    ] {
        let (status, body) = get(&format!("{base}/api/dead-letters?{query}")).await;
        assert_error(status, &body, 400, "bad_request");
        let name = query.split('=').next().unwrap();
        assert!(
            body["detail"].as_str().unwrap().starts_with(name),
            "{query}: {body}"
        );
    }

    // The routes are in the one OpenAPI document.
    let (_, doc) = get(&format!("{base}/api-docs/openapi.json")).await;
    for path in [
        "/api/dead-letters",
        "/api/dead-letters/{id}",
        "/api/dead-letters/{id}/replay",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from /docs");
    }
    m.stop().await.unwrap();
}

// ---- replay -------------------------------------------------------------------------------

#[tokio::test]
async fn a_replayed_command_keeps_its_message_id_and_is_applied_once_however_often_replayed() {
    let mut t = Targets::new();
    let base = t.start("dead-letter").await;
    let backend = t.start("backend").await;
    let (ch, _stop) = channel(&t.vhost.amqp_url()).await;

    // A charge, dead-lettered before any payment worker ran.
    let order_id = OrderId::new();
    let user = format!("replay-{}", uuid::Uuid::new_v4().simple());
    let terms = OrderTerms::new(
        Username::parse(&user).unwrap(),
        Credits::new(7).unwrap(),
        Quantity::new(1).unwrap(),
    )
    .unwrap();
    let cmd = StepCommand {
        order_id,
        step: Step::ChargePayment,
        terms,
        fault: None,
        reject_status: None,
    };
    let message_id = uuid::Uuid::now_v7().to_string();
    let body = serde_json::to_vec(&cmd).unwrap();
    let key = topology::step_key(Step::ChargePayment);
    publish_confirmed(
        &ch,
        topology::EXCHANGE,
        key,
        Some(&message_id),
        Some(&order_id.to_string()),
        &body,
    )
    .await;
    reject_next(&ch, topology::PAYMENT_QUEUE).await;
    let letter = stored_letter(&base, &message_id).await;
    assert_eq!(letter["original_queue"], "payment");
    assert_eq!(letter["order_id"], order_id.to_string());
    assert_eq!(letter["correlation_id"], order_id.to_string());
    let id = letter["id"].as_str().unwrap().to_string();

    // Only now the payment worker, and a queue of our own that sees its replies.
    t.start("payment").await;
    let replies = "dead-letters-test-replies";
    ch.queue_declare(
        replies.into(),
        lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        replies.into(),
        topology::EXCHANGE.into(),
        topology::RK_STEP_REPLY.into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();

    let replay = || async {
        send(
            reqwest::Method::POST,
            &format!("{base}/api/dead-letters/{id}/replay"),
        )
        .await
    };
    let (status, replayed) = replay().await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["replays"], 1);
    assert!(replayed["replayed_at_ms"].is_i64());
    assert_eq!(
        replayed["payload"],
        String::from_utf8(body.clone()).unwrap()
    );
    wait_for(
        || async { support::credits(&backend, &user).await == Some(493) },
        "the replayed charge applied",
    )
    .await;
    // The payment worker's inbox holds the original id: the replay was that message.
    let payment_db = sqlite(t.data.path(), "payment").await;
    let in_inbox = "SELECT COUNT(*) FROM inbox WHERE message_id = $1";
    assert_eq!(count(&payment_db, in_inbox, &message_id).await, 1);

    // Replayed again: the inbox drops it, so no second charge and no second reply.
    let (status, again) = replay().await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["replays"], 2);
    let quiet = || async {
        let dead_letter_db = sqlite(t.data.path(), "dead-letter").await;
        let outbox = count(
            &dead_letter_db,
            "SELECT COUNT(*) FROM outbox WHERE id = $1",
            &message_id,
        )
        .await;
        let payment_outbox = count(
            &payment_db,
            "SELECT COUNT(*) FROM outbox WHERE id <> $1",
            "-",
        )
        .await;
        let queue = ch
            .queue_declare(
                topology::PAYMENT_QUEUE.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        outbox == 0
            && payment_outbox == 0
            && queue.message_count() == 0
            && rabbit_unacked(&t.vhost.name, topology::PAYMENT_QUEUE) == 0
    };
    wait_for(quiet, "second replay published and consumed").await;
    let mut reply_count = 0;
    while let Some(got) = ch
        .basic_get(replies.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let reply: ManagerMessage = serde_json::from_slice(&got.delivery.data).unwrap();
        match reply {
            ManagerMessage::StepReply(r) if r.order_id == order_id => reply_count += 1,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!(reply_count, 1, "the duplicate was only acknowledged");
    assert_eq!(support::credits(&backend, &user).await, Some(493));
    assert_eq!(letters_of(&base, &message_id).await.len(), 1);
    t.stop().await;
}

/// Messages delivered and not yet acknowledged in `queue` of `vhost`.
fn rabbit_unacked(vhost: &str, queue: &str) -> i64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next()?.parse().ok())?
        })
        .next()
        .unwrap_or(-1)
}

// ---- a dead-lettered PlaceOrder -----------------------------------------------------------

#[tokio::test]
async fn a_dead_lettered_place_order_finishes_unknown_and_its_replay_changes_nothing() {
    let mut t = Targets::new();
    let base = t.start("dead-letter").await;
    let backend = t.start("backend").await;
    let (ch, _stop) = channel(&t.vhost.amqp_url()).await;

    // Accepted by the backend; its PlaceOrder dies before any manager saw it.
    let user = format!("never-{}", uuid::Uuid::new_v4().simple());
    let order_id =
        support::purchase(&backend, json!({"username": user, "price": 5, "amount": 2})).await;
    let body = reject_next(&ch, topology::ORDERS_QUEUE).await;
    match serde_json::from_slice::<ManagerMessage>(&body).unwrap() {
        ManagerMessage::PlaceOrder(p) => assert_eq!(p.order_id.to_string(), order_id),
        other => panic!("not the PlaceOrder: {other:?}"),
    }
    let (_, page) = get(&format!("{base}/api/dead-letters?order_id={order_id}")).await;
    let found = |page: &Value| page["items"].as_array().map_or(0, Vec::len);
    wait_for(
        || async {
            found(
                &get(&format!("{base}/api/dead-letters?order_id={order_id}"))
                    .await
                    .1,
            ) == 1
        },
        "the PlaceOrder stored",
    )
    .await;
    let _ = page;
    let (_, page) = get(&format!("{base}/api/dead-letters?order_id={order_id}")).await;
    let letter = page["items"][0].clone();
    assert_eq!(letter["original_queue"], topology::ORDERS_QUEUE);
    assert_eq!(letter["routing_key"], topology::RK_PLACE_ORDER);

    // The manager starts and reads the notice: the order is finished UNKNOWN.
    t.start("manager").await;
    for worker in ["order", "payment", "inventory", "delivery"] {
        t.start(worker).await;
    }
    let order = support::final_order(&backend, &order_id, Duration::from_secs(10)).await;
    assert_eq!(order["status"], "UNKNOWN", "{order:#}");
    let timeline = order["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{order:#}");
    assert_eq!(timeline[0]["event"], "dead_lettered");
    let manager_db = sqlite(t.data.path(), "manager").await;
    let saga_status = || async {
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT status, phase, version FROM sagas WHERE order_id = $1",
        )
        .bind(&order_id)
        .fetch_one(&manager_db)
        .await
        .unwrap()
    };
    assert_eq!(saga_status().await, ("UNKNOWN".into(), "done".into(), 1));

    // The PlaceOrder replayed: the manager takes it (its inbox has the id) and does nothing.
    let id = letter["id"].as_str().unwrap();
    let (status, replayed) = send(
        reqwest::Method::POST,
        &format!("{base}/api/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(status, 202, "{replayed}");
    let message_id = letter["message_id"].as_str().unwrap().to_string();
    wait_for(
        || async {
            count(
                &manager_db,
                "SELECT COUNT(*) FROM inbox WHERE message_id = $1",
                &message_id,
            )
            .await
                == 1
        },
        "the replayed PlaceOrder consumed by the manager",
    )
    .await;
    assert_eq!(saga_status().await, ("UNKNOWN".into(), "done".into(), 1));
    let (_, order) = get(&format!("{backend}/api/orders/{order_id}")).await;
    assert_eq!(order["status"], "UNKNOWN");
    assert_eq!(order["timeline"].as_array().unwrap().len(), 1);
    let (status, _) = get(&format!("{backend}/api/users/{user}")).await;
    assert_eq!(
        status, 404,
        "payment never saw the buyer: nothing was charged"
    );
    let (_, listed) = get(&format!("{backend}/api/all-transaction")).await;
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == order_id.as_str()),
        "an order never created is not listed"
    );
    t.stop().await;
}

// ---- PostgreSQL -----------------------------------------------------------------------------

#[tokio::test]
async fn on_postgresql_a_letter_is_stored_listed_replayed_and_resolved_too() {
    let pg = support::PgDatabase::create();
    let m = InProcess::start(&[("DATABASE_URL", pg.url())]).await;
    let base = &m.base_url;
    let (ch, _stop) = channel(&m._vhost.amqp_url()).await;
    let message_id = format!("pg-garbage-{}", uuid::Uuid::new_v4().simple());
    publish_confirmed(
        &ch,
        "",
        topology::INVENTORY_QUEUE,
        Some(&message_id),
        None,
        b"[1, 2",
    )
    .await;

    let letter = stored_letter(base, &message_id).await;
    assert_eq!(letter["original_queue"], "inventory");
    let id = letter["id"].as_str().unwrap();
    let (status, page) = get(&format!(
        "{base}/api/dead-letters?queue=inventory&reason=rejected&limit=1"
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], id);

    let (status, replayed) = send(
        reqwest::Method::POST,
        &format!("{base}/api/dead-letters/{id}/replay"),
    )
    .await;
    assert_eq!(status, 202, "{replayed}");
    wait_for(
        || async {
            let l = letters_of(base, &message_id).await;
            l.len() == 1 && l[0]["times_seen"] == 2 && l[0]["replays"] == 1
        },
        "the replayed garbage dead-lettered again as the same letter",
    )
    .await;

    let (status, resolved) = send(
        reqwest::Method::DELETE,
        &format!("{base}/api/dead-letters/{id}"),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    let (_, open) = get(&format!("{base}/api/dead-letters?queue=inventory")).await;
    assert_eq!(open["items"].as_array().unwrap().len(), 0, "{open}");
    m.stop().await.unwrap();
}
