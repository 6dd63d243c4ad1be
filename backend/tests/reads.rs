//! The read API: orders by id and by page, users, inventory, docs, and JSON errors for
//! whatever axum itself would refuse.

mod support;

use axum::http::{Method, StatusCode};
use common::{
    domain::{OrderId, OrderStatus},
    messages::{CreditsChanged, Event, StockChanged},
};
use serde_json::json;
use support::{assert_error, order_updated, spawn_app, terms};

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_unknown_order_is_404_naming_it() {
    let app = spawn_app().await;
    let id = OrderId::new();
    let r = app.get(&format!("/api/orders/{id}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(r.body["detail"], format!("order {id} not found"));
}

#[tokio::test]
async fn a_malformed_order_id_is_400_naming_order_id() {
    let app = spawn_app().await;
    for bad in ["not-a-uuid", "123", "0190f0e0-0000-7000-8000-00000000000g"] {
        let r = app.get(&format!("/api/orders/{bad}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "bad_request", Some("order_id"));
    }
}

#[tokio::test]
async fn orders_are_listed_newest_first_and_every_one_is_paged_exactly_once() {
    let app = spawn_app().await;
    let mut placed = Vec::new();
    for _ in 0..7 {
        placed.push(app.buy("ivy", 1, 1).await.to_string());
    }
    app.buy("someone-else", 1, 1).await;
    placed.reverse();

    let all = app.get("/api/orders?username=ivy").await;
    assert_eq!(ids(&all.body), placed);
    assert_eq!(all.body["next_cursor"], json!(null));
    assert!(
        all.body["orders"][0].get("timeline").is_none(),
        "a summary carries no timeline"
    );

    for limit in [1, 2, 3, 7] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/orders?username=ivy&limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = app.get(&path).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.text);
            let got = ids(&page.body);
            assert!(
                !got.is_empty() && got.len() <= limit,
                "limit {limit}: {got:?}"
            );
            seen.extend(got);
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, placed, "limit {limit}");
    }
}

#[tokio::test]
async fn the_status_filter_keeps_only_that_status() {
    let app = spawn_app().await;
    let t = terms("jack", 1, 1);
    let ok = app.buy("jack", 1, 1).await;
    let failed = app.buy("jack", 1, 1).await;
    app.project(Event::OrderUpdated(order_updated(
        ok,
        &t,
        OrderStatus::Success,
        "done",
        true,
        4,
    )))
    .await;
    app.project(Event::OrderUpdated(order_updated(
        failed,
        &t,
        OrderStatus::Unknown,
        "done",
        true,
        4,
    )))
    .await;

    let success = app.get("/api/orders?status=SUCCESS").await;
    assert_eq!(ids(&success.body), vec![ok.to_string()]);
    let unknown = app.get("/api/orders?username=jack&status=UNKNOWN").await;
    assert_eq!(ids(&unknown.body), vec![failed.to_string()]);
    assert_eq!(
        ids(&app.get("/api/orders?status=TIMEOUT").await.body),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn idle_ms_keeps_the_orders_that_have_not_moved_for_that_long() {
    let app = spawn_app().await;
    let t = terms("kim", 1, 1);
    let stuck = app.buy("kim", 1, 1).await;
    let moving = app.buy("kim", 1, 1).await;
    for (id, age_ms) in [(stuck, 20_000), (moving, 0)] {
        let mut u = order_updated(id, &t, OrderStatus::Processing, "running", true, 3);
        u.updated_at_ms = common::time::now_ms() - age_ms;
        app.project(Event::OrderUpdated(u)).await;
    }
    let idle = app.get("/api/orders?status=PROCESSING&idle_ms=10000").await;
    assert_eq!(ids(&idle.body), vec![stuck.to_string()]);
    assert_eq!(
        ids(&app
            .get("/api/orders?status=PROCESSING&idle_ms=0")
            .await
            .body),
        vec![moving.to_string(), stuck.to_string()]
    );
}

#[tokio::test]
async fn bad_list_parameters_are_400_naming_them_as_on_every_list() {
    let app = spawn_app().await;
    for (query, field) in [
        ("status=NOT_A_STATUS", "status"),
        ("status=", "status"),
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=many", "limit"),
        ("limit=", "limit"),
        ("cursor=%25%25%25garbage", "cursor"),
        ("cursor=", "cursor"),
        ("idle_ms=-1", "idle_ms"),
        ("idle_ms=86400001", "idle_ms"),
        ("idle_ms=soon", "idle_ms"),
        ("stauts=SUCCESS", "stauts"),
    ] {
        let r = app.get(&format!("/api/orders?{query}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "bad_request", Some(field));
    }
    // A repeated parameter is ambiguous: refused too.
    let r = app.get("/api/orders?limit=1&limit=2").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request", None);
}

#[tokio::test]
async fn a_username_no_purchase_could_carry_lists_no_orders_and_is_no_user() {
    let app = spawn_app().await;
    let r = app.get("/api/orders?username=bob%00").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"orders": [], "next_cursor": null}));
    assert_error(
        &app.get("/api/users/bob%00").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let long = "a".repeat(65);
    assert_error(
        &app.get(&format!("/api/users/{long}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
}

#[tokio::test]
async fn a_user_is_404_until_payment_reports_them_then_has_their_newest_balance() {
    let app = spawn_app().await;
    assert_error(
        &app.get("/api/users/kate").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let credits = |credits, version| {
        Event::CreditsChanged(CreditsChanged {
            username: common::domain::Username::parse("kate").unwrap(),
            credits,
            version,
        })
    };
    app.project(credits(480, 2)).await;
    app.project(credits(500, 1)).await; // older, delivered late
    let r = app.get("/api/users/kate").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"username": "kate", "credits": 480}));
}

#[tokio::test]
async fn a_username_with_a_slash_is_read_from_its_encoded_path() {
    let app = spawn_app().await;
    app.project(Event::CreditsChanged(CreditsChanged {
        username: common::domain::Username::parse("a/b é").unwrap(),
        credits: 7,
        version: 1,
    }))
    .await;
    let r = app.get("/api/users/a%2Fb%20%C3%A9").await;
    assert_eq!(
        r.body,
        json!({"username": "a/b é", "credits": 7}),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn the_inventory_is_empty_until_inventory_reports_then_shows_the_newest_stock() {
    let app = spawn_app().await;
    assert_eq!(app.get("/api/inventory").await.body, json!([]));
    let stock = |stock, version| {
        Event::StockChanged(StockChanged {
            product: "late_token".into(),
            stock,
            version,
        })
    };
    app.project(stock(498, 3)).await;
    app.project(stock(500, 1)).await;
    let r = app.get("/api/inventory").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!([{"product": "late_token", "stock": 498, "price": null}])
    );
}

#[tokio::test]
async fn an_unknown_path_and_a_wrong_method_are_json_errors() {
    let app = spawn_app().await;
    assert_error(
        &app.get("/api/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let r = app.request(Method::GET, "/api/purchase/", None, "").await;
    assert_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    let r = app.request(Method::DELETE, "/api/orders", None, "").await;
    assert_error(
        &r,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
}

#[tokio::test]
async fn the_docs_serve_swagger_ui_and_an_openapi_document_of_every_path() {
    let app = spawn_app().await;
    let ui = app.get("/docs/").await;
    assert_eq!(ui.status, StatusCode::OK);
    assert!(
        ui.content_type.starts_with("text/html"),
        "{}",
        ui.content_type
    );
    assert!(ui.text.to_lowercase().contains("swagger"));
    assert!(app.get("/docs").await.status.is_redirection());

    let spec = app.get("/api-docs/openapi.json").await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec.body["paths"].as_object().unwrap();
    for path in [
        "/api/purchase/",
        "/api/all-transaction",
        "/api/orders",
        "/api/orders/{id}",
        "/api/users/{username}",
        "/api/inventory",
        "/api/analytics/sales",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    // Every operation documents its errors with the one error schema.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            if !path.starts_with("/api/") {
                continue;
            }
            assert!(
                responses.contains_key("503"),
                "{method} {path} does not document 503"
            );
            let schema = &responses["503"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/ApiError", "{method} {path}");
        }
    }
    // The bounds the server enforces are in the document.
    let request = &spec.body["components"]["schemas"]["PurchaseRequest"]["properties"];
    assert_eq!(
        request["username"]["pattern"],
        common::domain::username_pattern()
    );
    assert_eq!(request["username"]["maxLength"], 64);
    assert_eq!(request["price"]["minimum"], 0);
    assert_eq!(request["amount"]["minimum"], 1);
    let list = spec.body["paths"]["/api/orders"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let status = list.iter().find(|p| p["name"] == "status").unwrap();
    assert!(
        status["schema"].to_string().contains("OrderStatus"),
        "{status}"
    );
}
