//! A server span around each HTTP request (HTTP semantic conventions), in which the
//! handler runs, so what it writes to its outbox joins the request's trace.

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use opentelemetry::{KeyValue, context::FutureExt, trace::SpanKind};

use super::spans::{Span, extract};

/// Middleware: `axum::middleware::from_fn_with_state("backend", trace_requests)`. Must be
/// a route layer (`Router::layer`), so that the matched route is known. An incoming
/// `traceparent` is honoured: a caller that traces its own work sees the order in it.
pub async fn trace_requests(
    State(service): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let parent = extract(
        request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    );
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.clone(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("url.path", request.uri().path().to_string()),
    ];
    if let Some(r) = route {
        attributes.push(KeyValue::new("http.route", r));
    }
    let span = Span::start(service, name, SpanKind::Server, &parent, attributes);
    let response = next.run(request).with_context(span.context().clone()).await;
    let status = response.status();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_error(status.to_string());
    }
    response
}
