//! Group commit on its own, against real RabbitMQ and SQLite: the deliveries waiting on a
//! queue are handled in one transaction; a batch whose commit fails is handled again
//! message by message and every message is applied once; a batch redelivered after its
//! commit (the ack lost) changes nothing, and duplicates inside a batch are applied once.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    bus::{self, BatchHandler, BatchOptions, Broker, HandlerError, Incoming},
    config::Config,
    db::Db,
    inbox,
    shutdown::Shutdown,
};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
};
use sqlx::Row;
use support::*;

const QUEUE: &str = "batching-test";

/// Records every message it applies, with the size of the batch it came in, and fails a
/// batch of several on demand: before its commit (nothing applied) or after it (applied,
/// but not acked).
struct Recorder {
    db: Db,
    batches: Mutex<Vec<usize>>,
    /// The first call waits: what is published meanwhile forms the next batch.
    first: AtomicUsize,
    fail_before_commit: AtomicUsize,
    fail_after_commit: AtomicUsize,
}

impl BatchHandler for Recorder {
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        if take_one(&self.first) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut tx = self.db.begin().await?;
        for msg in batch {
            if inbox::first_delivery(&mut tx, &msg.message_id).await? {
                sqlx::query("INSERT INTO applied (message_id, batch_size) VALUES ($1, $2)")
                    .bind(&msg.message_id)
                    .bind(batch.len() as i64)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        self.batches.lock().unwrap().push(batch.len());
        let several = batch.len() > 1;
        if several && take_one(&self.fail_before_commit) {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "the commit failed (test)"
            )));
        }
        tx.commit().await?;
        if several && take_one(&self.fail_after_commit) {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "lost after the commit (test)"
            )));
        }
        Ok(())
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

struct Rig {
    recorder: Arc<Recorder>,
    broker: Broker,
    shutdown: Shutdown,
    vhost: Vhost,
    _data: tempfile::TempDir,
}

impl Rig {
    async fn start(fail_before_commit: usize, fail_after_commit: usize) -> Rig {
        common::telemetry::init("test");
        let vhost = Vhost::create();
        let data = tempfile::tempdir().unwrap();
        let env = environment(&vhost, data.path(), &[]);
        let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        let shutdown = Shutdown::new();
        let db = Db::open(&config, "delivery", &delivery::MIGRATIONS, &shutdown)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE applied (message_id TEXT NOT NULL, batch_size BIGINT NOT NULL)")
            .execute(db.pool())
            .await
            .unwrap();
        let broker = Broker::start(&config.amqp_url, "batching", shutdown.clone());
        let conn = amqp_connection(&vhost).await;
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_declare(
                QUEUE.into(),
                QueueDeclareOptions::durable(),
                bus::queue_arguments(true),
            )
            .await
            .unwrap();
        let recorder = Arc::new(Recorder {
            db,
            batches: Mutex::new(Vec::new()),
            first: AtomicUsize::new(1),
            fail_before_commit: AtomicUsize::new(fail_before_commit),
            fail_after_commit: AtomicUsize::new(fail_after_commit),
        });
        Rig {
            recorder,
            broker,
            shutdown,
            vhost,
            _data: data,
        }
    }

    /// Publishes one message per id (confirmed), in order.
    async fn publish(&self, ids: &[String]) {
        let conn = amqp_connection(&self.vhost).await;
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for id in ids {
            channel
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default()
                        .with_message_id(id.clone().into())
                        .with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    fn consume(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(bus::consume_batches(
            self.broker.clone(),
            QUEUE,
            BatchOptions {
                prefetch: 100,
                max_batch: 100,
                room: None,
            },
            self.recorder.clone(),
            self.shutdown.clone(),
        ))
    }

    async fn applied(&self) -> Vec<(String, i64)> {
        sqlx::query("SELECT message_id, batch_size FROM applied ORDER BY message_id")
            .fetch_all(self.recorder.db.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get("message_id"), r.get("batch_size")))
            .collect()
    }

    async fn wait_applied(&self, n: usize) -> Vec<(String, i64)> {
        wait_for(
            || async { self.applied().await.len() >= n },
            "every message applied",
        )
        .await;
        // Anything applied twice would show up by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.applied().await
    }

    async fn queue_is_drained(&self) {
        let vhost = self.vhost.name.clone();
        wait_for(
            || {
                let vhost = vhost.clone();
                async move {
                    let out = std::process::Command::new("rabbitmqctl")
                        .args(["-q", "list_queues", "-p", &vhost, "name", "messages"])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .any(|l| l.split_whitespace().collect::<Vec<_>>() == [QUEUE, "0"])
                }
            },
            "the queue empty (everything acked)",
        )
        .await;
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m-{i:03}")).collect()
}

#[tokio::test]
async fn the_messages_waiting_on_a_queue_are_applied_in_one_batch() {
    let rig = Rig::start(0, 0).await;
    let consumer = rig.consume();
    rig.publish(&ids(40)).await;
    let applied = rig.wait_applied(40).await;
    assert_eq!(applied.len(), 40);
    let largest = *rig.recorder.batches.lock().unwrap().iter().max().unwrap();
    assert!(largest > 1, "batches: {:?}", rig.recorder.batches);
    rig.queue_is_drained().await;
    rig.shutdown.cancel();
    consumer.await.unwrap();
}

#[tokio::test]
async fn a_batch_whose_commit_fails_is_handled_again_message_by_message_and_applied_once() {
    let rig = Rig::start(1, 0).await;
    let consumer = rig.consume();
    rig.publish(&ids(40)).await;
    let applied = rig.wait_applied(40).await;
    assert_eq!(applied.len(), 40, "each message applied once: {applied:?}");
    assert_eq!(
        applied.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids(40)
    );
    let batches = rig.recorder.batches.lock().unwrap().clone();
    let failed = batches
        .iter()
        .position(|&n| n > 1)
        .expect("a batch of several formed");
    let size = batches[failed];
    assert!(
        batches[failed + 1..failed + 1 + size]
            .iter()
            .all(|&n| n == 1),
        "the failed batch's messages were handled one by one: {batches:?}"
    );
    rig.queue_is_drained().await;
    rig.shutdown.cancel();
    consumer.await.unwrap();
}

#[tokio::test]
async fn a_batch_committed_but_not_acked_and_duplicates_within_a_batch_are_applied_once() {
    let rig = Rig::start(0, 1).await;
    let mut with_duplicates = ids(30);
    with_duplicates.extend(ids(10));
    let consumer = rig.consume();
    rig.publish(&with_duplicates).await;
    let applied = rig.wait_applied(30).await;
    assert_eq!(applied.len(), 30, "each id applied once: {applied:?}");
    rig.queue_is_drained().await;
    rig.shutdown.cancel();
    consumer.await.unwrap();
}
