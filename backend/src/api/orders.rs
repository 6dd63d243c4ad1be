//! Reading orders: one by id (with its timeline), a filtered page, and the compatibility
//! contract's full list.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::PathRejection, rejection::QueryRejection},
};
use common::{
    domain::{InvalidValue, OrderId, OrderStatus, Username},
    messages::TimelineEntry,
    paging,
    time::{now_ms, rfc3339},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState};
use crate::store::{self, orders::StoredOrder};

/// An order as `/api/all-transaction` lists it (the compatibility contract's shape).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "username": "alice", "price": 10,
    "amount": 2, "status": "SUCCESS", "created_at": "2026-10-01T12:00:00.123Z"}))]
pub struct Transaction {
    pub id: String,
    pub username: String,
    pub price: i64,
    pub amount: i64,
    /// `PROCESSING`, `SUCCESS`, `INSUFFICIENT_FUND`, `INSUFFICIENT_INVENTORY`, `TIMEOUT` or `UNKNOWN`.
    pub status: String,
    /// When the order was placed (RFC 3339, UTC).
    pub created_at: String,
}

/// An order without its timeline.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "username": "alice", "price": 10,
    "amount": 2, "total": 20, "product": "late_token", "status": "SUCCESS", "phase": "done",
    "created_at": "2026-10-01T12:00:00.123Z", "updated_at": "2026-10-01T12:00:00.131Z"}))]
pub struct OrderSummary {
    pub id: String,
    pub username: String,
    /// Price of one token, in credits.
    pub price: i64,
    pub amount: i64,
    /// price × amount: what the buyer is charged.
    pub total: i64,
    /// What was bought.
    pub product: String,
    /// `PROCESSING`, `SUCCESS`, `INSUFFICIENT_FUND`, `INSUFFICIENT_INVENTORY`, `TIMEOUT` or `UNKNOWN`.
    pub status: String,
    /// `running`, `compensating` or `done`.
    pub phase: String,
    /// When the order was placed (RFC 3339, UTC).
    pub created_at: String,
    /// When its saga last moved (RFC 3339, UTC).
    pub updated_at: String,
}

/// One event of an order's saga.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"seq": 3, "at": "2026-10-01T12:00:00.127Z", "step": "payment.charge", "event": "done"}))]
pub struct TimelineItem {
    /// Position in the saga's history, from 1.
    pub seq: i64,
    /// RFC 3339, UTC.
    pub at: String,
    /// `order.create`, `payment.charge`, `inventory.reserve`, `delivery.schedule`,
    /// `order.complete`, `delivery.cancel`, `inventory.release`, `payment.refund`, `order.reject`.
    pub step: String,
    /// `sent`, `done`, `refused`, `failed`, `skipped`, `timed_out`, `dead_lettered` or `retried`.
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// This event's span in the order's trace (16 hex digits): the step attempt's span for
    /// `sent` and its outcome. Absent when tracing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "b7ad6b7169203331")]
    pub span_id: Option<String>,
}

/// An order with its saga's timeline, oldest event first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "username": "alice", "price": 10,
    "amount": 2, "total": 20, "product": "late_token", "status": "INSUFFICIENT_FUND", "phase": "done",
    "created_at": "2026-10-01T12:00:00.123Z", "updated_at": "2026-10-01T12:00:00.131Z",
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "timeline": [
        {"seq": 1, "at": "2026-10-01T12:00:00.124Z", "step": "order.create", "event": "sent", "span_id": "b7ad6b7169203331"},
        {"seq": 2, "at": "2026-10-01T12:00:00.125Z", "step": "order.create", "event": "done", "span_id": "b7ad6b7169203331"},
        {"seq": 3, "at": "2026-10-01T12:00:00.125Z", "step": "payment.charge", "event": "sent"},
        {"seq": 4, "at": "2026-10-01T12:00:00.127Z", "step": "payment.charge", "event": "refused", "detail": "insufficient_funds"},
        {"seq": 5, "at": "2026-10-01T12:00:00.127Z", "step": "order.reject", "event": "sent"},
        {"seq": 6, "at": "2026-10-01T12:00:00.131Z", "step": "order.reject", "event": "done"}]}))]
