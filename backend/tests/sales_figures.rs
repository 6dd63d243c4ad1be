//! The sales figures by product, by customer and over time, against known orders: exact
//! under redelivered and repeated events, compensated orders counting nowhere in sales,
//! and a rebuild from the read model giving the same figures.

mod support;

use axum::http::StatusCode;
use common::{
    domain::{OrderId, OrderStatus, OrderTerms, Product},
    messages::{Event, OrderUpdated},
    time::now_ms,
};
use serde_json::{Value, json};
use support::{TestApp, assert_error, order_updated, spawn_app, terms};

fn bought(user: &str, product: &str, price: i64, amount: i64) -> OrderTerms {
    terms(user, price, amount).of(Product::parse(product).unwrap())
}

/// The final update of a new order, finished at `at_ms`.
fn finished(t: &OrderTerms, status: OrderStatus, at_ms: i64) -> OrderUpdated {
    let mut u = order_updated(OrderId::new(), t, status, "done", true, 9);
    u.updated_at_ms = at_ms;
    u
}

async fn get(app: &TestApp, path: &str) -> Value {
    let r = app.get(path).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    r.body
}

/// Every figure the API serves, at `now` (the time series ends with the current minute).
async fn figures(app: &TestApp) -> Value {
    json!({
        "summary": get(app, "/api/analytics/summary").await,
        "sales": get(app, "/api/analytics/sales").await,
        "by_product": get(app, "/api/analytics/sales-by-product").await,
        "top": get(app, "/api/analytics/top-customers?limit=100").await,
        "series": get(app, "/api/analytics/timeseries?bucket_s=60&window_s=600").await,
    })
}

/// A shop's morning: successes of two products, a refusal, a compensated timeout, an order
/// still running, and deliveries repeated the ways a broker repeats them.
async fn a_morning(app: &TestApp, minute_ago: i64, now: i64) {
    let ann_late = finished(
        &bought("ann", "late_token", 10, 2),
        OrderStatus::Success,
        minute_ago,
    );
    let ann_early = finished(
        &bought("ann", "early_token", 5, 4),
        OrderStatus::Success,
        now,
    );
    let bob_late = finished(
        &bought("bob", "late_token", 20, 2),
        OrderStatus::Success,
        now,
    );
    let cid_refused = finished(
        &bought("cid", "late_token", 900, 1),
        OrderStatus::InsufficientFund,
        now,
    );
    let dan_timeout = finished(
        &bought("dan", "early_token", 5, 1),
        OrderStatus::Timeout,
        minute_ago,
    );
    let mut eve_running = order_updated(
        OrderId::new(),
        &bought("eve", "late_token", 1, 1),
        OrderStatus::Processing,
        "compensating",
        true,
        5,
    );
    eve_running.updated_at_ms = now;
    for u in [
        &ann_late,
        &ann_early,
        &bob_late,
        &cid_refused,
        &dan_timeout,
        &eve_running,
    ] {
        app.project(Event::OrderUpdated(u.clone())).await;
    }
    // The same delivery again (the inbox drops it), and the same final update republished
    // under a new message id (counted once by order id).
    let id = uuid::Uuid::now_v7().to_string();
    app.project_as(&id, Event::OrderUpdated(bob_late.clone()))
        .await;
    app.project_as(&id, Event::OrderUpdated(bob_late.clone()))
        .await;
    app.project(Event::OrderUpdated(ann_late.clone())).await;
}

