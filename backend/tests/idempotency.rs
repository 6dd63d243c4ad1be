//! `Idempotency-Key` on POST /api/purchase/: a repeat answers the first order, a different
//! body is 409, a bad key is 400, and concurrent requests with one key place one order.
//!
//! Every case runs on SQLite and on PostgreSQL (`TEST_DATABASE_URL`, default the local
//! server's `postgres` database, in a schema of the test's own that is dropped afterwards),
//! where concurrent requests really do run in parallel transactions.

mod support;

use std::collections::HashSet;

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, Method, Request, StatusCode, header},
};
use common::{config::Config, db::Db, shutdown::Shutdown};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Row;
use tower::ServiceExt;

const PATH: &str = "/api/purchase/";
use support::DEFAULT_PG_URL;

/// A backend over a fresh store, without a socket and without RabbitMQ.
struct App {
    db: Db,
    router: Router,
    /// The PostgreSQL schema to drop at the end, or the SQLite app to keep alive.
    schema: Option<String>,
    _sqlite: Option<support::TestApp>,
}

/// An answer: status, the two headers that matter here, and the body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    replayed: Option<String>,
    location: Option<String>,
    text: String,
    body: Value,
}

impl Answer {
    /// As the support module's checks want it.
    fn reply(&self) -> support::Reply {
        support::Reply {
            status: self.status,
            content_type: self.content_type.clone(),
            body: self.body.clone(),
            text: self.text.clone(),
        }
    }
}

impl App {
    async fn sqlite() -> App {
        let app = support::spawn_app().await;
        App {
            db: app.db.clone(),
            router: app.router.clone(),
            schema: None,
            _sqlite: Some(app),
        }
    }

    async fn postgres() -> App {
        let url = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_PG_URL.to_string());
        let config = Config::from_lookup(|name| (name == "DATABASE_URL").then(|| url.clone()))
            .expect("test configuration");
        let schema = format!("backend_idem_{}", uuid::Uuid::new_v4().simple());
        let db = Db::open(&config, &schema, &backend::MIGRATIONS, &Shutdown::new())
            .await
            .expect("open the PostgreSQL test schema");
        App {
            router: backend::router(db.clone(), &config),
            db,
            schema: Some(schema),
            _sqlite: None,
        }
    }

    /// Drops the PostgreSQL schema (called at the end of a test that passed; a failed
    /// one leaves it for inspection).
    async fn finish(self) {
        if let Some(schema) = self.schema {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(self.db.pool())
            .await
            .expect("drop the test schema");
        }
    }

    /// POSTs `body` (sent as is) with each of `keys` as an `Idempotency-Key` header.
    async fn post_raw(&self, keys: &[HeaderValue], body: &str) -> Answer {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(PATH)
            .header(header::CONTENT_TYPE, "application/json")
            // As the server sees a client on this machine (fault flags admit loopback).
            .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
        for key in keys {
            req = req.header("Idempotency-Key", key.clone());
        }
        let response = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let (parts, response_body) = response.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (status, content_type, replayed, location) = (
            parts.status,
            header("content-type").unwrap_or_default(),
            header("idempotent-replayed"),
            header("location"),
        );
        let bytes = response_body.collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            replayed,
            location,
            text: String::from_utf8_lossy(&bytes).to_string(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn post(&self, key: &str, body: &Value) -> Answer {
        self.post_raw(&[HeaderValue::from_str(key).unwrap()], &body.to_string())
            .await
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM {table}"
        )))
        .fetch_one(self.db.pool())
        .await
        .unwrap()
        .get("n")
    }

    /// (orders, outbox messages, idempotency keys) stored.
    async fn written(&self) -> (i64, i64, i64) {
        (
            self.count("orders").await,
            self.count("outbox").await,
            self.count("idempotency_keys").await,
        )
    }
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn order_id(a: &Answer) -> String {
    a.body["order_id"]
        .as_str()
        .expect("an order id")
        .to_string()
}

fn assert_accepted_first(a: &Answer) {
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.replayed, None, "a first request is not a replay");
    assert_eq!(a.body["status"], "PROCESSING");
}

/// Runs each case once on SQLite and once on PostgreSQL, with real parallelism.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let app = super::App::sqlite().await;
                super::$case(&app).await;
                app.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let app = super::App::postgres().await;
                super::$case(&app).await;
                app.finish().await;
            }
        }
    )*};
}

on_both_stores!(
    a_repeat_with_the_same_key_and_body_answers_the_first_order_and_places_nothing,
    the_same_request_written_differently_is_a_repeat,
    the_same_key_with_a_different_body_is_409_and_places_nothing,
    an_invalid_key_is_400_naming_the_header_and_places_nothing,
    a_refused_request_does_not_use_up_its_key,
    different_keys_or_no_key_place_separate_orders,
    concurrent_requests_with_one_key_place_one_order,
    concurrent_requests_with_one_key_and_two_bodies_place_one_order_and_409_the_other,
);

