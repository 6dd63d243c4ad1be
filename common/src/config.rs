//! Configuration from environment variables. An invalid value stops the start with a
//! message naming the variable; secrets (the AMQP and database URLs) are never logged whole.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

mod values;
use values::{
    documented, documented_parse, err, non_negative, non_negative_or, positive, positive_or, switch,
};
mod variables;
pub use variables::{DEFAULT_AMQP_URL, VARIABLES};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub problem: String,
}

/// Every knob of the marketplace. One struct for every target: they share most of it, and
/// `marketplace all` must configure every service from one environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// RabbitMQ; the vhost in the URL is honoured, which is how tests isolate themselves.
    pub amqp_url: String,
    /// Where the backend serves its API, and every other target its health endpoints.
    pub http_addr: SocketAddr,
    /// Directory of the SQLite files, one per service (used when `database_url` is unset).
    pub data_dir: PathBuf,
    /// `postgres://…`: PostgreSQL instead of SQLite, one schema per service.
    pub database_url: Option<String>,
    /// Connections per service pool on PostgreSQL. Small by default: `all` opens seven pools
    /// against one server, and PostgreSQL's default limit is 100 connections.
    pub database_pool_size: u32,
    /// How long the manager waits for a step's reply before it times the step out.
    pub step_timeout_ms: i64,
    /// Cap of the backoff between retries of a compensation (they never expire).
    pub max_retry_ms: i64,
    /// Credits of a user seen for the first time.
    pub initial_credits: i64,
    /// Stock of `late_token` when the inventory starts empty (unless `PRODUCTS` says).
    pub initial_stock: i64,
    /// The products on sale (`PRODUCTS`); by default `late_token` with `INITIAL_STOCK`.
    pub catalog: crate::catalog::Catalog,
    /// Whether the purchase API honours the test suite's fault flags.
    pub fault_injection: bool,
    /// How long a `timeout_<step>` fault stalls its worker (default: twice the step timeout).
    pub fault_stall_ms: i64,
    /// SIGTERM: how long in-flight work may take to drain before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// How long an `Idempotency-Key` is remembered; a retry after that places a new order.
    pub idempotency_key_ttl: Duration,
    /// Sagas the manager runs at once; more orders wait in their queue until one finishes,
    /// so that a step's deadline measures its worker, not a queue the marketplace filled.
    pub max_sagas_in_flight: usize,
    /// Orders accepted and not yet final past which the backend refuses new purchases
    /// (503 with Retry-After) before storing anything: a 202 always means the order will
    /// complete, and a flood cannot grow the backlog without bound.
    pub max_backlog: usize,
    /// The operator's bearer token (`ADMIN_TOKEN`, or the file `ADMIN_TOKEN_FILE` names).
    /// Unset: operator endpoints answer loopback clients only.
    pub admin_token: crate::operator::AdminToken,
    /// The most orders `GET /api/all-transaction` returns (the newest, oldest first).
    pub all_transaction_limit: i64,
    /// Where `/metrics` is served instead of `http_addr` (a scrape network); None: beside
    /// the API.
    pub metrics_addr: Option<SocketAddr>,
    /// Timeouts and bounds of the HTTP listener (`HTTP_*`; see `http_server`).
    pub http: crate::http_server::Limits,
    /// Purchases per second per client address, with a burst (`PURCHASE_RATE_LIMIT`,
    /// `PURCHASE_RATE_BURST`); None (the default) limits nothing.
    pub purchase_rate_limit: Option<crate::rate_limit::RateLimit>,
    /// `TLS_CA_FILE`: a CA trusted beside the system's roots. It is already in `amqp_url`
    /// (`cacertfile=`) and `database_url` (`sslrootcert=`) unless they named their own.
    pub tls_ca_file: Option<crate::tls::CaFile>,
    /// `TRACE_UI_URL`: where the dashboard links an order's trace (`{trace_id}` in it is
    /// replaced by the order's trace id; without it the id is appended). None: the
    /// dashboard shows the id without a link.
    pub trace_ui_url: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process env.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut amqp_url = amqp_url(var("AMQP_URL"))?;
        let http_addr = documented_parse("HTTP_ADDR", var("HTTP_ADDR"))?;
        let data_dir = PathBuf::from(var("DATA_DIR").unwrap_or_else(|| documented("DATA_DIR")));
        let mut database_url = database_url(var("DATABASE_URL"))?;
        let database_pool_size =
            positive("DATABASE_POOL_SIZE", var("DATABASE_POOL_SIZE"))?.min(1000) as u32;
        let step_timeout_ms = positive("STEP_TIMEOUT_MS", var("STEP_TIMEOUT_MS"))?;
        let max_retry_ms = positive(
            "COMPENSATION_MAX_RETRY_MS",
            var("COMPENSATION_MAX_RETRY_MS"),
        )?;
        let initial_credits = non_negative("INITIAL_CREDITS", var("INITIAL_CREDITS"))?;
        let initial_stock = non_negative("INITIAL_STOCK", var("INITIAL_STOCK"))?;
        let catalog = catalog(var("PRODUCTS"), initial_stock)?;
        let fault_injection = switch("FAULT_INJECTION", var("FAULT_INJECTION"))?;
        let fault_stall_ms = positive_or(
            "FAULT_STALL_MS",
            var("FAULT_STALL_MS"),
            step_timeout_ms.saturating_mul(2),
        )?;
        let shutdown_ms = positive("SHUTDOWN_TIMEOUT_MS", var("SHUTDOWN_TIMEOUT_MS"))?;
        let idempotency_ms = positive("IDEMPOTENCY_KEY_TTL_MS", var("IDEMPOTENCY_KEY_TTL_MS"))?;
        let max_sagas_in_flight =
            positive("MAX_SAGAS_IN_FLIGHT", var("MAX_SAGAS_IN_FLIGHT"))? as usize;
        let max_backlog = positive("MAX_BACKLOG", var("MAX_BACKLOG"))? as usize;
        let admin_token = admin_token(var("ADMIN_TOKEN"), var("ADMIN_TOKEN_FILE"))?;
        let all_transaction_limit =
            positive("ALL_TRANSACTION_LIMIT", var("ALL_TRANSACTION_LIMIT"))?;
        let metrics_addr = metrics_addr(var("METRICS_ADDR"))?;
        let http = http_limits(&var)?;
        let purchase_rate_limit =
            rate_limit(var("PURCHASE_RATE_LIMIT"), var("PURCHASE_RATE_BURST"))?;
        let tls_ca_file = tls_ca(&mut amqp_url, &mut database_url, var("TLS_CA_FILE"))?;
        let trace_ui_url = trace_ui_url(var("TRACE_UI_URL"))?;
        Ok(Self {
            amqp_url,
            http_addr,
            data_dir,
            database_url,
            database_pool_size,
            step_timeout_ms,
            max_retry_ms,
            initial_credits,
            initial_stock,
            catalog,
            fault_injection,
            fault_stall_ms,
            shutdown_timeout: Duration::from_millis(shutdown_ms as u64),
            idempotency_key_ttl: Duration::from_millis(idempotency_ms as u64),
            max_sagas_in_flight,
            max_backlog,
            admin_token,
            all_transaction_limit,
            metrics_addr,
            http,
            purchase_rate_limit,
            tls_ca_file,
            trace_ui_url,
        })
    }
}

