//! Storage: one database per service, SQLite (default) or PostgreSQL, through `sqlx::Any`.
//!
//! Queries are written once in the SQL both understand: `$1` placeholders, `ON CONFLICT`,
//! `RETURNING`, BIGINT for money and times, TEXT for ids. The differences live here:
//! SQLite gets one file per service under DATA_DIR (WAL) and a single connection, so write
//! transactions queue in-process instead of failing with SQLITE_BUSY; PostgreSQL gets one
//! schema per service (`search_path`), so one database can hold them all.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use sqlx::{Any, AnyPool, Executor, any::AnyPoolOptions, migrate::Migrator};
use tokio::sync::{Notify, mpsc};

use crate::{
    backoff::Backoff, config::Config, config::redact, pending::Pending, shutdown::Shutdown,
};

pub type Tx = sqlx::Transaction<'static, Any>;

static COMMON_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A service's database handle. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Rung after a commit that wrote to the outbox, so the relay looks at once.
    outbox_wake: Arc<Notify>,
    /// Rows just committed to the outbox, handed to the relay so that it publishes them
    /// without reading them back (see [`Db::hand_to_relay`]).
    handoff: Arc<Handoff>,
}

/// A bounded queue from the committing handlers to the relay. When it is full (the relay
/// is behind, or the broker away) rows are not handed: they wait in the outbox, where the
/// relay's scan finds them.
struct Handoff {
    tx: mpsc::Sender<Vec<Pending>>,
    rx: Mutex<Option<mpsc::Receiver<Vec<Pending>>>>,
}

