//! Balances and stock, as the payment and inventory services last reported them.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use common::domain::{Credits, Product, Username};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store;

/// A buyer's balance.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"username": "alice", "credits": 480}))]
pub struct User {
    pub username: String,
    pub credits: i64,
}

/// A product's stock.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"product": "late_token", "stock": 498, "price": null}))]
pub struct StockLevel {
    pub product: String,
    pub stock: i64,
    /// The catalog price of one token, which a purchase must name; null when the buyer
    /// names the price.
    pub price: Option<i64>,
}

/// A buyer's credits.
///
/// A user exists once the payment service has seen them (their first charge attempt);
/// until then, and for names no purchase could carry, the answer is 404.
#[utoipa::path(
    get,
    path = "/api/users/{username}",
    tag = "accounts",
    params(("username" = String, Path, description = "The buyer's name (percent-encoded)", example = "alice")),
    responses(
        (status = 200, description = "The user's balance", body = User),
        (status = 400, description = "The path is not valid percent-encoded UTF-8 (e.g. `/api/users/%ff`)", body = ApiError,
            example = json!({"error": "bad_request", "detail": "Invalid URL: Cannot parse `%ff` to a `String`"})),
        (status = 404, description = "No such user", body = ApiError,
            example = json!({"error": "not_found", "detail": "user \"alice\" not found"})),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn get_user(
    State(app): State<AppState>,
    username: Result<Path<String>, PathRejection>,
) -> Result<Json<User>, ApiError> {
    let Path(raw) = username?;
    let not_found = || ApiError::NotFound(format!("user {raw:?} not found"));
    // A name the purchase API would refuse cannot exist (and PostgreSQL refuses NUL bytes).
    let username = Username::parse(raw.as_str()).map_err(|_| not_found())?;
    let credits = store::accounts::credits(&app.db, username.as_str())
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(User {
        username: username.to_string(),
        credits,
    }))
}

/// Stock of every product.
///
/// Empty until the inventory service has reported its stock for the first time.
#[utoipa::path(
    get,
    path = "/api/inventory",
    tag = "accounts",
    responses(
        (status = 200, description = "Stock per product", body = Vec<StockLevel>,
            example = json!([{"product": "early_token", "stock": 200, "price": 5}, {"product": "late_token", "stock": 498, "price": null}])),
        (status = 503, description = "The database is unavailable", body = ApiError,
            example = json!({"error": "unavailable", "detail": "the database is unavailable, retry later"})),
    )
)]
pub async fn inventory(State(app): State<AppState>) -> Result<Json<Vec<StockLevel>>, ApiError> {
    let levels = store::accounts::inventory(&app.db).await?;
    Ok(Json(
        levels
            .into_iter()
            .map(|(product, stock)| {
                let price = Product::parse(product.as_str())
                    .ok()
                    .and_then(|p| app.catalog.get(&p).and_then(|l| l.price))
                    .map(Credits::get);
                StockLevel {
                    product,
                    stock,
                    price,
                }
            })
            .collect(),
    ))
}
