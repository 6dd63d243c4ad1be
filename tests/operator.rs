//! The operator surface: the audit, the dead letters and the fault flags need the operator's
//! bearer token when `ADMIN_TOKEN` is set, and answer loopback clients only when it is not.
//! Defends against anyone who reaches the port reading dead messages, replaying or
//! resolving them, running the audit in a loop, or injecting faults into others' orders.
//!
//! The server listens on every interface; the tests reach it on 127.0.0.1 (loopback) and on
//! this machine's own non-loopback address (a client from the network, as the server sees it).

mod support;

use std::net::{IpAddr, UdpSocket};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "op-token-0123456789abcdef";

/// This machine's address on its network (no packet is sent: a UDP "connect" only picks the
/// route's source address).
fn own_network_address() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("10.255.255.255:9").unwrap();
    let ip = socket.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this test needs a non-loopback address; got {ip}"
    );
    ip
}

async fn start(extra: &[(&str, String)]) -> (InProcess, String) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let m = InProcess::start_on(listener, extra).await;
    let remote = format!("http://{}:{port}", own_network_address());
    (m, remote)
}

async fn call(method: Method, url: String, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = client().request(method, url.clone());
    // The one operator route that takes a body.
    if url.ends_with("/restock") {
        req = req.json(&json!({"amount": 5}));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let www = r.headers().get("www-authenticate").cloned();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status == StatusCode::UNAUTHORIZED {
        assert!(www.is_some(), "a 401 names its scheme: {body}");
    }
    (status, body)
}

/// Every operator route, with the dead-letter id `id`.
fn operator_routes(id: &str) -> Vec<(Method, String)> {
    vec![
        (Method::GET, "/api/audit?grace_ms=0".into()),
        (Method::GET, "/api/dead-letters".into()),
        (Method::GET, format!("/api/dead-letters/{id}")),
        (Method::POST, format!("/api/dead-letters/{id}/replay")),
        (Method::DELETE, format!("/api/dead-letters/{id}")),
        (Method::POST, "/api/inventory/late_token/restock".into()),
    ]
}

async fn purchase_with_fault(base: &str, token: Option<&str>) -> StatusCode {
    let mut req = client()
        .post(format!("{base}/api/purchase/"))
        .json(&json!({"username": "mallory", "price": 1, "amount": 1, "kill_payment": true}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn without_a_token_operator_routes_answer_loopback_only() {
    let (m, remote) = start(&[]).await;
    let unknown = "01920d3c-5e2a-7cc1-9a3e-6f1b2c3d4e5f";
    for (method, path) in operator_routes(unknown) {
        let (status, body) =
            call(method.clone(), format!("{remote}{path}"), Some("anything")).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} from the network: {body}"
        );
        assert_eq!(body["error"], "forbidden");
        assert!(
            body["detail"].as_str().unwrap().contains("loopback"),
            "{body}"
        );
        let (status, body) = call(method.clone(), format!("{}{path}", m.base_url), None).await;
        assert!(
            status.is_success() || status == StatusCode::NOT_FOUND,
            "{method} {path} from loopback: {status} {body}"
        );
    }
    // The public API stays public; fault flags are an operator's tool.
    let (status, _) = call(Method::GET, format!("{remote}/api/inventory"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        purchase_with_fault(&remote, None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        purchase_with_fault(&m.base_url, None).await,
        StatusCode::ACCEPTED
    );
    m.stop().await.unwrap();
}

#[tokio::test]
async fn with_a_token_none_is_401_a_wrong_one_403_and_the_right_one_passes() {
    let (m, remote) = start(&[("ADMIN_TOKEN", TOKEN.to_string())]).await;
    // A real dead letter, so that get, replay and resolve reach their handlers.
    let order_id = purchase(
        &m.base_url,
        json!({"username": "u", "price": 1, "amount": 1}),
    )
    .await;
    final_order(&m.base_url, &order_id, std::time::Duration::from_secs(10)).await;
    let (_conn, channel) = confirming_channel(&m._vhost).await;
    publish_confirmed(
        &channel,
        common::topology::EXCHANGE,
        "command.payment",
        Some("poison-1"),
        None,
        b"not json",
    )
    .await;
    let id = {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, page) = call(
                Method::GET,
                format!("{}/api/dead-letters", m.base_url),
                Some(TOKEN),
            )
            .await;
            if let Some(id) = page["items"]
                .as_array()
                .and_then(|i| i.first())
                .map(|l| l["id"].clone())
            {
                break id.as_str().unwrap().to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no dead letter: {page}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    for base in [&m.base_url, &remote] {
        for (method, path) in operator_routes(&id) {
            let url = format!("{base}{path}");
            let (status, body) = call(method.clone(), url.clone(), None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {url}: {body}");
            assert_eq!(body["error"], "unauthorized");
            let (status, body) = call(
                method.clone(),
                url.clone(),
                Some("op-token-0123456789abcdeX"),
            )
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {url}: {body}");
            assert_eq!(body["error"], "forbidden");
        }
        assert_eq!(
            purchase_with_fault(base, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            purchase_with_fault(base, Some("wrong-token-0123456789")).await,
            StatusCode::FORBIDDEN
        );
    }
    // The right token, from the network: every route does its work.
    for (method, path) in operator_routes(&id) {
        let url = format!("{remote}{path}");
        let (status, body) = call(method.clone(), url.clone(), Some(TOKEN)).await;
        assert!(status.is_success(), "{method} {url}: {status} {body}");
    }
    assert_eq!(
        purchase_with_fault(&remote, Some(TOKEN)).await,
        StatusCode::ACCEPTED
    );
    m.stop().await.unwrap();
}

#[tokio::test]
async fn the_spec_declares_the_bearer_scheme_on_operator_routes() {
    let m = InProcess::start(&[]).await;
    let doc: Value = client()
        .get(format!("{}/api-docs/openapi.json", m.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scheme = &doc["components"]["securitySchemes"]["operator_token"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    for (path, method) in [
        ("/api/audit", "get"),
        ("/api/dead-letters", "get"),
        ("/api/dead-letters/{id}", "get"),
        ("/api/dead-letters/{id}", "delete"),
        ("/api/dead-letters/{id}/replay", "post"),
        ("/api/inventory/{product}/restock", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert_eq!(
            op["security"],
            json!([{"operator_token": []}]),
            "{method} {path}"
        );
        for status in ["401", "403"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} documents {status}"
            );
        }
    }
    let grace = &doc["paths"]["/api/audit"]["get"]["parameters"][0];
    assert_eq!(
        (grace["name"].as_str(), grace["in"].as_str()),
        (Some("grace_ms"), Some("query"))
    );
    assert_eq!(grace["required"], json!(false));
    m.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = free_port();
    let m = InProcess::start(&[("METRICS_ADDR", format!("127.0.0.1:{port}"))]).await;
    let on_api = client()
        .get(format!("{}/metrics", m.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND);
    let scraped = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped.text().await.unwrap().contains("marketplace_"));
    m.stop().await.unwrap();
}