async fn a_repeat_with_the_same_key_and_body_answers_the_first_order_and_places_nothing(app: &App) {
    let key = new_key();
    let body = json!({"username": "alice", "price": 7, "amount": 3, "kill_payment": true});
    let first = app.post(&key, &body).await;
    assert_accepted_first(&first);
    let id = order_id(&first);
    assert_eq!(
        first.location.as_deref(),
        Some(&*format!("/api/orders/{id}"))
    );
    assert_eq!(app.written().await, (1, 1, 1));

    for _ in 0..3 {
        let again = app.post(&key, &body).await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
        assert_eq!(again.replayed.as_deref(), Some("true"));
        assert_eq!(
            again.text, first.text,
            "a replay is the first answer, byte for byte"
        );
        assert_eq!(again.location, first.location);
    }
    assert_eq!(app.written().await, (1, 1, 1), "a repeat wrote something");
}

async fn the_same_request_written_differently_is_a_repeat(app: &App) {
    let key = new_key();
    let first = app
        .post_raw(
            &[HeaderValue::from_str(&key).unwrap()],
            r#"{"username":"bob","price":2,"amount":5}"#,
        )
        .await;
    assert_accepted_first(&first);
    let variants = [
        // Whitespace and key order.
        "{\n  \"amount\": 5,\n  \"price\": 2,\n  \"username\": \"bob\"\n}",
        // Flags given false, or null, are the flags left out.
        r#"{"username":"bob","price":2,"amount":5,"kill_create":false,"kill_payment":false,
            "timeout_payment":false,"kill_inventory":false,"timeout_inventory":false,
            "kill_deliver":false,"timeout_deliver":null}"#,
        // Unknown fields are ignored by the parser, so they are not part of the request.
        r#"{"username":"bob","price":2,"amount":5,"note":"retry"}"#,
    ];
    for raw in variants {
        let again = app
            .post_raw(&[HeaderValue::from_str(&key).unwrap()], raw)
            .await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{raw}: {}", again.text);
        assert_eq!(again.replayed.as_deref(), Some("true"), "{raw}");
        assert_eq!(order_id(&again), order_id(&first), "{raw}");
    }
    assert_eq!(app.written().await, (1, 1, 1));
}

async fn the_same_key_with_a_different_body_is_409_and_places_nothing(app: &App) {
    let key = new_key();
    let body = json!({"username": "carol", "price": 3, "amount": 2});
    assert_accepted_first(&app.post(&key, &body).await);
    let mut others = Vec::new();
    for (field, value) in [
        ("username", json!("dave")),
        ("price", json!(4)),
        ("amount", json!(1)),
        ("timeout_deliver", json!(true)),
    ] {
        let mut other = body.clone();
        other[field] = value;
        others.push(other);
    }
    for other in others {
        let r = app.post(&key, &other).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{other}: {}", r.text);
        assert_eq!(r.body["error"], "conflict", "{}", r.text);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.starts_with("Idempotency-Key: "), "{detail}");
        assert_eq!(r.replayed, None);
    }
    assert_eq!(app.written().await, (1, 1, 1), "a conflict wrote something");
    // The key still answers its own request.
    let again = app.post(&key, &body).await;
    assert_eq!(again.replayed.as_deref(), Some("true"), "{}", again.text);
}

