//! Traces end to end: an OTLP receiver inside the test (gRPC and HTTP, decoded with
//! opentelemetry-proto) collects what a real marketplace exports, and the test checks that
//! one order is one trace across every service, correctly parented, in-process and split
//! into processes; that compensations show; that the API leads to the trace; and that a
//! collector that is down changes nothing for orders.
//!
//! The in-process tests share the process-wide tracer providers (`telemetry::install`), so
//! they take turns.

mod support;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
    trace::v1::{span::SpanKind, status::StatusCode as SpanStatus},
};
use prost::Message;
use serde_json::{Value, json};
use support::*;

/// The in-process tests install the process's tracing in turn.
static TRACING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SIX: [&str; 6] = [
    "backend",
    "manager",
    "order",
    "payment",
    "inventory",
    "delivery",
];

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root.
    parent: String,
    name: String,
    kind: SpanKind,
    attributes: HashMap<String, String>,
    error: bool,
}

/// Everything received so far, from either protocol.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Receiver {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    error: span
                        .status
                        .is_some_and(|s| s.code == SpanStatus::Error as i32),
                    name: span.name,
                });
            }
        }
    }

    fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// An OTLP/gRPC receiver on a free port; returns its endpoint.
    async fn serve_grpc(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(Grpc(self.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    /// An OTLP/HTTP (protobuf) receiver at `/v1/traces` on a free port; returns its base.
    async fn serve_http(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/traces", post(http_export))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }
}

struct Grpc(Receiver);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(
    State(receiver): State<Receiver>,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            receiver.add(request);
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            b"undecodable".to_vec(),
        ),
    }
}

/// Points this process's tracing at `endpoint` (None: off), as `main` does from the env.
/// Points this process's tracing at `receiver`, over `protocol` (`grpc` or
/// `http/protobuf`).
async fn export_to(receiver: &Receiver, protocol: &str) {
    let endpoint = match protocol {
        "grpc" => receiver.serve_grpc().await,
        _ => receiver.serve_http().await,
    };
    install(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
    ])
    .await;
}

async fn install(vars: &[(&str, &str)]) {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let settings = common::telemetry::Settings::from_lookup(|k| map.get(k).cloned())
        .expect("valid OTEL settings");
    // Replacing providers flushes the old ones, which blocks.
    tokio::task::spawn_blocking(move || common::telemetry::install(settings))
        .await
        .unwrap();
}

async fn flush() {
    tokio::task::spawn_blocking(common::telemetry::flush)
        .await
        .unwrap();
}

fn services(spans: &[Received]) -> HashSet<&str> {
    spans.iter().map(|s| s.service.as_str()).collect()
}

/// Spans whose parent is not in the trace (the root has none and is not counted).
fn orphans(spans: &[Received]) -> Vec<&Received> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| !s.parent.is_empty() && !ids.contains(s.parent.as_str()))
        .collect()
}

