//! Sales figures, from the analytics consumer: totals, by product, top customers, per
//! time bucket, and the summary as a live stream.

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use common::{db::Db, domain::OrderStatus, paging, time::now_ms};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState};
use crate::store::{self, analytics::Sums};

mod stream;
pub use stream::{__path_stream, STALL, SummaryFeed, stream};

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

/// The shop at a glance: [`SalesReport`], with the number of finished orders and of
/// customers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({"orders": 127, "orders_by_status": {"SUCCESS": 120, "INSUFFICIENT_FUND": 4,
    "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 2, "UNKNOWN": 1}, "tokens_sold": 240, "revenue": 2400,
    "customers": 17}))]
pub struct Summary {
    /// Finished orders, whatever their status.
    pub orders: i64,
    /// Finished orders per final status (every final status is present).
    pub orders_by_status: BTreeMap<String, i64>,
    /// Tokens sold by successful orders.
    pub tokens_sold: i64,
    /// Credits earned by successful orders (Σ price × amount).
    pub revenue: i64,
    /// Buyers with at least one successful order.
    pub customers: i64,
}

/// Successful sales of one product.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"product": "late_token", "orders": 100, "tokens": 200, "revenue": 2000}))]
pub struct ProductSales {
    pub product: String,
    pub orders: i64,
    pub tokens: i64,
    /// Credits earned.
    pub revenue: i64,
}

/// One buyer's successful purchases.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"username": "ann", "orders": 3, "tokens": 6, "spent": 60}))]
pub struct CustomerSales {
    pub username: String,
    pub orders: i64,
    pub tokens: i64,
    /// Credits spent.
    pub spent: i64,
}

/// The figures of the orders that finished in one time bucket.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"start_ms": 1764600000000_i64, "orders_by_status": {"SUCCESS": 3,
    "INSUFFICIENT_FUND": 1, "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 0, "UNKNOWN": 0}, "tokens": 6, "revenue": 60}))]
pub struct Bucket {
    /// The bucket's first millisecond (Unix time); it lasts `bucket_s`.
    pub start_ms: i64,
    /// Orders that finished in the bucket, per final status (every final status present).
    pub orders_by_status: BTreeMap<String, i64>,
    /// Tokens and credits of the successful ones.
    pub tokens: i64,
    pub revenue: i64,
}

/// Sales over time.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"bucket_s": 60, "window_s": 120, "points": [
    {"start_ms": 1764600000000_i64, "orders_by_status": {"SUCCESS": 3, "INSUFFICIENT_FUND": 1,
        "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 0, "UNKNOWN": 0}, "tokens": 6, "revenue": 60},
    {"start_ms": 1764600060000_i64, "orders_by_status": {"SUCCESS": 0, "INSUFFICIENT_FUND": 0,
        "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 0, "UNKNOWN": 0}, "tokens": 0, "revenue": 0}]}))]
pub struct Timeseries {
    pub bucket_s: i64,
    pub window_s: i64,
    /// Every bucket of the window, oldest first; the last one holds now.
    pub points: Vec<Bucket>,
}

/// `limit` of `/api/analytics/top-customers`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TopParams {
    /// How many customers, 1 to 100 (default 5).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, example = 5)]
    pub limit: Option<String>,
}

/// The buckets of `/api/analytics/timeseries`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// Seconds per bucket: a multiple of 60 from 60 to 86,400 (default 60, sales per minute).
    #[param(value_type = Option<i64>, minimum = 60, maximum = 86400, multiple_of = 60, example = 60)]
    pub bucket_s: Option<String>,
    /// Seconds of history, ending now, from 60 to 86,400 (default 3,600, or one bucket if
    /// that is longer); rounded up to whole buckets (the answer's `window_s`).
    #[param(value_type = Option<i64>, minimum = 60, maximum = 86400, example = 3600)]
    pub window_s: Option<String>,
}

/// The longest window, so at most 1,440 buckets (of a minute).
const MAX_WINDOW_S: i64 = 86_400;

impl SeriesParams {
    /// `(bucket_s, window_s)`, the window rounded up to whole buckets.
    fn parse(&self) -> Result<(i64, i64), ApiError> {
        let int = |name: &str, v: Option<&str>, default: i64| match v {
            None => Ok(default),
            Some(s) => s.trim().parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("{name}: must be an integer number of seconds"))
            }),
        };
        let bucket = int("bucket_s", self.bucket_s.as_deref(), 60)?;
        if !(60..=86_400).contains(&bucket) || bucket % 60 != 0 {
            return Err(ApiError::BadRequest(
                "bucket_s: must be a multiple of 60 from 60 to 86400".into(),
            ));
        }
        let window = int("window_s", self.window_s.as_deref(), 3600.max(bucket))?;
        if !(60..=MAX_WINDOW_S).contains(&window) {
            return Err(ApiError::BadRequest(format!(
                "window_s: must be from 60 to {MAX_WINDOW_S}"
            )));
        }
        let buckets = (window + bucket - 1) / bucket;
        Ok((bucket, buckets * bucket))
    }
}

