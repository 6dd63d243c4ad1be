//! Prometheus metrics, served as text at `/metrics` on every target.
//!
//! One [`Metrics`] per marketplace instance, found with [`for_instance`] by the RabbitMQ URL
//! the services share: every service of a process registers into it. In production a
//! process serves one marketplace, so this is one registry per process; a test process runs
//! many marketplaces side by side, each on its own vhost, and each sees only its own numbers.
//! The URL is known at every place that records (broker, manager, dead-letter store, HTTP
//! listener) without threading a handle through every service's `start`.
//!
//! Counters and histograms are recorded where things happen, as atomic increments on
//! children resolved once (no label lookup or allocation per consumed message). Gauges that
//! describe stored state (outbox backlog, sagas in flight, open dead letters) are read from
//! the services' databases at scrape time, so they are right after a restart and agree
//! between replicas.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::Response,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label of HTTP requests that matched no route: raw paths would make the series unbounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Every metric of one marketplace instance.
pub struct Metrics {
    registry: Registry,
    /// Sagas finished, by final status; counted once, by the transition that reached Done.
    pub orders: IntCounterVec,
    /// Command sent → reply (or deadline) seen by the manager, by step and outcome.
    pub step_seconds: HistogramVec,
    /// Order placed → final status, by status.
    pub saga_seconds: HistogramVec,
    /// Compensations started (first attempt sent), by step.
    pub compensations: IntCounterVec,
    /// Compensations sent again after their deadline passed: one that keeps growing is stuck.
    pub compensation_retries: IntCounterVec,
    /// Sagas not finished yet (from the manager's database, at scrape time).
    pub sagas_in_flight: IntGaugeVec,
    /// Messages waiting in a service's outbox (at scrape time).
    pub outbox_backlog: IntGaugeVec,
    /// Dead letters stored by the dead-letter service, by the queue they died in.
    pub dead_letters: IntCounterVec,
    /// Dead letters not resolved (from the dead-letter database, at scrape time).
    pub dead_letters_open: IntGaugeVec,
    /// Deliveries that were not the first (redelivered flag or x-delivery-count > 0).
    pub redeliveries: IntCounterVec,
    /// Handler outcomes by queue: ok (acked), transient (retried), permanent (rejected: failed
    /// for good, or still failing once its retries are spent).
    pub consumed: IntCounterVec,
    /// HTTP requests by method, route template and status.
    pub http_requests: IntCounterVec,
    /// HTTP request durations by method and route template.
    pub http_seconds: HistogramVec,
    /// Clients streaming `/api/orders/stream` from this process now.
    pub order_stream_clients: IntGaugeVec,
    /// Order stream clients disconnected for not keeping up, by reason: `stalled` (their
    /// connection did not drain), `lagged` (they fell behind the live feed).
    pub order_stream_dropped: IntCounterVec,
}

/// Latencies from a millisecond (one broker round trip) to a minute (a stuck saga).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static INSTANCES: LazyLock<Mutex<HashMap<String, Arc<Metrics>>>> = LazyLock::new(Default::default);

