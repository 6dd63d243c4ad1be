//! The RabbitMQ runtime: one supervised connection per service, the topology, a confirming
//! publisher and the consume loop that turns handler outcomes into acks.
//!
//! Reconnection is ours rather than lapin's auto-recovery: on any connection error the
//! supervisor drops the connection, waits with backoff and jitter, reconnects, re-declares
//! the topology and hands the new connection to every consumer and publisher, which simply
//! start over on it. Unacknowledged deliveries return to their queue; the inbox makes their
//! redelivery harmless.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;

use crate::{backoff::Backoff, config::redact, shutdown::Shutdown};

mod batch;
mod consume;
mod incoming;
mod publish;
mod topology_check;
mod transient;
pub use batch::{BatchHandler, BatchOptions, consume_batches};
pub use consume::{Handler, HandlerError, MAX_TRANSIENT_ATTEMPTS, consume};
pub use incoming::{Incoming, header_i64};
pub use publish::{Publisher, Sent};
pub use topology_check::{
    TopologyConflict, TopologyConflicts, check_topology, declare_topology, queue_arguments,
    verify_topology_at_start,
};
pub use transient::{is_transient, sqlx_is_transient};

/// A supervised connection to RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    current: watch::Receiver<Option<Arc<Connection>>>,
    /// The service this handle belongs to: its publish and consume spans carry the
    /// service's own tracer (so its own `service.name`), also when services share the
    /// process's connection ([`Broker::for_service`]).
    service: Arc<str>,
    /// The metrics of the marketplace this broker serves (the consume loop records into it).
    metrics: Arc<crate::metrics::Metrics>,
    /// When the supervisor connected.
    connected: Connected,
}

/// When the supervisor connected, shared by every clone of its [`Broker`] (ms since the
/// epoch; 0: not yet).
#[derive(Clone, Default)]
struct Connected {
    first_ms: Arc<AtomicI64>,
    /// The last time it connected again after losing a connection. The first connection
    /// of a process is not a restoration.
    again_ms: Arc<AtomicI64>,
}

impl Broker {
    /// Starts the supervisor: connects (retrying forever with backoff), declares the
    /// topology, and reconnects whenever the connection fails, until `shutdown`.
    pub fn start(url: &str, service: &str, shutdown: Shutdown) -> Broker {
        let (tx, rx) = watch::channel(None);
        let url = url.to_string();
        let service_name: Arc<str> = service.into();
        let service = service.to_string();
        let metrics = crate::metrics::for_instance(&url);
        let connected = Connected::default();
        tokio::spawn(supervise(url, service, tx, connected.clone(), shutdown));
        Broker {
            current: rx,
            service: service_name,
            metrics,
            connected,
        }
    }

    /// The same connection, as `service` uses it: its spans carry `service`'s name. The
    /// services of a process share one connection, each with a handle of its own.
    pub fn for_service(mut self, service: &str) -> Broker {
        self.service = service.into();
        self
    }

    /// True when this process was connected and is not any more: an outage it lives
    /// through, as opposed to a broker not reached yet since the process started.
    pub fn is_in_outage(&self) -> bool {
        self.connected.first_ms.load(Ordering::Relaxed) > 0 && !self.is_connected()
    }

    /// When the connection came back after the last outage this process saw, if it saw
    /// one: the manager gives a step in flight its whole wait again from then.
    pub fn restored_at_ms(&self) -> Option<i64> {
        Some(self.connected.again_ms.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }

    /// The metrics of the marketplace instance this broker belongs to.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The service this connection belongs to.
    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn is_connected(&self) -> bool {
        self.current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.status().connected())
    }

