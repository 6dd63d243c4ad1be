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
        "08000", "08003", "08006", "08001", "08004", "40001", "40P01", "53000", "53100", "53200",
        "53300", "57P01", "57P02", "57P03", "57014", "55P03", "58030",
    ] {
        assert_eq!(kind(postgres(transient)), "transient", "{transient}");
    }
    for permanent in [
        "23505", "23503", "23502", "23514", "23P01", "22P02", "22003", "42P01", "42703", "0A000",
        "40002", "57P04", "XX001", "P0001",
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
