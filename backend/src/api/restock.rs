//! `POST /api/inventory/{product}/restock`: an operator adds stock. The backend checks the
//! catalog and writes a `Restock` message to its outbox; the inventory applies it once
//! (keyed by its id) and announces the new stock like any other change.

use axum::{
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use common::{
    domain::{InvalidValue, OrderId, Product, Quantity},
    messages::Restock,
    outbox,
    telemetry::Context,
    time::now_ms,
    topology,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, AppState, purchase, purchase::IdempotencyKey};
use crate::store::{self, idempotency::Recorded};

/// The most one restock may add.
pub const MAX_RESTOCK: i64 = 1_000_000_000;

/// How much stock to add.
#[derive(ToSchema)]
#[schema(example = json!({"amount": 100}))]
#[allow(dead_code)]
pub struct RestockRequest {
    /// Tokens to add: 1 to 10⁹.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    amount: i64,
}

/// The restock was accepted; the inventory applies it shortly (`GET /api/inventory`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"restock_id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "product": "late_token", "amount": 100}))]
pub struct RestockAccepted {
    pub restock_id: String,
    pub product: String,
    pub amount: i64,
}

/// Restock a product.
///
/// An operator's action: adds `amount` to the product's stock. Applied asynchronously by
/// the inventory, exactly once; the audit counts it (opening stock + restocks = stock +
/// reserved − released).
///
/// Send an `Idempotency-Key` to make retries safe, as on a purchase: the same key with the
/// same product and amount is answered as the first time (same `restock_id`,
/// `Idempotent-Replayed: true`) and adds nothing; the same key with another restock is 409.
#[utoipa::path(
    post,
    path = "/api/inventory/{product}/restock",
    tag = "accounts",
    params(
        ("product" = String, Path, description = "A product of the catalog", example = "late_token"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "1 to 255 visible ASCII characters (a UUID does). The same key, product and amount answer the first restock again; the same key and another restock is 409.",
            min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            example = "5f0c1e2a-9b7d-4c3e-8a1f-2e3d4c5b6a79"),
    ),
    request_body(content = RestockRequest),
    security(("operator_token" = [])),
    responses(
        (status = 202, description = "Accepted; the inventory adds the stock shortly (or, with a \
known Idempotency-Key and the same restock, the first answer replayed)", body = RestockAccepted,
            headers(("idempotent-replayed" = String,
                description = "`true` when this answer replays an earlier restock with the same Idempotency-Key; absent otherwise"))),
        (status = 400, description = "The body is not a JSON object (or repeats a key), or the Idempotency-Key header is invalid", body = ApiError,
            examples(
                ("malformed" = (value = json!({"error": "malformed_json", "detail": "the body must be a JSON object"}))),
                ("bad key" = (value = json!({"error": "bad_request", "detail": "Idempotency-Key: given more than once"}))),
            )),
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ApiError,
            example = json!({"error": "unauthorized", "detail": "this operator endpoint needs Authorization: Bearer <ADMIN_TOKEN>"})),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ApiError,
            example = json!({"error": "forbidden", "detail": "the operator token is wrong"})),
        (status = 409, description = "The Idempotency-Key was already used for another request; nothing was added", body = ApiError,
            example = json!({"error": "conflict", "detail": "Idempotency-Key: already used for a different restock request; use a new key for a new restock"})),
        (status = 404, description = "The catalog has no such product", body = ApiError,
            example = json!({"error": "not_found", "detail": "no product named \"gold\"; the catalog has late_token"})),
        (status = 422, description = "The amount is missing or out of range", body = ApiError,
            example = json!({"error": "invalid_field", "detail": "amount: must be greater than 0"})),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn restock(
    State(app): State<AppState>,
    headers: HeaderMap,
    product: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers)?;
    let Path(raw) = product?;
    let product = Product::parse(raw.as_str())
        .ok()
        .filter(|p| app.catalog.get(p).is_some())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no product named {raw:?}; the catalog has {}",
                app.catalog
            ))
        })?;
    let amount = parse(&body?)?;
    let restock = Restock {
        restock_id: uuid::Uuid::now_v7(),
        product,
        amount,
        requested_at_ms: now_ms(),
    };
    let message = outbox::message(
        &Context::current(),
        topology::EXCHANGE,
        topology::RK_RESTOCK,
        None,
        &restock,
    )?;
    let answer = serde_json::to_string(&RestockAccepted {
        restock_id: restock.restock_id.to_string(),
        product: restock.product.to_string(),
        amount: restock.amount.get(),
    })
    .map_err(|e| ApiError::Internal(e.into()))?;
    // What a repeat must match: the product and the amount (the id is the server's).
    let fingerprint = format!("restock {} {}", restock.product, restock.amount.get());
    let mut tx = app.db.begin().await?;
    if let Some(key) = &key {
        let record = Recorded {
            fingerprint: fingerprint.clone(),
            order_id: OrderId(restock.restock_id),
            response_status: StatusCode::ACCEPTED.as_u16(),
            response_body: answer.clone(),
        };
        // First in the transaction, as for a purchase: a concurrent twin waits here.
        if !store::idempotency::claim(&mut tx, key.as_str(), &record, restock.requested_at_ms)
            .await?
        {
            tx.rollback().await?;
            return replay(&app, key, &fingerprint).await;
        }
    }
    outbox::enqueue_pending(&mut tx, &message).await?;
    tx.commit().await?;
    app.db.hand_to_relay(vec![message]);
    tracing::info!(product = %restock.product, amount = restock.amount.get(), "restock accepted");
    Ok(accepted(StatusCode::ACCEPTED, answer, false))
}

/// Answers a restock whose key was already used: the first answer if it is the same
/// restock, 409 if it is not (a purchase's key included).
async fn replay(
    app: &AppState,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Response, ApiError> {
    let (status, first) = purchase::first_answer(app, key, fingerprint, "restock").await?;
    Ok(accepted(status, first.response_body, true))
}

/// A restock's JSON answer, marked when it replays an earlier one.
fn accepted(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if replayed {
        response.headers_mut().insert(
            purchase::IDEMPOTENT_REPLAYED,
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// The amount of a restock body.
fn parse(body: &[u8]) -> Result<Quantity, ApiError> {
    let Value::Object(fields) = purchase::json_body(body)? else {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".into(),
        ));
    };
    let amount = purchase::integer(&fields, "amount")?;
    if amount > MAX_RESTOCK {
        return Err(InvalidValue::new("amount", format!("must be at most {MAX_RESTOCK}")).into());
    }
    Ok(Quantity::new(amount)?)
}
