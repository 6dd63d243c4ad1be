//! Reading one variable: its documented default when unset, a [`ConfigError`] naming it
//! when its value does not parse or is out of range.

use super::{ConfigError, VARIABLES};

pub(super) fn err(variable: &'static str, value: &str, problem: &str) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_string(),
        problem: problem.to_string(),
    }
}

pub(super) fn parse<T: std::str::FromStr>(
    name: &'static str,
    raw: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match raw {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e: T::Err| err(name, &v, &e.to_string())),
    }
}

/// The default [`VARIABLES`] documents for `name`: the one place a default is written
/// (a variable read with its documented default must be listed there).
pub(super) fn documented(name: &'static str) -> String {
    VARIABLES.iter().find(|(n, _, _)| *n == name).map_or_else(
        || panic!("{name} is not documented in VARIABLES"),
        |(_, default, _)| default.to_string(),
    )
}

/// `raw`, or the documented default, parsed.
pub(super) fn documented_parse<T: std::str::FromStr>(
    name: &'static str,
    raw: Option<String>,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let value = raw.unwrap_or_else(|| documented(name));
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| err(name, &value, &e.to_string()))
}

/// A positive integer, by default the documented one.
pub(super) fn positive(name: &'static str, raw: Option<String>) -> Result<i64, ConfigError> {
    positive_or(name, raw, documented_parse(name, None)?)
}

/// A non-negative integer, by default the documented one.
pub(super) fn non_negative(name: &'static str, raw: Option<String>) -> Result<i64, ConfigError> {
    non_negative_or(name, raw, documented_parse(name, None)?)
}

/// On or off, by default the documented one.
pub(super) fn switch(name: &'static str, raw: Option<String>) -> Result<bool, ConfigError> {
    switch_or(name, Some(raw.unwrap_or_else(|| documented(name))), false)
}

/// A positive integer whose default is computed (documented as a formula).
pub(super) fn positive_or(
    name: &'static str,
    raw: Option<String>,
    default: i64,
) -> Result<i64, ConfigError> {
    let v = parse(name, raw.clone(), default)?;
    if v <= 0 {
        return Err(err(
            name,
            &raw.unwrap_or_default(),
            "must be a positive integer",
        ));
    }
    Ok(v)
}

/// A non-negative integer whose default is documented in words.
pub(super) fn non_negative_or(
    name: &'static str,
    raw: Option<String>,
    default: i64,
) -> Result<i64, ConfigError> {
    let v = parse(name, raw.clone(), default)?;
    if v < 0 {
        return Err(err(name, &raw.unwrap_or_default(), "must not be negative"));
    }
    Ok(v)
}

pub(super) fn switch_or(
    name: &'static str,
    raw: Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    match raw.map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            _ => Err(err(name, &v, "must be on or off")),
        },
    }
}
