//! The HTTP server every target listens with: hyper's HTTP/1.1 connections under an accept
//! loop of our own, because `axum::serve` bounds nothing. A client that connects and then
//! sends half a request head, nothing, or half a body used to hold its connection (a task,
//! buffers, a file descriptor) forever, and any number of them could do so at once.
//!
//! What each limit defends against (all configurable, see [`Limits`]):
//!
//! - **Header timeout** (`HTTP_HEADER_TIMEOUT_MS`): slowloris. A connection must deliver a
//!   complete request head within it, counted from its accept (the first request) or from
//!   the first byte of the next request (keep-alive); otherwise it is closed without an
//!   answer. A connection that sends nothing at all is closed after it too.
//! - **Body timeout** (`HTTP_BODY_TIMEOUT_MS`): slow bodies ("slow POST"). A body not
//!   received whole within it, counted from its head, fails the read: the answer is
//!   `408 request_timeout` with `Connection: close`, and the connection is closed.
//! - **Idle timeout** (`HTTP_IDLE_TIMEOUT_MS`): kept-alive connections nobody uses. One
//!   with no request for that long after its last answer is closed.
//! - **Connection bound** (`HTTP_MAX_CONNECTIONS`): a flood of connections. Past it the
//!   server stops accepting: new connections wait in the listen socket's accept backlog
//!   (the kernel's, bounded by the listen backlog and `somaxconn`) and are taken as soon as
//!   one closes; once the backlog is full the kernel drops further connection attempts and
//!   clients retry their SYN. They are not accepted and closed at once: that would cost an
//!   accept and a close per attempt under a flood, answer nothing useful (no HTTP response
//!   can be sent without reading a request), and turn a short burst into errors, whereas
//!   waiting turns it into latency. The timeouts above guarantee that slots free up.
//! - **Requests in flight** (`HTTP_MAX_REQUESTS_IN_FLIGHT`): a burst of work that would be
//!   queued without bound. Past it a request is answered at once with `503 overloaded` and
//!   `Retry-After: 1`, before its body is read. `/healthz`, `/readyz` and `/metrics`
//!   ([`EXEMPT_PATHS`]) are exempt: a liveness probe failing under load would get a busy
//!   pod restarted (the worst answer to overload), and the metrics are how an operator sees
//!   the overload. They are cheap, and still bounded by the connection bound.
//!
//! A request head is also bounded in size ([`MAX_HEAD_BYTES`]; larger is answered
//! `431` by hyper, with no body, and the connection closed), so that the memory slow heads
//! can hold is at most the connection bound times that size.
//!
//! A streaming answer (Server-Sent Events) outlives its request: the handler takes a
//! [`ConnectionControl`] (a request extension) to keep its connection out of the idle
//! timeout while it streams, to end the stream when the server drains, and to close the
//! connection when its client stops reading (hyper stops polling a body whose socket does
//! not drain, so the body alone could not notice).
//!
//! Only HTTP/1.1 is served (HTTP/2 with prior knowledge was reachable before only through
//! a feature another dependency enabled; no client of the marketplace uses it, and it
//! brings attacks of its own).
//!
//! Shutdown is graceful as with `axum::serve`: once the token is cancelled nothing more is
//! accepted, idle connections close, and requests in flight are answered before their
//! connections close; [`serve`] returns when every connection is closed.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{self, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http_body::{Body as HttpBody, Frame, SizeHint};
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

use crate::http_error::ApiError;

