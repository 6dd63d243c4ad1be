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
    domain::{
        Credits, InvalidValue, OrderId, OrderStatus, OrderTerms, Product, Quantity, Username,
    },
    messages::{Faults, ManagerMessage, PlaceOrder},
    outbox,
    telemetry::{self, Context},
    time::now_ms,
    topology,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store::{self, idempotency::Recorded, orders::Placed};

/// The request header that makes a purchase idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header that marks an answer replayed from an earlier request.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted, in characters (= bytes: keys are ASCII).
pub const MAX_KEY_LEN: usize = 255;

// Documentation only: the body is parsed field by field by `parse`, so that every refusal
// names its field; this struct only describes it to OpenAPI.
/// A purchase, as the compatibility contract defines it. Read as JSON whatever the
/// Content-Type; unknown fields are ignored.
#[derive(ToSchema)]
#[schema(example = json!({"username": "alice", "price": 10, "amount": 2, "kill_payment": false}))]
#[allow(dead_code)]
pub struct PurchaseRequest {
    /// 1 to 64 characters, stored NFC-normalised; no control characters, no invisible
    /// format characters (bidi controls, zero-width spaces and joiners, U+FEFF), no
    /// whitespace at either end.
    #[schema(min_length = 1, max_length = 64)]
    username: String,
    /// Price of one token, in credits: 0 to 10¹² (so that price × amount always fits in
    /// 64 bits).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    price: i64,
    /// Tokens to buy: 1 to 10⁶.
    #[schema(minimum = 1, maximum = 1_000_000)]
    amount: i64,
    /// What to buy: a product of the catalog (`PRODUCTS`; listed by `GET /api/inventory`),
    /// which this document lists. When the catalog gives the product a price, `price` must
    /// equal it (422 naming `price` otherwise).
    #[schema(
        default = "late_token",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]{1,64}$"
    )]
    product: Option<String>,
    /// Test-only fault flags (403 when `FAULT_INJECTION=off` and any is true). An operator's
    /// tool: any true flag needs the operator's bearer token (loopback only without one).
    #[schema(default = false)]
    kill_create: Option<bool>,
    #[schema(default = false)]
    kill_payment: Option<bool>,
    #[schema(default = false)]
    timeout_payment: Option<bool>,
    #[schema(default = false)]
    kill_inventory: Option<bool>,
    #[schema(default = false)]
    timeout_inventory: Option<bool>,
    #[schema(default = false)]
    kill_deliver: Option<bool>,
    #[schema(default = false)]
    timeout_deliver: Option<bool>,
}

/// The order was accepted; its saga runs now. Follow it at `/api/orders/{order_id}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"order_id": "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f", "status": "PROCESSING"}))]
pub struct PurchaseAccepted {
    pub order_id: String,
    /// Always `PROCESSING`.
    pub status: String,
}

/// A purchase request after parsing: only valid terms and known flags get this far.
/// Its JSON form is the request's canonical form (see [`fingerprint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purchase {
    pub terms: OrderTerms,
    pub faults: Faults,
}

/// The fault flags, in the contract's order (the first one set is named in a 403).
pub const FAULT_FLAGS: [&str; Faults::COUNT] = Faults::NAMES;

/// Parses a purchase body. JSON whatever the Content-Type (old clients send none); unknown
/// fields are ignored. Malformed JSON or a non-object is 400; a bad field is 422 naming it.
/// Writes the username rules into `doc` as a `pattern` of `PurchaseRequest.username`
/// (built from the same tables as the check, so the two cannot disagree).
pub fn document_username_pattern(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, schema::Schema};
    let Some(RefOr::T(Schema::Object(request))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("PurchaseRequest"))
    else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(username))) = request.properties.get_mut("username") {
        username.pattern = Some(common::domain::username_pattern());
    }
}

/// Writes the catalog into `doc`: the products a purchase may name (`enum` of
/// `PurchaseRequest.product`), so that the document says what the server accepts.
pub fn document_catalog(doc: &mut utoipa::openapi::OpenApi, catalog: &common::catalog::Catalog) {
    use utoipa::openapi::{RefOr, schema::Schema};
    let Some(RefOr::T(Schema::Object(request))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("PurchaseRequest"))
    else {
        return;
    };
    let names: Vec<serde_json::Value> = catalog
        .listings()
        .iter()
        .map(|l| l.product.as_str().into())
        .collect();
    match request.properties.get_mut("product") {
        Some(RefOr::T(Schema::Object(product))) => product.enum_values = Some(names),
        Some(RefOr::T(Schema::OneOf(one_of))) => {
            for item in &mut one_of.items {
                if let RefOr::T(Schema::Object(o)) = item
                    && o.pattern.is_some()
                {
                    o.enum_values = Some(names.clone());
                }
            }
        }
        _ => {}
    }
}