/// Every final status at zero: a figure per status is always present.
fn zero_by_status() -> BTreeMap<String, i64> {
    OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| (s.as_str().to_string(), 0))
        .collect()
}

const UNAVAILABLE: &str =
    r#"{"error": "unavailable", "detail": "the database is unavailable, retry later"}"#;

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
    let s = summary_of(&app.db).await?;
    Ok(Json(SalesReport {
        orders_by_status: s.orders_by_status,
        tokens_sold: s.tokens_sold,
        revenue: s.revenue,
    }))
}

/// The figures of [`Summary`], read from the store.
pub async fn summary_of(db: &Db) -> Result<Summary, sqlx::Error> {
    let mut s = Summary {
        orders: 0,
        orders_by_status: zero_by_status(),
        tokens_sold: 0,
        revenue: 0,
        customers: store::analytics::customers(db).await?,
    };
    for (status, sums) in store::analytics::by_status(db).await? {
        s.orders = s.orders.saturating_add(sums.orders);
        s.tokens_sold = s.tokens_sold.saturating_add(sums.tokens);
        s.revenue = s.revenue.saturating_add(sums.revenue);
        s.orders_by_status.insert(status, sums.orders);
    }
    Ok(s)
}

/// Summary of every finished order.
///
/// Finished orders per status, tokens and credits sold, and customers. A compensated or
/// failed order counts in its status only, never in sales.
#[utoipa::path(
    get,
    path = "/api/analytics/summary",
    tag = "analytics",
    responses(
        (status = 200, description = "The summary", body = Summary),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn summary(State(app): State<AppState>) -> Result<Json<Summary>, ApiError> {
    Ok(Json(summary_of(&app.db).await?))
}

/// Successful sales per product.
///
/// Every product of the catalog is listed, those that sold nothing with zeros; by revenue,
/// highest first, then by name.
#[utoipa::path(
    get,
    path = "/api/analytics/sales-by-product",
    tag = "analytics",
    responses(
        (status = 200, description = "Sales per product", body = Vec<ProductSales>,
            example = json!([{"product": "late_token", "orders": 100, "tokens": 200, "revenue": 2000},
                {"product": "early_token", "orders": 0, "tokens": 0, "revenue": 0}])),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn sales_by_product(
    State(app): State<AppState>,
) -> Result<Json<Vec<ProductSales>>, ApiError> {
    let sold = store::analytics::by_product(&app.db).await?;
    let unsold = app
        .catalog
        .listings()
        .iter()
        .map(|l| l.product.to_string())
        .filter(|p| !sold.iter().any(|(s, _)| s == p))
        .map(|p| (p, Sums::default()))
        .collect::<BTreeMap<_, _>>();
    Ok(Json(
        sold.into_iter()
            .chain(unsold)
            .map(|(product, s)| ProductSales {
                product,
                orders: s.orders,
                tokens: s.tokens,
                revenue: s.revenue,
            })
            .collect(),
    ))
}

/// The customers who spent most.
///
/// By credits spent on successful orders, highest first; customers who spent the same are
/// ordered by username (byte order of its UTF-8), so the list is the same on every call.
#[utoipa::path(
    get,
    path = "/api/analytics/top-customers",
    tag = "analytics",
    params(TopParams),
    responses(
        (status = 200, description = "The top customers", body = Vec<CustomerSales>,
            example = json!([{"username": "ann", "orders": 3, "tokens": 6, "spent": 60},
                {"username": "bob", "orders": 1, "tokens": 2, "spent": 20}])),
        (status = 400, description = "A parameter is invalid; the detail starts with its name", body = ApiError,
            examples(
                ("limit" = (value = json!({"error": "bad_request", "detail": "limit: must be between 1 and 100"}))),
                ("unknown" = (value = json!({"error": "bad_request", "detail": "top: not a parameter of this route (it takes limit)"}))),
            )),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn top_customers(
    State(app): State<AppState>,
    params: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<Vec<CustomerSales>>, ApiError> {
    let Query(params) = params?;
    let limit = paging::limit(params.limit.as_deref(), 5, 100)
        .map_err(|why| ApiError::BadRequest(format!("limit: {why}")))?;
    let top = store::analytics::top_customers(&app.db, limit).await?;
    Ok(Json(
        top.into_iter()
            .map(|(username, s)| CustomerSales {
                username,
                orders: s.orders,
                tokens: s.tokens,
                spent: s.revenue,
            })
            .collect(),
    ))
}

/// Sales over time.
///
/// The orders that finished in each bucket of the window ending now, per final status,
/// with the tokens and credits of the successful ones. Buckets are aligned on multiples
/// of `bucket_s` since the Unix epoch; every bucket is listed, empty ones with zeros.
#[utoipa::path(
    get,
    path = "/api/analytics/timeseries",
    tag = "analytics",
    params(SeriesParams),
    responses(
        (status = 200, description = "The buckets", body = Timeseries),
        (status = 400, description = "A parameter is invalid; the detail starts with its name", body = ApiError,
            examples(
                ("bucket_s" = (value = json!({"error": "bad_request", "detail": "bucket_s: must be a multiple of 60 from 60 to 86400"}))),
                ("window_s" = (value = json!({"error": "bad_request", "detail": "window_s: must be from 60 to 86400"}))),
                ("unknown" = (value = json!({"error": "bad_request", "detail": "bucket: not a parameter of this route (it takes bucket_s or window_s)"}))),
            )),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn timeseries(
    State(app): State<AppState>,
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> Result<Json<Timeseries>, ApiError> {
    let Query(params) = params?;
    let (bucket_s, window_s) = params.parse()?;
    Ok(Json(series(&app.db, bucket_s, window_s, now_ms()).await?))
}

/// The buckets of `window_s` seconds ending with the one that holds `now_ms`.
async fn series(
    db: &Db,
    bucket_s: i64,
    window_s: i64,
    now_ms: i64,
) -> Result<Timeseries, sqlx::Error> {
    let bucket_ms = bucket_s * 1000;
    let last = now_ms - now_ms.rem_euclid(bucket_ms);
    let count = window_s / bucket_s;
    let first = last - (count - 1) * bucket_ms;
    let mut points: Vec<Bucket> = (0..count)
        .map(|i| Bucket {
            start_ms: first + i * bucket_ms,
            orders_by_status: zero_by_status(),
            tokens: 0,
            revenue: 0,
        })
        .collect();
    for (minute_ms, status, s) in store::analytics::minutes(db, first).await? {
        let Ok(i) = usize::try_from((minute_ms - first) / bucket_ms) else {
            continue;
        };
        let Some(point) = points.get_mut(i) else {
            continue;
        };
        *point.orders_by_status.entry(status).or_default() += s.orders;
        point.tokens = point.tokens.saturating_add(s.tokens);
        point.revenue = point.revenue.saturating_add(s.revenue);
    }
    Ok(Timeseries {
        bucket_s,
        window_s,
        points,
    })
}
