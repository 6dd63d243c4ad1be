//! Idempotency keys of purchases: claimed in the order's own transaction, read back by a
//! repeat.

use common::{
    db::{Db, Tx},
    domain::OrderId,
};
use sqlx::Row;

use super::corrupt;

/// What the first request with a key was, and what it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The canonical form of the request (see `api::purchase::fingerprint`; a restock's
    /// is `restock <product> <amount>`).
    pub fingerprint: String,
    /// What the request created: the order's id, or a restock's.
    pub order_id: OrderId,
    pub response_status: u16,
    /// The JSON body, exactly as it was sent.
    pub response_body: String,
}

/// Claims `key` for `record` inside `tx`. Returns false when the key is already taken, by a
/// committed request or by one committing concurrently: on PostgreSQL the insert waits for
/// that transaction and then does nothing; on SQLite write transactions are serialized.
/// Either way the caller must roll back and [`find`] the winner's record.
pub(crate) async fn claim(
    tx: &mut Tx,
    key: &str,
    record: &Recorded,
    created_at_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, fingerprint, order_id, response_status, \
         response_body, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key.to_string())
    .bind(record.fingerprint.clone())
    .bind(record.order_id.to_string())
    .bind(i64::from(record.response_status))
    .bind(record.response_body.clone())
    .bind(created_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets the keys claimed before `before_ms`; returns how many.
pub(crate) async fn sweep(db: &Db, before_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at_ms < $1")
        .bind(before_ms)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

/// The record of `key`, if a request with it was committed.
pub(crate) async fn find(db: &Db, key: &str) -> Result<Option<Recorded>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT fingerprint, order_id, response_status, response_body \
         FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key.to_string())
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let order_id: String = row.try_get("order_id")?;
    let status: i64 = row.try_get("response_status")?;
    Ok(Some(Recorded {
        fingerprint: row.try_get("fingerprint")?,
        order_id: OrderId::parse(&order_id).map_err(|e| {
            corrupt(format!(
                "idempotency key {key:?}: order id {order_id:?}: {e}"
            ))
        })?,
        response_status: u16::try_from(status)
            .map_err(|_| corrupt(format!("idempotency key {key:?}: status {status}")))?,
        response_body: row.try_get("response_body")?,
    }))
}
