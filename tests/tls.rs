//! TLS end to end, without touching the shared servers: the test makes a CA and a server
//! certificate for `localhost` (rcgen) and runs its own TLS endpoints (tokio-rustls):
//! - a proxy that terminates `amqps://` and forwards the plain bytes to RabbitMQ;
//! - a proxy that answers PostgreSQL's SSLRequest itself ('S'), terminates TLS and forwards
//!   the rest of the protocol in plain to PostgreSQL;
//! - OTLP collectors over https (HTTP/protobuf at `/v1/traces`, and gRPC) that count exports.
//!
//! The marketplace trusts the test CA through `TLS_CA_FILE` (or the URL's own parameter), and
//! a client that does not trust it is refused with a message that says so.

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{http::StatusCode, routing::post};
use common::config::Config;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

/// A CA of the test's own and a certificate it signed for `localhost`, 127.0.0.1,
/// 127.0.0.2 and ::1.
struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate, PEM, as `TLS_CA_FILE` wants it.
    ca_file: PathBuf,
    /// The server's chain (its certificate, then the CA's) and key, PEM.
    chain_pem: String,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        common::tls::install_crypto_provider();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "marketplace test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::new(
            ["localhost", "127.0.0.1", "127.0.0.2", "::1"].map(String::from),
        )
        .unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.use_authority_key_identifier_extension = true;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        Pki {
            _dir: dir,
            ca_file,
            chain_pem: format!("{}{}", server_cert.pem(), ca_cert.pem()),
            key_pem: server_key.serialize_pem(),
            chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            key_der: server_key.serialize_der(),
        }
    }

    fn ca(&self) -> String {
        self.ca_file.display().to_string()
    }

    fn acceptor(&self) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// What a proxy speaks before TLS starts.
#[derive(Clone, Copy)]
enum Upstream {
    /// AMQP: TLS from the first byte.
    Amqp,
    /// PostgreSQL: an 8-byte SSLRequest answered with 'S', then TLS.
    Postgres,
}

/// The SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A TLS-terminating proxy on a free port of 127.0.0.1 in front of `upstream`; returns the
/// port and the number of TLS sessions it has completed.
async fn tls_proxy(
    acceptor: TlsAcceptor,
    upstream: &'static str,
    protocol: Upstream,
) -> (u16, Arc<AtomicUsize>) {
    tls_proxy_on("127.0.0.1", acceptor, upstream, protocol).await
}

/// [`tls_proxy`] on `ip`.
async fn tls_proxy_on(
    ip: &str,
    acceptor: TlsAcceptor,
    upstream: &'static str,
    protocol: Upstream,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, sessions) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let _ = relay(client, acceptor, upstream, protocol, sessions).await;
            });
        }
    });
    (port, sessions)
}

async fn relay(
    mut client: TcpStream,
    acceptor: TlsAcceptor,
    upstream: &str,
    protocol: Upstream,
    sessions: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    if let Upstream::Postgres = protocol {
        let mut first = [0u8; 8];
        client.read_exact(&mut first).await?;
        if first != SSL_REQUEST {
            // Plain PostgreSQL: forwarded as it is (the tests never ask for it).
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(&first).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            return Ok(());
        }
        client.write_all(b"S").await?;
    }
    let mut tls = acceptor.accept(client).await?;
    sessions.fetch_add(1, Ordering::Relaxed);
    let mut server = TcpStream::connect(upstream).await?;
    tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
    Ok(())
}

/// The whole marketplace in-process on `vhost` (whose URL `extra` may override).
async fn start_on(vhost: Vhost, extra: &[(&str, String)]) -> InProcess {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    InProcess::start_with(listener, vhost, extra).await
}

