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
