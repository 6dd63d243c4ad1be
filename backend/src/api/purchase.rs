//! `POST /api/purchase/`: parse the request at the edge, then write the order and its
//! `PlaceOrder` message in one transaction. The saga runs afterwards; the buyer gets 202.
//!
//! With an `Idempotency-Key` header, the key, the canonical request and the answer are
//! written in that same transaction, so a retried request (a lost answer, a client
//! timeout) finds the order it already placed instead of placing a second one.

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use common::{
    domain::{OrderId, OrderStatus},
    messages::{ManagerMessage, PlaceOrder},
    outbox::{self, Pending},
    telemetry::{self, Context},
    time::now_ms,
    topology,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store::{self, idempotency::Recorded, orders::Placed};

mod request;
pub use request::{
    FAULT_FLAGS, MAX_AMOUNT, MAX_PRICE, Purchase, PurchaseRequest, document_catalog,
    document_username_pattern, fingerprint, first_fault, parse,
};
pub(crate) use request::{integer, json_body};

/// The request header that makes a purchase idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header that marks an answer replayed from an earlier request.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted, in characters (= bytes: keys are ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// The order was accepted; its saga runs now. Follow it at `/api/orders/{order_id}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"order_id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "status": "PROCESSING"}))]
pub struct PurchaseAccepted {
    pub order_id: String,
    /// Always `PROCESSING`.
    pub status: String,
}

/// A client's `Idempotency-Key`: 1 to [`MAX_KEY_LEN`] visible ASCII characters, so that
/// it reads the same in logs, in the database and in any HTTP stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request, if it has one. A bad key, or more than one, is 400 naming the
    /// header: guessing which one the client meant could place an order twice.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "Idempotency-Key: given more than once".into(),
            ));
        }
        Self::parse(value).map(Some)
    }

    pub fn parse(value: &HeaderValue) -> Result<Self, ApiError> {
        let bytes = value.as_bytes();
        let visible = bytes.iter().all(u8::is_ascii_graphic);
        if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !visible {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key: must be 1 to {MAX_KEY_LEN} visible ASCII characters \
                 (no spaces), got {} bytes{}",
                bytes.len(),
                if visible { "" } else { " with others" }
            )));
        }
        // Visible ASCII is UTF-8.
        Ok(Self(String::from_utf8_lossy(bytes).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Place an order.
///
/// Accepts the order and starts its saga; the answer does not wait for the outcome. The
/// body is read as JSON whatever its Content-Type. `POST /api/purchase` (no trailing
/// slash) is the same operation.
///
/// Send an `Idempotency-Key` to make retries safe: the same key with the same request
/// (compared after parsing: whitespace, key order and flags given as `false` do not
/// matter) is answered exactly as the first time, same `order_id`, with
/// `Idempotent-Replayed: true`, and places nothing new; the same key with a different
/// request is 409. Keys are global, not per user: use a random one (a UUID) per purchase.
#[utoipa::path(
    post,
    path = "/api/purchase/",
    tag = "orders",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1 to 255 visible ASCII characters (a UUID does). The same key and request \
answer the first request's order again; the same key and another request is 409.",
            min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            example = "0b6f6d0e-8f5c-4a43-9a8e-2d1f6f3c9a71"),
    ),
    request_body(content = PurchaseRequest, description = "What to buy, and optional fault flags"),
    responses(
        (status = 202, description = "Accepted; the saga is running (or, with a known \
Idempotency-Key and the same request, the first answer replayed)", body = PurchaseAccepted,
            headers(
                ("location" = String, description = "Where to follow the order"),
                ("idempotent-replayed" = String,
                    description = "`true` when this answer replays an earlier request with the same Idempotency-Key; absent otherwise"),
            )),
        (status = 400, description = "The body is not a JSON object (or repeats a key), or the Idempotency-Key header is invalid", body = ApiError,
            examples(
                ("malformed" = (value = json!({"error": "malformed_json", "detail": "the body is not valid JSON: EOF while parsing an object at line 1 column 30"}))),
                ("bad key" = (value = json!({"error": "bad_request", "detail": "Idempotency-Key: must be 1 to 255 visible ASCII characters (no spaces), got 0 bytes"}))),
            )),
        (status = 401, description = "A fault flag is set without the operator's `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ApiError,
            example = json!({"error": "unauthorized", "detail": "this operator endpoint needs Authorization: Bearer <ADMIN_TOKEN>"})),
        (status = 403, description = "A fault flag is set while fault injection is off, or with a wrong operator token, or from a client not on loopback while ADMIN_TOKEN is unset", body = ApiError,
            examples(
                ("disabled" = (value = json!({"error": "fault_injection_disabled", "detail": "kill_payment: fault injection is disabled (FAULT_INJECTION=off)"}))),
                ("forbidden" = (value = json!({"error": "forbidden", "detail": "the operator token is wrong"}))),
            )),
        (status = 409, description = "The Idempotency-Key was already used for a different request; nothing was placed", body = ApiError,
            example = json!({"error": "conflict", "detail": "Idempotency-Key: already used for a different purchase request; use a new key for a new purchase"})),
        (status = 408, description = "The body did not arrive whole within `HTTP_BODY_TIMEOUT_MS` \
(10 s by default) of the request's head; nothing was placed, and the connection is closed", body = ApiError,
            headers(("connection" = String, description = "`close`")),
            example = json!({"error": "request_timeout", "detail": "the request body was not received within 10000 ms (HTTP_BODY_TIMEOUT_MS)"})),
        (status = 413, description = "The body is over 64 KiB", body = ApiError,
            example = json!({"error": "body_too_large", "detail": "the body is over 65536 bytes"})),
        (status = 422, description = "A field is missing or invalid; the detail starts with its name", body = ApiError,
            examples(
                ("missing" = (value = json!({"error": "invalid_field", "detail": "username: missing"}))),
                ("wrong type" = (value = json!({"error": "invalid_field", "detail": "price: must be an integer, got a string"}))),
                ("out of range" = (value = json!({"error": "invalid_field", "detail": "amount: must be greater than 0"}))),
                ("overflow" = (value = json!({"error": "invalid_field", "detail": "price: price × amount overflows a 64-bit integer"}))),
                ("unknown product" = (value = json!({"error": "invalid_field", "detail": "product: no product named \"gold\"; the catalog has late_token, early_token"}))),
                ("not the catalog price" = (value = json!({"error": "invalid_field", "detail": "price: early_token sells at 5 credits a token, got 4"}))),
            )),
        (status = 429, description = "This client (its IP address; an IPv6 client's /64) sent \
purchases faster than `PURCHASE_RATE_LIMIT` per second, past a burst of `PURCHASE_RATE_BURST`; \
nothing was placed. Only when `PURCHASE_RATE_LIMIT` is set (it is off by default). Retry after \
the `Retry-After` seconds", body = ApiError,
            headers(("retry-after" = u64, description = "Seconds until this client may purchase again")),
            example = json!({"error": "rate_limited", "detail": "more than 10 requests per second from this client (PURCHASE_RATE_LIMIT=10, burst 10); retry after 1 s"})),
        (status = 503, description = "The database is unavailable, or more orders are waiting to \
complete than the marketplace takes on (`MAX_BACKLOG`), or more requests are in flight than the \
server handles at once (`HTTP_MAX_REQUESTS_IN_FLIGHT`); nothing was placed. Retry after the \
`Retry-After` seconds", body = ApiError,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying (on `overloaded`)")),
            examples(
                ("unavailable" = (value = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"}))),
                ("overloaded" = (value = json!({"error": "overloaded", "detail": "50000 orders are waiting to complete, the most this marketplace takes on (MAX_BACKLOG=50000); nothing was placed; retry after 1 s"}))),
                ("requests in flight" = (value = json!({"error": "overloaded", "detail": "512 requests are in flight, the most this server handles at once (HTTP_MAX_REQUESTS_IN_FLIGHT=512); nothing was done; retry after 1 s"}))),
            )),
    )
)]
pub async fn purchase(
    State(app): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers)?;
    let purchase = parse(&body?)?;
    app.catalog.check(&purchase.terms)?;
    if let Some(flag) = first_fault(&purchase.faults) {
        if !app.fault_injection {
            return Err(ApiError::FaultInjectionDisabled { flag });
        }
        // Injecting faults is an operator's act, not a shopper's.
        app.admin_token
            .admit(&headers, common::operator::peer(&extensions))?;
    }
    let order_id = OrderId::new();
    let placed_at_ms = now_ms();
    let accepted = PurchaseAccepted {
        order_id: order_id.to_string(),
        status: OrderStatus::Processing.as_str().to_string(),
    };
    // Serialized once: this exact text is what a repeat of the request will be answered.
    let answer = serde_json::to_string(&accepted).map_err(|e| ApiError::Internal(e.into()))?;
    if let Err(overloaded) = app.backlog.admit(&app.db).await {
        // A retry of a purchase already accepted is still answered: it places nothing.
        if let Some(key) = &key
            && store::idempotency::find(&app.db, key.as_str())
                .await?
                .is_some()
        {
            return replay(&app, key, &fingerprint(&purchase)).await;
        }
        return Err(overloaded);
    }
    let Purchase { terms, faults } = purchase.clone();
    let message = outbox::message(
        &Context::current(),
        topology::EXCHANGE,
        topology::RK_PLACE_ORDER,
        Some(order_id.to_string()),
        &ManagerMessage::PlaceOrder(PlaceOrder {
            order_id,
            terms: terms.clone(),
            faults,
            placed_at_ms,
        }),
    )?;
    let placed = Placed {
        id: order_id,
        terms,
        placed_at_ms,
        trace_id: telemetry::trace_id(&Context::current()),
    };
    let Some(key) = &key else {
        app.placing.place(placed, message).await?;
        tracing::debug!(%order_id, "order accepted");
        return Ok(answer_with(StatusCode::ACCEPTED, order_id, answer, false));
    };
    place_with_key(&app, key, &purchase, placed, message, answer).await
}

