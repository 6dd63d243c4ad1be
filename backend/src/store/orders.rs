//! The orders read model: the row a POST writes, the upserts of `OrderUpdated`, the reads.

use std::collections::HashMap;

use common::{
    db::{Backend, Db, Tx},
    domain::{OrderId, OrderStatus, OrderTerms},
    messages::{OrderUpdated, TimelineEntry},
};
use sqlx::{Row, any::AnyRow};

use super::corrupt;

/// An order as the read model knows it, without its timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub id: OrderId,
    pub username: String,
    pub price: i64,
    pub amount: i64,
    pub product: String,
    pub status: OrderStatus,
    /// `running`, `compensating` or `done`.
    pub phase: String,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which orders `/api/orders` wants: newest first, strictly older than `before`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub username: Option<String>,
    pub status: Option<OrderStatus>,
    pub before: Option<OrderId>,
    /// Only orders last changed at or before this time.
    pub updated_before_ms: Option<i64>,
    pub limit: i64,
}

const SUMMARY_COLUMNS: &str =
    "order_id, username, price, amount, product, status, phase, placed_at_ms, updated_at_ms";

/// An order a buyer just placed, written before its saga starts so that it can be read
/// back at once (as PROCESSING) and is never missing from the read model. Its trace (the
/// POST's) is kept with the row.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub id: OrderId,
    pub terms: OrderTerms,
    pub placed_at_ms: i64,
    pub trace_id: Option<String>,
}

/// [`insert_placed`] for many orders, in one statement.
pub(crate) async fn insert_placed_many(tx: &mut Tx, orders: &[Placed]) -> Result<(), sqlx::Error> {
    insert_rows(tx, orders, "").await
}

/// Writes the rows of `orders` as a POST writes them (PROCESSING, version 0, an empty
/// timeline), a few hundred to a statement, `conflict` (an `ON CONFLICT` clause, or
/// nothing) after them.
async fn insert_rows(tx: &mut Tx, orders: &[Placed], conflict: &str) -> Result<(), sqlx::Error> {
    const ROWS: usize = 256;
    for chunk in orders.chunks(ROWS) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = 2 + i * 7;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, $1, 'running', 0, 0, ${}, ${}, '[]', ${}, 0)",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 5,
                    p + 6
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO orders (order_id, username, price, amount, product, status, phase, listed, \
             version, placed_at_ms, updated_at_ms, timeline, trace_id, timeline_seq) VALUES {} {conflict}",
            rows.join(", ")
        );
        // Not kept prepared: one statement per batch size would crowd the statement cache.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(OrderStatus::Processing.as_str());
        for o in chunk {
            query = query
                .bind(o.id.to_string())
                .bind(o.terms.username.as_str().to_string())
                .bind(o.terms.price.get())
                .bind(o.terms.amount.get())
                .bind(o.terms.product.as_str().to_string())
                .bind(o.placed_at_ms)
                .bind(o.trace_id.clone());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// What the read model holds of an order that updates are about to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub version: i64,
    /// The seq of the newest timeline entry it holds (0: none).
    pub timeline_seq: i64,
}

