//! The purchase request: its documented shape, and the parser that turns a body into
//! valid [`Purchase`] terms or a refusal naming the field.

use common::{
    domain::{Credits, InvalidValue, OrderTerms, Product, Quantity, Username},
    messages::Faults,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::ApiError;

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

/// A purchase request after parsing: only valid terms and known flags get this far.
/// Its JSON form is the request's canonical form (see [`fingerprint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purchase {
    pub terms: OrderTerms,
    pub faults: Faults,
}

/// The fault flags, in the contract's order (the first one set is named in a 403).
pub const FAULT_FLAGS: [&str; Faults::COUNT] = Faults::NAMES;

/// The `PurchaseRequest` schema of `doc`, to write into what only the running server
/// knows.
fn purchase_request_schema(
    doc: &mut utoipa::openapi::OpenApi,
) -> Option<&mut utoipa::openapi::schema::Object> {
    use utoipa::openapi::{RefOr, schema::Schema};
    match doc
        .components
        .as_mut()?
        .schemas
        .get_mut("PurchaseRequest")?
    {
        RefOr::T(Schema::Object(request)) => Some(request),
        _ => None,
    }
}

/// Writes the username rules into `doc` as a `pattern` of `PurchaseRequest.username`
/// (built from the same tables as the check, so the two cannot disagree).
pub fn document_username_pattern(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, schema::Schema};
    let Some(request) = purchase_request_schema(doc) else {
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
    let Some(request) = purchase_request_schema(doc) else {
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

/// Parses a purchase body. JSON whatever the Content-Type (old clients send none); unknown
/// fields are ignored. Malformed JSON or a non-object is 400; a bad field is 422 naming it.
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
