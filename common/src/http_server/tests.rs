use std::convert::Infallible;

use axum::{
    http,
    routing::{get, post},
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;

/// The limits `Config` documents as defaults.
fn documented_limits() -> Limits {
    crate::config::Config::from_lookup(|_| None)
        .expect("the defaults are valid")
        .http
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
            format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").as_bytes(),
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