/// Waits (generously) until the trace holds every service in `expected`, the saga's span,
/// and no span whose parent is missing; `flush` pushes in-process spans out meanwhile.
async fn complete_trace(
    receiver: &Receiver,
    trace_id: &str,
    expected: &[&str],
    in_process: bool,
) -> Vec<Received> {
    let mut spans = Vec::new();
    for _ in 0..150 {
        if in_process {
            flush().await;
        }
        spans = receiver.trace(trace_id);
        let present = services(&spans);
        if expected.iter().all(|s| present.contains(s))
            && spans.iter().any(|s| s.name == "saga")
            && orphans(&spans).is_empty()
        {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let summary: Vec<_> = spans
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    panic!(
        "trace {trace_id} incomplete after 30 s: services {:?}, orphans {:?}, spans {summary:?}",
        services(&spans),
        orphans(&spans)
    );
}

/// What every order's trace must show, whatever its outcome: one root (the POST), spans
/// of every service, every parent present, and nothing of this order in another trace.
fn assert_one_well_formed_trace(receiver: &Receiver, order: &Value, spans: &[Received]) {
    let order_id = order["id"].as_str().unwrap();
    let trace_id = order["trace_id"]
        .as_str()
        .expect("the order has a trace id");
    assert_eq!(trace_id.len(), 32, "{trace_id}");

    let roots: Vec<_> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    let root = roots[0];
    assert_eq!(
        (root.service.as_str(), root.kind, root.name.as_str()),
        ("backend", SpanKind::Server, "POST /api/purchase/")
    );
    assert_eq!(root.attributes["http.request.method"], "POST");
    assert_eq!(root.attributes["http.route"], "/api/purchase/");
    assert_eq!(root.attributes["http.response.status_code"], "202");
    assert!(orphans(spans).is_empty(), "{:?}", orphans(spans));
    for service in SIX {
        assert!(
            services(spans).contains(service),
            "no span of {service} in {:?}",
            services(spans)
        );
    }

    // Messaging: every publish has the conventions' attributes, and each consumer span is
    // the child of a publish span (the context crossed RabbitMQ in the headers).
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let consumers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Consumer)
        .collect();
    assert!(consumers.len() >= 10, "{} consumer spans", consumers.len());
    for c in &consumers {
        assert_eq!(c.attributes["messaging.system"], "rabbitmq");
        assert_eq!(c.attributes["messaging.operation.type"], "process");
        let parent = by_id[c.parent.as_str()];
        assert_eq!(parent.kind, SpanKind::Producer, "{c:?} under {parent:?}");
        assert_eq!(
            parent.attributes["messaging.message.id"],
            c.attributes["messaging.message.id"]
        );
        assert_eq!(
            parent.attributes["messaging.rabbitmq.destination.routing_key"],
            c.attributes["messaging.rabbitmq.destination.routing_key"]
        );
        assert!(!c.attributes["messaging.destination.name"].is_empty());
    }
    // One order, one trace: no message of this order was consumed in another trace.
    let elsewhere: Vec<_> = receiver
        .all()
        .into_iter()
        .filter(|s| {
            s.trace_id != trace_id
                && s.attributes
                    .get("messaging.message.conversation_id")
                    .map(String::as_str)
                    == Some(order_id)
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "spans of {order_id} elsewhere: {elsewhere:?}"
    );

    // Each worker handles its steps in a database transaction span.
    for service in ["order", "payment", "inventory", "delivery"] {
        assert!(
            spans.iter().any(|s| s.service == service
                && s.name.ends_with(" transaction")
                && s.attributes.contains_key("db.system.name")),
            "no transaction span of {service}"
        );
    }

    // The saga: its span, child of the manager's consumption of PlaceOrder; every step
    // attempt is a child of it.
    let saga = spans.iter().find(|s| s.name == "saga").unwrap();
    assert_eq!(saga.service, "manager");
    assert_eq!(by_id[saga.parent.as_str()].kind, SpanKind::Consumer);
    assert_eq!(
        saga.attributes["marketplace.order.status"],
        order["status"].as_str().unwrap()
    );

    // The API leads into the trace: every timeline entry names a span of it, and a `sent`
    // entry names its step's span, which carries the step's command.
    for entry in order["timeline"].as_array().unwrap() {
        let span_id = entry["span_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{entry}"));
        let span = by_id
            .get(span_id)
            .unwrap_or_else(|| panic!("timeline span {span_id} is not in the trace: {entry}"));
        if entry["event"] == "sent" {
            assert_eq!(span.name, entry["step"].as_str().unwrap(), "{entry}");
            assert_eq!(span.parent, saga.span_id);
            let command = spans
                .iter()
                .find(|s| s.kind == SpanKind::Producer && s.parent == span.span_id)
                .unwrap_or_else(|| panic!("no command published in {entry}"));
            assert_eq!(command.service, "manager");
        }
    }
}

fn step_spans<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.service == "manager" && s.name == name)
        .collect()
}

