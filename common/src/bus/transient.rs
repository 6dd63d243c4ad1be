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
mod tests {
    use std::borrow::Cow;

    use sqlx::{Executor, any::AnyPoolOptions};

    use super::*;

    /// A database error as PostgreSQL reports one: a SQLSTATE.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl StdError for Sqlstate {}

    impl DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            match self.0 {
                "23505" => ErrorKind::UniqueViolation,
                "23503" => ErrorKind::ForeignKeyViolation,
                "23502" => ErrorKind::NotNullViolation,
                "23514" => ErrorKind::CheckViolation,
                _ => ErrorKind::Other,
            }
        }
    }

    fn postgres(state: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Sqlstate(state)))
    }

    fn kind(error: sqlx::Error) -> &'static str {
        match HandlerError::from(error) {
            HandlerError::Transient(_) => "transient",
            HandlerError::Permanent(_) => "permanent",
        }
    }

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")
    }

    #[test]
    fn connection_level_errors_are_transient() {
        assert_eq!(kind(sqlx::Error::Io(io())), "transient");
        assert_eq!(kind(sqlx::Error::Tls("handshake".into())), "transient");
        assert_eq!(kind(sqlx::Error::Protocol("bad frame".into())), "transient");
        assert_eq!(kind(sqlx::Error::PoolTimedOut), "transient");
        assert_eq!(kind(sqlx::Error::PoolClosed), "transient");
        assert_eq!(kind(sqlx::Error::WorkerCrashed), "transient");
        assert_eq!(kind(sqlx::Error::BeginFailed), "transient");
    }

    #[test]
    fn only_an_unreachable_database_is_an_outage_that_counts_no_attempt() {
        let outage = |e: sqlx::Error| is_unavailable(&anyhow::Error::from(e));
        assert!(outage(sqlx::Error::Io(io())));
        assert!(outage(sqlx::Error::PoolTimedOut));
        assert!(outage(postgres("08006")));
        assert!(outage(postgres("57P01")));
        assert!(!outage(postgres("40001")));
        assert!(!outage(sqlx::Error::WorkerCrashed));
        assert!(!outage(sqlx::Error::Decode("bad".into())));
        let wrapped = anyhow::Error::from(sqlx::Error::PoolClosed).context("loading sagas");
        assert!(is_unavailable(&wrapped));
    }

    #[test]
    fn decode_errors_are_permanent() {
        let decode = || Box::new(io()) as Box<dyn StdError + Send + Sync>;
        assert_eq!(kind(sqlx::Error::Decode(decode())), "permanent");
        let column = sqlx::Error::ColumnDecode {
            index: "\"state\"".into(),
            source: decode(),
        };
        assert_eq!(kind(column), "permanent");
        assert_eq!(
            kind(sqlx::Error::ColumnNotFound("state".into())),
            "permanent"
        );
        let type_name = "saga_state".to_string();
        assert_eq!(kind(sqlx::Error::TypeNotFound { type_name }), "permanent");
        let out_of_bounds = sqlx::Error::ColumnIndexOutOfBounds { index: 3, len: 1 };
        assert_eq!(kind(out_of_bounds), "permanent");
        assert_eq!(kind(sqlx::Error::Encode(decode())), "permanent");
        assert_eq!(kind(sqlx::Error::RowNotFound), "permanent");
    }

    #[test]
    fn programming_and_configuration_errors_are_permanent() {
        assert_eq!(kind(sqlx::Error::InvalidArgument("x".into())), "permanent");
        assert_eq!(kind(sqlx::Error::Configuration("x".into())), "permanent");
        assert_eq!(kind(sqlx::Error::InvalidSavePointStatement), "permanent");
    }

    #[test]
    fn postgres_errors_by_sqlstate() {
        for transient in [
            "08000", "08003", "08006", "08001", "08004", "40001", "40P01", "53000", "53100",
            "53200", "53300", "57P01", "57P02", "57P03", "57014", "55P03", "58030",
        ] {
            assert_eq!(kind(postgres(transient)), "transient", "{transient}");
        }
        for permanent in [
            "23505", "23503", "23502", "23514", "23P01", "22P02", "22003", "42P01", "42703",
            "0A000", "40002", "57P04", "XX001", "P0001",
        ] {
            assert_eq!(kind(postgres(permanent)), "permanent", "{permanent}");
        }
        // Not known to be either: transient (the bound ends its retries).
        assert_eq!(kind(postgres("XX000")), "transient");
    }

    #[test]
    fn sqlite_codes() {
        // BUSY, BUSY_SNAPSHOT, LOCKED, LOCKED_SHAREDCACHE, IOERR_WRITE, FULL, CANTOPEN, NOMEM.
        for transient in [5, 517, 6, 262, 778, 13, 14, 7] {
            assert!(sqlite_code_is_transient(transient), "{transient}");
        }
        // CONSTRAINT_UNIQUE, CONSTRAINT_NOTNULL, CONSTRAINT_CHECK, CONSTRAINT_PRIMARYKEY,
        // MISMATCH, CORRUPT, NOTADB, ERROR, TOOBIG.
        for permanent in [2067, 1299, 275, 1555, 20, 11, 26, 1, 18] {
            assert!(!sqlite_code_is_transient(permanent), "{permanent}");
        }
    }

    #[tokio::test]
    async fn sqlite_errors_through_the_any_driver_are_read_by_their_result_code() {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        pool.execute("CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT NOT NULL)")
            .await
            .unwrap();
        pool.execute("INSERT INTO t VALUES ('a', 1)").await.unwrap();
        let duplicate = pool.execute("INSERT INTO t VALUES ('a', 2)").await;
        assert_eq!(kind(duplicate.unwrap_err()), "permanent");
        let null = pool.execute("INSERT INTO t VALUES ('b', NULL)").await;
        assert_eq!(kind(null.unwrap_err()), "permanent");
        let missing = pool.execute("SELECT * FROM no_such_table").await;
        assert_eq!(kind(missing.unwrap_err()), "permanent");
        pool.execute("CREATE TABLE s (state TEXT NOT NULL)")
            .await
            .unwrap();
        pool.execute("INSERT INTO s VALUES ('x')").await.unwrap();
        let wrong_type = sqlx::query_scalar::<_, i64>("SELECT state FROM s")
            .fetch_one(&pool)
            .await;
        assert_eq!(kind(wrong_type.unwrap_err()), "permanent");
    }

    #[tokio::test]
    async fn a_busy_sqlite_database_through_the_any_driver_is_transient() {
        sqlx::any::install_default_drivers();
        let path = std::env::temp_dir().join(format!("busy-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = |busy_timeout: &'static str| {
            AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        conn.execute(busy_timeout).await?;
                        Ok(())
                    })
                })
                .connect(&url)
        };
        let holder = pool("PRAGMA busy_timeout = 5000").await.unwrap();
        holder.execute("CREATE TABLE t (n BIGINT)").await.unwrap();
        let mut writing = holder.begin().await.unwrap();
        writing.execute("INSERT INTO t VALUES (1)").await.unwrap();
        let other = pool("PRAGMA busy_timeout = 0").await.unwrap();
        let busy = other.execute("INSERT INTO t VALUES (2)").await.unwrap_err();
        assert!(
            busy.to_string().contains("(code: 5)"),
            "SQLITE_BUSY: {busy}"
        );
        assert_eq!(kind(busy), "transient");
        drop(writing);
        other.close().await;
        holder.close().await;
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_stored_row_that_does_not_decode_is_permanent_through_anyhow() {
        let json = serde_json::from_str::<serde_json::Value>("{not json").unwrap_err();
        let error = anyhow::Error::new(json).context("loading saga 42");
        assert!(matches!(
            HandlerError::classify(error),
            HandlerError::Permanent(_)
        ));
        let wrapped = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("loading saga 42");
        assert!(matches!(
            HandlerError::classify(wrapped),
            HandlerError::Transient(_)
        ));
        let constraint = anyhow::Error::new(postgres("23505"));
        assert!(matches!(
            HandlerError::classify(constraint),
            HandlerError::Permanent(_)
        ));
    }

    #[test]
    fn an_error_of_no_known_kind_is_transient() {
        let unknown = anyhow::anyhow!("something else");
        assert!(matches!(
            HandlerError::classify(unknown),
            HandlerError::Transient(_)
        ));
    }
}
