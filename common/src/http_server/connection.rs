//! The listener: an accept loop under the connection bound, each connection watched for its
//! header, body and idle deadlines, and drained on shutdown (see the parent module's
//! documentation for what each limit defends against).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo, http};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Limits, MAX_HEAD_BYTES};

/// Serves `router` on `listener` within `limits` until `shutdown`, then drains: nothing more
/// is accepted, requests in flight are answered, and it returns once every connection has
/// closed. Each request carries the client's address as
/// [`ConnectInfo<std::net::SocketAddr>`].
///
/// The per-request limits are [`limit_requests`]'s, applied to the router by the caller.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The head's deadline is ours (`Activity`): hyper's would also close idle kept-alive
    // connections after the (short) header timeout.
    http.header_read_timeout(None);
    http.max_header_size(MAX_HEAD_BYTES);
    let timeouts = Timeouts {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
    };
    loop {
        // A slot first: past the bound, connections wait in the accept backlog.
        let slot = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let activity = Arc::new(Activity::new(Instant::now()));
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let control = ConnectionControl {
            activity: activity.clone(),
            close: CancellationToken::new(),
            draining: shutdown.clone(),
        };
        let closed_by_handler = control.close.clone();
        let service = {
            let (router, activity) = (router.clone(), activity.clone());
            hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(control.clone());
                let busy = activity.request_started();
                let answer = router.clone().oneshot(req.map(Body::new));
                async move {
                    let response = answer.await;
                    drop(busy);
                    response
                }
            })
        };
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            let _slot = slot;
            until_closed(connection, &activity, timeouts, closed_by_handler, peer).await;
        });
    }
    // New connection attempts are refused from here on.
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection until it ends, one of its deadlines passes, or its handler closes
/// it. Dropping the connection closes its socket.
async fn until_closed<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    activity: &Activity,
    timeouts: Timeouts,
    closed_by_handler: CancellationToken,
    peer: std::net::SocketAddr,
) {
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        expired = activity.expired(timeouts) => {
            tracing::debug!(%peer, timeout = expired.as_str(), "HTTP connection closed");
        }
        () = closed_by_handler.cancelled() => {
            tracing::debug!(%peer, "HTTP connection closed by its handler");
        }
    }
}

/// As `axum::serve`: a connection that failed before it was accepted is the client's
/// business; anything else (out of file descriptors) is worth a pause before retrying.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accepting an HTTP connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No complete request head in time (a fresh connection that sent nothing included).
    Header,
    /// Kept alive with no request in time.
    Idle,
}

impl Expired {
    fn as_str(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
        }
    }
}

/// Where a connection stands, which says which deadline applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request under way: since the accept (`first`) or since the last answer. (The head
    /// of a pipelined request that hyper read along with the previous one is then timed by
    /// the idle timeout, not the header timeout: still bounded.)
    Waiting { since: Instant, first: bool },
    /// Bytes of a request head have arrived, and no head is complete yet.
    Head { since: Instant },
    /// Requests are being handled (the body timeout and the handler bound them, not this).
    Busy { requests: usize },
}

impl Phase {
    fn deadline(self, t: Timeouts) -> Option<(Instant, Expired)> {
        match self {
            // A fresh connection that sends nothing is a slowloris as much as a slow one.
            Phase::Waiting { since, first: true } | Phase::Head { since } => {
                Some((since + t.header, Expired::Header))
            }
            Phase::Waiting {
                since,
                first: false,
            } => Some((since + t.idle, Expired::Idle)),
            Phase::Busy { .. } => None,
        }
    }

    fn bytes_read(self, now: Instant) -> Phase {
        match self {
            // The first request's head is timed from the accept: sending one byte just
            // before the deadline must not buy a whole new header timeout.
            Phase::Waiting { since, first: true } => Phase::Head { since },
            Phase::Waiting { first: false, .. } => Phase::Head { since: now },
            other => other,
        }
    }

    fn request_started(self) -> Phase {
        match self {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        }
    }

    fn request_answered(self, now: Instant) -> Phase {
        match self {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Waiting {
                since: now,
                first: false,
            },
        }
    }
}

/// One connection's [`Phase`], updated by its socket's reads and its requests, and watched
/// by [`Activity::expired`].
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Activity {
            phase: Mutex::new(Phase::Waiting {
                since: accepted,
                first: true,
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().expect("connection phase poisoned");
        let next = change(*phase);
        if next != *phase {
            *phase = next;
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn current(&self) -> Phase {
        *self.phase.lock().expect("connection phase poisoned")
    }

    fn request_started(self: &Arc<Self>) -> RequestUnderway {
        self.update(Phase::request_started);
        RequestUnderway(self.clone())
    }

    /// Resolves when the deadline of the connection's current phase passes.
    async fn expired(&self, t: Timeouts) -> Expired {
        loop {
            // A change made before this wait stored a permit: it is not lost.
            let changed = self.changed.notified();
            match self.current().deadline(t) {
                None => changed.await,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {
                            if let Some((at, expired)) = self.current().deadline(t)
                                && at <= Instant::now()
                            {
                                return expired;
                            }
                        }
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// A request being handled; dropped with its answer (or when its connection goes).
struct RequestUnderway(Arc<Activity>);

/// What a handler may do to its own connection; every request [`serve`] hands over carries
/// one as an extension (requests that did not come through [`serve`], as in tests that
/// call a router directly, carry none). For answers that stream for long (Server-Sent
/// Events); an ordinary answer needs none of it.
#[derive(Clone)]
pub struct ConnectionControl {
    activity: Arc<Activity>,
    close: CancellationToken,
    draining: CancellationToken,
}

/// Keeps a connection counted as busy (no header or idle deadline) while it lives.
pub struct Streaming(#[allow(dead_code)] RequestUnderway);

impl ConnectionControl {
    /// Counts the connection as busy until the returned guard is dropped: its answer's body
    /// is still being sent. Without it the idle timeout (`HTTP_IDLE_TIMEOUT_MS`), which
    /// starts when the handler returns its answer, would cut a stream that is still going.
    /// The guard belongs in the body's stream, so that it goes with the body.
    pub fn streaming(&self) -> Streaming {
        Streaming(self.activity.request_started())
    }

    /// Closes the connection now, whatever it is sending: for a client that stopped reading,
    /// whose body hyper no longer polls (its socket does not drain), so that the body
    /// cannot end by itself.
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Resolves once the server drains (shutdown): a stream should end then, since the
    /// server waits for every answer to finish.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }
}

impl Drop for RequestUnderway {
    fn drop(&mut self) {
        self.0.update(|p| p.request_answered(Instant::now()));
    }
}

/// A socket that reports the bytes it reads to its connection's [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.update(|p| p.bytes_read(Instant::now()));
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