pub struct OrderDetail {
    #[serde(flatten)]
    pub order: OrderSummary,
    /// The order's trace in the tracing backend (32 hex digits; in SigNoz: `/trace/{trace_id}`).
    /// Null when tracing is off.
    #[schema(example = "0af7651916cd43dd8448eb211c80319c")]
    pub trace_id: Option<String>,
    pub timeline: Vec<TimelineItem>,
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"orders": [{"id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "username": "alice",
    "price": 10, "amount": 2, "total": 20, "product": "late_token", "status": "SUCCESS", "phase": "done",
    "created_at": "2026-10-01T12:00:00.123Z", "updated_at": "2026-10-01T12:00:00.131Z"}],
    "next_cursor": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f"}))]
pub struct OrderPage {
    pub orders: Vec<OrderSummary>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `/api/orders`. Read as text and parsed here, so a bad one is named in a 400.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only this buyer's orders.
    #[param(example = "alice")]
    pub username: Option<String>,
    /// Only orders with this status.
    #[param(value_type = Option<OrderStatus>, example = "SUCCESS")]
    pub status: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200, example = 50)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<String>,
    /// Only orders that have not changed for at least this many milliseconds, 0 to
    /// 86,400,000: with `status=PROCESSING`, the sagas that are stuck.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 86_400_000, example = 10_000)]
    pub idle_ms: Option<String>,
}

/// The longest `idle_ms`: a day.
pub const MAX_IDLE_MS: i64 = 86_400_000;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

impl ListParams {
    /// The store filter these parameters ask for, or `None` when no order can match (a
    /// username that could never have been accepted). An empty `username` counts as
    /// absent; a typed parameter (status, limit, cursor) must be well-formed when present,
    /// as the OpenAPI document says.
    pub(crate) fn parse(&self) -> Result<Option<store::orders::Filter>, InvalidValue> {
        let present =
            |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let status = self.status.as_deref().map(OrderStatus::parse).transpose()?;
        let limit = paging::limit(self.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)
            .map_err(|why| InvalidValue::new("limit", why))?;
        let before = self
            .cursor
            .as_deref()
            .map(|s| {
                OrderId::parse(s)
                    .map_err(|_| InvalidValue::new("cursor", "must be an order id (UUID)"))
            })
            .transpose()?;
        let idle_ms = self
            .idle_ms
            .as_deref()
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|ms| (0..=MAX_IDLE_MS).contains(ms))
                    .ok_or_else(|| {
                        InvalidValue::new(
                            "idle_ms",
                            format!("must be an integer from 0 to {MAX_IDLE_MS}"),
                        )
                    })
            })
            .transpose()?;
        let username = present(&self.username);
        if username
            .as_ref()
            .is_some_and(|u| Username::parse(u.as_str()).is_err())
        {
            return Ok(None);
        }
        Ok(Some(store::orders::Filter {
            username,
            status,
            before,
            updated_before_ms: idle_ms.map(|ms| now_ms() - ms),
            limit,
        }))
    }
}

impl From<&StoredOrder> for OrderSummary {
    fn from(o: &StoredOrder) -> Self {
        Self {
            id: o.id.to_string(),
            username: o.username.clone(),
            price: o.price,
            amount: o.amount,
            // Validated at the edge (OrderTerms): the product fits.
            total: o.price.saturating_mul(o.amount),
            product: o.product.clone(),
            status: o.status.as_str().to_string(),
            phase: o.phase.clone(),
            created_at: rfc3339(o.placed_at_ms),
            updated_at: rfc3339(o.updated_at_ms),
        }
    }
}

