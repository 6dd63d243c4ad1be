//! The delivery machinery on its own, against real RabbitMQ and SQLite: the outbox relay
//! publishes what was committed while the broker was away, once it is back; a publish
//! repeated after a crash (confirmed but not yet deleted) reaches the consumer twice with
//! one message id, and the inbox applies it once; the broker supervisor reconnects after
//! losing its vhost and declares the topology again.

mod support;

use std::time::Duration;

use common::{
    bus::{Broker, Publisher},
    config::Config,
    db::Db,
    inbox, outbox,
    shutdown::Shutdown,
    topology,
};
use futures::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::json;
use support::*;

/// A service's delivery machinery without its handlers: its database and its broker
/// supervisor, on `vhost` (which may not exist yet).
struct Rig {
    db: Db,
    broker: Broker,
    shutdown: Shutdown,
    _data: tempfile::TempDir,
}

impl Rig {
    async fn start(vhost: &Vhost) -> Rig {
        common::telemetry::init("test");
        let data = tempfile::tempdir().unwrap();
        let env = environment(vhost, data.path(), &[]);
        let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        let shutdown = Shutdown::new();
        let db = Db::open(&config, "delivery", &delivery::MIGRATIONS, &shutdown)
            .await
            .unwrap();
        let broker = Broker::start(&config.amqp_url, "delivery", shutdown.clone());
        Rig {
            db,
            broker,
            shutdown,
            _data: data,
        }
    }

    fn relay(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(outbox::relay(
            self.db.clone(),
            self.broker.clone(),
            self.shutdown.clone(),
        ))
    }
}

/// Commits `n` messages for the payment queue in one transaction and returns their ids.
async fn commit_messages(db: &Db, n: usize) -> Vec<String> {
    let mut tx = db.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = outbox::enqueue(
            &mut tx,
            topology::EXCHANGE,
            topology::step_key(common::messages::Step::ChargePayment),
            None,
            &json!({"n": i}),
        )
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    db.wake_outbox();
    ids
}

/// Takes `n` messages off `queue` (acking them) and returns their message ids, in order.
async fn take(vhost: &Vhost, queue: &str, n: usize) -> Vec<String> {
    let conn = amqp_connection(vhost).await;
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", ids.len()))
            .unwrap()
            .unwrap();
        ids.push(
            delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string(),
        );
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    ids
}