/// Places an order whose request carries an idempotency key: the key, the order and its
/// message in a transaction of their own; a key already claimed answers as the first time.
async fn place_with_key(
    app: &AppState,
    key: &IdempotencyKey,
    purchase: &Purchase,
    placed: Placed,
    message: Pending,
    answer: String,
) -> Result<Response, ApiError> {
    let order_id = placed.id;
    let mut tx = app.db.begin().await?;
    let record = Recorded {
        fingerprint: fingerprint(purchase),
        order_id,
        response_status: StatusCode::ACCEPTED.as_u16(),
        response_body: answer.clone(),
    };
    // First in the transaction: a concurrent request with the same key waits here
    // (PostgreSQL) until this one commits or rolls back, before writing anything.
    if !store::idempotency::claim(&mut tx, key.as_str(), &record, placed.placed_at_ms).await? {
        tx.rollback().await?;
        return replay(app, key, &record.fingerprint).await;
    }
    store::orders::insert_placed_many(&mut tx, std::slice::from_ref(&placed)).await?;
    outbox::enqueue_pending(&mut tx, &message).await?;
    tx.commit().await?;
    app.db.hand_to_relay(vec![message]);
    app.backlog.accepted();
    tracing::debug!(%order_id, "order accepted");
    Ok(answer_with(StatusCode::ACCEPTED, order_id, answer, false))
}