impl From<&StoredOrder> for Transaction {
    fn from(o: &StoredOrder) -> Self {
        Self {
            id: o.id.to_string(),
            username: o.username.clone(),
            price: o.price,
            amount: o.amount,
            status: o.status.as_str().to_string(),
            created_at: rfc3339(o.placed_at_ms),
        }
    }
}

impl From<&TimelineEntry> for TimelineItem {
    fn from(e: &TimelineEntry) -> Self {
        Self {
            seq: e.seq,
            at: rfc3339(e.at_ms),
            step: e.step.name().to_string(),
            event: e.event.to_string(),
            detail: e.detail.clone(),
            span_id: e.span_id.clone(),
        }
    }
}

/// The newest created orders (at most `ALL_TRANSACTION_LIMIT`), oldest first.
///
/// The compatibility contract's list: an order appears once its `order.create` step
/// succeeded (an order whose creation failed is only visible at `/api/orders/{id}`).
#[utoipa::path(
    get,
    path = "/api/all-transaction",
    tag = "orders",
    responses(
        (status = 200, description = "The newest created orders (at most `ALL_TRANSACTION_LIMIT`, \
default 1,000), oldest first", body = Vec<Transaction>),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn all_transactions(
    State(app): State<AppState>,
) -> Result<Json<Vec<Transaction>>, ApiError> {
    let orders = store::orders::listed(&app.db, app.all_transaction_limit).await?;
    Ok(Json(orders.iter().map(Transaction::from).collect()))
}

/// One order, with its saga's timeline.
///
/// Every accepted order is here from the moment the POST answered (as `PROCESSING`),
/// listed or not.
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    params(("id" = String, Path, format = Uuid, description = "The order id the POST returned",
        example = "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f")),
    responses(
        (status = 200, description = "The order", body = OrderDetail),
        (status = 400, description = "The id is not a UUID", body = ApiError,
            example = json!({"error": "bad_request", "detail": "order_id: not a UUID"})),
        (status = 404, description = "No such order", body = ApiError,
            example = json!({"error": "not_found", "detail": "order 01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f not found"})),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn get_order(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OrderDetail>, ApiError> {
    let Path(id) = id?;
    let id = OrderId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (order, timeline, trace_id) = store::orders::get(&app.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok(Json(OrderDetail {
        order: OrderSummary::from(&order),
        trace_id,
        timeline: timeline.iter().map(TimelineItem::from).collect(),
    }))
}

/// Orders, newest first, a page at a time.
///
/// Filter by buyer and status (and, for stuck sagas, by how long an order has not moved);
/// follow `next_cursor` until it is null to see every order exactly once, even while new
/// orders arrive.
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "A parameter is invalid or repeated; the detail starts with its name", body = ApiError,
            examples(
                ("limit" = (value = json!({"error": "bad_request", "detail": "limit: must be between 1 and 200"}))),
                ("status" = (value = json!({"error": "bad_request", "detail": "status: unknown status \"DONE\""}))),
                ("cursor" = (value = json!({"error": "bad_request", "detail": "cursor: must be an order id (UUID)"}))),
                ("idle_ms" = (value = json!({"error": "bad_request", "detail": "idle_ms: must be an integer from 0 to 86400000"}))),
                ("unknown" = (value = json!({"error": "bad_request", "detail": "stauts: not a parameter of this route (it takes username, status, limit, cursor, idle_ms)"}))),
            )),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn list_orders(
    State(app): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(params) = params?;
    // A query parameter is part of the address: a bad one is a 400, as on every list.
    let parsed = params
        .parse()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(mut filter) = parsed else {
        return Ok(Json(OrderPage {
            orders: Vec::new(),
            next_cursor: None,
        }));
    };
    // One row more than asked tells whether another page exists, so the last page never
    // points at an empty one.
    let limit = filter.limit;
    filter.limit += 1;
    let mut orders = store::orders::list(&app.db, &filter).await?;
    let next_cursor = paging::next_page(&mut orders, limit, |o| o.id.to_string());
    Ok(Json(OrderPage {
        orders: orders.iter().map(OrderSummary::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests;
