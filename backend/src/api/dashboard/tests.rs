use super::*;
use axum::{body::Body, http::Request};
use tower::ServiceExt;

async fn get(app: Router, path: &str) -> (Response, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        Response::from_parts(parts, Body::empty()),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn header(response: &Response, name: header::HeaderName) -> &str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types_and_no_cache() {
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
        ("/dashboard/config.json", "application/json"),
    ] {
        let (response, body) = get(router(None), path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, header::CONTENT_TYPE), content_type);
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
        assert!(!body.is_empty(), "{path}");
    }
}

#[tokio::test]
async fn the_page_loads_its_own_script_and_style_only() {
    let (_, html) = get(router(None), "/").await;
    assert!(html.contains(r#"src="/dashboard/app.js""#));
    assert!(html.contains(r#"href="/dashboard/app.css""#));
    for outside in ["http://", "https://", "//cdn"] {
        assert!(!html.contains(outside), "the page names {outside}");
    }
}

#[tokio::test]
async fn the_config_carries_the_trace_ui_url_or_null() {
    let (_, body) = get(router(None), "/dashboard/config.json").await;
    assert_eq!(body, r#"{"trace_ui_url":null}"#);
    let url = "https://signoz.example/trace/{trace_id}";
    let (_, body) = get(router(Some(url.into())), "/dashboard/config.json").await;
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["trace_ui_url"], url);
}
