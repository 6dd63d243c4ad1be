//! What the manager's store shows the audit: each saga's status, phase, last update and
//! timeline.

use anyhow::Context;
use common::{
    invariants::SagaRow,
    messages::TimelineEvent,
    snapshot::{self, OrderWindow},
};
use serde::Deserialize;
use sqlx::{AnyPool, Row};

/// The table keyed by order id.
pub const TABLE: &str = "sagas";

/// The part of a saga's state (`sagas.state`, JSON) the audit needs; the rest is skipped.
#[derive(Debug, Deserialize)]
pub struct StoredSaga {
    #[serde(default)]
    pub timeline: Vec<StoredEntry>,
}

#[derive(Debug, Deserialize)]
pub struct StoredEntry {
    #[serde(default)]
    pub step: String,
    #[serde(default)]
    pub event: String,
}

/// `(order id, saga)` of the sagas in `window`.
pub async fn sagas(
    pool: &AnyPool,
    window: OrderWindow<'_>,
) -> anyhow::Result<Vec<(String, SagaRow)>> {
    let select = "SELECT order_id, status, phase, updated_at_ms, state FROM sagas";
    let mut sagas = Vec::new();
    for r in snapshot::rows_in(pool, select, window).await? {
        let state: StoredSaga = serde_json::from_str(&r.try_get::<String, _>("state")?)
            .context("a saga's state is not JSON with a timeline")?;
        let saga = SagaRow {
            status: r.try_get("status")?,
            phase: r.try_get("phase")?,
            updated_at_ms: r.try_get("updated_at_ms")?,
            timeline: state
                .timeline
                .into_iter()
                .map(|e| (e.step, TimelineEvent::parse(&e.event)))
                .collect(),
        };
        sagas.push((r.try_get("order_id")?, saga));
    }
    Ok(sagas)
}
