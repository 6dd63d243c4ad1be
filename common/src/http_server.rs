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
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{sync::Semaphore, time::Instant};

use crate::http_error::ApiError;

mod connection;
pub use connection::{ConnectionControl, Streaming, serve};

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

    fn retry_after_header() -> utoipa::openapi::header::Header {
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
            .description(Some("Seconds to wait before retrying"))
            .build()
    }

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
}

#[cfg(test)]
mod tests;