/// `AMQP_URL`, by default the local broker: an amqp:// or amqps:// URL.
fn amqp_url(raw: Option<String>) -> Result<String, ConfigError> {
    let url = raw.unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(err(
            "AMQP_URL",
            &redact(&url),
            "must start with amqp:// or amqps://",
        ));
    }
    Ok(url)
}

/// `DATABASE_URL`, if set: a postgres:// URL.
fn database_url(raw: Option<String>) -> Result<Option<String>, ConfigError> {
    if let Some(url) = &raw
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err(err(
            "DATABASE_URL",
            &redact(url),
            "must be a postgres:// URL (leave it unset for SQLite under DATA_DIR)",
        ));
    }
    Ok(raw)
}

/// The products on sale: `PRODUCTS`, by default `late_token` with `initial_stock`.
fn catalog(
    raw: Option<String>,
    initial_stock: i64,
) -> Result<crate::catalog::Catalog, ConfigError> {
    match raw {
        Some(v) => crate::catalog::Catalog::parse(&v).map_err(|e| err("PRODUCTS", &v, &e)),
        None => Ok(crate::catalog::Catalog::single(initial_stock)),
    }
}

/// `METRICS_ADDR`, if set: the address `/metrics` is served on.
fn metrics_addr(raw: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    raw.map(|v| {
        v.trim()
            .parse::<SocketAddr>()
            .map_err(|e| err("METRICS_ADDR", &v, &e.to_string()))
    })
    .transpose()
}