/// The highest price of one token a purchase may name, in credits.
pub const MAX_PRICE: i64 = 1_000_000_000_000;
/// The most tokens one purchase may buy. With [`MAX_PRICE`], a total always fits in 64 bits.
pub const MAX_AMOUNT: i64 = 1_000_000;

/// `value` of `field`, if it is at most `max`.
fn at_most(value: i64, field: &'static str, max: i64) -> Result<i64, InvalidValue> {
    if value > max {
        return Err(InvalidValue::new(field, format!("must be at most {max}")));
    }
    Ok(value)
}

/// A request body as JSON: 400 `malformed_json` if it is not, or repeats a key.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    common::strict_json::parse(body)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))
}

pub fn parse(body: &[u8]) -> Result<Purchase, ApiError> {
    let value = json_body(body)?;
    let Value::Object(fields) = value else {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".into(),
        ));
    };
    let username = match required(&fields, "username")? {
        Value::String(s) => Username::parse(s.as_str())?,
        other => {
            return Err(InvalidValue::new(
                "username",
                format!("must be a string, got {}", kind(other)),
            )
            .into());
        }
    };
    let price = Credits::new(at_most(integer(&fields, "price")?, "price", MAX_PRICE)?)?;
    let amount = Quantity::new(at_most(integer(&fields, "amount")?, "amount", MAX_AMOUNT)?)?;
    let product = match fields.get("product") {
        None | Some(Value::Null) => Product::default(),
        Some(Value::String(s)) => Product::parse(s.as_str())?,
        Some(other) => {
            return Err(InvalidValue::new(
                "product",
                format!("must be a string, got {}", kind(other)),
            )
            .into());
        }
    };
    let terms = OrderTerms::new(username, price, amount)?.of(product);
    let mut faults = Faults::default();
    for name in FAULT_FLAGS {
        faults.set(name, flag(&fields, name)?);
    }
    Ok(Purchase { terms, faults })
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
        let visible = bytes.iter().all(|b| b.is_ascii_graphic());
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

/// The canonical form of a purchase: its parsed value as JSON, fields in a fixed order and
/// flags defaulted, so that whitespace, key order and `"kill_payment": false` versus no
/// flag at all make no difference. Stored whole rather than hashed: it is short (a
/// username is at most 64 characters) and can be read when a 409 is investigated.
pub fn fingerprint(purchase: &Purchase) -> String {
    serde_json::to_string(purchase).expect("a parsed purchase always serializes")
}

/// The first fault flag set, by its contract name.
pub fn first_fault(faults: &Faults) -> Option<&'static str> {
    faults.flags().find(|(_, on)| *on).map(|(name, _)| name)
}

fn required<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a Value, InvalidValue> {
    fields
        .get(name)
        .ok_or_else(|| InvalidValue::new(name, "missing"))
}

pub(crate) fn integer(
    fields: &Map<String, Value>,
    name: &'static str,
) -> Result<i64, InvalidValue> {
    match required(fields, name)? {
        // JSON Schema counts 3.0 as the integer 3, so the API does too.
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| {
                if n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > 0.0) {
                    InvalidValue::new(name, format!("must be at most {}", i64::MAX))
                } else {
                    InvalidValue::new(name, "must be an integer")
                }
            }),
        other => Err(InvalidValue::new(
            name,
            format!("must be an integer, got {}", kind(other)),
        )),
    }
}