#[tokio::test]
async fn figures_count_each_success_once_by_product_customer_and_minute() {
    let app = spawn_app().await;
    let now = now_ms();
    let minute_ago = now - 60_000;
    a_morning(&app, minute_ago, now).await;
    let f = figures(&app).await;
    assert_eq!(
        f["summary"],
        json!({"orders": 5, "orders_by_status": {"SUCCESS": 3, "INSUFFICIENT_FUND": 1,
               "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 1, "UNKNOWN": 0},
               "tokens_sold": 8, "revenue": 80, "customers": 2})
    );
    assert_eq!(
        f["sales"],
        json!({"orders_by_status": {"SUCCESS": 3, "INSUFFICIENT_FUND": 1,
               "INSUFFICIENT_INVENTORY": 0, "TIMEOUT": 1, "UNKNOWN": 0},
               "tokens_sold": 8, "revenue": 80})
    );
    // The catalog (the default: late_token only) lists what sold and what did not; early
    // tokens sold although the catalog no longer has them.
    assert_eq!(
        f["by_product"],
        json!([{"product": "late_token", "orders": 2, "tokens": 4, "revenue": 60},
               {"product": "early_token", "orders": 1, "tokens": 4, "revenue": 20}])
    );
    // ann and bob spent 40 each: ties by username.
    assert_eq!(
        f["top"],
        json!([{"username": "ann", "orders": 2, "tokens": 6, "spent": 40},
               {"username": "bob", "orders": 1, "tokens": 2, "spent": 40}])
    );
    let points = f["series"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 10);
    let last = &points[9];
    let before = &points[8];
    assert_eq!(last["start_ms"], now - now % 60_000);
    assert_eq!(
        (last["tokens"].clone(), last["revenue"].clone()),
        (json!(6), json!(60))
    );
    assert_eq!(last["orders_by_status"]["SUCCESS"], 2);
    assert_eq!(last["orders_by_status"]["INSUFFICIENT_FUND"], 1);
    assert_eq!(
        (before["tokens"].clone(), before["revenue"].clone()),
        (json!(2), json!(20))
    );
    assert_eq!(before["orders_by_status"]["TIMEOUT"], 1);
    assert!(
        points[..8]
            .iter()
            .all(|p| p["tokens"] == 0 && p["orders_by_status"]["SUCCESS"] == 0)
    );
}

#[tokio::test]
async fn a_rebuild_from_the_read_model_gives_the_same_figures() {
    rebuild_gives_the_same_figures(spawn_app().await).await;
}

/// PostgreSQL's rebuild locks the counted orders against the consumer; SQLite's
/// transaction does that by itself.
#[tokio::test]
async fn a_rebuild_on_postgres_gives_the_same_figures() {
    rebuild_gives_the_same_figures(support::spawn_pg_app().await).await;
}

/// The tables of the sums (beside `analytics_orders`, which orders were counted).
const SUMS: [&str; 4] = [
    "sales",
    "sales_by_product",
    "sales_by_customer",
    "sales_by_minute",
];

async fn wipe(app: &TestApp, tables: &[&str]) {
    for table in tables {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(app.db.pool())
            .await
            .unwrap();
    }
}

async fn rebuild_gives_the_same_figures(app: TestApp) {
    let now = now_ms();
    a_morning(&app, now - 60_000, now).await;
    let counted = figures(&app).await;

    assert_eq!(backend::analytics::rebuild(&app.db).await.unwrap(), 5);
    assert_eq!(figures(&app).await, counted);

    // Sums wiped while the orders counted are kept: behind, and caught up at start.
    wipe(&app, &SUMS).await;
    backend::analytics::catch_up(&app.db).await.unwrap();
    assert_eq!(figures(&app).await, counted);

    // A wiped store is behind the read model, and catches up at start.
    wipe(&app, &["analytics_orders"]).await;
    wipe(&app, &SUMS).await;
    assert_eq!(get(&app, "/api/analytics/summary").await["orders"], 0);
    backend::analytics::catch_up(&app.db).await.unwrap();
    assert_eq!(figures(&app).await, counted);

    // And counting resumes from there: a repeat counts nothing, a new order counts.
    a_morning(&app, now - 60_000, now).await;
    assert_eq!(get(&app, "/api/analytics/summary").await["orders"], 10);
}

/// Ties among top customers (and products) are in byte order on every database: on a
/// PostgreSQL whose collation is a locale's (`en_US`, as the official image initialises
/// it), `adam` would come before `Zoe`; by bytes `Z` (0x5A) is before `a` (0x61).
#[tokio::test]
async fn ties_are_in_byte_order_whatever_the_collation() {
    let app = support::spawn_pg_app().await;
    for column in [
        "sales_by_customer ALTER COLUMN username",
        "sales_by_product ALTER COLUMN product",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {column} TYPE TEXT COLLATE \"en-US-x-icu\""
        )))
        .execute(app.db.pool())
        .await
        .unwrap();
    }
    let now = now_ms();
    for user in ["adam", "Zoe", "bea"] {
        let sale = finished(&bought(user, "late_token", 5, 2), OrderStatus::Success, now);
        app.project(Event::OrderUpdated(sale)).await;
    }
    let top = get(&app, "/api/analytics/top-customers?limit=3").await;
    let names: Vec<&str> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Zoe", "adam", "bea"]);
}