async fn an_invalid_key_is_400_naming_the_header_and_places_nothing(app: &App) {
    let body = json!({"username": "erin", "price": 1, "amount": 1}).to_string();
    let bad: Vec<Vec<HeaderValue>> = vec![
        vec![HeaderValue::from_static("")],
        vec![HeaderValue::from_str(&"k".repeat(256)).unwrap()],
        vec![HeaderValue::from_static("two words")],
        vec![HeaderValue::from_static("tab\there")],
        vec![HeaderValue::from_bytes("clé".as_bytes()).unwrap()],
        vec![HeaderValue::from_bytes(b"\x80\xff").unwrap()],
        vec![HeaderValue::from_static("a"), HeaderValue::from_static("b")],
        // Twice the same key is still ambiguous about what the client meant.
        vec![HeaderValue::from_static("a"), HeaderValue::from_static("a")],
    ];
    for keys in bad {
        let r = app.post_raw(&keys, &body).await;
        support::assert_error(
            &r.reply(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("Idempotency-Key"),
        );
    }
    assert_eq!(app.written().await, (0, 0, 0));
    // The bounds themselves are fine: one character, 255 characters, every visible one.
    let visible: String = (b'!'..=b'~').map(char::from).collect();
    for key in ["x".to_string(), "k".repeat(255), visible] {
        let r = app
            .post_raw(&[HeaderValue::from_str(&key).unwrap()], &body)
            .await;
        assert_accepted_first(&r);
    }
    assert_eq!(app.written().await, (3, 3, 3));
}

async fn a_refused_request_does_not_use_up_its_key(app: &App) {
    let key = new_key();
    let r = app
        .post(&key, &json!({"username": "frank", "price": 1, "amount": 0}))
        .await;
    support::assert_error(
        &r.reply(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("amount"),
    );
    assert_eq!(app.written().await, (0, 0, 0));
    let fixed = app
        .post(&key, &json!({"username": "frank", "price": 1, "amount": 1}))
        .await;
    assert_accepted_first(&fixed);
    assert_eq!(app.written().await, (1, 1, 1));
}

async fn different_keys_or_no_key_place_separate_orders(app: &App) {
    let body = json!({"username": "gina", "price": 1, "amount": 1});
    let a = app.post(&new_key(), &body).await;
    let b = app.post(&new_key(), &body).await;
    assert_accepted_first(&a);
    assert_accepted_first(&b);
    assert_ne!(order_id(&a), order_id(&b));
    // Keys are case-sensitive: "K" is not "k".
    assert_accepted_first(&app.post("k", &body).await);
    assert_accepted_first(&app.post("K", &body).await);
    for _ in 0..2 {
        assert_accepted_first(&app.post_raw(&[], &body.to_string()).await);
    }
    assert_eq!(app.written().await, (6, 6, 4));
}

async fn concurrent_requests_with_one_key_place_one_order(app: &App) {
    const N: usize = 24;
    let key = HeaderValue::from_str(&new_key()).unwrap();
    let body = json!({"username": "hank", "price": 2, "amount": 2}).to_string();
    let answers: Vec<Answer> = race(app, (0..N).map(|_| (key.clone(), body.clone())).collect())
        .await
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    for a in &answers {
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    }
    let ids: HashSet<String> = answers.iter().map(order_id).collect();
    assert_eq!(ids.len(), 1, "one key, several orders: {ids:?}");
    let firsts = answers.iter().filter(|a| a.replayed.is_none()).count();
    assert_eq!(firsts, 1, "exactly one request placed the order");
    let texts: HashSet<&str> = answers.iter().map(|a| a.text.as_str()).collect();
    assert_eq!(texts.len(), 1, "every answer is the first one: {texts:?}");
    assert_eq!(app.written().await, (1, 1, 1));
}

async fn concurrent_requests_with_one_key_and_two_bodies_place_one_order_and_409_the_other(
    app: &App,
) {
    const N: usize = 12;
    let key = HeaderValue::from_str(&new_key()).unwrap();
    let one = json!({"username": "ivy", "price": 1, "amount": 1}).to_string();
    let two = json!({"username": "ivy", "price": 1, "amount": 2}).to_string();
    let requests = (0..2 * N)
        .map(|i| {
            (
                key.clone(),
                if i % 2 == 0 { one.clone() } else { two.clone() },
            )
        })
        .collect();
    let answers = race(app, requests).await;
    let (accepted, refused): (Vec<_>, Vec<_>) = answers
        .iter()
        .partition(|(_, a)| a.status == StatusCode::ACCEPTED);
    // Whichever body won, every request with it is 202 on one order, the rest 409.
    assert_eq!(accepted.len(), N, "{answers:?}");
    let won = &accepted[0].0;
    assert!(accepted.iter().all(|(b, _)| b == won));
    let ids: HashSet<String> = accepted.iter().map(|(_, a)| order_id(a)).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    for (b, a) in &refused {
        assert_ne!(b, won);
        assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
        assert_eq!(a.body["error"], "conflict");
    }
    assert_eq!(app.written().await, (1, 1, 1));
}

/// Sends every request at once, each from a task of its own; answers in request order
/// (with the body of each).
async fn race(app: &App, requests: Vec<(HeaderValue, String)>) -> Vec<(String, Answer)> {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(key, body)| {
            let app = App {
                db: app.db.clone(),
                router: app.router.clone(),
                schema: None,
                _sqlite: None,
            };
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let answer = app.post_raw(&[key], &body).await;
                (body, answer)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("a request task panicked"));
    }
    answers
}

#[tokio::test]
async fn the_openapi_document_describes_the_header_the_replay_and_the_409() {
    let spec = support::spawn_app()
        .await
        .get("/api-docs/openapi.json")
        .await
        .body;
    let op = &spec["paths"]["/api/purchase/"]["post"];
    let params = op["parameters"].as_array().expect("parameters");
    let key = params
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("the Idempotency-Key parameter");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], false);
    assert!(op["responses"]["409"].is_object(), "{op}");
    assert!(
        op["responses"]["202"]["headers"]["idempotent-replayed"].is_object(),
        "{op}"
    );
}
