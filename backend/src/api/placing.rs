//! Group commit at the edge: purchases accepted at the same moment are written in one
//! transaction (their orders in one statement, their `PlaceOrder` messages in another).
//!
//! Each request still gets its 202 only after its order and its message are committed,
//! so a 202 means exactly what it did with a transaction per request; what changes is the
//! cost under load, where one commit now carries every purchase that arrived while the
//! previous one was being written. A purchase with an `Idempotency-Key` keeps its own
//! transaction (its key is claimed in it: see `purchase.rs`).

use std::sync::Arc;

use common::{db::Db, outbox::Pending};
use tokio::sync::{mpsc, oneshot};

use super::{ApiError, backlog::Backlog};
use crate::store::{self, orders::Placed};

/// The most purchases written in one transaction.
const MAX_GROUP: usize = 256;

/// Why a group was not committed, as each of its requests is answered.
#[derive(Debug, Clone, Copy)]
enum Failed {
    /// The database could not be reached: 503.
    Unavailable,
    /// Anything else: 500 (the cause is logged once, for the whole group).
    Internal,
}

/// One purchase waiting to be written.
struct Job {
    order: Placed,
    message: Pending,
    done: oneshot::Sender<Result<(), Failed>>,
}

/// The writer's queue. Cheap to clone.
#[derive(Clone)]
pub(super) struct Placing {
    jobs: mpsc::Sender<Job>,
}

impl Placing {
    /// Starts the writer on `db`; it ends when the last handle is dropped.
    pub(super) fn start(db: Db, backlog: Arc<Backlog>) -> Self {
        let (jobs, rx) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(write_groups(db, backlog, rx));
        Self { jobs }
    }

    /// Writes the order and its message, with others arriving now, and returns once they
    /// are committed.
    pub(super) async fn place(&self, order: Placed, message: Pending) -> Result<(), ApiError> {
        let (done, committed) = oneshot::channel();
        let job = Job {
            order,
            message,
            done,
        };
        let gone = || ApiError::Internal(anyhow::anyhow!("the order writer has stopped"));
        self.jobs.send(job).await.map_err(|_| gone())?;
        match committed.await.map_err(|_| gone())? {
            Ok(()) => Ok(()),
            Err(Failed::Unavailable) => Err(ApiError::Unavailable(sqlx::Error::PoolTimedOut)),
            Err(Failed::Internal) => Err(ApiError::Internal(anyhow::anyhow!(
                "writing the order failed (logged)"
            ))),
        }
    }
}

async fn write_groups(db: Db, backlog: Arc<Backlog>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = write(&db, &group).await;
        let answer = match result {
            Ok(()) => {
                db.hand_to_relay(group.iter().map(|j| j.message.clone()).collect());
                for _ in &group {
                    backlog.accepted();
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, orders = group.len(), "writing accepted orders failed");
                match ApiError::from(e) {
                    ApiError::Unavailable(_) => Err(Failed::Unavailable),
                    _ => Err(Failed::Internal),
                }
            }
        };
        for job in group {
            // A client that went away meanwhile still has its order: it was committed.
            let _ = job.done.send(answer);
        }
    }
}

async fn write(db: &Db, group: &[Job]) -> Result<(), sqlx::Error> {
    let orders: Vec<Placed> = group.iter().map(|j| j.order.clone()).collect();
    let messages: Vec<Pending> = group.iter().map(|j| j.message.clone()).collect();
    let mut tx = db.begin().await?;
    store::orders::insert_placed_many(&mut tx, &orders).await?;
    common::outbox::enqueue_all(&mut tx, &messages).await?;
    tx.commit().await
}