/// The metrics of the marketplace that uses `amqp_url`, created on first use.
pub fn for_instance(amqp_url: &str) -> Arc<Metrics> {
    INSTANCES
        .lock()
        .expect("metrics instances poisoned")
        .entry(amqp_url.to_string())
        .or_insert_with(|| Arc::new(Metrics::new()))
        .clone()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Makes metrics and registers each in one registry.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
        self.0.register(Box::new(c.clone())).expect("unique name");
        c
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        self.0.register(Box::new(g.clone())).expect("unique name");
        g
    }

    fn histogram(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let h = HistogramVec::new(opts, labels).expect("valid histogram");
        self.0.register(Box::new(h.clone())).expect("unique name");
        h
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (for one instance; see [`for_instance`]).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Registrar(&registry);
        Metrics {
            orders: r.counter(
                "marketplace_orders_total",
                "Orders finished, by final status (counted once per saga).",
                &["status"],
            ),
            step_seconds: r.histogram(
                "marketplace_saga_step_duration_seconds",
                "Saga step: command sent to reply or deadline, as the manager sees it.",
                &["step", "outcome"],
                LATENCY_BUCKETS,
            ),
            saga_seconds: r.histogram(
                "marketplace_saga_duration_seconds",
                "Whole saga: order placed to final status.",
                &["status"],
                LATENCY_BUCKETS,
            ),
            compensations: r.counter(
                "marketplace_compensations_total",
                "Compensations started (first attempt sent), by step.",
                &["step"],
            ),
            compensation_retries: r.counter(
                "marketplace_compensation_retries_total",
                "Compensations sent again after their deadline, by step.",
                &["step"],
            ),
            sagas_in_flight: r.gauge(
                "marketplace_sagas_in_flight",
                "Sagas not finished yet, from the manager's database.",
                &["service"],
            ),
            outbox_backlog: r.gauge(
                "marketplace_outbox_backlog_messages",
                "Messages waiting in a service's outbox to be published.",
                &["service"],
            ),
            dead_letters: r.counter(
                "marketplace_dead_letters_total",
                "Dead letters stored, by the queue they were dead-lettered from.",
                &["queue"],
            ),
            dead_letters_open: r.gauge(
                "marketplace_dead_letters_open",
                "Dead letters stored and not resolved, from the dead-letter database.",
                &["service"],
            ),
            redeliveries: r.counter(
                "marketplace_consumer_redeliveries_total",
                "Deliveries that were not the first delivery of their message, by queue.",
                &["queue"],
            ),
            consumed: r.counter(
                "marketplace_messages_consumed_total",
                "Handler outcomes by queue: ok (acked), transient (retried), permanent (rejected).",
                &["queue", "result"],
            ),
            http_requests: r.counter(
                "marketplace_http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_seconds: r.histogram(
                "marketplace_http_request_duration_seconds",
                "HTTP request durations by method and route template.",
                &["method", "route"],
                HTTP_BUCKETS,
            ),
            order_stream_clients: r.gauge(
                "marketplace_order_stream_clients",
                "Clients streaming /api/orders/stream from this process.",
                &["service"],
            ),
            order_stream_dropped: r.counter(
                "marketplace_order_stream_dropped_total",
                "Order stream clients disconnected for not keeping up, by reason (stalled, lagged).",
                &["service", "reason"],
            ),
            registry,
        }
    }

    /// The counters of one consumed queue, resolved once so the consume loop only increments.
    pub fn consumer(&self, queue: &str) -> ConsumerMetrics {
        let result = |r: &str| self.consumed.with_label_values(&[queue, r]);
        ConsumerMetrics {
            ok: result("ok"),
            transient: result("transient"),
            permanent: result("permanent"),
            redelivered: self.redeliveries.with_label_values(&[queue]),
        }
    }

    /// Every metric in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Records one HTTP request.
    fn http(&self, method: &str, route: &str, status: &str, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[method, route, status])
            .inc();
        self.http_seconds
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }
}

/// The counters of one consumed queue (see [`Metrics::consumer`]).
#[derive(Clone)]
pub struct ConsumerMetrics {
    pub ok: IntCounter,
    pub transient: IntCounter,
    pub permanent: IntCounter,
    pub redelivered: IntCounter,
}

/// Counts every request of `router` by method, matched route template and status, and times
/// it. Call it last: a layer applies to the routes that exist when it is added.
pub fn track_http(router: Router, metrics: Arc<Metrics>) -> Router {
    router.layer(middleware::from_fn_with_state(metrics, record_http))
}

async fn record_http(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // The template (`/api/orders/{id}`), never the raw path: one series per route.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let response = next.run(req).await;
    metrics.http(
        method.as_str(),
        route.as_ref().map_or(UNMATCHED_ROUTE, |r| r.as_str()),
        response.status().as_str(),
        started.elapsed(),
    );
    response
}
