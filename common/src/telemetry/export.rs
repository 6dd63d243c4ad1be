//! One tracer provider per service, exporting over OTLP in the background.
//!
//! A `Resource` (hence `service.name`) belongs to a provider, so each service of the process
//! gets its own provider, created the first time it asks for its tracer. Every provider
//! hands its spans to the SDK's batch processor: a bounded queue (spans are dropped, never
//! waited for, when it is full) drained by a thread of its own. The export itself runs on a
//! small runtime of ours with a timeout, so a collector that is down or slow costs a
//! dropped batch and one rate-limited warning, never a delay in order processing.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData,
        SpanExporter,
    },
};

use super::settings::{Protocol, Settings};

/// What [`install`] set up: the settings and the providers made from them so far.
struct Installed {
    settings: Settings,
    /// Runs the exports (tonic and reqwest need a tokio runtime; the batch thread has none).
    runtime: Option<tokio::runtime::Runtime>,
    providers: Mutex<HashMap<String, (SdkTracerProvider, SdkTracer)>>,
    warnings: Arc<Warnings>,
}

/// The longest a flush at exit may take.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(3);

static INSTALLED: RwLock<Option<Arc<Installed>>> = RwLock::new(None);

/// Exports with `settings` from now on (None: tracing off), replacing (and flushing) what
/// was installed before. Called once by `main`; tests call it to point the process at
/// their own receiver.
pub fn install(settings: Option<Settings>) {
    let next = settings.map(|settings| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .expect("a runtime for OTLP exports");
        Arc::new(Installed {
            settings,
            runtime: Some(runtime),
            providers: Mutex::new(HashMap::new()),
            warnings: Arc::new(Warnings::default()),
        })
    });
    let previous = std::mem::replace(&mut *INSTALLED.write().expect("telemetry lock"), next);
    if let Some(previous) = previous {
        previous.shutdown();
    }
}

/// Exports every span ended so far (bounded by the export timeout), e.g. before exit.
pub fn flush() {
    let installed = INSTALLED.read().expect("telemetry lock").clone();
    if let Some(installed) = installed {
        for (provider, _) in installed.providers.lock().expect("providers lock").values() {
            let _ = provider.force_flush();
        }
    }
}

/// Flushes and stops exporting: tracing is off afterwards.
pub fn shutdown() {
    install(None);
}

/// Providers that export nothing, for when no endpoint is set: spans still get real trace
/// and span ids, so orders carry a trace id, the W3C context still crosses every service,
/// and log lines still correlate across processes; the spans are dropped when they end.
static LOCAL: std::sync::LazyLock<Mutex<HashMap<String, SdkTracer>>> =
    std::sync::LazyLock::new(Default::default);

/// `OTEL_SDK_DISABLED=true`: no spans at all, not even local ones.
fn sdk_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| {
        std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    })
}

fn local_tracer(service: &str) -> Option<SdkTracer> {
    if sdk_disabled() {
        return None;
    }
    let mut tracers = LOCAL.lock().expect("local tracers lock");
    if let Some(tracer) = tracers.get(service) {
        return Some(tracer.clone());
    }
    // Not sampled: a span gets its ids and its context propagates, but records nothing
    // (no attributes kept, nothing handed to a processor), which keeps the cost near zero.
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_string())
                .build(),
        )
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
        .build();
    let tracer = provider.tracer("marketplace");
    tracers.insert(service.to_string(), tracer.clone());
    Some(tracer)
}

/// The tracer of `service`: exporting when an endpoint is installed, local (ids, no export)
/// otherwise; None only with `OTEL_SDK_DISABLED=true` or when the exporter cannot be built.
pub fn tracer(service: &str) -> Option<SdkTracer> {
    let guard = INSTALLED.read().expect("telemetry lock");
    let Some(installed) = guard.as_ref() else {
        drop(guard);
        return local_tracer(service);
    };
    let mut providers = installed.providers.lock().expect("providers lock");
    if let Some((_, tracer)) = providers.get(service) {
        return Some(tracer.clone());
    }
    match installed.provider(service) {
        Ok(provider) => {
            let tracer = provider.tracer("marketplace");
            providers.insert(service.to_string(), (provider, tracer.clone()));
            Some(tracer)
        }
        Err(e) => {
            installed
                .warnings
                .warn(&format!("cannot build the OTLP exporter: {e}"));
            None
        }
    }
}

