//! `/api/dead-letters`: list, inspect, replay and resolve what reached the dead-letter
//! exchange.

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::StatusCode,
    routing::{get, post},
};
use common::{
    db::Db,
    http_error::{ApiError, ErrorBody},
    paging,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::store::{self, DeadLetter, Filter, ReplayRefused};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;
/// How much of the body a listing shows.
pub const PREVIEW_CHARS: usize = 120;

/// The routes, without a fallback: they are merged beside the backend's, which has one.
pub fn router(db: Db) -> Router {
    Router::new()
        .route("/api/dead-letters", get(list))
        .route("/api/dead-letters/{id}", get(get_one).delete(resolve))
        .route("/api/dead-letters/{id}/replay", post(replay))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(db)
}

/// The OpenAPI document of these routes, merged into the one at `/docs`.
#[derive(OpenApi)]
#[openapi(
    paths(list, get_one, replay, resolve),
    components(schemas(DeadLetterSummary, DeadLetterDetail, DeadLetterPage, LetterStatus, ApiError, ErrorBody)),
    tags((name = "dead-letters", description = "Messages that could not be processed: inspect, replay, resolve"))
)]
pub struct DeadLetterDoc;

/// A dead letter in a listing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "message_id": "01920d3c-5e20-7000-8000-000000000001",
    "original_queue": "payment", "exchange": "marketplace", "routing_key": "command.payment", "correlation_id": "01920d3c-5e10-7000-8000-000000000002",
    "reason": "rejected", "delivery_count": 0, "times_seen": 1, "order_id": "01920d3c-5e10-7000-8000-000000000002",
    "status": "open", "first_seen_ms": 1790000000000_i64, "last_seen_ms": 1790000000000_i64, "resolved_at_ms": null,
    "replays": 0, "replayed_at_ms": null, "payload_preview": "{\"order_id\":\"01920d3c-…"}))]
pub struct DeadLetterSummary {
    /// The letter's id (UUIDv7: newer letters sort higher).
    pub id: String,
    /// The dead message's id, which a replay keeps (so its consumer's inbox still knows it).
    pub message_id: String,
    /// The queue it died in (`x-first-death-queue`).
    pub original_queue: Option<String>,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub correlation_id: Option<String>,
    /// `rejected`, `delivery_limit`, `expired`, … (`x-first-death-reason`).
    pub reason: Option<String>,
    /// Deliveries before it died, as the quorum queue counted them.
    pub delivery_count: i64,
    /// How many times this message was dead-lettered (a replay that fails again counts).
    pub times_seen: i64,
    /// The saga it belongs to, when that could be read.
    pub order_id: Option<String>,
    /// `open` or `resolved`.
    pub status: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub resolved_at_ms: Option<i64>,
    /// How many times it was replayed, and when last.
    pub replays: i64,
    pub replayed_at_ms: Option<i64>,
    /// The start of the body.
    pub payload_preview: String,
}

/// A whole dead letter: the listing's fields, its headers and its body.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The AMQP headers as the broker delivered them (with `x-death`).
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    /// The body (lossy UTF-8 when it was not text).
    pub payload: String,
}

/// A page of dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetterSummary>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `/api/dead-letters`. Read as text and parsed here, so a bad one is named.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only letters that died in this queue.
    #[param(example = "payment")]
    pub queue: Option<String>,
    /// Only letters of this order (saga).
    #[param(value_type = Option<String>, format = Uuid)]
    pub order_id: Option<String>,
    /// Only letters that died for this reason (`rejected`, `delivery_limit`, `expired`).
    #[param(example = "rejected")]
    pub reason: Option<String>,
    /// `open` (default), `resolved` or `all`.
    #[param(value_type = Option<LetterStatus>, example = "open")]
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, example = 50)]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>, format = Uuid)]
    pub cursor: Option<String>,
}

/// Which letters a listing shows.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum LetterStatus {
    /// Not resolved (the default).
    Open,
    Resolved,
    All,
}

impl ListParams {
    /// The store filter these parameters ask for. An empty `queue` or `reason` counts as
    /// absent; a typed parameter (order_id, status, limit, cursor) must be well-formed when
    /// present, as the OpenAPI document says.
    pub fn parse(&self) -> Result<Filter, ApiError> {
        let present =
            |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
        let bad = |name: &str, why: &str| ApiError::BadRequest(format!("{name}: {why}"));
        let resolved = match self.status.as_deref() {
            None | Some("open") => Some(false),
            Some("resolved") => Some(true),
            Some("all") => None,
            Some(_) => return Err(bad("status", "must be open, resolved or all")),
        };
        let limit = paging::limit(self.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)
            .map_err(|why| bad("limit", &why))?;
        let uuid = |name: &str, v: Option<String>| {
            v.map(|s| {
                uuid::Uuid::parse_str(&s)
                    .map(|u| u.to_string())
                    .map_err(|_| bad(name, "must be a UUID"))
            })
            .transpose()
        };
        Ok(Filter {
            queue: present(&self.queue),
            order_id: uuid("order_id", self.order_id.clone())?,
            reason: present(&self.reason),
            resolved,
            before: uuid("cursor", self.cursor.clone())?,
            limit,
        })
    }
}

