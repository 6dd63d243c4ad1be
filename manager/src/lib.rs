//! The saga orchestrator. `saga` is the pure decision logic; `handler` wraps it in a
//! transaction with the inbox and the outbox; `timers` fires deadlines; `store` is the SQL.

pub mod audit;
mod handler;
mod metrics;
/// The pure decision logic, in its own crate (it builds and tests without the runtime).
pub use saga;
mod store;
mod timers;
mod trace;

use std::{sync::Arc, time::Duration};

use common::targets::Service;
use common::{
    bus::{self, BatchOptions, Broker},
    config::Config,
    db::Db,
    room::Room,
    service,
    shutdown::Shutdown,
    time::now_ms,
    topology,
};

use handler::Manager;
use saga::Timing;
use timers::Timers;

/// The most messages decided in one transaction.
const MAX_BATCH: usize = 128;

pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens the manager's database, re-arms the deadline of every saga in flight, and starts
/// consuming the manager queue.
pub async fn start(
    config: Config,
    broker: Broker,
    shutdown: Shutdown,
) -> anyhow::Result<service::Running> {
    let db = Db::open(&config, Service::Manager.name(), &MIGRATIONS, &shutdown).await?;
    let broker = broker.for_service(Service::Manager.name());
    let timers = Timers::default();
    for (order_id, at) in store::all_deadlines(db.pool()).await? {
        timers.schedule(at, order_id);
    }
    let room = Arc::new(Room::new(config.max_sagas_in_flight));
    room.recount(store::in_flight(db.pool()).await?);
    let manager = Manager {
        db: db.clone(),
        timing: Timing {
            step_timeout_ms: config.step_timeout_ms,
            max_retry_ms: config.max_retry_ms,
        },
        timers: timers.clone(),
        metrics: broker.metrics().clone(),
        broker: broker.clone(),
        room: room.clone(),
    };
    let handler = Arc::new(manager.clone());
    // Replies never wait behind new orders: each has its own queue and consumer.
    let replies = bus::consume_batches(
        broker.clone(),
        topology::MANAGER_QUEUE,
        BatchOptions {
            prefetch: 256,
            max_batch: MAX_BATCH,
            room: None,
        },
        handler.clone(),
        shutdown.clone(),
    );
    let orders = bus::consume_batches(
        broker.clone(),
        topology::ORDERS_QUEUE,
        BatchOptions {
            // Few held unacked: the backlog waits in the queue, where it is durable and
            // where another replica may take it.
            prefetch: u16::try_from(config.max_sagas_in_flight.clamp(1, 256)).unwrap_or(256),
            max_batch: MAX_BATCH,
            room: Some(room),
        },
        handler,
        shutdown.clone(),
    );
    let timer_loop = {
        let (m, s) = (manager.clone(), shutdown.clone());
        async move {
            timers
                .run(s, |id| {
                    let m = m.clone();
                    async move { m.fire_deadline(id).await }
                })
                .await;
        }
    };
    let metrics = broker.metrics().clone();
    let backstop = backstop(manager, shutdown.clone());
    let parts: Vec<service::Part> = vec![
        Box::pin(replies),
        Box::pin(orders),
        Box::pin(timer_loop),
        Box::pin(backstop),
    ];
    Ok(
        service::spawn(Service::Manager.name(), db, broker, parts).counting(
            &metrics.sagas_in_flight,
            "SELECT COUNT(*) AS n FROM sagas WHERE deadline_ms IS NOT NULL",
        ),
    )
}

/// Every second, fires the deadlines the database says are due: those of a saga whose
/// in-memory timer was lost (a failed attempt, or another replica that went away). And
/// counts the sagas in flight again: the store is the truth for the room's estimate.
async fn backstop(manager: Manager, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // Only what is overdue by a margin: fresh deadlines belong to the precise timers.
        match store::due(manager.db.pool(), now_ms() - 250, 500).await {
            Ok(due) => {
                for (order_id, _) in due {
                    manager.fire_deadline(order_id).await;
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "deadline scan failed"),
        }
        match store::in_flight(manager.db.pool()).await {
            Ok(n) => manager.room.recount(n),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "counting the sagas in flight failed");
            }
        }
    }
}