/// The bounds of one HTTP listener (see the module documentation for what each defends
/// against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A complete request head must arrive within this (`HTTP_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// A request body must arrive whole within this of its head (`HTTP_BODY_TIMEOUT_MS`).
    pub body_timeout: Duration,
    /// A kept-alive connection without a request for this long is closed
    /// (`HTTP_IDLE_TIMEOUT_MS`).
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the accept backlog (`HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Requests handled at once (but [`EXEMPT_PATHS`]); more are answered 503
    /// (`HTTP_MAX_REQUESTS_IN_FLIGHT`).
    pub max_requests_in_flight: usize,
}

/// The largest request head (request line and headers) accepted, in bytes: more is `431`.
/// Browsers and proxies keep theirs to a few KiB; hyper's default would be about 400 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Paths the bound on requests in flight does not apply to: the probes and the metrics.
pub const EXEMPT_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// `router` with the per-request limits: the bound on requests in flight (outermost, so a
/// refused request costs nothing else) and the body timeout. Add it before
/// [`crate::metrics::track_http`], so that the refusals are counted by status like any
/// answer.
pub fn limit_requests(router: Router, limits: &Limits) -> Router {
    let in_flight = Arc::new(InFlight {
        permits: Semaphore::new(limits.max_requests_in_flight),
        max: limits.max_requests_in_flight,
    });
    router
        .layer(middleware::from_fn_with_state(
            limits.body_timeout,
            body_deadline,
        ))
        .layer(middleware::from_fn_with_state(in_flight, bound_in_flight))
}

struct InFlight {
    permits: Semaphore,
    max: usize,
}

async fn bound_in_flight(State(bound): State<Arc<InFlight>>, req: Request, next: Next) -> Response {
    if EXEMPT_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    // Held until the handler has its answer; refused at once rather than queued, so that
    // waiting requests cannot pile up (a client with Retry-After does the waiting).
    let Ok(_permit) = bound.permits.try_acquire() else {
        return ApiError::Overloaded {
            detail: format!(
                "{} requests are in flight, the most this server handles at once \
                 (HTTP_MAX_REQUESTS_IN_FLIGHT={}); nothing was done",
                bound.max, bound.max
            ),
            retry_after_s: 1,
        }
        .into_response();
    };
    next.run(req).await
}

/// Gives the request's body a deadline; if the handler's read of it failed on that
/// deadline, the answer is 408 (whatever the handler made of the failed read).
async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Instant::now() + limit,
            sleep: None,
            expired: expired.clone(),
        })
    });
    let response = next.run(req).await;
    if expired.load(Ordering::Acquire) {
        return ApiError::RequestTimeout(format!(
            "the request body was not received within {} ms (HTTP_BODY_TIMEOUT_MS)",
            limit.as_millis()
        ))
        .into_response();
    }
    response
}

/// The error a body yields when its deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimedOut;

/// A request body that fails with [`BodyTimedOut`] once `deadline` passes before its end.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    /// Made on the first read that has to wait: a body already buffered needs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.expired.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
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
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                expired = activity.expired(timeouts) => {
                    // Dropping the connection closes its socket.
                    tracing::debug!(%peer, timeout = expired.as_str(), "HTTP connection closed");
                }
                _ = closed_by_handler.cancelled() => {
                    tracing::debug!(%peer, "HTTP connection closed by its handler");
                }
            }
        });
    }
    // New connection attempts are refused from here on.
    drop(listener);
    graceful.shutdown().await;
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
                        _ = tokio::time::sleep_until(at) => {
                            if let Some((at, expired)) = self.current().deadline(t)
                                && at <= Instant::now()
                            {
                                return expired;
                            }
                        }
                        _ = changed => {}
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
        self.draining.cancelled().await
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

/// Adds what [`limit_requests`] answers to every operation of an OpenAPI document but the
/// exempt paths: `503 overloaded` (appended to a 503 the operation already documents) and
/// its `Retry-After`. The 408 of a late body is documented by the operations that take one.
pub fn document_limits(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        RefOr, ResponseBuilder,
        content::ContentBuilder,
        header::HeaderBuilder,
        schema::{ObjectBuilder, Ref, Type},
    };
    const OVERLOADED: &str = "more requests are in flight than this server handles at once \
(`HTTP_MAX_REQUESTS_IN_FLIGHT`): `overloaded`, with `Retry-After: 1`; nothing was done";
    for (path, item) in doc.paths.paths.iter_mut() {
        if EXEMPT_PATHS.contains(&path.as_str()) {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            let code = StatusCode::SERVICE_UNAVAILABLE.as_str().to_string();
            match responses.get_mut(&code) {
                Some(RefOr::T(response)) => {
                    if !response.description.contains("HTTP_MAX_REQUESTS_IN_FLIGHT") {
                        response.description = format!("{}; or {OVERLOADED}", response.description);
                    }
                    response
                        .headers
                        .entry("retry-after".to_string())
                        .or_insert_with(|| retry_after_header().into());
                }
                Some(RefOr::Ref(_)) => {}
                None => {
                    let response = ResponseBuilder::new()
                        .description(format!("The server is overloaded: {OVERLOADED}"))
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ApiError")))
                                .build(),
                        )
                        .header("retry-after", retry_after_header())
                        .build();
                    responses.insert(code, RefOr::T(response));
                }
            }
        }
    }

    fn retry_after_header() -> utoipa::openapi::header::Header {
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
            .description(Some("Seconds to wait before retrying"))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits `Config` documents as defaults.
    fn documented_limits() -> Limits {
        crate::config::Config::from_lookup(|_| None)
            .expect("the defaults are valid")
            .http
    }
    use axum::routing::{get, post};
    use std::convert::Infallible;

    const T: Timeouts = Timeouts {
        header: Duration::from_millis(100),
        idle: Duration::from_millis(1000),
    };

    #[test]
    fn a_fresh_connection_has_the_header_timeout_from_its_accept_even_once_bytes_arrive() {
        let accepted = Instant::now();
        let fresh = Phase::Waiting {
            since: accepted,
            first: true,
        };
        assert_eq!(
            fresh.deadline(T),
            Some((accepted + T.header, Expired::Header))
        );
        let later = accepted + Duration::from_millis(90);
        assert_eq!(
            fresh.bytes_read(later).deadline(T),
            Some((accepted + T.header, Expired::Header))
        );
    }

    #[test]
    fn a_request_under_way_has_no_connection_deadline_and_its_answer_starts_the_idle_one() {
        let start = Instant::now();
        let busy = Phase::Waiting {
            since: start,
            first: true,
        }
        .bytes_read(start)
        .request_started();
        assert_eq!(busy.deadline(T), None);
        let answered_at = start + Duration::from_secs(30);
        let idle = busy.request_answered(answered_at);
        assert_eq!(
            idle.deadline(T),
            Some((answered_at + T.idle, Expired::Idle))
        );
        // The next request's first byte switches to the header timeout, from that byte.
        let byte_at = answered_at + Duration::from_millis(500);
        assert_eq!(
            idle.bytes_read(byte_at).deadline(T),
            Some((byte_at + T.header, Expired::Header))
        );
        // Bytes read while busy (a body) change nothing.
        assert_eq!(busy.bytes_read(byte_at), busy);
    }

    #[test]
    fn overlapping_requests_are_counted() {
        let busy = Phase::Waiting {
            since: Instant::now(),
            first: true,
        }
        .request_started()
        .request_started();
        let one_left = busy.request_answered(Instant::now());
        assert_eq!(one_left, Phase::Busy { requests: 1 });
        assert!(matches!(
            one_left.request_answered(Instant::now()),
            Phase::Waiting { first: false, .. }
        ));
    }

    async fn status_of(router: &Router, method: &str, path: &str, body: Body) -> Response {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(body)
            .unwrap();
        router.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn past_the_bound_requests_get_503_and_the_probes_still_answer() {
        let release = Arc::new(Notify::new());
        let router = Router::new()
            .route(
                "/slow",
                get({
                    let release = release.clone();
                    move || async move {
                        release.notified().await;
                        "done"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast" }))
            .route("/healthz", get(|| async { "ok" }));
        let limits = Limits {
            max_requests_in_flight: 1,
            ..documented_limits()
        };
        let router = limit_requests(router, &limits);
        let slow = tokio::spawn({
            let router = router.clone();
            async move { status_of(&router, "GET", "/slow", Body::empty()).await }
        });
        // The slow request holds the one permit once it is waiting in its handler.
        let mut refused = None;
        for _ in 0..200 {
            let r = status_of(&router, "GET", "/fast", Body::empty()).await;
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                refused = Some(r);
                break;
            }
            tokio::task::yield_now().await;
        }
        let refused = refused.expect("a request past the bound is refused");
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = axum::body::to_bytes(refused.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "overloaded");
        assert_eq!(
            status_of(&router, "GET", "/healthz", Body::empty())
                .await
                .status(),
            StatusCode::OK
        );
        release.notify_one();
        assert_eq!(slow.await.unwrap().status(), StatusCode::OK);
        assert_eq!(
            status_of(&router, "GET", "/fast", Body::empty())
                .await
                .status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_408() {
        let router = Router::new().route(
            "/echo",
            post(|body: axum::body::Bytes| async move {
                // What a handler makes of the failed read does not matter.
                if body.is_empty() { "empty" } else { "read" }
            }),
        );
        let limits = Limits {
            body_timeout: Duration::from_millis(50),
            ..documented_limits()
        };
        let router = limit_requests(router, &limits);
        // A body whose client sends half of it, then nothing.
        let r = status_of(&router, "POST", "/echo", Body::new(HalfBody(true))).await;
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.headers()["connection"], "close");
        // A whole body is not affected.
        let r = status_of(&router, "POST", "/echo", Body::from("{}")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    /// One frame, then pending forever.
    struct HalfBody(bool);

    impl HttpBody for HalfBody {
        type Data = axum::body::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            if std::mem::take(&mut self.0) {
                Poll::Ready(Some(Ok(Frame::data("{\"half\":".into()))))
            } else {
                Poll::Pending
            }
        }
    }

    /// `path` asked of `addr` over a fresh connection, and everything that comes back until
    /// the server closes it (at most 5 s).
    async fn read_until_closed(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the connection is closed within 5 s")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_streaming_answer_outlives_the_idle_timeout_and_its_handler_may_close_it() {
        use axum::{Extension, body::Bytes};
        let ticks = |Extension(c): Extension<ConnectionControl>| async move {
            let busy = c.streaming();
            // Six lines 50 ms apart: the stream outlives the 100 ms idle timeout.
            Body::from_stream(futures::stream::unfold((0, busy), |(n, busy)| async move {
                if n == 6 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let line = Bytes::from(format!("tick {n}\n"));
                Some((Ok::<_, Infallible>(line), (n + 1, busy)))
            }))
        };
        let closed = |Extension(c): Extension<ConnectionControl>| async move {
            let _busy = c.streaming();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.close();
            });
            // A body that never ends: only the close ends the connection.
            Body::from_stream(futures::stream::pending::<Result<Bytes, Infallible>>())
        };
        let router = Router::new()
            .route("/ticks", get(ticks))
            .route("/closed", get(closed));
        let limits = Limits {
            idle_timeout: Duration::from_millis(100),
            ..documented_limits()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, limits, shutdown.clone()));
        let answer = read_until_closed(addr, "/ticks").await;
        assert!(answer.contains("tick 5"), "{answer}");
        let answer = read_until_closed(addr, "/closed").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        shutdown.cancel();
        server.await.unwrap();
    }

    #[test]
    fn the_document_says_every_limited_operation_may_be_overloaded() {
        use utoipa::openapi::{
            OpenApiBuilder, PathItem, PathsBuilder, ResponseBuilder, path::HttpMethod,
            path::OperationBuilder,
        };
        let op = |with_503: bool| {
            let mut b = OperationBuilder::new()
                .response("200", ResponseBuilder::new().description("ok").build());
            if with_503 {
                b = b.response(
                    "503",
                    ResponseBuilder::new()
                        .description("The database is unavailable")
                        .build(),
                );
            }
            b.build()
        };
        let mut doc = OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path("/api/a", PathItem::new(HttpMethod::Get, op(true)))
                    .path("/api/b", PathItem::new(HttpMethod::Post, op(false)))
                    .path("/healthz", PathItem::new(HttpMethod::Get, op(false))),
            )
            .build();
        document_limits(&mut doc);
        document_limits(&mut doc); // idempotent
        let json = serde_json::to_value(&doc).unwrap();
        let a = &json["paths"]["/api/a"]["get"]["responses"]["503"];
        let description = a["description"].as_str().unwrap();
        assert!(description.starts_with("The database is unavailable; or more requests"));
        assert_eq!(
            description.matches("HTTP_MAX_REQUESTS_IN_FLIGHT").count(),
            1
        );
        assert!(a["headers"]["retry-after"].is_object());
        let b = &json["paths"]["/api/b"]["post"]["responses"]["503"];
        assert_eq!(
            b["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ApiError"
        );
        assert!(json["paths"]["/healthz"]["get"]["responses"]["503"].is_null());
    }
}
