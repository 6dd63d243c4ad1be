//! `POST /api/inventory/{product}/restock`: an operator adds stock. The backend checks the
//! catalog and writes a `Restock` message to its outbox; the inventory applies it once
//! (keyed by its id) and announces the new stock like any other change.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection, rejection::PathRejection},
    http::StatusCode,
};
use common::{
    domain::{InvalidValue, Product, Quantity},
    messages::Restock,
    outbox,
    telemetry::Context,
    time::now_ms,
    topology,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, AppState, purchase};

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
#[utoipa::path(
    post,
    path = "/api/inventory/{product}/restock",
    tag = "accounts",
    params(("product" = String, Path, description = "A product of the catalog", example = "late_token")),
    request_body(content = RestockRequest),
    security(("operator_token" = [])),
    responses(
        (status = 202, description = "Accepted; the inventory adds the stock shortly", body = RestockAccepted),
        (status = 400, description = "The body is not a JSON object (or repeats a key)", body = ApiError,
            example = json!({"error": "malformed_json", "detail": "the body must be a JSON object"})),
        (status = 401, description = "No `Authorization: Bearer` token (ADMIN_TOKEN is set)", body = ApiError,
            example = json!({"error": "unauthorized", "detail": "this operator endpoint needs Authorization: Bearer <ADMIN_TOKEN>"})),
        (status = 403, description = "A wrong token, or a client not on loopback while ADMIN_TOKEN is unset", body = ApiError,
            example = json!({"error": "forbidden", "detail": "the operator token is wrong"})),
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
    product: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RestockAccepted>), ApiError> {
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
    let mut tx = app.db.begin().await?;
    outbox::enqueue_pending(&mut tx, &message).await?;
    tx.commit().await?;
    app.db.hand_to_relay(vec![message]);
    tracing::info!(product = %restock.product, amount = restock.amount.get(), "restock accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(RestockAccepted {
            restock_id: restock.restock_id.to_string(),
            product: restock.product.to_string(),
            amount: restock.amount.get(),
        }),
    ))
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
