//! Saga persistence: the only SQL of the manager.

use common::{db::Tx, domain::OrderId};
use sqlx::Row;

use crate::saga::Saga;

/// Loads a saga inside `tx`.
pub(crate) async fn load(tx: &mut Tx, order_id: OrderId) -> anyhow::Result<Option<Saga>> {
    let row = sqlx::query("SELECT state FROM sagas WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let state: String = r.try_get("state")?;
            Ok(Some(serde_json::from_str(&state)?))
        }
    }
}

/// Loads the sagas of `order_ids` inside `tx`, in one statement.
pub(crate) async fn load_many(
    tx: &mut Tx,
    order_ids: &[OrderId],
) -> anyhow::Result<std::collections::HashMap<OrderId, Saga>> {
    if order_ids.is_empty() {
        return Ok(Default::default());
    }
    let placeholders: Vec<String> = (1..=order_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT state FROM sagas WHERE order_id IN ({})",
        placeholders.join(", ")
    );
    // Not kept prepared: one statement per batch size would crowd the statement cache.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for id in order_ids {
        query = query.bind(id.to_string());
    }
    let mut sagas = std::collections::HashMap::new();
    for row in query.fetch_all(&mut **tx).await? {
        let saga: Saga = serde_json::from_str(&row.try_get::<String, _>("state")?)?;
        sagas.insert(saga.order_id, saga);
    }
    Ok(sagas)
}

/// Inserts a new saga; false if one with this id exists already.
pub(crate) async fn insert(tx: &mut Tx, saga: &Saga) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO sagas (order_id, state, status, phase, deadline_ms, version, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(saga.order_id.to_string())
    .bind(serde_json::to_string(saga)?)
    .bind(saga.status().as_str())
    .bind(saga.phase().as_str())
    .bind(saga.deadline_ms())
    .bind(saga.version)
    .bind(saga.updated_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the saga if it is still at `expected_version`; false when someone else moved
/// it first (the caller retries with the fresh state).
pub(crate) async fn update(
    tx: &mut Tx,
    saga: &Saga,
    expected_version: i64,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE sagas SET state = $2, status = $3, phase = $4, deadline_ms = $5, version = $6, updated_at_ms = $7 \
         WHERE order_id = $1 AND version = $8",
    )
    .bind(saga.order_id.to_string())
    .bind(serde_json::to_string(saga)?)
    .bind(saga.status().as_str())
    .bind(saga.phase().as_str())
    .bind(saga.deadline_ms())
    .bind(saga.version)
    .bind(saga.updated_at_ms)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Sagas whose deadline is at or before `now_ms`.
pub(crate) async fn due(
    pool: &sqlx::AnyPool,
    now_ms: i64,
    limit: i64,
) -> anyhow::Result<Vec<(OrderId, i64)>> {
    let rows = sqlx::query("SELECT order_id, deadline_ms FROM sagas WHERE deadline_ms <= $1 ORDER BY deadline_ms LIMIT $2")
        .bind(now_ms)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    deadlines(rows)
}

/// How many sagas are not finished (only those have a deadline).
pub(crate) async fn in_flight(pool: &sqlx::AnyPool) -> anyhow::Result<usize> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sagas WHERE deadline_ms IS NOT NULL")
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Every pending deadline, for the timer wheel of a (re)started manager.
pub(crate) async fn all_deadlines(pool: &sqlx::AnyPool) -> anyhow::Result<Vec<(OrderId, i64)>> {
    let rows = sqlx::query("SELECT order_id, deadline_ms FROM sagas WHERE deadline_ms IS NOT NULL")
        .fetch_all(pool)
        .await?;
    deadlines(rows)
}

fn deadlines(rows: Vec<sqlx::any::AnyRow>) -> anyhow::Result<Vec<(OrderId, i64)>> {
    rows.into_iter()
        .map(|r| {
            let id: String = r.try_get("order_id")?;
            Ok((OrderId::parse(&id)?, r.try_get("deadline_ms")?))
        })
        .collect()
}