impl Handoff {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(HANDOFF_BATCHES);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

/// Batches of committed rows the relay may be behind by before the rest wait for its scan.
const HANDOFF_BATCHES: usize = 1024;

impl Db {
    /// Opens (creating if needed) the database of `service` and runs the shared and the
    /// service's migrations. Retries with backoff while the database is unreachable.
    pub async fn open(
        config: &Config,
        service: &str,
        migrations: &'static Migrator,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match Self::try_open(config, service, migrations).await {
                Ok(db) => return Ok(db),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(service, error = %format!("{e:#}"), ?delay, "database not ready, retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(e.context("shut down before the database was ready")),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn try_open(
        config: &Config,
        service: &str,
        migrations: &'static Migrator,
    ) -> anyhow::Result<Db> {
        let db = Self::connect(config, service, config.database_pool_size, true).await?;
        migrate(&db.pool, &COMMON_MIGRATIONS)
            .await
            .context("shared migrations")?;
        migrate(&db.pool, migrations)
            .await
            .with_context(|| format!("{service} migrations"))?;
        Ok(db)
    }

    /// Opens the existing database of `service` to read it (the audit), without migrating
    /// it and without creating it: a service that never started has no store, which is
    /// an error here.
    pub async fn attach(config: &Config, service: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        Self::connect(config, service, 1, false).await
    }

    /// The pool of `service`'s database (its schema, on PostgreSQL); `create` makes the
    /// SQLite file (and DATA_DIR) or the PostgreSQL schema when missing, else a missing
    /// one is an error.
    async fn connect(
        config: &Config,
        service: &str,
        pool_size: u32,
        create: bool,
    ) -> anyhow::Result<Db> {
        let (pool, backend) = match &config.database_url {
            Some(url) => (
                open_postgres(
                    &service_url(url, service),
                    &schema_name(service),
                    pool_size,
                    create,
                )
                .await?,
                Backend::Postgres,
            ),
            None => {
                let path = config.data_dir.join(format!("{service}.db"));
                if create {
                    std::fs::create_dir_all(&config.data_dir).with_context(|| {
                        format!("creating DATA_DIR {}", config.data_dir.display())
                    })?;
                } else {
                    anyhow::ensure!(
                        path.exists(),
                        "{service} has no database at {} (has it ever started with this DATA_DIR?)",
                        path.display()
                    );
                }
                (open_sqlite(&path, create).await?, Backend::Sqlite)
            }
        };
        Ok(Db {
            pool,
            backend,
            outbox_wake: Arc::new(Notify::new()),
            handoff: Arc::new(Handoff::new()),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database's name in telemetry (`db.system.name`).
    pub fn system(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }

    /// Begins a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a transaction never fails half-way on a lock upgrade.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Tells the outbox relay that a committed transaction left messages to publish.
    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    /// Commits `tx`, which wrote to the outbox rows not handed over ([`Db::hand_to_relay`]),
    /// and wakes the relay to publish them.
    pub async fn commit_and_wake(&self, tx: Tx) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.wake_outbox();
        Ok(())
    }

    /// Hands rows a transaction just committed to the outbox to the relay, which publishes
    /// them at once. Only after the commit: the relay may publish them immediately.
    pub fn hand_to_relay(&self, rows: Vec<Pending>) {
        if rows.is_empty() {
            return;
        }
        if self.handoff.tx.try_send(rows).is_err() {
            self.wake_outbox();
        }
    }

    /// The relay's end of [`Db::hand_to_relay`]; None once taken (one relay per service).
    pub(crate) fn take_handoff(&self) -> Option<mpsc::Receiver<Vec<Pending>>> {
        self.handoff
            .rx
            .lock()
            .expect("handoff lock poisoned")
            .take()
    }

    pub(crate) fn outbox_wake(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }

    /// Whether the database answers, for `/readyz`.
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.pool.execute("SELECT 1"))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// `DATABASE_URL` may name a database per service with `{service}`
/// (`postgres://…/marketplace_{service}`); without it, every service shares the one
/// database, each in a schema of its own. Either way one URL finds every store, which is
/// what the audit needs.
fn service_url(url: &str, service: &str) -> String {
    url.replace("{service}", &schema_name(service))
}

/// PostgreSQL identifiers cannot hold `-`.
fn schema_name(service: &str) -> String {
    service.replace('-', "_")
}

async fn open_sqlite(path: &std::path::Path, create: bool) -> anyhow::Result<AnyPool> {
    let mode = if create { "rwc" } else { "rw" };
    let url = format!("sqlite://{}?mode={mode}", path.display());
    AnyPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL + NORMAL survives a process crash (SIGKILL) without losing a commit;
                // only an OS crash may lose the last transactions.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .with_context(|| format!("opening SQLite database {}", path.display()))
}

async fn open_postgres(
    url: &str,
    schema: &str,
    pool_size: u32,
    create_schema: bool,
) -> anyhow::Result<AnyPool> {
    crate::tls::install_crypto_provider();
    let set_path = format!("SET search_path TO \"{schema}\"");
    if create_schema {
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        let setup = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| format!("connecting to {}", redact(url)))
            .map_err(|e| explain_tls(url, e))?;
        // Two services may race to create their schemas in a fresh database.
        if let Err(e) = setup.execute(sqlx::AssertSqlSafe(create)).await
            && !e.to_string().contains("already exists")
        {
            return Err(e).context("creating schema");
        }
        setup.close().await;
    }
    AnyPoolOptions::new()
        .max_connections(pool_size)
        // Give idle connections back: bursts must not pin the server's connection slots.
        .idle_timeout(Duration::from_secs(30))
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _meta| {
            let set_path = set_path.clone();
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(set_path)).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))
        .map_err(|e| explain_tls(url, e))
}

/// A refused server certificate says what was trusted (see [`crate::tls`]).
fn explain_tls(url: &str, e: anyhow::Error) -> anyhow::Error {
    let ca = crate::tls::query_param(url, "sslrootcert");
    crate::tls::explain_certificate_error(e, "PostgreSQL", ca)
}

async fn migrate(pool: &AnyPool, migrator: &'static Migrator) -> anyhow::Result<()> {
    // The shared and the service migrations live in one table: each must ignore the other's.
    let mut m = Migrator {
        migrations: migrator.migrations.clone(),
        ..Migrator::DEFAULT
    };
    m.set_ignore_missing(true);
    m.run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
