//! The shape every service shares: consumers and an outbox relay over one database and the
//! instance's broker connection (shared by the services of a process), started together and
//! drained together.

use std::{future::Future, pin::Pin};

use tokio::task::JoinHandle;

use crate::{bus::Broker, db::Db, inbox, outbox, shutdown::Shutdown};

pub type Part = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started service, as `main` sees it: a readiness probe and a task that ends after the
/// service has drained (consumers finished, outbox flushed). The broker connection is the
/// instance's: whoever started it closes it once every service using it has drained.
pub struct Running {
    pub readiness: Readiness,
    pub task: JoinHandle<()>,
}

/// What `/readyz` asks of a service, and what `/metrics` counts in its database.
#[derive(Clone)]
pub struct Readiness {
    pub name: &'static str,
    pub db: Db,
    pub broker: Broker,
    /// The gauges the service keeps of its own tables.
    pub counts: Vec<StoredCount>,
}

/// A gauge a service keeps of one of its tables, set at every scrape of `/metrics` (a
/// service that is not the table's owner never counts it).
#[derive(Clone)]
pub struct StoredCount {
    /// Labelled by service.
    pub gauge: prometheus::IntGaugeVec,
    /// One row with the count as `n`.
    pub sql: &'static str,
}

impl Running {
    /// Counts `sql` into `gauge` at every scrape.
    pub fn counting(mut self, gauge: &prometheus::IntGaugeVec, sql: &'static str) -> Self {
        self.readiness.counts.push(StoredCount {
            gauge: gauge.clone(),
            sql,
        });
        self
    }
}

impl Readiness {
    /// `(rabbitmq reachable, database reachable)`.
    pub async fn check(&self) -> (bool, bool) {
        (self.broker.is_connected(), self.db.ping().await)
    }
}

/// Starts `parts` (consumers, timers: each returns once `shutdown` fired and its work in
/// flight is done), the outbox relay, and the inbox's pruning ([`inbox::keep_bounded`]). The relay stops only after every part: handlers
/// still draining write to the outbox, and their messages must leave before the exit.
pub fn spawn(name: &'static str, db: Db, broker: Broker, parts: Vec<Part>) -> Running {
    let relay_stop = Shutdown::new();
    let relay = tokio::spawn(outbox::relay(
        db.clone(),
        broker.clone(),
        relay_stop.clone(),
    ));
    let inbox = tokio::spawn(inbox::keep_bounded(db.clone(), relay_stop.clone()));
    let readiness = Readiness {
        name,
        db: db.clone(),
        broker,
        counts: Vec::new(),
    };
    let task = tokio::spawn(async move {
        futures::future::join_all(parts).await;
        relay_stop.cancel();
        let _ = relay.await;
        let _ = inbox.await;
        db.pool().close().await;
        tracing::info!(service = name, "stopped");
    });
    Running { readiness, task }
}