/// The HTTP listener's `HTTP_*` timeouts and bounds.
fn http_limits(
    var: &impl Fn(&str) -> Option<String>,
) -> Result<crate::http_server::Limits, ConfigError> {
    let ms =
        |name: &'static str| positive(name, var(name)).map(|v| Duration::from_millis(v as u64));
    let count = |name: &'static str| positive(name, var(name)).map(|v| v.min(1_000_000) as usize);
    Ok(crate::http_server::Limits {
        header_timeout: ms("HTTP_HEADER_TIMEOUT_MS")?,
        body_timeout: ms("HTTP_BODY_TIMEOUT_MS")?,
        idle_timeout: ms("HTTP_IDLE_TIMEOUT_MS")?,
        max_connections: count("HTTP_MAX_CONNECTIONS")?,
        max_requests_in_flight: count("HTTP_MAX_REQUESTS_IN_FLIGHT")?,
    })
}

/// The purchase rate limit: off when `PURCHASE_RATE_LIMIT` is unset or 0 (a burst alone
/// limits nothing); the burst defaults to one second's worth.
fn rate_limit(
    rate: Option<String>,
    burst: Option<String>,
) -> Result<Option<crate::rate_limit::RateLimit>, ConfigError> {
    const MAX: i64 = 1_000_000;
    let per_second = non_negative_or("PURCHASE_RATE_LIMIT", rate, 0)?.min(MAX);
    if per_second == 0 {
        return Ok(None);
    }
    let burst = positive_or("PURCHASE_RATE_BURST", burst, per_second)?.min(MAX);
    Ok(Some(crate::rate_limit::RateLimit {
        per_second: per_second as u32,
        burst: burst as u32,
    }))
}

/// `TLS_CA_FILE`, read and checked, and added to the URLs that name no CA of their own; a
/// CA file a URL names is checked too, so that a wrong path stops the start rather than
/// every connection attempt.
fn tls_ca(
    amqp_url: &mut String,
    database_url: &mut Option<String>,
    file: Option<String>,
) -> Result<Option<crate::tls::CaFile>, ConfigError> {
    use crate::tls;
    let ca = match file {
        Some(path) => Some(tls::CaFile::read(&path).map_err(|p| err("TLS_CA_FILE", &path, &p))?),
        None => None,
    };
    if let Some(ca) = &ca {
        *amqp_url = tls::amqp_url_with_ca(amqp_url, &ca.path);
        *database_url = database_url
            .take()
            .map(|url| tls::postgres_url_with_ca(&url, &ca.path));
    }
    tls::check_url_ca(amqp_url, tls::AMQP_CA_PARAM)
        .map_err(|p| err("AMQP_URL", &redact(amqp_url), &p))?;
    if let Some(url) = database_url {
        tls::check_url_ca(url, "sslrootcert").map_err(|p| err("DATABASE_URL", &redact(url), &p))?;
    }
    Ok(ca)
}

/// `TRACE_UI_URL`, if set: an http(s) URL, since the dashboard puts it in a link (any other
/// scheme, `javascript:` among them, is refused at start).
fn trace_ui_url(raw: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(url) = raw.map(|v| v.trim().to_string()) else {
        return Ok(None);
    };
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) {
        return Err(err(
            "TRACE_UI_URL",
            &url,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("TRACE_UI_URL", &url, "must not contain spaces"));
    }
    Ok(Some(url))
}

/// The operator token from `ADMIN_TOKEN` or from the file `ADMIN_TOKEN_FILE` names (its
/// surrounding whitespace dropped, as a Secret file often ends in a newline). Both set is
/// ambiguous and refused; so is a token too short to resist guessing.
fn admin_token(
    inline: Option<String>,
    file: Option<String>,
) -> Result<crate::operator::AdminToken, ConfigError> {
    const MIN_LEN: usize = 16;
    let token = match (inline, file) {
        (Some(_), Some(path)) => {
            return Err(err(
                "ADMIN_TOKEN_FILE",
                &path,
                "ADMIN_TOKEN is set too: set one of them",
            ));
        }
        (Some(t), None) => Some(("ADMIN_TOKEN", "(hidden)".to_string(), t.trim().to_string())),
        (None, Some(path)) => {
            let t = std::fs::read_to_string(&path)
                .map_err(|e| err("ADMIN_TOKEN_FILE", &path, &format!("cannot be read: {e}")))?;
            Some(("ADMIN_TOKEN_FILE", path, t.trim().to_string()))
        }
        (None, None) => None,
    };
    match token {
        Some((variable, shown, t))
            if t.chars().count() < MIN_LEN || t.chars().any(char::is_whitespace) =>
        {
            Err(err(
                variable,
                &shown,
                &format!("the token must be at least {MIN_LEN} characters without spaces"),
            ))
        }
        Some((_, _, t)) => Ok(crate::operator::AdminToken::new(Some(t))),
        None => Ok(crate::operator::AdminToken::new(None)),
    }
}

/// A URL with its password replaced, fit for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
