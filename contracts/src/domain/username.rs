//! A buyer's name, checked at the edge: NFC, no control or format characters, no
//! whitespace at either end.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::InvalidValue;

/// A buyer's name: 1 to 64 characters, NFC, no control or format characters, no whitespace
/// at either end (see [`Username::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

/// Characters of the Basic Multilingual Plane a username may not hold anywhere: control
/// characters (Cc) and format characters (Cf), as inclusive ranges. A test holds this
/// table to the Unicode data the check uses.
pub(super) const REFUSED_BMP: &[(char, char)] = &[
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
pub(super) const EDGE_WHITESPACE: &[(char, char)] = &[
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
