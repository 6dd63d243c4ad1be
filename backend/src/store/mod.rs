//! sqlx: the only place with SQL. Portable between SQLite and PostgreSQL (see `common::db`).
//!
//! Rows are parsed into domain types on the way out, so a corrupt row surfaces as
//! `sqlx::Error::Decode` (a 500 that logs the cause) instead of travelling further.

pub(crate) mod accounts;
pub(crate) mod analytics;
pub(crate) mod feed;
pub(crate) mod idempotency;
pub(crate) mod orders;

/// A value read back from the database that does not parse.
fn corrupt(what: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(what.to_string().into())
}
