//! The dashboard at `/`: one page of plain HTML, JavaScript and CSS, embedded in the binary
//! so that it works offline and loads nothing from anywhere else. The page reads the JSON
//! API like any other client; the page and its assets are not API and stay out of the
//! OpenAPI document.
//!
//! `GET /dashboard/config.json` tells the page what only the server knows:
//! `{"trace_ui_url": "https://signoz.example/trace/{trace_id}"}` (`TRACE_UI_URL`; null when
//! unset). The page replaces `{trace_id}` in it with an order's trace id, or appends the id
//! when the URL has no `{trace_id}`. It is JSON, so it is documented.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use utoipa::ToSchema;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");

/// Everything the page loads comes from this origin; no inline script or style, no frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// What the page needs to know from the server's configuration.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"trace_ui_url": "https://signoz.example/trace/{trace_id}"}))]
pub struct PageConfig {
    /// The trace UI's URL of one trace (`TRACE_UI_URL`), `{trace_id}` standing for the id;
    /// null when unset.
    trace_ui_url: Option<String>,
}

/// The dashboard's settings.
///
/// What the page at `/` reads from the server's configuration: where an order's trace id
/// links to.
#[utoipa::path(
    get,
    path = "/dashboard/config.json",
    tag = "dashboard",
    responses((status = 200, description = "The page's settings", body = PageConfig)),
)]
async fn page_config(config: String) -> Response {
    asset("application/json", config)
}

/// The page's routes. Generic over the state so that they can sit beside the API's (and be
/// traced and counted like them) without reading any of it.
pub fn router<S: Clone + Send + Sync + 'static>(trace_ui_url: Option<String>) -> Router<S> {
    let config = serde_json::to_string(&PageConfig { trace_ui_url })
        .expect("a struct of strings serializes");
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/dashboard/config.json",
            get(move || page_config(config.clone())),
        )
}

/// `body` with its type, revalidated on every load (the assets change with the binary, and
/// carry no version in their names).
fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut response = body.into().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

#[cfg(test)]
mod tests;
