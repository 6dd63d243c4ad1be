//! Parsed domain values shared by every service.
//!
//! Values are parsed once, at the HTTP or message edge; inside the system only these types
//! travel, so a username with a control character or a negative quantity cannot exist past
//! the edge. Money and stock are integers and every arithmetic step is checked.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// A buyer's name: 1 to 64 characters, NFC, no control or format characters, no whitespace
/// at either end (see [`Username::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

/// Characters of the Basic Multilingual Plane a username may not hold anywhere: control
/// characters (Cc) and format characters (Cf), as inclusive ranges. A test holds this
/// table to the Unicode data the check uses.
const REFUSED_BMP: &[(char, char)] = &[
    ('\u{0}', '\u{1f}'),
    ('\u{7f}', '\u{9f}'),
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
];

/// Whitespace (not already refused as a control character) a username may not start or
/// end with.
const EDGE_WHITESPACE: &[(char, char)] = &[
    (' ', ' '),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

/// The OpenAPI `pattern` of a username, written with `\uXXXX` escapes only, so that it
/// means the same to ECMAScript and to Python. It covers the Basic Multilingual Plane;
/// the few format characters beyond it (tags, for one) are refused too, and documented.
pub fn username_pattern() -> String {
    let class = |ranges: &[(char, char)]| -> String {
        ranges
            .iter()
            .map(|&(a, b)| {
                let esc = |c: char| format!("\\u{:04x}", u32::from(c));
                if a == b {
                    esc(a)
                } else {
                    format!("{}-{}", esc(a), esc(b))
                }
            })
            .collect()
    };
    let refused = class(REFUSED_BMP);
    let edge = format!("{refused}{}", class(EDGE_WHITESPACE));
    format!("^[^{edge}](?:[^{refused}]*[^{edge}])?$")
}

impl Username {
    pub const MAX_CHARS: usize = 64;

    /// A username as stored and compared: NFC-normalised, so that two spellings of one
    /// name (a precomposed `é` or `e` + a combining accent) are one account. Refused: empty,
    /// longer than [`Self::MAX_CHARS`], control characters, Unicode format characters
    /// (bidi overrides, zero-width spaces and joiners, byte-order marks: they make two
    /// different accounts look the same, or one look like another), and whitespace at
    /// either end.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidValue> {
        use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        let s = s.into();
        // Counted as sent, as the OpenAPI document's maxLength counts.
        let chars = s.chars().count();
        let s = match is_nfc_quick(s.chars()) {
            IsNormalized::Yes => s,
            _ => s.nfc().collect(),
        };
        if s.trim().is_empty() {
            return Err(InvalidValue::new("username", "must not be empty"));
        }
        if chars > Self::MAX_CHARS {
            return Err(InvalidValue::new(
                "username",
                format!(
                    "must be at most {} characters, got {chars}",
                    Self::MAX_CHARS
                ),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                "username",
                "must not contain control characters",
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.general_category() == GeneralCategory::Format)
        {
            return Err(InvalidValue::new(
                "username",
                format!(
                    "must not contain invisible format characters (U+{:04X})",
                    u32::from(c)
                ),
            ));
        }
        if s.trim() != s {
            return Err(InvalidValue::new(
                "username",
                "must not start or end with whitespace",
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> Self {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
mod tests {
    use super::*;

    #[test]
    fn the_refused_tables_are_the_unicode_control_format_and_whitespace_characters() {
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        let within =
            |ranges: &[(char, char)], c: char| ranges.iter().any(|&(a, b)| a <= c && c <= b);
        // A range of chars skips the surrogates by itself.
        for c in '\u{0}'..='\u{ffff}' {
            let refused = c.is_control() || c.general_category() == GeneralCategory::Format;
            assert_eq!(within(REFUSED_BMP, c), refused, "U+{:04X}", u32::from(c));
            let edge = c.is_whitespace() && !c.is_control();
            assert_eq!(within(EDGE_WHITESPACE, c), edge, "U+{:04X}", u32::from(c));
        }
        let p = username_pattern();
        assert!(
            p.starts_with("^[^\\u0000-\\u001f") && p.ends_with("])?$"),
            "{p}"
        );
    }

    #[test]
    fn username_is_nfc_and_refuses_invisible_and_edge_whitespace() {
        // One name, two spellings: one account.
        let composed = Username::parse("jos\u{e9}").unwrap();
        let decomposed = Username::parse("jose\u{301}").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.as_str(), "jos\u{e9}");
        for (name, code) in [
            ("alice\u{200b}", "U+200B"),
            ("\u{feff}alice", "U+FEFF"),
            ("ali\u{202e}ecil", "U+202E"),
            ("al\u{200d}ice", "U+200D"),
            ("al\u{2066}ice", "U+2066"),
            ("al\u{ad}ice", "U+00AD"),
        ] {
            let e = Username::parse(name).unwrap_err();
            assert!(e.to_string().starts_with("username: "), "{e}");
            assert!(e.to_string().contains(code), "{name:?}: {e}");
        }
        for name in [" alice", "alice ", "alice\u{3000}", "\u{a0}alice"] {
            let e = Username::parse(name).unwrap_err();
            assert!(e.to_string().contains("whitespace"), "{name:?}: {e}");
        }
        assert!(Username::parse("alice smith").is_ok());
        assert!(Username::parse("Zoë 山田").is_ok());
    }

    #[test]
    fn username_refuses_empty_long_and_control_characters() {
        assert!(Username::parse("").is_err());
        assert!(Username::parse("   ").is_err());
        assert!(Username::parse("a".repeat(65)).is_err());
        assert!(Username::parse("bad\nname").is_err());
        assert!(Username::parse("é".repeat(64)).is_ok());
        assert_eq!(Username::parse("alice").unwrap().as_str(), "alice");
    }

    #[test]
    fn quantity_must_be_positive_and_price_not_negative() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-1).is_err());
        assert!(Credits::new(-1).is_err());
        assert!(Credits::new(0).is_ok());
    }

    #[test]
    fn order_total_overflow_is_refused_naming_price() {
        let u = Username::parse("bob").unwrap();
        let err = OrderTerms::new(
            u.clone(),
            Credits::new(i64::MAX).unwrap(),
            Quantity::new(2).unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.field, "price");
        let ok = OrderTerms::new(u, Credits::new(7).unwrap(), Quantity::new(3).unwrap()).unwrap();
        assert_eq!(ok.total().get(), 21);
    }

    #[test]
    fn terms_refuse_invalid_values_when_decoded_from_a_message() {
        let bad = r#"{"username":"x","price":-1,"amount":1}"#;
        assert!(serde_json::from_str::<OrderTerms>(bad).is_err());
        let overflow = format!(r#"{{"username":"x","price":{},"amount":2}}"#, i64::MAX);
        assert!(serde_json::from_str::<OrderTerms>(&overflow).is_err());
        let good = r#"{"username":"x","price":2,"amount":1}"#;
        assert!(serde_json::from_str::<OrderTerms>(good).is_ok());
    }

    #[test]
    fn status_round_trips_through_its_contract_name() {
        for st in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(st.as_str()).unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
    }
}