/// Buckets longer than a minute sum the minutes they cover.
#[tokio::test]
async fn a_bucket_of_five_minutes_sums_its_minutes() {
    let app = spawn_app().await;
    let now = now_ms();
    let bucket_start = now - now % 300_000;
    // Two sales in this five-minute bucket (a minute apart when the bucket is old enough
    // to hold two minutes, else both in its first), one in the bucket before.
    let earlier_minute = if now - bucket_start >= 60_000 {
        now - 60_000
    } else {
        now
    };
    for (user, at) in [
        ("ann", now),
        ("bob", earlier_minute),
        ("cid", bucket_start - 1),
    ] {
        let sale = finished(&bought(user, "late_token", 5, 2), OrderStatus::Success, at);
        app.project(Event::OrderUpdated(sale)).await;
    }
    let series = get(&app, "/api/analytics/timeseries?bucket_s=300&window_s=600").await;
    assert_eq!(series["bucket_s"], 300);
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1]["start_ms"], bucket_start);
    assert_eq!(points[0]["start_ms"], bucket_start - 300_000);
    assert_eq!(
        (points[1]["tokens"].clone(), points[1]["revenue"].clone()),
        (json!(4), json!(20))
    );
    assert_eq!(points[1]["orders_by_status"]["SUCCESS"], 2);
    assert_eq!(points[0]["orders_by_status"]["SUCCESS"], 1);
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_them() {
    let app = spawn_app().await;
    for (path, field) in [
        ("/api/analytics/top-customers?limit=0", "limit"),
        ("/api/analytics/top-customers?limit=x", "limit"),
        ("/api/analytics/top-customers?limit=101", "limit"),
        ("/api/analytics/timeseries?bucket_s=61", "bucket_s"),
        ("/api/analytics/timeseries?bucket_s=0", "bucket_s"),
        ("/api/analytics/timeseries?bucket_s=abc", "bucket_s"),
        (
            "/api/analytics/timeseries?bucket_s=60&window_s=59",
            "window_s",
        ),
        (
            "/api/analytics/timeseries?bucket_s=60&window_s=86460",
            "window_s",
        ),
        // A misspelt parameter is named rather than ignored (the defaults would answer).
        ("/api/analytics/timeseries?bucket=300", "bucket"),
        ("/api/analytics/top-customers?limt=3", "limt"),
    ] {
        let r = app.get(path).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "bad_request", Some(field));
    }
    let series = get(&app, "/api/analytics/timeseries").await;
    assert_eq!(
        (series["bucket_s"].clone(), series["window_s"].clone()),
        (json!(60), json!(3600))
    );
    assert_eq!(series["points"].as_array().unwrap().len(), 60);
    // A window that is not whole buckets is rounded up to whole ones.
    let series = get(&app, "/api/analytics/timeseries?bucket_s=60&window_s=90").await;
    assert_eq!(series["window_s"], 120);
    assert_eq!(series["points"].as_array().unwrap().len(), 2);
    assert_eq!(get(&app, "/api/analytics/top-customers").await, json!([]));
}

/// The next `event: summary` of an SSE body, as JSON; panics after a bound.
async fn next_summary(body: &mut axum::body::BodyDataStream, buffer: &mut String) -> Value {
    use futures::StreamExt;
    let read = async {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(data) = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                    && frame.contains("event: summary")
                {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = body.next().await.expect("the stream goes on").unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("a summary event within 10 s")
}

#[tokio::test]
async fn the_summary_stream_sends_the_figures_then_each_change() {
    use tower::ServiceExt;
    let app = spawn_app().await;
    let request = axum::http::Request::get("/api/analytics/stream")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    assert_eq!(next_summary(&mut body, &mut buffer).await["orders"], 0);
    let sale = finished(
        &bought("ann", "late_token", 3, 2),
        OrderStatus::Success,
        now_ms(),
    );
    app.project(Event::OrderUpdated(sale)).await;
    let changed = next_summary(&mut body, &mut buffer).await;
    assert_eq!(
        (
            changed["orders"].clone(),
            changed["revenue"].clone(),
            changed["customers"].clone()
        ),
        (json!(1), json!(6), json!(1))
    );
}