    /// The live connection, waiting for one; None once shutting down.
    pub async fn connection(&self, shutdown: &Shutdown) -> Option<Arc<Connection>> {
        let mut rx = self.current.clone();
        loop {
            if let Some(c) = rx.borrow_and_update().as_ref()
                && c.status().connected()
            {
                return Some(c.clone());
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                changed = rx.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// The live connection if there is one right now.
    pub fn try_connection(&self) -> Option<Arc<Connection>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }
}

const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(1);

async fn supervise(
    url: String,
    service: String,
    tx: watch::Sender<Option<Arc<Connection>>>,
    connected: Connected,
    shutdown: Shutdown,
) {
    // Capped at 1 s: while the broker is back and one service is not, the others' commands
    // wait in its queue against their deadlines, so every second of catching up costs
    // orders (TIMEOUT). A connection attempt a second, with jitter, costs the broker nothing.
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CAP);
    let mut lost_one = false;
    while !shutdown.is_cancelled() {
        match connect(&url, &service).await {
            Ok(conn) => {
                backoff.reset();
                let at = if lost_one {
                    &connected.again_ms
                } else {
                    &connected.first_ms
                };
                at.store(crate::time::now_ms(), Ordering::Relaxed);
                let conn = Arc::new(conn);
                tracing::info!(service, url = %redact(&url), "connected to RabbitMQ");
                tx.send_replace(Some(conn.clone()));
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            // Closed by the service once its consumers and relay drained.
                            let _ = tx.send(Some(conn.clone()));
                            return;
                        }
                        _ = tick.tick() => if !conn.status().connected() { break },
                    }
                }
                tracing::warn!(service, "lost the RabbitMQ connection; reconnecting");
                lost_one = true;
                tx.send_replace(None);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if let Some(conflicts) = e.downcast_ref::<TopologyConflicts>() {
                    tracing::error!(service, ?delay, "{conflicts}");
                } else {
                    tracing::warn!(service, error = %format!("{e:#}"), ?delay, "RabbitMQ not reachable; retrying");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect(url: &str, service: &str) -> anyhow::Result<Connection> {
    let conn = open_connection(url, service, Duration::from_secs(10)).await?;
    if let Err(e) = declare_topology(&conn).await {
        close(&conn, "topology").await;
        return Err(e);
    }
    Ok(conn)
}

/// The largest frame asked of the broker, unless `AMQP_URL` says (`?frame_max=`). The
/// client keeps 32 frames of buffer each way per connection, touched at once: at RabbitMQ's
/// 128 KiB that is 8 MiB per connection, 56 MiB for the seven services of `all` doing
/// nothing. At 16 KiB it is 1 MiB; a larger message simply takes several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// A connection named `name` (as RabbitMQ lists it), or an error after `wait`. An
/// `amqps://` URL is TLS, trusting the system's roots and the URL's `cacertfile`.
pub async fn open_connection(url: &str, name: &str, wait: Duration) -> anyhow::Result<Connection> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("AMQP_URL {}: {e}", redact(url)))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    // The parser takes the host for a domain name, or else "localhost": an IPv6 address
    // ([::1]) became "localhost".
    if let Some(ip) = ip_host(url) {
        uri.authority.host = ip;
    }
    let tls = crate::tls::amqp_tls_config(url)?;
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let connected = tokio::time::timeout(
        wait,
        Connection::connect_uri_with_config(uri, props, tls, async_rs::Runtime::tokio_current()),
    )
    .await
    .context("connecting timed out")?;
    connected.map_err(|e| match url.starts_with("amqps://") {
        true => crate::tls::explain_certificate_error(
            e.into(),
            "the broker",
            crate::tls::query_param(url, crate::tls::AMQP_CA_PARAM),
        ),
        false => e.into(),
    })
}

/// The host of `url` when it is an IPv6 address (an IPv4 one is taken as a name, which
/// serves as well: TLS checks it as an address either way).
fn ip_host(url: &str) -> Option<String> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(ip.to_string()),
        url::Host::Domain(_) => None,
    }
}

/// The longest a channel's setup (open, qos, consume, confirm mode) may take. A request
/// made while the broker drops the connection may never be answered, and a consumer or a
/// publisher must not wait on a dead connection for good: past this, it starts over.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a consumer checks that its connection is still up.
const CONNECTION_CHECK: Duration = Duration::from_millis(250);

/// Resolves once `conn` is no longer connected: what the supervisor sees before it
/// reconnects. A consumer selects on it beside its deliveries, so that it moves to the next
/// connection even if its stream on the dead one never ends.
pub(crate) async fn lost(conn: &Connection) {
    while conn.status().connected() {
        tokio::time::sleep(CONNECTION_CHECK).await;
    }
}

/// Closes `conn`, waiting at most 2 s for the broker's answer.
pub async fn close(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, reason.into())).await;
}
