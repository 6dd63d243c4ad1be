//! Configuration from environment variables. An invalid value stops the start with a
//! message naming the variable; secrets (the AMQP and database URLs) are never logged whole.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `(variable, default, meaning)` of every variable, for `--help` and the README.
pub const VARIABLES: &[(&str, &str, &str)] = &[
    (
        "AMQP_URL",
        DEFAULT_AMQP_URL,
        "RabbitMQ URL; its vhost is honoured",
    ),
    (
        "HTTP_ADDR",
        "0.0.0.0:8000",
        "HTTP listen address (API on backend/all, health elsewhere)",
    ),
    (
        "DATA_DIR",
        "./data",
        "directory of the SQLite files (one per service)",
    ),
    (
        "DATABASE_URL",
        "(unset: SQLite)",
        "postgres://… to use PostgreSQL: one schema per service, or a database per service with {service} in the URL",
    ),
    (
        "DATABASE_POOL_SIZE",
        "5",
        "PostgreSQL connections per service",
    ),
    ("STEP_TIMEOUT_MS", "1000", "deadline of each saga step"),
    (
        "COMPENSATION_MAX_RETRY_MS",
        "30000",
        "cap of the backoff between compensation retries",
    ),
    ("INITIAL_CREDITS", "500", "credits of a new user"),
    ("INITIAL_STOCK", "500", "initial stock of late_token"),
    (
        "PRODUCTS",
        "late_token=INITIAL_STOCK",
        "the catalog: name=stock[@price],… (with a price, a purchase must name it)",
    ),
    (
        "FAULT_INJECTION",
        "on",
        "honour the purchase fault flags (on|off)",
    ),
    (
        "FAULT_STALL_MS",
        "2 x STEP_TIMEOUT_MS",
        "how long a timeout_<step> flag stalls its worker",
    ),
    (
        "SHUTDOWN_TIMEOUT_MS",
        "10000",
        "bound on draining in-flight work at SIGTERM",
    ),
    (
        "IDEMPOTENCY_KEY_TTL_MS",
        "86400000",
        "how long an Idempotency-Key is remembered (longer than any client's retries)",
    ),
    (
        "MAX_SAGAS_IN_FLIGHT",
        "256",
        "sagas the manager runs at once; further orders wait in their queue",
    ),
    (
        "MAX_BACKLOG",
        "50000",
        "orders accepted and not final past which purchases are refused with 503",
    ),
    (
        "ADMIN_TOKEN",
        "(unset: loopback only)",
        "bearer token of the operator endpoints (audit, dead letters, fault flags)",
    ),
    (
        "ADMIN_TOKEN_FILE",
        "(unset)",
        "a file holding ADMIN_TOKEN (a mounted Kubernetes Secret)",
    ),
    (
        "METRICS_ADDR",
        "(unset: on HTTP_ADDR)",
        "a listen address of its own for /metrics (e.g. a scrape network); then HTTP_ADDR has none",
    ),
    (
        "ALL_TRANSACTION_LIMIT",
        "1000",
        "the most orders GET /api/all-transaction returns (the newest, oldest first)",
    ),
    (
        "HTTP_HEADER_TIMEOUT_MS",
        "5000",
        "a connection without a complete request head within it is closed",
    ),
    (
        "HTTP_BODY_TIMEOUT_MS",
        "10000",
        "a request body not received whole within it is answered 408",
    ),
    (
        "HTTP_IDLE_TIMEOUT_MS",
        "60000",
        "a kept-alive connection without a request for this long is closed",
    ),
    (
        "HTTP_MAX_CONNECTIONS",
        "1024",
        "connections served at once; more wait in the accept backlog",
    ),
    (
        "HTTP_MAX_REQUESTS_IN_FLIGHT",
        "512",
        "requests handled at once (not /healthz, /readyz, /metrics); more get 503",
    ),
    (
        "PURCHASE_RATE_LIMIT",
        "0 (off)",
        "purchases per second per client IP; more get 429 (the peer address, not X-Forwarded-For)",
    ),
    (
        "PURCHASE_RATE_BURST",
        "PURCHASE_RATE_LIMIT",
        "purchases a client may send at once under PURCHASE_RATE_LIMIT",
    ),
    (
        "TLS_CA_FILE",
        "(unset: system roots)",
        "PEM CA trusted beside the system's roots by amqps://, PostgreSQL sslmode=verify-* and https:// OTLP",
    ),
    (
        "TRACE_UI_URL",
        "(unset: no link)",
        "the dashboard's link to an order's trace, e.g. https://signoz.example/trace/{trace_id} ({trace_id} replaced, else the id appended)",
    ),
    ("RUST_LOG", "info", "log filter"),
    ("LOG_FORMAT", "text", "text or json"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "(unset: no tracing)",
        "OTLP collector, e.g. http://signoz-otel-collector:4317 (grpc) or :4318 (http); https:// is TLS",
    ),
    (
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "TLS_CA_FILE",
        "PEM CA trusted beside the system's roots by an https:// collector",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "(unset)",
        "traces URL used as is (http: ends in /v1/traces); overrides the above",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf",
        "grpc or http/protobuf",
    ),
    (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "(unset)",
        "k=v,... sent with every export (e.g. signoz-ingestion-key=...)",
    ),
    (
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "10000",
        "bound on one export, ms (in the background)",
    ),
    (
        "OTEL_SERVICE_NAME",
        "(unset)",
        "prefix of each service's service.name (none: backend, manager, ...)",
    ),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        "(unset)",
        "k=v,... added to every span's resource",
    ),
    (
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "always_on, always_off, traceidratio, parentbased_*",
    ),
    (
        "OTEL_TRACES_SAMPLER_ARG",
        "1.0",
        "ratio for the *traceidratio samplers",
    ),
    (
        "OTEL_SDK_DISABLED",
        "false",
        "true: no tracing whatever else is set",
    ),
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process env.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut amqp_url = var("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(err(
                "AMQP_URL",
                &redact(&amqp_url),
                "must start with amqp:// or amqps://",
            ));
        }
        let http_addr = documented_parse("HTTP_ADDR", var("HTTP_ADDR"))?;
        let data_dir = PathBuf::from(var("DATA_DIR").unwrap_or_else(|| documented("DATA_DIR")));
        let mut database_url = var("DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(err(
                "DATABASE_URL",
                &redact(url),
                "must be a postgres:// URL (leave it unset for SQLite under DATA_DIR)",
            ));
        }
        let database_pool_size =
            positive("DATABASE_POOL_SIZE", var("DATABASE_POOL_SIZE"))?.min(1000) as u32;
        let step_timeout_ms = positive("STEP_TIMEOUT_MS", var("STEP_TIMEOUT_MS"))?;
        let max_retry_ms = positive(
            "COMPENSATION_MAX_RETRY_MS",
            var("COMPENSATION_MAX_RETRY_MS"),
        )?;
        let initial_credits = non_negative("INITIAL_CREDITS", var("INITIAL_CREDITS"))?;
        let initial_stock = non_negative("INITIAL_STOCK", var("INITIAL_STOCK"))?;
        let catalog = match var("PRODUCTS") {
            Some(v) => crate::catalog::Catalog::parse(&v).map_err(|e| err("PRODUCTS", &v, &e))?,
            None => crate::catalog::Catalog::single(initial_stock),
        };
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
        let metrics_addr = var("METRICS_ADDR")
            .map(|v| {
                v.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| err("METRICS_ADDR", &v, &e.to_string()))
            })
            .transpose()?;
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