/// The rows of the orders `updates` are about to change, as they stand: what each holds
/// says which timeline entries an update adds (the order feed). Orders without a row are
/// absent (SQLite), or given one first (PostgreSQL, below).
///
/// On PostgreSQL the rows are locked (`FOR UPDATE`, in id order) until the transaction
/// ends: two replicas' projections applying updates of one order then take turns, and the
/// second reads what the first wrote, instead of both counting the same entries as new.
/// The id order makes every transaction lock them in the same order (no deadlock between
/// them). A row that does not exist cannot be locked, so an order without one (never the
/// case of an order placed through this backend, whose POST wrote it first) gets the row a
/// POST would have written (version 0, empty timeline), `ON CONFLICT DO NOTHING`, and is
/// read again: a replica inserting it at the same time makes this one wait for its commit.
/// SQLite has one writer at a time.
pub(crate) async fn held(
    tx: &mut Tx,
    backend: Backend,
    updates: &[&OrderUpdated],
) -> Result<HashMap<OrderId, Held>, sqlx::Error> {
    let mut ids: Vec<String> = updates.iter().map(|u| u.order_id.to_string()).collect();
    ids.sort_unstable();
    ids.dedup();
    let lock = backend == Backend::Postgres;
    let mut held = select_held(tx, &ids, lock).await?;
    if lock {
        let mut missing: Vec<&OrderUpdated> = updates
            .iter()
            .copied()
            .filter(|u| !held.contains_key(&u.order_id))
            .collect();
        if !missing.is_empty() {
            // In id order too: two replicas inserting the same new orders wait in turn.
            missing.sort_by_key(|u| u.order_id);
            missing.dedup_by_key(|u| u.order_id);
            insert_unseen(tx, &missing).await?;
            let ids: Vec<String> = missing.iter().map(|u| u.order_id.to_string()).collect();
            held.extend(select_held(tx, &ids, lock).await?);
        }
    }
    Ok(held)
}

/// [`held`]'s read of `ids` (sorted), `FOR UPDATE` if `lock`.
async fn select_held(
    tx: &mut Tx,
    ids: &[String],
    lock: bool,
) -> Result<HashMap<OrderId, Held>, sqlx::Error> {
    const IDS: usize = 256;
    let mut held = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        // The timeline is read only where its newest seq is not stored (see the migration).
        let mut sql = format!(
            "SELECT order_id, version, timeline_seq, \
             CASE WHEN timeline_seq IS NULL THEN timeline END AS timeline \
             FROM orders WHERE order_id IN ({}) ORDER BY order_id",
            list.join(", ")
        );
        if lock {
            sql.push_str(" FOR UPDATE");
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for id in chunk {
            query = query.bind(id.clone());
        }
        for row in query.fetch_all(&mut **tx).await? {
            let id: String = row.try_get("order_id")?;
            let id = OrderId::parse(&id).map_err(|e| corrupt(format!("order id {id:?}: {e}")))?;
            let timeline_seq = match row.try_get::<Option<i64>, _>("timeline_seq")? {
                Some(seq) => seq,
                None => {
                    let timeline: Option<String> = row.try_get("timeline")?;
                    newest_seq(timeline.as_deref().unwrap_or("[]"))
                        .map_err(|e| corrupt(format!("timeline of order {id}: {e}")))?
                }
            };
            let version = row.try_get("version")?;
            held.insert(
                id,
                Held {
                    version,
                    timeline_seq,
                },
            );
        }
    }
    Ok(held)
}

/// For orders this read model has no row of: the row their POST would have written
/// (PROCESSING, version 0, empty timeline), unless one exists by now.
async fn insert_unseen(tx: &mut Tx, updates: &[&OrderUpdated]) -> Result<(), sqlx::Error> {
    let rows: Vec<Placed> = updates
        .iter()
        .map(|u| Placed {
            id: u.order_id,
            terms: u.terms.clone(),
            placed_at_ms: u.placed_at_ms,
            trace_id: u.trace_id.clone(),
        })
        .collect();
    insert_rows(tx, &rows, "ON CONFLICT (order_id) DO NOTHING").await
}

/// The seq of the newest entry of a stored timeline (0 if empty), reading only the seqs.
fn newest_seq(timeline: &str) -> Result<i64, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: i64,
    }
    let entries: Vec<Seq> = serde_json::from_str(timeline)?;
    Ok(entries.iter().map(|e| e.seq).max().unwrap_or(0))
}