/// Answers a request whose key was already used: what the first request got if this one
/// is the same, 409 if it is not.
async fn replay(
    app: &AppState,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Response, ApiError> {
    let (status, first) = first_answer(app, key, fingerprint, "purchase").await?;
    tracing::debug!(order_id = %first.order_id, "idempotent purchase replayed");
    Ok(answer_with(
        status,
        first.order_id,
        first.response_body,
        true,
    ))
}

/// What the first request with `key` was answered, when this one (`fingerprint`) is the
/// same request; another request under the key is 409, its detail naming `what` the key is
/// used for here (a purchase, a restock).
pub(super) async fn first_answer(
    app: &AppState,
    key: &IdempotencyKey,
    fingerprint: &str,
    what: &str,
) -> Result<(StatusCode, Recorded), ApiError> {
    // The claim only fails on a committed row (the winner's, read here once it is visible).
    let first = store::idempotency::find(&app.db, key.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "idempotency key {:?} is taken but has no record",
                key.as_str()
            ))
        })?;
    if first.fingerprint != fingerprint {
        return Err(ApiError::Conflict(format!(
            "Idempotency-Key: already used for a different {what} request; \
             use a new key for a new {what}"
        )));
    }
    let status = StatusCode::from_u16(first.response_status).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "idempotency key {:?}: stored status: {e}",
            key.as_str()
        ))
    })?;
    Ok((status, first))
}

fn answer_with(status: StatusCode, order_id: OrderId, body: String, replayed: bool) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::LOCATION, format!("/api/orders/{order_id}")),
        ],
        body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests;