fn err(variable: &'static str, value: &str, problem: &str) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_string(),
        problem: problem.to_string(),
    }
}

fn parse<T: std::str::FromStr>(
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
fn documented(name: &'static str) -> String {
    VARIABLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, default, _)| default.to_string())
        .unwrap_or_else(|| panic!("{name} is not documented in VARIABLES"))
}

/// `raw`, or the documented default, parsed.
fn documented_parse<T: std::str::FromStr>(
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
fn positive(name: &'static str, raw: Option<String>) -> Result<i64, ConfigError> {
    let v: i64 = documented_parse(name, raw.clone())?;
    if v <= 0 {
        return Err(err(
            name,
            &raw.unwrap_or_default(),
            "must be a positive integer",
        ));
    }
    Ok(v)
}

/// A non-negative integer, by default the documented one.
fn non_negative(name: &'static str, raw: Option<String>) -> Result<i64, ConfigError> {
    let v: i64 = documented_parse(name, raw.clone())?;
    if v < 0 {
        return Err(err(name, &raw.unwrap_or_default(), "must not be negative"));
    }
    Ok(v)
}

/// On or off, by default the documented one.
fn switch(name: &'static str, raw: Option<String>) -> Result<bool, ConfigError> {
    switch_or(name, Some(raw.unwrap_or_else(|| documented(name))), false)
}

/// A positive integer whose default is computed (documented as a formula).
fn positive_or(name: &'static str, raw: Option<String>, default: i64) -> Result<i64, ConfigError> {
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
fn non_negative_or(
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

fn switch_or(name: &'static str, raw: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match raw.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "on" | "true" | "1" | "yes" => Ok(true),
            "off" | "false" | "0" | "no" => Ok(false),
            _ => Err(err(name, &v, "must be on or off")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn the_catalog_defaults_to_late_token_with_initial_stock_and_a_bad_one_names_products() {
        let c = config(&[("INITIAL_STOCK", "7")]).unwrap();
        assert_eq!(c.catalog, crate::catalog::Catalog::single(7));
        let c = config(&[("PRODUCTS", "late_token=5,early_token=2@3")]).unwrap();
        assert_eq!(c.catalog.to_string(), "late_token, early_token");
        let e = config(&[("PRODUCTS", "late_token")]).unwrap_err();
        assert_eq!(e.variable, "PRODUCTS");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8000");
        assert_eq!(c.step_timeout_ms, 1000);
        assert_eq!(c.fault_stall_ms, 2000);
        assert_eq!((c.initial_credits, c.initial_stock), (500, 500));
        assert!(c.fault_injection);
        assert!(c.database_url.is_none());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.idempotency_key_ttl, Duration::from_secs(24 * 60 * 60));
        assert_eq!((c.max_sagas_in_flight, c.max_backlog), (256, 50_000));
        assert_eq!(c.http.header_timeout, Duration::from_secs(5));
        assert_eq!(c.http.body_timeout, Duration::from_secs(10));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            (c.http.max_connections, c.http.max_requests_in_flight),
            (1024, 512)
        );
        assert_eq!(c.purchase_rate_limit, None);
    }

    #[test]
    fn the_http_limits_are_read_in_milliseconds_and_counts() {
        let c = config(&[
            ("HTTP_HEADER_TIMEOUT_MS", "300"),
            ("HTTP_BODY_TIMEOUT_MS", "400"),
            ("HTTP_IDLE_TIMEOUT_MS", "500"),
            ("HTTP_MAX_CONNECTIONS", "8"),
            ("HTTP_MAX_REQUESTS_IN_FLIGHT", "2"),
        ])
        .unwrap();
        assert_eq!(
            c.http,
            crate::http_server::Limits {
                header_timeout: Duration::from_millis(300),
                body_timeout: Duration::from_millis(400),
                idle_timeout: Duration::from_millis(500),
                max_connections: 8,
                max_requests_in_flight: 2,
            }
        );
    }

    #[test]
    fn the_purchase_rate_limit_is_off_unless_set_above_zero() {
        use crate::rate_limit::RateLimit;
        assert_eq!(config(&[]).unwrap().purchase_rate_limit, None);
        for off in [
            vec![("PURCHASE_RATE_LIMIT", "0")],
            vec![("PURCHASE_RATE_LIMIT", " ")],
            vec![("PURCHASE_RATE_BURST", "5")],
        ] {
            assert_eq!(config(&off).unwrap().purchase_rate_limit, None, "{off:?}");
        }
        assert_eq!(
            config(&[("PURCHASE_RATE_LIMIT", "20")])
                .unwrap()
                .purchase_rate_limit,
            Some(RateLimit {
                per_second: 20,
                burst: 20
            })
        );
        assert_eq!(
            config(&[("PURCHASE_RATE_LIMIT", "2"), ("PURCHASE_RATE_BURST", "10")])
                .unwrap()
                .purchase_rate_limit,
            Some(RateLimit {
                per_second: 2,
                burst: 10
            })
        );
        let no_burst = config(&[("PURCHASE_RATE_LIMIT", "2"), ("PURCHASE_RATE_BURST", "0")]);
        assert_eq!(no_burst.unwrap_err().variable, "PURCHASE_RATE_BURST");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("STEP_TIMEOUT_MS", "soon"),
            ("STEP_TIMEOUT_MS", "0"),
            ("INITIAL_CREDITS", "-5"),
            ("FAULT_INJECTION", "maybe"),
            ("HTTP_ADDR", "localhost"),
            ("AMQP_URL", "http://x"),
            ("DATABASE_URL", "mysql://x"),
            ("IDEMPOTENCY_KEY_TTL_MS", "a day"),
            ("MAX_SAGAS_IN_FLIGHT", "0"),
            ("MAX_BACKLOG", "many"),
            ("METRICS_ADDR", "metrics"),
            ("ALL_TRANSACTION_LIMIT", "0"),
            ("HTTP_HEADER_TIMEOUT_MS", "0"),
            ("HTTP_BODY_TIMEOUT_MS", "-1"),
            ("HTTP_IDLE_TIMEOUT_MS", "1m"),
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("HTTP_MAX_REQUESTS_IN_FLIGHT", "lots"),
            ("PURCHASE_RATE_LIMIT", "-1"),
            ("PURCHASE_RATE_LIMIT", "1.5"),
        ] {
            let e = config(&[(name, value)]).unwrap_err();
            assert_eq!(e.variable, name);
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn the_admin_token_comes_from_the_variable_or_a_file_never_both() {
        assert!(!config(&[]).unwrap().admin_token.is_set());
        let inline = config(&[("ADMIN_TOKEN", "0123456789abcdef")]).unwrap();
        assert!(inline.admin_token.is_set());
        assert!(!format!("{inline:?}").contains("0123456789abcdef"));
        let short = config(&[("ADMIN_TOKEN", "short")]).unwrap_err();
        assert_eq!(short.variable, "ADMIN_TOKEN");
        assert!(!short.to_string().contains("short\""), "{short}");

        let dir = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "fedcba9876543210\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = config(&[("ADMIN_TOKEN_FILE", path)]).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer fedcba9876543210".parse().unwrap(),
        );
        assert!(from_file.admin_token.admit(&headers, None).is_ok());
        let both = config(&[
            ("ADMIN_TOKEN", "0123456789abcdef"),
            ("ADMIN_TOKEN_FILE", path),
        ]);
        assert_eq!(both.unwrap_err().variable, "ADMIN_TOKEN_FILE");
        let missing = config(&[("ADMIN_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert_eq!(missing.variable, "ADMIN_TOKEN_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tls_ca_file_is_checked_and_reaches_both_urls() {
        let dir = std::env::temp_dir().join(format!("tls-ca-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        // PEM framing is what is checked here; the handshake checks the certificate.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let path = ca.to_str().unwrap();
        let c = config(&[
            ("TLS_CA_FILE", path),
            ("AMQP_URL", "amqps://u:p@broker/v"),
            ("DATABASE_URL", "postgres://u@db/m?sslmode=verify-full"),
        ])
        .unwrap();
        assert_eq!(c.tls_ca_file.as_ref().unwrap().path, path);
        let param = |url: &str, k| crate::tls::query_param(url, k);
        assert_eq!(param(&c.amqp_url, "cacertfile").as_deref(), Some(path));
        let db = c.database_url.unwrap();
        assert_eq!(param(&db, "sslrootcert").as_deref(), Some(path));
        assert_eq!(param(&db, "sslmode").as_deref(), Some("verify-full"));

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "no certificate here").unwrap();
        for bad in [garbage.to_str().unwrap(), "/nonexistent/ca.pem"] {
            let e = config(&[("TLS_CA_FILE", bad)]).unwrap_err();
            assert_eq!(e.variable, "TLS_CA_FILE");
        }
        let e = config(&[(
            "DATABASE_URL",
            "postgres://db/m?sslrootcert=/nonexistent/ca.pem",
        )]);
        assert_eq!(e.unwrap_err().variable, "DATABASE_URL");
        let e = config(&[("AMQP_URL", "amqps://u:p@b/v?cacertfile=/nonexistent/ca.pem")]);
        let e = e.unwrap_err();
        assert_eq!(e.variable, "AMQP_URL");
        assert!(!e.to_string().contains(":p@"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fault_injection_can_be_switched_off() {
        assert!(
            !config(&[("FAULT_INJECTION", "off")])
                .unwrap()
                .fault_injection
        );
    }

    #[test]
    fn the_trace_ui_url_is_optional_and_only_http() {
        assert_eq!(config(&[]).unwrap().trace_ui_url, None);
        let url = "https://signoz.example/trace/{trace_id}";
        assert_eq!(
            config(&[("TRACE_UI_URL", url)]).unwrap().trace_ui_url,
            Some(url.to_string())
        );
        for bad in [
            "javascript:alert(1)",
            "signoz.example/trace",
            "https://",
            "http:///trace",
            "https://a b",
        ] {
            let e = config(&[("TRACE_UI_URL", bad)]).unwrap_err();
            assert_eq!(e.variable, "TRACE_UI_URL", "{bad}");
        }
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/v"),
            "amqp://guest:***@host:5672/v"
        );
        assert_eq!(redact("postgres://host/db"), "postgres://host/db");
    }
}
