//! Sales figures, from the analytics consumer.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use common::domain::OrderStatus;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store;

/// What the marketplace sold, over every finished order.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"orders_by_status": {"SUCCESS": 120, "INSUFFICIENT_FUND": 4,
    "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 2, "UNKNOWN": 1}, "tokens_sold": 240, "revenue": 2400}))]
pub struct SalesReport {
    /// Finished orders per final status (every final status is present).
    pub orders_by_status: BTreeMap<String, i64>,
    /// Tokens sold by successful orders.
    pub tokens_sold: i64,
    /// Credits earned by successful orders (Σ price × amount).
    pub revenue: i64,
}

/// Sales figures.
///
/// Each order counts once, when it reaches its final status. Updated asynchronously: a
/// just-finished order may take a moment to appear.
#[utoipa::path(
    get,
    path = "/api/analytics/sales",
    tag = "analytics",
    responses(
        (status = 200, description = "The figures", body = SalesReport),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn sales(State(app): State<AppState>) -> Result<Json<SalesReport>, ApiError> {
    let mut report = SalesReport {
        orders_by_status: OrderStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(|s| (s.as_str().to_string(), 0))
            .collect(),
        tokens_sold: 0,
        revenue: 0,
    };
    for row in store::analytics::figures(&app.db).await? {
        report.tokens_sold = report.tokens_sold.saturating_add(row.tokens);
        report.revenue = report.revenue.saturating_add(row.revenue);
        report.orders_by_status.insert(row.status, row.orders);
    }
    Ok(Json(report))
}