/// Applies a saga update unless the row already holds this version or a newer one: events
/// may be redelivered or overtake each other, and the newest state must win. Returns
/// whether the row changed.
pub(crate) async fn apply_update(tx: &mut Tx, update: &OrderUpdated) -> Result<bool, sqlx::Error> {
    let timeline =
        serde_json::to_string(&update.timeline).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let timeline_seq = update.timeline.iter().map(|e| e.seq).max().unwrap_or(0);
    let done = sqlx::query(
        "INSERT INTO orders (order_id, username, price, amount, status, phase, listed, version, \
         placed_at_ms, updated_at_ms, timeline, trace_id, product, timeline_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, phase = excluded.phase, \
         listed = excluded.listed, version = excluded.version, updated_at_ms = excluded.updated_at_ms, \
         timeline = excluded.timeline, trace_id = COALESCE(orders.trace_id, excluded.trace_id), \
         timeline_seq = excluded.timeline_seq \
         WHERE orders.version < excluded.version",
    )
    .bind(update.order_id.to_string())
    .bind(update.terms.username.as_str().to_string())
    .bind(update.terms.price.get())
    .bind(update.terms.amount.get())
    .bind(update.status.as_str())
    .bind(update.phase.as_str())
    .bind(i64::from(update.created))
    .bind(update.version)
    .bind(update.placed_at_ms)
    .bind(update.updated_at_ms)
    .bind(timeline)
    .bind(update.trace_id.clone())
    .bind(update.terms.product.as_str().to_string())
    .bind(timeline_seq)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One order with its timeline and its trace id, listed or not.
pub(crate) async fn get(
    db: &Db,
    id: OrderId,
) -> Result<Option<(StoredOrder, Vec<TimelineEntry>, Option<String>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT order_id, username, price, amount, product, status, phase, placed_at_ms, \
         updated_at_ms, timeline, trace_id FROM orders WHERE order_id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let timeline: String = row.try_get("timeline")?;
    let timeline = serde_json::from_str(&timeline)
        .map_err(|e| corrupt(format!("timeline of order {id}: {e}")))?;
    Ok(Some((summary(&row)?, timeline, row.try_get("trace_id")?)))
}

/// Orders matching `filter`, newest first, at most `filter.limit`.
pub(crate) async fn list(db: &Db, filter: &Filter) -> Result<Vec<StoredOrder>, sqlx::Error> {
    // Only the conditions in use are written, so each query can use its index.
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM orders WHERE 1 = 1");
    let mut params: Vec<String> = Vec::new();
    let mut condition = |column: &str, op: &str, value: String| {
        params.push(value);
        sql.push_str(&format!(" AND {column} {op} ${}", params.len()));
    };
    if let Some(username) = &filter.username {
        condition("username", "=", username.clone());
    }
    if let Some(status) = filter.status {
        condition("status", "=", status.as_str().to_string());
    }
    if let Some(before) = filter.before {
        condition("order_id", "<", before.to_string());
    }
    let mut n = params.len();
    if filter.updated_before_ms.is_some() {
        n += 1;
        sql.push_str(&format!(" AND updated_at_ms <= ${n}"));
    }
    sql.push_str(&format!(" ORDER BY order_id DESC LIMIT ${}", n + 1));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in params {
        query = query.bind(p);
    }
    if let Some(at_ms) = filter.updated_before_ms {
        query = query.bind(at_ms);
    }
    let rows = query.bind(filter.limit).fetch_all(db.pool()).await?;
    rows.iter().map(summary).collect()
}

/// The newest `limit` orders whose `order.create` succeeded, oldest first
/// (`/api/all-transaction`): its answer is bounded however large the shop grows.
pub(crate) async fn listed(db: &Db, limit: i64) -> Result<Vec<StoredOrder>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT order_id, username, price, amount, product, status, phase, placed_at_ms, \
         updated_at_ms FROM orders WHERE listed = 1 ORDER BY order_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter().rev().map(summary).collect()
}

fn summary(row: &AnyRow) -> Result<StoredOrder, sqlx::Error> {
    let id: String = row.try_get("order_id")?;
    let status: String = row.try_get("status")?;
    Ok(StoredOrder {
        id: OrderId::parse(&id).map_err(|e| corrupt(format!("order id {id:?}: {e}")))?,
        username: row.try_get("username")?,
        price: row.try_get("price")?,
        amount: row.try_get("amount")?,
        product: row.try_get("product")?,
        status: OrderStatus::parse(&status).map_err(|e| corrupt(format!("order {id}: {e}")))?,
        phase: row.try_get("phase")?,
        placed_at_ms: row.try_get("placed_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}
