//! The live order feed behind `GET /api/orders/stream`: every status change and saga step,
//! as the projection applies them.
//!
//! **The table is the truth.** The projection writes one `order_feed` row per `OrderUpdated`
//! it applies, in the transaction that updates the read model (see [`crate::projection`]),
//! so a row exists exactly when its change does, whichever replica applied it. Seqs are
//! gapless and commit in their order (`store::feed`), so "every row above N" is a complete
//! answer to "what happened after N", on SQLite as on PostgreSQL with several replicas.
//!
//! **A tailer per process** ([`Feed::start`]) reads the rows above the last it saw, in seq
//! order, every [`POLL`] or as soon as this process's projection commits (it is woken), and
//! hands them to a `broadcast` channel of [`LIVE_CAPACITY`] rows that the clients follow.
//! Rows another replica wrote arrive within a poll. Because seqs commit in order, reading
//! `seq > last` never skips a row that commits later; the tailer needs no settle delay and
//! no overlap window. It also prunes the table ([`RETENTION`], [`KEEP_ROWS`]).
//!
//! **A follower per client** ([`follow`]) replays from the table what the client missed
//! (`Last-Event-ID`), then follows the broadcast, filtering, into a bounded buffer of
//! [`CLIENT_BUFFER`] rows that the HTTP body drains. A client is dropped (it may resume
//! with its last id) when its buffer stays full for [`STALL_TIMEOUT`] (its socket does not
//! drain), or when it falls more than [`LIVE_CAPACITY`] rows behind the broadcast: the
//! tailer never waits for a client, so neither do the projection, the saga or the others.

mod follow;

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::targets::Service;
use common::{backoff::Backoff, db::Db, messages::OrderUpdated, metrics::Metrics, time::now_ms};
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};
use utoipa::ToSchema;

pub use crate::store::feed::{FeedRow, Filter};
pub use follow::{Ended, Item, Reset, Start, buffer, follow, plan};

use crate::{api::orders::TimelineItem, store};

/// How often the tailer looks for rows it was not woken for (other replicas' rows).
pub const POLL: Duration = Duration::from_millis(150);
/// Rows the tailer reads at a time.
const PAGE: i64 = 500;
/// Rows the broadcast keeps for followers that are behind; one further behind is dropped.
pub const LIVE_CAPACITY: usize = 4096;
/// Rows waiting for one client's socket; its whole memory besides the socket's buffers.
pub const CLIENT_BUFFER: usize = 256;
/// How long a client's buffer may stay full before the client counts as stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows older than this are pruned...
pub const RETENTION: Duration = Duration::from_secs(3600);
/// ...and so are all but the newest this many.
pub const KEEP_ROWS: i64 = 100_000;
/// How often the tailer prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a client waits for the tailer's first read (the database at start) before it
/// is told that the feed is unavailable.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients streaming at once per process: each holds a connection, and connections are
/// bounded (`HTTP_MAX_CONNECTIONS`), so the API keeps most of them.
pub const MAX_CLIENTS: usize = 256;

/// One change of an order, as a feed row carries it (the `data:` of an `order` event).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"order_id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "username": "alice",
    "product": "late_token", "status": "PROCESSING", "phase": "running", "version": 4, "updated_at_ms": 1790856000127_i64,
    "steps": [
        {"seq": 3, "at": "2026-10-01T12:00:00.125Z", "step": "payment.charge", "event": "sent"},
        {"seq": 4, "at": "2026-10-01T12:00:00.127Z", "step": "payment.charge", "event": "done"}]}))]
pub struct OrderEvent {
    pub order_id: String,
    pub username: String,
    /// What the order buys.
    pub product: String,
    /// `PROCESSING`, `SUCCESS`, `INSUFFICIENT_FUND`, `INSUFFICIENT_INVENTORY`, `TIMEOUT` or `UNKNOWN`.
    pub status: String,
    /// `running`, `compensating` or `done`.
    pub phase: String,
    /// The saga's version after this change (increases with every change of the order).
    pub version: i64,
    /// When the saga made this change (ms since the Unix epoch, UTC).
    pub updated_at_ms: i64,
    /// The timeline entries this change added, oldest first: over an order's events, each
    /// entry of its timeline appears exactly once.
    pub steps: Vec<TimelineItem>,
}

impl OrderEvent {
    /// What `update` changes in a read model whose timeline holds entries up to
    /// `held_seq`.
    pub fn of(update: &OrderUpdated, held_seq: i64) -> OrderEvent {
        OrderEvent {
            order_id: update.order_id.to_string(),
            username: update.terms.username.as_str().to_string(),
            product: update.terms.product.as_str().to_string(),
            status: update.status.as_str().to_string(),
            phase: update.phase.to_string(),
            version: update.version,
            updated_at_ms: update.updated_at_ms,
            steps: update
                .timeline
                .iter()
                .filter(|e| e.seq > held_seq)
                .map(TimelineItem::from)
                .collect(),
        }
    }
}

/// Rings the tailer after a commit that wrote feed rows, so that they go out at once
/// rather than at the next poll. Cheap to clone.
#[derive(Clone, Default)]
pub struct FeedWake(Arc<Notify>);

impl FeedWake {
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// The feed of one process: its tailer and what its clients follow. Cheap to clone; the
/// tailer stops once every clone is gone.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
    wake: FeedWake,
}

