//! The marketplace as a library: which services a target runs, and how they are composed
//! behind one HTTP listener. `main.rs` parses the command line; tests call [`serve`]
//! directly to run the whole system in-process.

use anyhow::Context;
use common::{
    bus::Broker,
    config::Config,
    health,
    service::Running,
    shutdown::Shutdown,
    targets::{Service, Target},
};
use tokio::net::TcpListener;

pub mod audit;
mod cli;
pub mod import;
pub mod loadgen;

/// Every service: each target but `all`, each with a store of its own.
pub fn services() -> impl Iterator<Item = &'static str> {
    Service::ALL.into_iter().map(Service::name)
}

/// A step worker's `start`.
type StartWorker =
    fn(Config, Broker, Shutdown) -> futures::future::BoxFuture<'static, anyhow::Result<Running>>;

/// The step workers, started first: they consume the others' messages, so nothing waits
/// in a queue needlessly.
const WORKERS: [(Service, StartWorker); 4] = [
    (Service::Order, |c, b, s| Box::pin(order::start(c, b, s))),
    (Service::Payment, |c, b, s| {
        Box::pin(payment::start(c, b, s))
    }),
    (Service::Inventory, |c, b, s| {
        Box::pin(inventory::start(c, b, s))
    }),
    (Service::Delivery, |c, b, s| {
        Box::pin(delivery::start(c, b, s))
    }),
];

/// Runs `target` (`all` or a service's name) until `shutdown`, serving HTTP on `listener`,
/// then drains within `config.shutdown_timeout`.
pub async fn serve(
    target: &str,
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let target = Target::parse(target).with_context(|| format!("unknown target {target:?}"))?;
    // A queue declared differently by someone else stops the start with a message that
    // says which and how; an unreachable broker does not (the services wait for it).
    common::bus::verify_topology_at_start(&config.amqp_url, std::time::Duration::from_secs(3))
        .await?;
    // One connection for every service of the process: one I/O thread, and the services'
    // small writes share its packets. It is closed once they have all drained.
    let broker = Broker::start(&config.amqp_url, &target.to_string(), shutdown.clone());
    let (services, router) = start_services(target, &config, &broker, &shutdown).await?;

    let metrics = common::metrics::for_instance(&config.amqp_url);
    let readiness: Vec<_> = services.iter().map(|s| s.readiness.clone()).collect();
    let mut router = router.merge(health::probes(readiness.clone()));
    // /metrics beside the API, or on a listener of its own (a scrape network).
    let metrics_http = match config.metrics_addr {
        None => {
            router = router.merge(health::metrics_router(readiness, metrics.clone()));
            None
        }
        Some(addr) => {
            Some(serve_metrics_apart(addr, readiness, &metrics, &config, &shutdown).await?)
        }
    };
    // The bound on requests in flight and the body timeout, inside the metrics layer so
    // that their refusals are counted like any answer.
    let router = common::http_server::limit_requests(router, &config.http);
    // Last: the layer counts the routes that exist when it is added.
    let router = common::metrics::track_http(router, metrics);

    tracing::info!(%target, addr = %listener.local_addr()?, "marketplace listening");
    if !config.admin_token.is_set()
        && (target.runs(Service::Backend) || target.runs(Service::DeadLetter))
    {
        tracing::info!(
            "ADMIN_TOKEN is not set: operator endpoints (/api/audit, /api/dead-letters, fault flags) answer loopback clients only"
        );
    }
    // Each request carries the client's address (operator endpoints without a token admit
    // loopback only; the purchase rate limit is per client). In-flight requests finish,
    // then the connections drain, once `shutdown` is cancelled.
    let http = tokio::spawn(common::http_server::serve(
        listener,
        router,
        config.http.clone(),
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    let drain = async {
        let _ = http.await;
        if let Some(metrics_http) = metrics_http {
            let _ = metrics_http.await;
        }
        futures::future::join_all(services.into_iter().map(|s| s.task)).await;
        if let Some(conn) = broker.try_connection() {
            common::bus::close(&conn, "shutting down").await;
        }
    };
    match tokio::time::timeout(config.shutdown_timeout, drain).await {
        Ok(()) => {
            tracing::info!("drained; bye");
            Ok(())
        }
        Err(_) => anyhow::bail!(
            "work still in flight after SHUTDOWN_TIMEOUT_MS; exiting anyway (unacked messages will be redelivered)"
        ),
    }
}

/// Starts the services of `target`, the workers first, and merges their routes.
async fn start_services(
    target: Target,
    config: &Config,
    broker: &Broker,
    shutdown: &Shutdown,
) -> anyhow::Result<(Vec<Running>, axum::Router)> {
    let mut services: Vec<Running> = Vec::new();
    let mut router = axum::Router::new();
    for (name, start) in WORKERS {
        if target.runs(name) {
            let running = start(config.clone(), broker.clone(), shutdown.clone())
                .await
                .with_context(|| format!("starting {name}"))?;
            services.push(running);
        }
    }
    if target.runs(Service::DeadLetter) {
        let (running, api) = dead_letter::start(config.clone(), broker.clone(), shutdown.clone())
            .await
            .context("starting dead-letter")?;
        services.push(running);
        router = router.merge(config.admin_token.guard(api));
    }
    if target.runs(Service::Manager) {
        services.push(
            manager::start(config.clone(), broker.clone(), shutdown.clone())
                .await
                .context("starting manager")?,
        );
    }
    if target.runs(Service::Backend) {
        // The audit reads every service's store; it is served beside the backend's API.
        let docs = vec![audit::openapi(), dead_letter::openapi()];
        router = router.merge(audit::router(config.clone()));
        let (running, api) = backend::start(config.clone(), broker.clone(), shutdown.clone(), docs)
            .await
            .context("starting backend")?;
        services.push(running);
        router = router.merge(api);
    }
    Ok((services, router))
}

/// `/metrics` on a listener of its own (`METRICS_ADDR`), with the API listener's timeouts
/// and connection bound.
async fn serve_metrics_apart(
    addr: std::net::SocketAddr,
    readiness: Vec<common::service::Readiness>,
    metrics: &std::sync::Arc<common::metrics::Metrics>,
    config: &Config,
    shutdown: &Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("METRICS_ADDR={addr}: cannot listen"))?;
    tracing::info!(addr = %addr, "metrics listening");
    let app = health::metrics_router(readiness, metrics.clone());
    Ok(tokio::spawn(common::http_server::serve(
        listener,
        app,
        config.http.clone(),
        shutdown.clone(),
    )))
}