/// How many messages wait in `queue` (declared the marketplace's way).
async fn depth(vhost: &Vhost, queue: &str, dead_letters: bool) -> u32 {
    let conn = amqp_connection(vhost).await;
    let channel = conn.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            common::bus::queue_arguments(dead_letters),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_what_was_committed_while_the_broker_was_away() {
    // The vhost does not exist yet: the broker is unreachable for this service.
    let vhost = Vhost {
        name: format!("test-{}", uuid::Uuid::new_v4().simple()),
    };
    let rig = Rig::start(&vhost).await;
    let (db, broker) = (&rig.db, &rig.broker);
    let relay = rig.relay();

    let ids = commit_messages(db, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!broker.is_connected());
    // Never reached since it started: not an outage (a restarted manager's overdue
    // deadlines fire at once).
    assert!(!broker.is_in_outage());
    assert_eq!(outbox::backlog(db).await.unwrap(), 20, "kept while away");

    let vhost = Vhost::create_named(&vhost.name);
    wait_for(
        || async { outbox::backlog(db).await.unwrap() == 0 },
        "the outbox to drain once the broker is back",
    )
    .await;
    // Published in commit order, each once.
    assert_eq!(take(&vhost, topology::PAYMENT_QUEUE, 20).await, ids);
    assert_eq!(depth(&vhost, topology::PAYMENT_QUEUE, true).await, 0);

    rig.shutdown.cancel();
    relay.await.unwrap();
}

/// Commits `n` messages and hands them to the relay, as handlers do; returns their ids.
async fn commit_and_hand_over(db: &Db, n: usize) -> Vec<String> {
    let messages: Vec<outbox::Pending> = (0..n)
        .map(|i| {
            outbox::message(
                &common::telemetry::Context::new(),
                topology::EXCHANGE,
                topology::step_key(common::messages::Step::ChargePayment),
                None,
                &json!({"handed": i}),
            )
            .unwrap()
        })
        .collect();
    let mut tx = db.begin().await.unwrap();
    outbox::enqueue_all(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();
    let ids = messages.iter().map(|m| m.id.clone()).collect();
    db.hand_to_relay(messages);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_handed_over_are_published_once_and_rows_not_handed_over_are_found_by_the_scan() {
    let vhost = Vhost::create();
    let rig = Rig::start(&vhost).await;
    let db = &rig.db;
    rig.broker
        .connection(&rig.shutdown)
        .await
        .expect("connected");
    let relay = rig.relay();

    // Handed over: published at once and deleted once confirmed.
    let handed = commit_and_hand_over(db, 30).await;
    wait_for(
        || async { outbox::backlog(db).await.unwrap() == 0 },
        "the handed rows confirmed and deleted",
    )
    .await;
    assert_eq!(take(&vhost, topology::PAYMENT_QUEUE, 30).await, handed);

    // Committed with nobody telling the relay (a crash between commit and handoff): the
    // backstop scan publishes it within a few seconds.
    let mut tx = db.begin().await.unwrap();
    let stray = outbox::enqueue(
        &mut tx,
        topology::EXCHANGE,
        topology::step_key(common::messages::Step::ChargePayment),
        None,
        &json!({"stray": true}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(take(&vhost, topology::PAYMENT_QUEUE, 1).await, vec![stray]);
    wait_for(
        || async { outbox::backlog(db).await.unwrap() == 0 },
        "the stray row deleted",
    )
    .await;
    assert_eq!(
        depth(&vhost, topology::PAYMENT_QUEUE, true).await,
        0,
        "each once"
    );

    rig.shutdown.cancel();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_repeated_after_a_crash_is_applied_once_through_the_inbox() {
    let vhost = Vhost::create();
    let rig = Rig::start(&vhost).await;
    let (db, broker) = (&rig.db, &rig.broker);
    broker.connection(&rig.shutdown).await.expect("connected");

    let ids = commit_messages(db, 5).await;
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT id, exchange, routing_key, payload, created_at_ms FROM outbox ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut publisher = Publisher::new(broker.clone());
    outbox::flush(db, &mut publisher).await.unwrap();
    assert_eq!(outbox::backlog(db).await.unwrap(), 0);
    // A crash after the confirm and before the delete: the rows are still there at the
    // next start, and the relay publishes them again, with the same ids.
    for (id, exchange, routing_key, payload, created) in &rows {
        sqlx::query(
            "INSERT INTO outbox (id, exchange, routing_key, payload, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(exchange)
        .bind(routing_key)
        .bind(payload)
        .bind(created)
        .execute(db.pool())
        .await
        .unwrap();
    }
    outbox::flush(db, &mut publisher).await.unwrap();

    let delivered = take(&vhost, topology::PAYMENT_QUEUE, 10).await;
    assert_eq!(delivered.len(), 10);
    // The consumer's side: each delivery in its own transaction, as a handler does.
    let mut applied = Vec::new();
    for id in &delivered {
        let mut tx = db.begin().await.unwrap();
        if inbox::first_delivery(&mut tx, id).await.unwrap() {
            applied.push(id.clone());
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(applied, ids, "each message applied exactly once");

    // The inbox's answer survives a rollback only if the work did: a delivery whose
    // transaction is rolled back is still new at its next delivery.
    let fresh = "never-committed";
    let mut tx = db.begin().await.unwrap();
    assert!(inbox::first_delivery(&mut tx, fresh).await.unwrap());
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(inbox::first_delivery(&mut tx, fresh).await.unwrap());
    tx.commit().await.unwrap();
    rig.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_reconnects_and_declares_the_topology_again() {
    let vhost = Vhost::create();
    let rig = Rig::start(&vhost).await;
    let (db, broker) = (&rig.db, &rig.broker);
    let relay = rig.relay();
    broker.connection(&rig.shutdown).await.expect("connected");
    // A first connection is not a restoration (a restarted manager's deadlines stand).
    assert_eq!(broker.restored_at_ms(), None);
    assert!(!broker.is_in_outage());

    // Deleting the vhost closes the connection and removes every queue and exchange.
    rabbitmqctl_ok(&["delete_vhost", &vhost.name]);
    wait_for(
        || async { broker.is_in_outage() },
        "the supervisor to notice",
    )
    .await;
    // Committed while disconnected: it waits in the outbox.
    let ids = commit_messages(db, 3).await;

    rabbitmqctl_ok(&["add_vhost", &vhost.name]);
    rabbitmqctl_ok(&[
        "set_permissions",
        "-p",
        &vhost.name,
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    let back_at = common::time::now_ms();
    // Reconnect backoff is capped at 1 s; wait_for allows 10.
    wait_for(|| async { broker.is_connected() }, "a reconnect").await;
    let restored = broker
        .restored_at_ms()
        .expect("the reconnect is a restoration");
    assert!(restored >= back_at, "{restored} < {back_at}");
    // The queues are back (declared again), bound, and receive what waited.
    wait_for(
        || async { outbox::backlog(db).await.unwrap() == 0 },
        "the outbox to drain after the reconnect",
    )
    .await;
    assert_eq!(take(&vhost, topology::PAYMENT_QUEUE, 3).await, ids);
    for q in topology::QUEUES {
        assert_eq!(
            depth(&vhost, q.name, q.dead_letters).await,
            0,
            "{} exists again, with the marketplace's arguments",
            q.name
        );
    }
    rig.shutdown.cancel();
    relay.await.unwrap();
}

/// The inbox forgets ids older than its retention, in pieces, and keeps the rest: it is
/// bounded by time, not by the number of orders ever handled.
#[tokio::test]
async fn the_inbox_forgets_ids_older_than_its_retention_and_keeps_the_rest() {
    let vhost = Vhost::create();
    let rig = Rig::start(&vhost).await;
    let now = common::time::now_ms();
    let old = now - common::inbox::RETENTION.as_millis() as i64 - 1;
    // More old rows than one pruning statement takes.
    for i in 0..12_000 {
        let at = if i % 1_000 == 999 { now } else { old };
        sqlx::query("INSERT INTO inbox (message_id, received_at_ms) VALUES ($1, $2)")
            .bind(format!("m{i}"))
            .bind(at)
            .execute(rig.db.pool())
            .await
            .unwrap();
    }
    let cutoff = now - common::inbox::RETENTION.as_millis() as i64;
    let forgotten = common::inbox::forget_before(&rig.db, cutoff).await.unwrap();
    assert_eq!(forgotten, 12_000 - 12);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
        .fetch_one(rig.db.pool())
        .await
        .unwrap();
    assert_eq!(left, 12);
    rig.shutdown.cancel();
}
