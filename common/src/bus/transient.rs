//! Which errors a retry may cure: the one place that decides whether a handler's failure is
//! [`HandlerError::Transient`] (retried in place, up to [`super::MAX_TRANSIENT_ATTEMPTS`]) or
//! [`HandlerError::Permanent`] (rejected at once to the dead-letter store).
//!
//! Permanent is what the same input would meet again: a stored row that does not decode
//! (a saga whose JSON cannot be read), a value that cannot be encoded, a constraint the write
//! breaks, a statement the database refuses. Transient is what comes from the database or
//! the way to it being unavailable: a lost or refused connection, an exhausted pool, a lock,
//! a serialization failure or deadlock, a server shutting down or short of resources.
//!
//! What is not known to be either is transient: since retries are bounded, mistaking a
//! permanent error costs a few seconds before the same dead-letter store, while mistaking a
//! transient one dead-letters a message that only had bad luck (and fails its order).

use std::error::Error as StdError;

use sqlx::error::{DatabaseError, ErrorKind};

use super::HandlerError;

impl HandlerError {
    /// `error` as transient or permanent by what it is (see the module's documentation).
    pub fn classify(error: impl Into<anyhow::Error>) -> HandlerError {
        let error = error.into();
        if is_transient(&error) {
            HandlerError::Transient(error)
        } else {
            HandlerError::Permanent(error)
        }
    }
}

/// Whether a retry may cure `error`: decided by the first database or JSON error in its
/// chain of causes.
pub fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().find_map(cause_is_transient).unwrap_or(true)
}

/// What one cause says, if it is one this module knows.
fn cause_is_transient(cause: &(dyn StdError + 'static)) -> Option<bool> {
    if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
        return Some(sqlx_is_transient(e));
    }
    // Reading a stored row (a saga's state) or writing a value: the same bytes fail again.
    cause.downcast_ref::<serde_json::Error>().map(|_| false)
}

/// Whether `error` says the database cannot be reached at all (a refused or lost
/// connection, an exhausted pool, a server shutting down or refusing connections). Such a
/// failure is the service's, not the message's: retrying it does not count toward
/// [`super::MAX_TRANSIENT_ATTEMPTS`], so a database outage of any length delays messages
/// instead of dead-lettering them (and failing their orders).
pub(super) fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(sqlx_is_unavailable)
    })
}

fn sqlx_is_unavailable(error: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match error {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed => true,
        E::Database(e) => e.code().is_some_and(|state| {
            let state = state.as_ref();
            state.starts_with("08") || matches!(state, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether a retry may cure a database error.
pub fn sqlx_is_transient(error: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match error {
        // The connection, the pool or the driver's worker: the database is away or busy.
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::BeginFailed => true,
        E::Database(e) => database_error_is_transient(e.as_ref()),
        // What was stored, or what is being written, does not fit: it will not fit later.
        E::Decode(_)
        | E::ColumnDecode { .. }
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. }
        | E::Encode(_)
        | E::AnyDriverError(_)
        | E::RowNotFound => false,
        // The program or its configuration is wrong.
        E::Configuration(_)
        | E::InvalidArgument(_)
        | E::InvalidSavePointStatement
        | E::Migrate(_) => false,
        _ => true,
    }
}

/// An error the database returned, by its code: SQLite's result code, or else (PostgreSQL)
/// the SQLSTATE. A constraint violation is permanent whatever the database.
fn database_error_is_transient(error: &dyn DatabaseError) -> bool {
    if error.kind() != ErrorKind::Other {
        return false;
    }
    let code = error.code();
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        return code
            .and_then(|c| c.parse().ok())
            .is_none_or(sqlite_code_is_transient);
    }
    code.is_none_or(|state| sqlstate_is_transient(&state))
}

/// SQLite (extended) result codes: <https://www.sqlite.org/rescode.html>. The primary code,
/// the low byte, names the kind.
fn sqlite_code_is_transient(code: i32) -> bool {
    match code & 0xff {
        // SQLITE_ERROR (SQL error, missing table), INTERNAL, CORRUPT, TOOBIG, CONSTRAINT,
        // MISMATCH, MISUSE, AUTH, FORMAT, RANGE, NOTADB.
        1 | 2 | 11 | 18 | 19 | 20 | 21 | 23 | 24 | 25 | 26 => false,
        // BUSY and LOCKED (another writer), NOMEM, READONLY, INTERRUPT, IOERR, FULL,
        // CANTOPEN, PROTOCOL (a lock race), SCHEMA (changed under the statement), ABORT,
        // and anything else.
        _ => true,
    }
}

/// PostgreSQL SQLSTATEs: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.
fn sqlstate_is_transient(state: &str) -> bool {
    let class = state.get(..2).unwrap_or_default();
    match (class, state) {
        // Permanent members of otherwise transient classes: an integrity violation found at
        // commit, a dropped database, corrupted data or index.
        (_, "40002" | "57P04" | "XX001" | "XX002") => false,
        // Connection exceptions; transaction rollbacks (40001 serialization failure, 40P01
        // deadlock); insufficient resources; operator intervention (57P01-57P03 shutdown
        // and cannot connect now, 57014 statement timeout); lock not available, object in
        // use; system I/O errors; a session closed for idling in a transaction.
        ("08" | "40" | "53" | "57", _) => true,
        (_, "55P03" | "55006" | "58000" | "58030" | "25P03") => true,
        // Cardinality, data exceptions, integrity constraints, triggered data changes, SQL
        // routine and external routine exceptions, syntax or access rules, WITH CHECK
        // OPTION, features not supported, PL/pgSQL raise.
        ("21" | "22" | "23" | "27" | "2F" | "38" | "39" | "42" | "44" | "0A" | "P0", _) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests;