impl From<&DeadLetter> for DeadLetterSummary {
    fn from(l: &DeadLetter) -> Self {
        let mut preview: String = l.payload.chars().take(PREVIEW_CHARS).collect();
        if l.payload.chars().nth(PREVIEW_CHARS).is_some() {
            preview.push('…');
        }
        Self {
            id: l.id.clone(),
            message_id: l.message_id.clone(),
            original_queue: l.original_queue.clone(),
            exchange: l.exchange.clone(),
            routing_key: l.routing_key.clone(),
            correlation_id: l.correlation_id.clone(),
            reason: l.reason.clone(),
            delivery_count: l.delivery_count,
            times_seen: l.times_seen,
            order_id: l.order_id.clone(),
            status: if l.resolved_at_ms.is_some() {
                "resolved"
            } else {
                "open"
            }
            .into(),
            first_seen_ms: l.first_seen_ms,
            last_seen_ms: l.last_seen_ms,
            resolved_at_ms: l.resolved_at_ms,
            replays: l.replays,
            replayed_at_ms: l.replayed_at_ms,
            payload_preview: preview,
        }
    }
}

impl From<&DeadLetter> for DeadLetterDetail {
    fn from(l: &DeadLetter) -> Self {
        Self {
            summary: l.into(),
            headers: serde_json::from_str(&l.headers)
                .unwrap_or_else(|_| serde_json::Value::String(l.headers.clone())),
            payload: l.payload.clone(),
        }
    }
}

/// The id in the path, which must be a UUID.
fn letter_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id?;
    uuid::Uuid::parse_str(&id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::BadRequest(format!("id: {id:?} is not a UUID")))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("dead letter {id} not found"))
}

/// Dead letters, newest first, a page at a time.
///
/// Open letters by default; follow `next_cursor` until it is null to see every one.
#[utoipa::path(
    get,
    path = "/api/dead-letters",
    tag = "dead-letters",
    params(ListParams),
    security(("operator_token" = [])),
    responses(
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ErrorBody),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ErrorBody),
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "A parameter is invalid or repeated; the detail starts with its name", body = ApiError,
            example = json!({"error": "bad_request", "detail": "limit: must be between 1 and 500"})),
        (status = 503, description = "The database is unavailable", body = ApiError),
    )
)]
pub async fn list(
    State(db): State<Db>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let Query(params) = params?;
    let mut filter = params.parse()?;
    // One row more than asked tells whether another page exists.
    let limit = filter.limit;
    filter.limit += 1;
    let mut letters = store::list(&db, &filter).await?;
    let next_cursor = paging::next_page(&mut letters, limit, |l| l.id.clone());
    Ok(Json(DeadLetterPage {
        items: letters.iter().map(DeadLetterSummary::from).collect(),
        next_cursor,
    }))
}

/// One dead letter, with its headers and its whole body.
#[utoipa::path(
    get,
    path = "/api/dead-letters/{id}",
    tag = "dead-letters",
    params(("id" = String, Path, format = Uuid, description = "The letter's id")),
    security(("operator_token" = [])),
    responses(
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ErrorBody),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ErrorBody),
        (status = 200, description = "The dead letter", body = DeadLetterDetail),
        (status = 400, description = "The id is not a UUID", body = ApiError),
        (status = 404, description = "No such dead letter", body = ApiError),
    )
)]
pub async fn get_one(
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = letter_id(id)?;
    let letter = store::get(&db, &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json((&letter).into()))
}

/// Re-publishes the letter.
///
/// The original body goes to its original exchange and routing key (a message that reached
/// its queue through the default exchange goes back to that queue) with its original
/// message id and correlation id, so a consumer that already processed it only acknowledges
/// it again. Published through the outbox: accepted means it will be published. If it dies
/// again, the same letter is seen once more (`times_seen`) and is open again.
#[utoipa::path(
    post,
    path = "/api/dead-letters/{id}/replay",
    tag = "dead-letters",
    params(("id" = String, Path, format = Uuid, description = "The letter's id")),
    security(("operator_token" = [])),
    responses(
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ErrorBody),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ErrorBody),
        (status = 202, description = "Queued for publishing; the letter with its replay counted", body = DeadLetterDetail),
        (status = 400, description = "The id is not a UUID", body = ApiError),
        (status = 404, description = "No such dead letter", body = ApiError),
        (status = 409, description = "The letter is resolved, or nothing says where it was going", body = ApiError,
            example = json!({"error": "conflict", "detail": "dead letter 01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f is resolved"})),
    )
)]
pub async fn replay(
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<DeadLetterDetail>), ApiError> {
    let id = letter_id(id)?;
    match store::replay(&db, &id).await {
        Ok(letter) => {
            db.wake_outbox();
            tracing::info!(dead_letter = %id, message_id = %letter.message_id, "dead letter replayed");
            Ok((StatusCode::ACCEPTED, Json((&letter).into())))
        }
        Err(ReplayRefused::NotFound) => Err(not_found(&id)),
        Err(ReplayRefused::Resolved) => {
            Err(ApiError::Conflict(format!("dead letter {id} is resolved")))
        }
        Err(ReplayRefused::NoDestination) => Err(ApiError::Conflict(format!(
            "dead letter {id} has no known destination (exchange and routing key, or queue)"
        ))),
        Err(ReplayRefused::Db(e)) => Err(e.into()),
    }
}

/// Marks the letter resolved (idempotent: the first resolution time stays).
#[utoipa::path(
    delete,
    path = "/api/dead-letters/{id}",
    tag = "dead-letters",
    params(("id" = String, Path, format = Uuid, description = "The letter's id")),
    security(("operator_token" = [])),
    responses(
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ErrorBody),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ErrorBody),
        (status = 200, description = "The resolved letter", body = DeadLetterDetail),
        (status = 400, description = "The id is not a UUID", body = ApiError),
        (status = 404, description = "No such dead letter", body = ApiError),
    )
)]
pub async fn resolve(
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeadLetterDetail>, ApiError> {
    let id = letter_id(id)?;
    let letter = store::resolve(&db, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json((&letter).into()))
}

#[cfg(test)]
mod tests;