fn flag(fields: &Map<String, Value>, name: &'static str) -> Result<bool, InvalidValue> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(InvalidValue::new(
            name,
            format!("must be a boolean, got {}", kind(other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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
    // With a key: the key, the order and its message in a transaction of their own.
    let mut tx = app.db.begin().await?;
    let record = Recorded {
        fingerprint: fingerprint(&purchase),
        order_id,
        response_status: StatusCode::ACCEPTED.as_u16(),
        response_body: answer.clone(),
    };
    // First in the transaction: a concurrent request with the same key waits here
    // (PostgreSQL) until this one commits or rolls back, before writing anything.
    if !store::idempotency::claim(&mut tx, key.as_str(), &record, placed_at_ms).await? {
        tx.rollback().await?;
        return replay(&app, key, &record.fingerprint).await;
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
        return Err(ApiError::Conflict(
            "Idempotency-Key: already used for a different purchase request; \
             use a new key for a new purchase"
                .into(),
        ));
    }
    let status = StatusCode::from_u16(first.response_status).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "idempotency key {:?}: stored status: {e}",
            key.as_str()
        ))
    })?;
    tracing::debug!(order_id = %first.order_id, "idempotent purchase replayed");
    Ok(answer_with(
        status,
        first.order_id,
        first.response_body,
        true,
    ))
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
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use super::*;

    fn refusal(body: Value) -> (StatusCode, String) {
        let e = parse(body.to_string().as_bytes()).unwrap_err();
        (e.status(), e.to_string())
    }

    fn assert_names(body: Value, field: &str) {
        let (status, detail) = refusal(body.clone());
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {detail}");
        assert!(
            detail.starts_with(&format!("{field}: ")),
            "{body}: {detail}"
        );
    }

    fn valid() -> Value {
        json!({"username": "alice", "price": 3, "amount": 2})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = valid();
        body[field] = value;
        body
    }

    #[test]
    fn a_valid_body_parses_with_flags_defaulting_to_false() {
        let p = parse(valid().to_string().as_bytes()).unwrap();
        assert_eq!(p.terms.username.as_str(), "alice");
        assert_eq!(p.terms.total().get(), 6);
        assert_eq!(p.faults, Faults::default());
    }

    #[test]
    fn flags_and_unknown_fields_are_read_and_ignored_respectively() {
        let mut body = with("kill_payment", json!(true));
        body["timeout_deliver"] = json!(null);
        body["padding"] = json!("whatever");
        let p = parse(body.to_string().as_bytes()).unwrap();
        assert!(p.faults.kill_payment);
        assert!(!p.faults.timeout_deliver);
        assert_eq!(first_fault(&p.faults), Some("kill_payment"));
    }

    #[test]
    fn malformed_json_is_400() {
        for raw in [
            &b"{\"username\": \"bob\", \"price\": 1,"[..],
            b"not json",
            b"[1, 2",
            b"",
            b"\xff\xfe",
        ] {
            let e = parse(raw).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{raw:?}");
            assert_eq!(e.code(), "malformed_json");
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_is_400() {
        for body in [json!([]), json!("purchase"), json!(1), json!(null)] {
            assert_eq!(refusal(body).0, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_missing_field_is_422_naming_it() {
        for field in ["username", "price", "amount"] {
            let mut body = valid();
            body.as_object_mut().unwrap().remove(field);
            assert_eq!(
                refusal(body),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{field}: missing")
                )
            );
        }
    }

    #[test]
    fn a_whole_number_written_with_a_fraction_is_that_integer_as_json_schema_says() {
        let mut body = with("price", json!(3.0));
        body["amount"] = json!(2.0);
        let p = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!((p.terms.price.get(), p.terms.amount.get()), (3, 2));
    }

    #[test]
    fn a_wrongly_typed_field_is_422_naming_it() {
        let cases = [
            ("price", json!("ten")),
            ("price", json!(1.5)),
            ("price", json!(null)),
            ("price", json!(9_223_372_036_854_775_808u64)),
            ("price", json!(1e30)),
            ("amount", json!("1")),
            ("amount", json!(2.5)),
            ("amount", json!([1])),
            ("username", json!(123)),
            ("username", json!(null)),
            ("kill_payment", json!("yes")),
            ("timeout_deliver", json!(1)),
            ("kill_create", json!({})),
        ];
        for (field, value) in cases {
            assert_names(with(field, value), field);
        }
        assert_eq!(
            refusal(with("price", json!("ten"))).1,
            "price: must be an integer, got a string"
        );
    }

    #[test]
    fn an_amount_not_above_zero_and_a_negative_price_are_422() {
        for amount in [json!(0), json!(-1), json!(i64::MIN)] {
            assert_names(with("amount", amount), "amount");
        }
        for price in [json!(-1), json!(i64::MIN)] {
            assert_names(with("price", price), "price");
        }
        assert!(parse(with("price", json!(0)).to_string().as_bytes()).is_ok());
    }

    #[test]
    fn a_price_or_amount_beyond_its_bound_is_422_naming_it_so_no_total_overflows() {
        for (price, amount, field) in [
            (1i64 << 62, 4i64, "price"),
            (i64::MAX, 2, "price"),
            (MAX_PRICE + 1, 1, "price"),
            (3_037_000_500, 3_037_000_500, "amount"),
            (1, MAX_AMOUNT + 1, "amount"),
        ] {
            let mut body = with("price", json!(price));
            body["amount"] = json!(amount);
            assert_names(body, field);
        }
        // The largest of both is a total that fits.
        let mut body = with("price", json!(MAX_PRICE));
        body["amount"] = json!(MAX_AMOUNT);
        assert!(parse(body.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn a_bad_username_is_422_naming_username() {
        for name in [
            "",
            " ",
            &"a".repeat(65),
            &"é".repeat(65),
            "bob\n",
            "bob\0",
            "tab\there",
            "bell\x07",
            "del\x7f",
        ] {
            assert_names(with("username", json!(name)), "username");
        }
        assert!(
            parse(
                with("username", json!("é".repeat(64)))
                    .to_string()
                    .as_bytes()
            )
            .is_ok()
        );
    }

    #[test]
    fn no_flag_set_means_no_fault_to_refuse() {
        assert_eq!(first_fault(&Faults::default()), None);
        let f = Faults {
            timeout_deliver: true,
            kill_inventory: true,
            ..Faults::default()
        };
        assert_eq!(first_fault(&f), Some("kill_inventory"));
    }
}
