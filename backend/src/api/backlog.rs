//! Admission at the edge: a purchase is refused, before anything is stored, while more
//! orders are waiting to complete than `MAX_BACKLOG`. Past that bound a 202 would be a
//! promise the marketplace keeps ever later; a 503 with `Retry-After` tells the client the
//! truth at once, and keeps the backlog (and every queue behind it) bounded.
//!
//! The backlog is the orders still PROCESSING in the read model, counted at most every
//! [`RECOUNT`] by whichever request finds the count stale, plus the orders this process
//! accepted since. Between counts it can only overestimate (finished orders are noticed
//! at the next count), so the bound errs on the side of refusing.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use common::{db::Db, time::now_ms};
use sqlx::Row;
use tokio::sync::Mutex;

use super::ApiError;

/// How old a count may be before a request counts again.
const RECOUNT: Duration = Duration::from_millis(250);

/// What a refused client is told to wait, in seconds.
const RETRY_AFTER_S: u64 = 1;

/// The orders accepted and not final, against their bound.
#[derive(Debug)]
pub struct Backlog {
    limit: i64,
    /// PROCESSING orders at the last count.
    counted: AtomicI64,
    /// Orders accepted by this process since the last count.
    since: AtomicI64,
    /// When the last count was taken (ms since the epoch; 0: never).
    counted_at_ms: AtomicI64,
    /// Held by the one request that counts.
    counting: Mutex<()>,
}

impl Backlog {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            counted: AtomicI64::new(0),
            since: AtomicI64::new(0),
            counted_at_ms: AtomicI64::new(0),
            counting: Mutex::new(()),
        }
    }

    /// Whether one more order may be accepted now; `Overloaded` if not.
    pub async fn admit(&self, db: &Db) -> Result<(), ApiError> {
        self.recount_if_stale(db).await?;
        let waiting = self.counted.load(Ordering::SeqCst) + self.since.load(Ordering::SeqCst);
        if waiting >= self.limit {
            return Err(ApiError::Overloaded {
                detail: format!(
                    "{waiting} orders are waiting to complete, the most this marketplace \
                     takes on (MAX_BACKLOG={}); nothing was placed",
                    self.limit
                ),
                retry_after_s: RETRY_AFTER_S,
            });
        }
        Ok(())
    }

    /// An order was accepted (committed).
    pub fn accepted(&self) {
        self.since.fetch_add(1, Ordering::SeqCst);
    }

    async fn recount_if_stale(&self, db: &Db) -> Result<(), sqlx::Error> {
        let stale =
            || now_ms() - self.counted_at_ms.load(Ordering::SeqCst) >= RECOUNT.as_millis() as i64;
        if !stale() {
            return Ok(());
        }
        // One request counts; the others go on with the estimate meanwhile.
        let Ok(_counting) = self.counting.try_lock() else {
            return Ok(());
        };
        if !stale() {
            return Ok(());
        }
        let processing: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE status = 'PROCESSING'")
                .fetch_one(db.pool())
                .await?
                .try_get("n")?;
        self.counted.store(processing, Ordering::SeqCst);
        self.since.store(0, Ordering::SeqCst);
        self.counted_at_ms.store(now_ms(), Ordering::SeqCst);
        Ok(())
    }
}
