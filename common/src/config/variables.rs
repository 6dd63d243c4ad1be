//! Every variable the marketplace reads, with its default and meaning: the one place a
//! default is written (the parsers read it from here).

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
