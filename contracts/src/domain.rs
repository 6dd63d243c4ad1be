//! Parsed domain values shared by every service.
//!
//! Values are parsed once, at the HTTP or message edge; inside the system only these types
//! travel, so a username with a control character or a negative quantity cannot exist past
//! the edge. Money and stock are integers and every arithmetic step is checked.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod username;
pub use username::{Username, username_pattern};

/// Why a value was refused at the edge. `field` names the input, `problem` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// The id of an order, which is also the id of its saga. UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidValue::new("order_id", "not a UUID"))
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An amount of credits (the marketplace's money): never negative, checked arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Credits(i64);

impl Credits {
    pub fn new(value: i64) -> Result<Self, InvalidValue> {
        if value < 0 {
            return Err(InvalidValue::new("price", "must not be negative"));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// `self × quantity`, or an error when it does not fit in an i64.
    pub fn times(self, quantity: Quantity) -> Result<Credits, InvalidValue> {
        self.0
            .checked_mul(quantity.get())
            .map(Credits)
            .ok_or_else(|| InvalidValue::new("price", "price × amount overflows a 64-bit integer"))
    }
}

impl TryFrom<i64> for Credits {
    type Error = InvalidValue;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Credits> for i64 {
    fn from(c: Credits) -> Self {
        c.0
    }
}

/// How many tokens an order buys: strictly positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(i64);

impl Quantity {
    pub fn new(value: i64) -> Result<Self, InvalidValue> {
        if value <= 0 {
            return Err(InvalidValue::new("amount", "must be greater than 0"));
        }
        Ok(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = InvalidValue;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Quantity> for i64 {
    fn from(q: Quantity) -> Self {
        q.0
    }
}

/// What a buyer asked for. `total()` is always representable: `parse` refuses overflow.
///
/// `product` is left out of the JSON when it is [`Product::DEFAULT`], so the messages,
/// saga states and idempotency fingerprints of the one-product marketplace read the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTerms")]
pub struct OrderTerms {
    pub username: Username,
    /// Price of one token, in credits.
    pub price: Credits,
    pub amount: Quantity,
    #[serde(default, skip_serializing_if = "Product::is_default")]
    pub product: Product,
}

#[derive(Deserialize)]
struct RawTerms {
    username: Username,
    price: Credits,
    amount: Quantity,
    #[serde(default)]
    product: Product,
}

impl TryFrom<RawTerms> for OrderTerms {
    type Error = InvalidValue;
    fn try_from(r: RawTerms) -> Result<Self, Self::Error> {
        Ok(Self::new(r.username, r.price, r.amount)?.of(r.product))
    }
}

impl OrderTerms {
    /// Terms for [`Product::DEFAULT`]; [`OrderTerms::of`] names another product.
    pub fn new(username: Username, price: Credits, amount: Quantity) -> Result<Self, InvalidValue> {
        price.times(amount)?;
        Ok(Self {
            username,
            price,
            amount,
            product: Product::default(),
        })
    }

    /// The same terms for `product`.
    #[must_use]
    pub fn of(self, product: Product) -> Self {
        Self { product, ..self }
    }

    /// What the buyer is charged: price × amount.
    pub fn total(&self) -> Credits {
        self.price
            .times(self.amount)
            .expect("OrderTerms::new checked the product")
    }
}

/// The name of a product: 1 to 64 ASCII letters, digits, `_`, `-` or `.`, so that it is
/// safe in a URL path, a log line and a metric label as it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Product(String);

impl Product {
    /// The product the compatibility contract buys, and the default of a purchase.
    pub const DEFAULT: &'static str = "late_token";
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(InvalidValue::new(
                "product",
                format!("must be 1 to {} characters", Self::MAX_LEN),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(InvalidValue::new(
                "product",
                format!("may hold ASCII letters, digits, '_', '-' and '.' only, got {c:?}"),
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for Product {
    fn default() -> Self {
        Self(Self::DEFAULT.to_string())
    }
}

impl std::fmt::Display for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Product {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<Product> for String {
    fn from(p: Product) -> Self {
        p.0
    }
}

/// An order's status as the compatibility contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Processing,
    Success,
    InsufficientFund,
    InsufficientInventory,
    Timeout,
    Unknown,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Processing,
        OrderStatus::Success,
        OrderStatus::InsufficientFund,
        OrderStatus::InsufficientInventory,
        OrderStatus::Timeout,
        OrderStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Processing => "PROCESSING",
            OrderStatus::Success => "SUCCESS",
            OrderStatus::InsufficientFund => "INSUFFICIENT_FUND",
            OrderStatus::InsufficientInventory => "INSUFFICIENT_INVENTORY",
            OrderStatus::Timeout => "TIMEOUT",
            OrderStatus::Unknown => "UNKNOWN",
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| InvalidValue::new("status", format!("unknown status {s:?}")))
    }

    pub fn is_final(self) -> bool {
        self != OrderStatus::Processing
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
