use std::collections::HashMap;

use super::*;

fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|n| map.get(n).cloned())
}

#[test]
fn no_endpoint_means_tracing_is_off() {
    assert!(settings(&[]).unwrap().is_none());
    assert!(settings(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
    assert!(
        settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true")
        ])
        .unwrap()
        .is_none()
    );
}

#[test]
fn http_gets_the_traces_path_and_grpc_keeps_the_base() {
    let http = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
        .unwrap()
        .unwrap();
    assert_eq!(http.protocol, Protocol::HttpProtobuf);
    assert_eq!(http.endpoint, "http://c:4318/v1/traces");
    let grpc = settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (grpc.protocol, grpc.endpoint.as_str()),
        (Protocol::Grpc, "http://c:4317")
    );
    let exact = settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/x"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(exact.endpoint, "http://t:9/x");
    let https = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")])
        .unwrap()
        .unwrap();
    assert_eq!(https.endpoint, "https://c:4318/v1/traces");
    assert!(https.ca.is_none());
}

#[test]
fn invalid_values_name_their_variable() {
    let e = |vars: &[(&str, &str)]| settings(vars).unwrap_err().variable;
    let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
    assert_eq!(
        e(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    );
    assert_eq!(
        e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]),
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    );
    assert_eq!(
        e(&[
            ep,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        ]),
        "OTEL_EXPORTER_OTLP_CERTIFICATE"
    );
    assert_eq!(
        e(&[ep, ("TLS_CA_FILE", "/nonexistent/ca.pem")]),
        "TLS_CA_FILE"
    );
    assert_eq!(
        e(&[ep, ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")]),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY"
    );
    assert_eq!(
        e(&[ep, ("OTEL_TRACES_SAMPLER", "sometimes")]),
        "OTEL_TRACES_SAMPLER"
    );
    assert_eq!(
        e(&[
            ep,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2")
        ]),
        "OTEL_TRACES_SAMPLER_ARG"
    );
    assert_eq!(
        e(&[ep, ("OTEL_SDK_DISABLED", "maybe")]),
        "OTEL_SDK_DISABLED"
    );
}

#[test]
fn service_names_are_per_service_and_otel_service_name_prefixes_them() {
    let mut s = settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=ignored,deployment.environment=dev,k=a%20b",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "signoz-ingestion-key=abc"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(s.service_name("payment"), "payment");
    assert_eq!(
        s.resource_attributes,
        vec![
            ("deployment.environment".into(), "dev".into()),
            ("k".into(), "a b".into())
        ]
    );
    assert_eq!(
        s.headers,
        vec![("signoz-ingestion-key".into(), "abc".into())]
    );
    s.service_name = Some("payment".into());
    assert_eq!(s.service_name("payment"), "payment");
    s.service_name = Some("shop".into());
    assert_eq!(s.service_name("payment"), "shop-payment");
}