impl Installed {
    fn provider(&self, service: &str) -> anyhow::Result<SdkTracerProvider> {
        let s = &self.settings;
        let runtime = self.runtime.as_ref().expect("runtime until shutdown");
        // tonic's lazy channel spawns onto the runtime it is built in.
        let _enter = runtime.enter();
        crate::tls::install_crypto_provider();
        let inner = match s.protocol {
            Protocol::Grpc => {
                let mut headers = axum::http::HeaderMap::new();
                for (k, v) in &s.headers {
                    if let (Ok(k), Ok(v)) = (
                        k.parse::<axum::http::HeaderName>(),
                        v.parse::<axum::http::HeaderValue>(),
                    ) {
                        headers.insert(k, v);
                    }
                }
                let metadata =
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
                let build = |native_roots: bool| {
                    let builder = opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(s.endpoint.clone())
                        .with_timeout(s.timeout)
                        .with_metadata(metadata.clone());
                    match s.endpoint.starts_with("https://") {
                        true => builder.with_tls_config(grpc_tls(s, native_roots)).build(),
                        false => builder.build(),
                    }
                };
                // tonic refuses a system without root certificates even when the CA file
                // is all the collector needs: then the CA file alone.
                match build(true) {
                    Err(_) if s.ca.is_some() => build(false)?,
                    built => built?,
                }
            }
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(http_client(s)?)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(s.endpoint.clone())
                .with_timeout(s.timeout)
                .with_headers(s.headers.iter().cloned().collect())
                .build()?,
        };
        let exporter = Exporter {
            inner: Arc::new(inner),
            runtime: runtime.handle().clone(),
            timeout: s.timeout,
            warnings: self.warnings.clone(),
        };
        let resource = Resource::builder_empty()
            .with_service_name(s.service_name(service))
            .with_attributes(
                s.resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        // BatchConfigBuilder::default honours the OTEL_BSP_* variables; the queue stays
        // bounded whatever they say.
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        Ok(SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .with_sampler(s.sampler.clone())
            .build())
    }

    fn shutdown(&self) {
        let providers: Vec<_> = self
            .providers
            .lock()
            .expect("providers lock")
            .drain()
            .map(|(_, (p, _))| p)
            .collect();
        // In parallel and bounded: a collector that does not answer must not hold the exit.
        let timeout = self.settings.timeout.min(SHUTDOWN_BOUND);
        let stopping: Vec<_> = providers
            .into_iter()
            .map(|p| std::thread::spawn(move || p.shutdown_with_timeout(timeout)))
            .collect();
        for s in stopping {
            let _ = s.join();
        }
    }
}

/// TLS of the gRPC exporter: the system's roots (`native_roots`) and the CA file.
fn grpc_tls(
    s: &Settings,
    native_roots: bool,
) -> opentelemetry_otlp::tonic_types::transport::ClientTlsConfig {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
    let mut tls = ClientTlsConfig::new();
    if native_roots {
        tls = tls.with_native_roots();
    }
    if let Some(ca) = &s.ca {
        tls = tls.ca_certificate(Certificate::from_pem(&ca.pem));
    }
    tls
}

/// The HTTP exporter's client: rustls, the system's roots and the CA file, the export
/// timeout (the exporter's default client, but for the CA file).
fn http_client(s: &Settings) -> anyhow::Result<reqwest::Client> {
    // The system's roots only for https://: loading them parses the whole certificate
    // store, once per service, and delayed the first orders of a debug build by seconds.
    let mut client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(s.endpoint.starts_with("https://"))
        .timeout(s.timeout);
    if let Some(ca) = &s.ca {
        for cert in reqwest::Certificate::from_pem_bundle(&ca.pem)? {
            client = client.add_root_certificate(cert);
        }
    }
    Ok(client.build()?)
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The OTLP exporter, run on our runtime with a timeout, its failures rate-limited.
#[derive(Debug)]
struct Exporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    warnings: Arc<Warnings>,
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        let timeout = self.timeout;
        let n = batch.len();
        let outcome = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, inner.export(batch)).await })
            .await;
        let problem = match outcome {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("no answer within {timeout:?}"),
            Err(e) => e.to_string(),
        };
        self.warnings.warn(&format!(
            "OTLP export of {n} spans failed (dropped): {problem}"
        ));
        Err(OTelSdkError::InternalFailure(problem))
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// At most one warning per interval, saying how many failures it stands for: a collector
/// that is down must not flood the logs.
#[derive(Debug)]
struct Warnings {
    start: Instant,
    /// Milliseconds since `start` of the last warning (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

const WARN_EVERY: Duration = Duration::from_secs(60);

impl Default for Warnings {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl Warnings {
    fn warn(&self, what: &str) {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                suppressed,
                "{what}; order processing is unaffected; further failures are reported at most once a minute"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