/// The order as the API shows it once final, its trace id set and its timeline complete.
async fn final_traced_order(base: &str, id: &str) -> Value {
    final_order(base, id, Duration::from_secs(10)).await;
    get_order(base, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_successful_order_is_one_trace_across_the_six_services_over_grpc() {
    let _turn = TRACING.lock().await;
    let receiver = Receiver::default();
    export_to(&receiver, "grpc").await;
    let m = InProcess::start(&[]).await;

    let id = purchase(
        &m.base_url,
        json!({"username": "tracy", "price": 3, "amount": 2}),
    )
    .await;
    let order = final_traced_order(&m.base_url, &id).await;
    assert_eq!(order["status"], "SUCCESS");
    let trace_id = order["trace_id"].as_str().expect("trace_id").to_string();
    let spans = complete_trace(&receiver, &trace_id, &SIX, true).await;
    assert_one_well_formed_trace(&receiver, &order, &spans);
    eprintln!(
        "a successful order: {} spans in trace {trace_id} ({} of them the backend's)",
        spans.len(),
        spans.iter().filter(|s| s.service == "backend").count()
    );

    for step in [
        "order.create",
        "payment.charge",
        "inventory.reserve",
        "delivery.schedule",
        "order.complete",
    ] {
        let attempts = step_spans(&spans, step);
        assert_eq!(attempts.len(), 1, "{step}: {attempts:?}");
        assert_eq!(attempts[0].attributes["marketplace.step.outcome"], "done");
        assert!(!attempts[0].error);
    }
    assert!(
        spans.iter().all(|s| !s.error),
        "a successful order has no failed span"
    );

    m.stop().await.expect("drains cleanly");
    install(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_order_shows_its_compensations_in_its_trace_over_http() {
    let _turn = TRACING.lock().await;
    let receiver = Receiver::default();
    export_to(&receiver, "http/protobuf").await;
    let m = InProcess::start(&[]).await;

    let id = purchase(
        &m.base_url,
        json!({"username": "undone", "price": 4, "amount": 1, "kill_deliver": true}),
    )
    .await;
    let order = final_traced_order(&m.base_url, &id).await;
    assert_eq!(order["status"], "UNKNOWN");
    let trace_id = order["trace_id"].as_str().expect("trace_id").to_string();
    let spans = complete_trace(&receiver, &trace_id, &SIX, true).await;
    assert_one_well_formed_trace(&receiver, &order, &spans);

    let failed = step_spans(&spans, "delivery.schedule");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attributes["marketplace.step.outcome"], "failed");
    assert!(failed[0].error, "the killed step is marked failed");
    for (step, worker) in [
        ("delivery.cancel", "delivery"),
        ("inventory.release", "inventory"),
        ("payment.refund", "payment"),
        ("order.reject", "order"),
    ] {
        let attempts = step_spans(&spans, step);
        assert_eq!(attempts.len(), 1, "{step}: {attempts:?}");
        assert_eq!(
            attempts[0].attributes["marketplace.step.compensation"],
            "true"
        );
        assert_eq!(attempts[0].attributes["marketplace.step.outcome"], "done");
        assert!(
            spans
                .iter()
                .any(|s| s.service == worker && s.name == format!("{step} transaction")),
            "{worker} ran {step} in the trace"
        );
    }
    let saga = spans.iter().find(|s| s.name == "saga").unwrap();
    assert!(saga.error, "an UNKNOWN order's saga span is an error");

    m.stop().await.expect("drains cleanly");
    install(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_with_every_target_in_its_own_process() {
    let receiver = Receiver::default();
    let endpoint = receiver.serve_grpc().await;
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let targets = SPLIT_TARGETS;
    let split = Split::start(
        &vhost,
        data.path(),
        &targets,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            // Each process exports within 100 ms instead of 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    )
    .await;
    let base = split.backend_url.clone();

    let id = purchase(
        &base,
        json!({"username": "spread", "price": 2, "amount": 2}),
    )
    .await;
    let order = final_traced_order(&base, &id).await;
    assert_eq!(order["status"], "SUCCESS");
    let trace_id = order["trace_id"].as_str().expect("trace_id").to_string();
    let spans = complete_trace(&receiver, &trace_id, &SIX, false).await;
    assert_one_well_formed_trace(&receiver, &order, &spans);

    split.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_neither_slows_orders_nor_floods_the_logs() {
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing listens there any more.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let env = environment(
        &vhost,
        data.path(),
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", closed),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ],
    );
    let log_path = data.path().join("all.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .arg("all")
        .envs(env)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("marketplace starts");
    let mut process = Process(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ready(&base).await;

    // Final without waiting on the exporter: an exporter that blocked the saga would hold each
    // order for its own timeouts (seconds). The bound is generous, because this test shares
    // two cores with the others running beside it; speed is loadgen's business, not a test's.
    for (i, flags) in [
        json!({}),
        json!({"kill_payment": true}),
        json!({}),
        json!({"kill_deliver": true}),
        json!({}),
        json!({}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = json!({"username": format!("offline{i}"), "price": 1, "amount": 1});
        body.as_object_mut()
            .unwrap()
            .extend(flags.as_object().unwrap().clone());
        let id = purchase(&base, body).await;
        let order = final_order(&base, &id, Duration::from_secs(5)).await;
        assert!(order["trace_id"].is_string(), "still traced: {order}");
    }

    let pid = process.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let mut exited = None;
    for _ in 0..150 {
        if let Some(status) = process.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("exits within 15 s of SIGTERM with the collector down");
    assert!(status.success(), "exited with {status}");

    let logs = std::fs::read_to_string(&log_path).unwrap();
    // Whatever the exporter and its clients say (the broker's own shutdown chatter is not
    // this test's business): one warning, at most one a minute, and no error.
    let about_export: Vec<_> = logs
        .lines()
        .filter(|l| {
            [
                "OTLP",
                "otlp",
                "opentelemetry",
                "tonic",
                "hyper",
                "reqwest",
                "h2::",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect();
    assert!(
        (1..=2).contains(&about_export.len()),
        "one warning (at most one a minute), not {}:\n{logs}",
        about_export.len()
    );
    assert!(
        about_export.iter().all(|l| l.contains("WARN")),
        "warnings, not errors: {about_export:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_that_rejects_a_message_names_the_messages_trace() {
    use lapin::{
        BasicProperties, options::BasicPublishOptions, types::AMQPValue, types::FieldTable,
    };

    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = environment(
        &vhost,
        data.path(),
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("LOG_FORMAT", "json".into()),
        ],
    );
    let log_path = data.path().join("all.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _process = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .arg("all")
            .envs(env)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("marketplace starts"),
    );
    wait_until_ready(&format!("http://127.0.0.1:{port}")).await;

    // No collector: the ids still exist, so the log line can be joined to the message.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let message_id = uuid::Uuid::now_v7().to_string();
    let conn = amqp_connection(&vhost).await;
    let channel = conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{trace_id}-b7ad6b7169203331-01").into()),
    );
    channel
        .basic_publish(
            common::topology::EXCHANGE.into(),
            common::topology::step_key(common::messages::Step::ChargePayment).into(),
            BasicPublishOptions::default(),
            b"{not json",
            BasicProperties::default()
                .with_message_id(message_id.clone().into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let rejection = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .find(|l| l.contains("rejecting message") && l.contains(&message_id))
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON log line"))
    };
    wait_for(
        || async { rejection().is_some() },
        "the rejection to be logged",
    )
    .await;
    let line = rejection().unwrap();
    assert_eq!(line["trace_id"], trace_id, "{line}");
    assert!(
        line["span_id"].as_str().is_some_and(|s| s.len() == 16),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_stays_in_its_trace_through_the_dead_letter_service() {
    use lapin::{
        BasicProperties, options::BasicPublishOptions, types::AMQPValue, types::FieldTable,
    };

    let _turn = TRACING.lock().await;
    let receiver = Receiver::default();
    export_to(&receiver, "grpc").await;
    let m = InProcess::start(&[]).await;
    let id = purchase(
        &m.base_url,
        json!({"username": "poison", "price": 1, "amount": 1}),
    )
    .await;
    final_order(&m.base_url, &id, Duration::from_secs(10)).await;

    // A command nobody can decode, sent in a trace of our own: the payment worker rejects
    // it, RabbitMQ dead-letters it (headers kept), the dead-letter service stores it and
    // tells the manager, all in that trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let stop = common::shutdown::Shutdown::new();
    let broker = common::bus::Broker::start(&m._vhost.amqp_url(), "test", stop.clone());
    let conn = broker.connection(&stop).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{trace_id}-{parent}-01").into()),
    );
    channel
        .basic_publish(
            common::topology::EXCHANGE.into(),
            common::topology::step_key(common::messages::Step::ChargePayment).into(),
            BasicPublishOptions::default(),
            b"{not json",
            BasicProperties::default()
                .with_message_id(uuid::Uuid::now_v7().to_string().into())
                .with_correlation_id(id.clone().into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let mut spans = Vec::new();
    for _ in 0..150 {
        flush().await;
        spans = receiver.trace(trace_id);
        let present = services(&spans);
        if ["payment", "dead-letter", "manager"]
            .iter()
            .all(|s| present.contains(s))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let consumer = |service: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.kind == SpanKind::Consumer)
            .unwrap_or_else(|| panic!("no consumer span of {service} in {spans:?}"))
    };
    let rejected = consumer("payment");
    assert!(rejected.error, "the rejection is an error: {rejected:?}");
    assert_eq!(rejected.parent, parent);
    let stored = consumer("dead-letter");
    assert_eq!(
        stored.parent, parent,
        "the dead letter kept the message's context"
    );
    let told = consumer("manager");
    assert_eq!(
        spans
            .iter()
            .find(|s| s.span_id == told.parent)
            .map(|s| s.service.as_str()),
        Some("dead-letter"),
        "the manager heard of it from the dead-letter service, in the same trace"
    );

    stop.cancel();
    m.stop().await.expect("drains cleanly");
    install(&[]).await;
}
