//! Poison is bounded, against real RabbitMQ and SQLite: a message that fails the same way on
//! every attempt ends in the dead-letter store instead of being retried forever, and the
//! messages around it keep flowing. A step reply for a saga whose stored row cannot be read
//! is rejected by the manager (the row will not read better on a later attempt), while other
//! orders complete SUCCESS; a message whose handler fails transiently on every attempt is
//! rejected once its in-place retries are spent, on both consume loops.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use common::{
    bus::{self, BatchHandler, BatchOptions, Broker, Handler, HandlerError, Incoming},
    domain::OrderId,
    messages::{ManagerMessage, Step, StepReply, StepResult},
    shutdown::Shutdown,
    time::now_ms,
    topology,
};
use lapin::{
    Channel,
    options::{BasicGetOptions, QueueDeclareOptions},
};
use serde_json::{Value, json};
use support::*;

/// How long an outcome may take before the test gives up on it: generous, since the
/// machine may be busy; nothing is asserted about how long it actually took.
const BOUND: Duration = Duration::from_secs(60);

/// Polls `check` until it holds; panics naming `what` after [`BOUND`].
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The dead letters (any status) stored with `message_id`.
async fn letters_of(base_url: &str, message_id: &str) -> Vec<Value> {
    let page: Value = client()
        .get(format!("{base_url}/api/dead-letters?status=all&limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page of dead letters: {page}"))
        .iter()
        .filter(|l| l["message_id"] == message_id)
        .cloned()
        .collect()
}

