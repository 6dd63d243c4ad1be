//! The order feed table (`order_feed`): appended by the projection in its transaction, read
//! by every replica's tailer and by resuming clients, pruned from its oldest end.
//!
//! Seqs are assigned here, as `MAX(seq) + 1` under the table's write lock, rather than by a
//! sequence (see the migration): gapless and committed in order, so a reader that sees seq
//! N has seen, or can still read, every row below N that will ever exist.

use common::{
    db::{Backend, Db, Tx},
    domain::OrderId,
};
use sqlx::Row;

/// A row of the feed, as it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub seq: i64,
    pub order_id: String,
    pub username: String,
    /// The event's JSON (see `crate::feed::OrderEvent`).
    pub payload: String,
}

/// A row to append; its seq is assigned by [`append`].
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub order_id: OrderId,
    pub username: String,
    pub payload: String,
}

/// Which rows a reader wants (none: every row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub username: Option<String>,
    pub order_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, row: &FeedRow) -> bool {
        self.username.as_ref().is_none_or(|u| *u == row.username)
            && self.order_id.as_ref().is_none_or(|o| *o == row.order_id)
    }
}

/// Appends `rows` in their order, in as few statements as their number allows. Call it as
/// late as possible in the transaction: on PostgreSQL it takes the table's write lock,
/// which concurrent appenders (other replicas' projections) wait for until this commits.
/// Waiting last, holding every row lock it needs already, cannot deadlock.
pub(crate) async fn append(
    tx: &mut Tx,
    backend: Backend,
    rows: &[NewRow],
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    const ROWS: usize = 200;
    if rows.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        // EXCLUSIVE: readers go on (ACCESS SHARE), appenders and the pruner wait. SQLite's
        // transaction holds its one writer's lock already (BEGIN IMMEDIATE).
        sqlx::query("LOCK TABLE order_feed IN EXCLUSIVE MODE")
            .execute(&mut **tx)
            .await?;
    }
    let newest: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS newest FROM order_feed")
        .fetch_one(&mut **tx)
        .await?
        .try_get("newest")?;
    let mut seq = newest;
    for chunk in rows.chunks(ROWS) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = 2 + i * 4;
                format!("(${}, ${}, ${}, $1, ${})", p, p + 1, p + 2, p + 3)
            })
            .collect();
        let sql = format!(
            "INSERT INTO order_feed (seq, order_id, username, at_ms, payload) VALUES {}",
            values.join(", ")
        );
        // Not kept prepared: one statement per batch size would crowd the statement cache.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(at_ms);
        for row in chunk {
            seq += 1;
            query = query
                .bind(seq)
                .bind(row.order_id.to_string())
                .bind(row.username.clone())
                .bind(row.payload.clone());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows with a seq above `after` that `filter` wants, oldest first, at most `limit`.
pub(crate) async fn after(
    db: &Db,
    after: i64,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<FeedRow>, sqlx::Error> {
    let mut sql =
        String::from("SELECT seq, order_id, username, payload FROM order_feed WHERE seq > $1");
    let mut params: Vec<String> = Vec::new();
    for (column, value) in [
        ("username", &filter.username),
        ("order_id", &filter.order_id),
    ] {
        if let Some(value) = value {
            params.push(value.clone());
            sql.push_str(&format!(" AND {column} = ${}", params.len() + 1));
        }
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", params.len() + 2));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after);
    for p in params {
        query = query.bind(p);
    }
    let rows = query.bind(limit).fetch_all(db.pool()).await?;
    rows.iter()
        .map(|r| {
            Ok(FeedRow {
                seq: r.try_get("seq")?,
                order_id: r.try_get("order_id")?,
                username: r.try_get("username")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect()
}

/// The oldest and the newest seq kept, or None while the feed is empty.
pub(crate) async fn bounds(db: &Db) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row = sqlx::query("SELECT MIN(seq) AS oldest, MAX(seq) AS newest FROM order_feed")
        .fetch_one(db.pool())
        .await?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    let newest: Option<i64> = row.try_get("newest")?;
    Ok(oldest.zip(newest))
}

/// Deletes, from the oldest end, the rows written before `before_ms` and those more than
/// `keep_rows` below the newest, but never the newest row (the next seq is counted from
/// it: an empty feed would start again from 1, under the ids clients hold). Returns how
/// many rows went. Reads and deletes by seq only, a thousand rows at a time, so that it
/// needs no index but the primary key and never holds the table for long.
pub(crate) async fn prune(db: &Db, before_ms: i64, keep_rows: i64) -> Result<u64, sqlx::Error> {
    const CHUNK: i64 = 1000;
    // Bounded, so that a huge backlog is worked off over several calls.
    const MAX_CHUNKS: usize = 100;
    let mut deleted = 0;
    for _ in 0..MAX_CHUNKS {
        let Some((_, newest)) = bounds(db).await? else {
            break;
        };
        let floor = newest.saturating_sub(keep_rows);
        let oldest = sqlx::query("SELECT seq, at_ms FROM order_feed ORDER BY seq LIMIT $1")
            .bind(CHUNK)
            .fetch_all(db.pool())
            .await?;
        let mut upto = None;
        for row in &oldest {
            let (seq, at_ms): (i64, i64) = (row.try_get("seq")?, row.try_get("at_ms")?);
            if seq >= newest || (at_ms >= before_ms && seq > floor) {
                break;
            }
            upto = Some(seq);
        }
        let Some(upto) = upto else { break };
        let done = sqlx::query("DELETE FROM order_feed WHERE seq <= $1")
            .bind(upto)
            .execute(db.pool())
            .await?;
        deleted += done.rows_affected();
        if done.rows_affected() < CHUNK as u64 {
            break;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests;