/// One order placed and followed to its end; returns it.
async fn one_order(base_url: &str, user: &str) -> Value {
    let id = purchase(base_url, json!({"username": user, "price": 2, "amount": 1})).await;
    final_order(base_url, &id, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_succeeds_over_amqps_trusting_the_ca_of_tls_ca_file() {
    let pki = Pki::new();
    let (port, sessions) = tls_proxy(pki.acceptor(), "127.0.0.1:5672", Upstream::Amqp).await;
    let vhost = Vhost::create();
    let url = format!("amqps://guest:guest@localhost:{port}/{}", vhost.name);

    // The system's roots alone do not trust the test CA: refused, and the error says so.
    let refused = common::bus::open_connection(&url, "tls-test", Duration::from_secs(10))
        .await
        .map(|_| ())
        .expect_err("a broker signed by an unknown CA is refused");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("not trusted") && refused.contains("TLS_CA_FILE"),
        "{refused}"
    );
    assert_eq!(sessions.load(Ordering::Relaxed), 0);

    // The URL's own cacertfile= is enough for a connection.
    let trusting = common::tls::amqp_url_with_ca(&url, &pki.ca());
    let conn = common::bus::open_connection(&trusting, "tls-test", Duration::from_secs(10))
        .await
        .expect("connects over TLS trusting the CA");
    assert!(conn.status().connected());
    common::bus::close(&conn, "done").await;
    assert_eq!(sessions.load(Ordering::Relaxed), 1);

    // The whole marketplace, with the CA from TLS_CA_FILE.
    let m = start_on(
        vhost,
        &[("AMQP_URL", url.clone()), ("TLS_CA_FILE", pki.ca())],
    )
    .await;
    let order = one_order(&m.base_url, "amqps-buyer").await;
    assert_eq!(order["status"], "SUCCESS", "{order:#}");
    assert!(
        sessions.load(Ordering::Relaxed) > 1,
        "the services' connections went through the TLS proxy"
    );
    m.stop().await.expect("drains cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_url_may_name_the_broker_by_its_ip_address() {
    // Loopback addresses, but not 127.0.0.1, which "localhost" resolves to: the connection
    // must go to the address in the URL, and the certificate be checked against it.
    let pki = Pki::new();
    let vhost = Vhost::create();
    for (ip, host) in [("127.0.0.2", "127.0.0.2"), ("::1", "[::1]")] {
        let (port, sessions) =
            tls_proxy_on(ip, pki.acceptor(), "127.0.0.1:5672", Upstream::Amqp).await;
        let url = format!(
            "amqps://guest:guest@{host}:{port}/{}?cacertfile={}",
            vhost.name,
            pki.ca()
        );
        let conn = common::bus::open_connection(&url, "tls-test", Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("connects to {host} over TLS: {e:#}"));
        common::bus::close(&conn, "done").await;
        assert_eq!(sessions.load(Ordering::Relaxed), 1, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marketplace_and_the_audit_reach_postgresql_with_sslmode_verify_full() {
    let pki = Pki::new();
    let (port, sessions) = tls_proxy(pki.acceptor(), "127.0.0.1:5432", Upstream::Postgres).await;
    let db = PgDatabase::create();
    let url = format!(
        "postgres://postgres@localhost:{port}/{}?sslmode=verify-full",
        db.name
    );

    // Without the CA, verify-full refuses the server's certificate.
    let untrusting = Config::from_lookup(|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap();
    let refused = common::db::Db::attach(&untrusting, "order")
        .await
        .map(|_| ())
        .expect_err("an unknown CA is refused");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("not trusted") && refused.contains("TLS_CA_FILE"),
        "{refused}"
    );
    assert_eq!(sessions.load(Ordering::Relaxed), 0);

    // sslrootcert= in the URL: every service's pool over TLS, and an order succeeds.
    let with_root = format!("{url}&sslrootcert={}", pki.ca());
    let m = InProcess::start(&[("DATABASE_URL", with_root)]).await;
    let order = one_order(&m.base_url, "postgres-tls-buyer").await;
    assert_eq!(order["status"], "SUCCESS", "{order:#}");
    assert!(sessions.load(Ordering::Relaxed) > 0);

    // `marketplace audit` reads every store over TLS, the CA from TLS_CA_FILE this time.
    let before = sessions.load(Ordering::Relaxed);
    let mut last = None;
    for _ in 0..40 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .args(["audit", "--grace-ms", "0"])
            .env("DATABASE_URL", &url)
            .env("TLS_CA_FILE", pki.ca())
            .env("AMQP_URL", m._vhost.amqp_url())
            .output()
            .unwrap();
        assert_ne!(
            out.status.code(),
            Some(2),
            "the audit reads the stores: {out:?}"
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.success() {
            assert_eq!(report["ok"], true, "{report:#}");
            last = Some(report);
            break;
        }
        // Invariants settle a few milliseconds after the order's end.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(last.is_some(), "the audit never passed");
    assert!(sessions.load(Ordering::Relaxed) > before);
    m.stop().await.expect("drains cleanly");
}

/// The OTLP tests point the process's tracing at their collector in turn.
static TRACING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn install_tracing(vars: &[(&str, String)]) {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let settings = common::telemetry::Settings::from_lookup(|k| vars.get(k).cloned())
        .expect("valid OTEL settings");
    // Replacing providers flushes the old ones, which blocks.
    tokio::task::spawn_blocking(move || common::telemetry::install(settings))
        .await
        .unwrap();
}

/// Flushes the exporters until `exports` counts one, for up to 10 s.
async fn wait_for_export(exports: &AtomicUsize) {
    for _ in 0..40 {
        tokio::task::spawn_blocking(common::telemetry::flush)
            .await
            .unwrap();
        if exports.load(Ordering::Relaxed) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no span batch reached the https collector within 10 s");
}

/// TLS connections for axum: a TCP listener whose connections complete a handshake first.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_over_http_protobuf() {
    let _turn = TRACING.lock().await;
    let pki = Pki::new();
    let exports = Arc::new(AtomicUsize::new(0));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let counted = exports.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| async move {
            if !body.is_empty() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            // An empty ExportTraceServiceResponse.
            (
                StatusCode::OK,
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let listener = TlsListener {
        tcp,
        acceptor: pki.acceptor(),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });

    install_tracing(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("TLS_CA_FILE", pki.ca()),
    ])
    .await;
    let m = InProcess::start(&[]).await;
    let order = one_order(&m.base_url, "https-otlp-buyer").await;
    assert_eq!(order["status"], "SUCCESS", "{order:#}");
    wait_for_export(&exports).await;
    m.stop().await.expect("drains cleanly");
    install_tracing(&[]).await;
}

/// A gRPC collector that counts the export requests it is sent.
struct Counting(Arc<AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if !request.into_inner().resource_spans.is_empty() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_over_grpc() {
    use tonic::transport::{Identity, Server, ServerTlsConfig};
    let _turn = TRACING.lock().await;
    let pki = Pki::new();
    let exports = Arc::new(AtomicUsize::new(0));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let server = Server::builder()
        .tls_config(
            ServerTlsConfig::new().identity(Identity::from_pem(&pki.chain_pem, &pki.key_pem)),
        )
        .unwrap()
        .add_service(TraceServiceServer::new(Counting(exports.clone())))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(tcp));
    tokio::spawn(server);

    // The CA through the standard variable this time.
    install_tracing(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://localhost:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca()),
    ])
    .await;
    let m = InProcess::start(&[]).await;
    let order = one_order(&m.base_url, "grpcs-otlp-buyer").await;
    assert_eq!(order["status"], "SUCCESS", "{order:#}");
    wait_for_export(&exports).await;
    m.stop().await.expect("drains cleanly");
    install_tracing(&[]).await;
}