/// Writes a saga row for `order_id` into the manager's database whose state is not a saga,
/// as a corrupted or hand-edited row would be. No deadline: only a message reaches it.
async fn plant_corrupt_saga(data_dir: &std::path::Path, order_id: OrderId) {
    let url = format!("sqlite://{}", data_dir.join("manager.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("PRAGMA busy_timeout = 5000")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sagas (order_id, state, status, phase, deadline_ms, version, updated_at_ms) \
         VALUES ($1, $2, 'PROCESSING', 'forward', NULL, 1, $3)",
    )
    .bind(order_id.to_string())
    .bind("{\"order_id\": \"garbage\", \"this is\": not a saga")
    .bind(now_ms())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

async fn place(base_url: &str, user: &str) -> String {
    purchase(base_url, json!({"username": user, "price": 1, "amount": 1})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_a_saga_whose_row_cannot_be_read_is_dead_lettered_while_other_orders_complete()
{
    let m = InProcess::start(&[]).await;
    let base = m.base_url.clone();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let before = place(&base, &format!("before-{run}")).await;

    let corrupt = OrderId::new();
    plant_corrupt_saga(m._data.path(), corrupt).await;
    let reply = ManagerMessage::StepReply(StepReply {
        order_id: corrupt,
        step: Step::ChargePayment,
        result: StepResult::Done,
    });
    let poison_id = format!("poison-{run}");
    let (_conn, channel) = confirming_channel(&m._vhost).await;
    publish_confirmed(
        &channel,
        topology::EXCHANGE,
        topology::RK_STEP_REPLY,
        Some(&poison_id),
        None,
        &serde_json::to_vec(&reply).unwrap(),
    )
    .await;

    // Orders placed after the poison need the manager's reply queue too.
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(place(&base, &format!("after-{i}-{run}")).await);
    }

    eventually("the poisoned reply stored as a dead letter", || async {
        !letters_of(&base, &poison_id).await.is_empty()
    })
    .await;
    let letter = letters_of(&base, &poison_id).await.remove(0);
    assert_eq!(
        letter["original_queue"],
        topology::MANAGER_QUEUE,
        "{letter}"
    );
    assert_eq!(letter["reason"], "rejected", "{letter}");
    assert_eq!(letter["order_id"], corrupt.to_string(), "{letter}");

    for id in std::iter::once(&before).chain(&after) {
        let order = final_order(&base, id, BOUND).await;
        assert_eq!(order["status"], "SUCCESS", "{order:#}");
    }
    m.stop().await.unwrap();
}

// ---- the bound on transient retries ----------------------------------------------------

const QUEUE: &str = "poison-test";

/// Fails every message transiently, and counts its attempts.
#[derive(Default)]
struct AlwaysTransient {
    attempts: AtomicU32,
}

impl Handler for AlwaysTransient {
    async fn handle(&self, _msg: &Incoming) -> Result<(), HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::Transient(anyhow::anyhow!(
            "the database is away (test)"
        )))
    }
}

impl BatchHandler for AlwaysTransient {
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<(), HandlerError> {
        self.handle(&batch[0]).await
    }
}

/// A queue declared the marketplace's way (it dead-letters to the dead-letter queue) on a
/// vhost of its own, with one message on it, and a broker supervisor to consume it.
struct Rig {
    _vhost: Vhost,
    shutdown: Shutdown,
    broker: Broker,
    conn: lapin::Connection,
    channel: Channel,
}

impl Rig {
    async fn with_one_message(message_id: &str) -> Rig {
        common::telemetry::init("test");
        let vhost = Vhost::create();
        let shutdown = Shutdown::new();
        let broker = Broker::start(&vhost.amqp_url(), "poison-test", shutdown.clone());
        let (conn, channel) = confirming_channel(&vhost).await;
        // The marketplace's topology, so that the dead-letter queue exists and is bound.
        bus::declare_topology(&conn).await.unwrap();
        channel
            .queue_declare(
                QUEUE.into(),
                QueueDeclareOptions::durable(),
                bus::queue_arguments(true),
            )
            .await
            .unwrap();
        publish_confirmed(&channel, "", QUEUE, Some(message_id), None, b"{}").await;
        Rig {
            _vhost: vhost,
            shutdown,
            broker,
            conn,
            channel,
        }
    }
}

/// The queue of a [`Rig`] consumed by `consume` until its message leaves it; returns the
/// handler's attempts and what the dead-letter queue then holds.
async fn run_until_dead_lettered<C, F>(consume: C) -> (u32, Option<lapin::message::BasicGetMessage>)
where
    C: FnOnce(Broker, Arc<AlwaysTransient>, Shutdown) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Rig {
        _vhost,
        shutdown,
        broker,
        conn,
        channel,
    } = Rig::with_one_message("always-transient").await;
    let handler = Arc::new(AlwaysTransient::default());
    let consumer = tokio::spawn(consume(broker, handler.clone(), shutdown.clone()));
    let mut letter = None;
    let started = tokio::time::Instant::now();
    while letter.is_none() {
        assert!(
            started.elapsed() < BOUND,
            "a message failing transiently forever was not dead-lettered within {BOUND:?} \
             ({} attempts so far)",
            handler.attempts.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        letter = channel
            .basic_get(
                topology::DEAD_LETTER_QUEUE.into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
    }
    shutdown.cancel();
    consumer.await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    (handler.attempts.load(Ordering::SeqCst), letter)
}

/// The letter is the message, rejected by the consumer after `expected_attempts`.
fn assert_rejected_after(
    attempts: u32,
    expected_attempts: u32,
    letter: &lapin::message::BasicGetMessage,
) {
    assert_eq!(
        letter
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("always-transient")
    );
    let reason = letter
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert_eq!(
        reason,
        Some(lapin::types::AMQPValue::LongString("rejected".into())),
        "rejected by the consumer, not over the broker's delivery limit"
    );
    assert_eq!(attempts, expected_attempts, "attempts before the rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_transiently_forever_is_rejected_to_the_dead_letter_queue() {
    let (attempts, letter) = run_until_dead_lettered(|broker, handler, shutdown| {
        bus::consume(broker, QUEUE, 4, handler, shutdown)
    })
    .await;
    assert_rejected_after(attempts, bus::MAX_TRANSIENT_ATTEMPTS, &letter.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_message_failing_transiently_forever_is_rejected_to_the_dead_letter_queue() {
    let (attempts, letter) = run_until_dead_lettered(|broker, handler, shutdown| {
        bus::consume_batches(
            broker,
            QUEUE,
            BatchOptions {
                prefetch: 4,
                max_batch: 4,
                room: None,
            },
            handler,
            shutdown,
        )
    })
    .await;
    // The batch it came in, then the bounded attempts alone.
    assert_rejected_after(attempts, 1 + bus::MAX_TRANSIENT_ATTEMPTS, &letter.unwrap());
}

/// Fails with "the database cannot be reached" `outage` times, then succeeds.
struct DatabaseAway {
    outage: u32,
    attempts: AtomicU32,
}

impl Handler for DatabaseAway {
    async fn handle(&self, _msg: &Incoming) -> Result<(), HandlerError> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) < self.outage {
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        Ok(())
    }
}

/// An outage of the database is the service's, not the message's: it is waited out past
/// the bound, and the message is handled once the database is back, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_bound_is_waited_out_not_dead_lettered() {
    let Rig {
        _vhost,
        shutdown,
        broker,
        conn,
        channel,
    } = Rig::with_one_message("outage").await;
    let outage = bus::MAX_TRANSIENT_ATTEMPTS + 1;
    let handler = Arc::new(DatabaseAway {
        outage,
        attempts: AtomicU32::new(0),
    });
    let consumer = tokio::spawn(bus::consume(
        broker,
        QUEUE,
        4,
        handler.clone(),
        shutdown.clone(),
    ));
    eventually("the message handled once the database is back", || {
        let handler = handler.clone();
        async move { handler.attempts.load(Ordering::SeqCst) > outage }
    })
    .await;
    // Acked: the queue is empty, and nothing reached the dead-letter queue.
    eventually("the queue emptied by the ack", || {
        let channel = channel.clone();
        async move {
            channel
                .queue_declare(
                    QUEUE.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .unwrap()
                .message_count()
                == 0
        }
    })
    .await;
    let letter = channel
        .basic_get(
            topology::DEAD_LETTER_QUEUE.into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap();
    assert!(letter.is_none(), "dead-lettered during a database outage");
    shutdown.cancel();
    consumer.await.unwrap();
    let _ = conn.close(200, "done".into()).await;
}