struct Inner {
    db: Db,
    metrics: StreamMetrics,
    live: broadcast::Sender<Arc<FeedRow>>,
    /// True once the tailer knows where it starts: a subscription made before could miss
    /// the rows committed before that (the tailer starts after the newest).
    ready: watch::Sender<bool>,
    clients: AtomicUsize,
}

/// The stream's series, resolved once.
struct StreamMetrics {
    clients: IntGauge,
    stalled: IntCounter,
    lagged: IntCounter,
}

/// The feed's tailer has not read the table yet (the database does not answer).
#[derive(Debug, thiserror::Error)]
#[error("the order feed is not ready (its database does not answer)")]
pub struct NotReady;

impl Feed {
    /// Starts the tailer of `db`'s feed; its clients are counted in `metrics`.
    pub fn start(db: Db, metrics: &Metrics) -> Feed {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let dropped = |reason| {
            metrics
                .order_stream_dropped
                .with_label_values(&[Service::Backend.name(), reason])
        };
        let feed = Feed {
            inner: Arc::new(Inner {
                db,
                metrics: StreamMetrics {
                    clients: metrics
                        .order_stream_clients
                        .with_label_values(&[Service::Backend.name()]),
                    stalled: dropped("stalled"),
                    lagged: dropped("lagged"),
                },
                live,
                ready: watch::Sender::new(false),
                clients: AtomicUsize::new(0),
            }),
            wake: FeedWake::default(),
        };
        tokio::spawn(tail(Arc::downgrade(&feed.inner), feed.wake.0.clone()));
        feed
    }

    /// What the projection rings after committing feed rows.
    pub fn wake(&self) -> FeedWake {
        self.wake.clone()
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The live rows from now on: every row the tailer publishes after this returns. Waits
    /// (at most [`READY_TIMEOUT`]) for the tailer to know where it starts.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<FeedRow>>, NotReady> {
        let mut ready = self.inner.ready.subscribe();
        match tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(self.inner.live.subscribe()),
            _ => Err(NotReady),
        }
    }

    /// A place for one more client, or None past [`MAX_CLIENTS`]; the place is given back
    /// when the returned value is dropped.
    pub fn admit(&self) -> Option<ClientSlot> {
        let taken = self.inner.clients.fetch_add(1, Ordering::SeqCst);
        let slot = ClientSlot::new(self.inner.clone());
        if taken >= MAX_CLIENTS {
            return None;
        }
        self.inner.metrics.clients.inc();
        slot.counted.store(true, Ordering::SeqCst);
        Some(slot)
    }

    /// Counts a client dropped for not keeping up (see [`Ended`]).
    pub fn dropped(&self, why: &Ended) {
        match why {
            Ended::TooSlow => self.inner.metrics.stalled.inc(),
            Ended::Lagged(_) => self.inner.metrics.lagged.inc(),
            _ => {}
        }
    }
}

/// A client's place among [`MAX_CLIENTS`].
pub struct ClientSlot {
    inner: Arc<Inner>,
    /// Whether it was admitted (and so counted in the clients gauge).
    counted: AtomicBool,
}

impl ClientSlot {
    fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            counted: AtomicBool::new(false),
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.inner.clients.fetch_sub(1, Ordering::SeqCst);
        if self.counted.load(Ordering::SeqCst) {
            self.inner.metrics.clients.dec();
        }
    }
}

/// The tailer: publishes the rows above the last it published, in seq order, when woken or
/// every [`POLL`]; prunes every [`PRUNE_EVERY`]. Starts after the newest row (a client
/// wanting older ones replays them from the table). Ends when the feed's last handle is
/// dropped or the database is closed.
async fn tail(feed: Weak<Inner>, wake: Arc<Notify>) {
    let mut last: Option<i64> = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut next_prune = tokio::time::Instant::now() + PRUNE_EVERY / 6;
    loop {
        let Some(inner) = feed.upgrade() else { return };
        // The service drained and closed its database: nothing more will be written.
        if inner.db.pool().is_closed() {
            return;
        }
        match publish_new(&inner, &mut last).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "reading the order feed failed; retrying");
                drop(inner);
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            prune(&inner.db).await;
        }
        drop(inner);
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Publishes every row above `last` (the newest row's seq, the first time).
async fn publish_new(inner: &Inner, last: &mut Option<i64>) -> Result<(), sqlx::Error> {
    let mut after = match *last {
        Some(seq) => seq,
        None => {
            let newest = store::feed::bounds(&inner.db)
                .await?
                .map_or(0, |(_, newest)| newest);
            *last = Some(newest);
            inner.ready.send_replace(true);
            newest
        }
    };
    loop {
        let rows = store::feed::after(&inner.db, after, &Filter::default(), PAGE).await?;
        let full = rows.len() as i64 == PAGE;
        for row in rows {
            after = row.seq;
            // No follower at all is not an error: the row is in the table.
            let _ = inner.live.send(Arc::new(row));
        }
        *last = Some(after);
        if !full {
            return Ok(());
        }
    }
}

/// Deletes the rows past [`RETENTION`] and [`KEEP_ROWS`]. Every replica does, which is
/// harmless: they delete the same oldest rows.
async fn prune(db: &Db) {
    let before = now_ms().saturating_sub(RETENTION.as_millis() as i64);
    match store::feed::prune(db, before, KEEP_ROWS).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "order feed rows past retention"),
        Err(e) => tracing::warn!(error = %e, "pruning the order feed failed; retrying later"),
    }
}
