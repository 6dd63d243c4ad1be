//! Test support: a marketplace of its own per test (own vhost, own data, own port), and the
//! scenarios every deployment shape must pass.

#![allow(dead_code)]

use std::{collections::HashMap, process::Command, time::Duration};

use common::{config::Config, shutdown::Shutdown};
use serde_json::{Value, json};

/// Every service as a target of its own, in the order the split tests start them: the
/// workers first, the backend last.
pub(crate) const SPLIT_TARGETS: [&str; 7] = [
    "order",
    "payment",
    "inventory",
    "delivery",
    "dead-letter",
    "manager",
    "backend",
];

/// A RabbitMQ vhost that exists for the life of the value.
pub(crate) struct Vhost {
    pub name: String,
}

impl Vhost {
    pub(crate) fn create() -> Vhost {
        Self::create_named(&format!("test-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Creates the vhost `name` (which must not exist) for the life of the value.
    pub(crate) fn create_named(name: &str) -> Vhost {
        let name = name.to_string();
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub(crate) fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// A plain AMQP connection to `vhost`, for tests that publish or consume on their own.
pub(crate) async fn amqp_connection(vhost: &Vhost) -> lapin::Connection {
    amqp_connection_to(&vhost.amqp_url()).await
}

/// A plain AMQP connection to `url`.
pub(crate) async fn amqp_connection_to(url: &str) -> lapin::Connection {
    lapin::Connection::connect_with_runtime(
        url,
        lapin::ConnectionProperties::default(),
        async_rs::Runtime::tokio_current(),
    )
    .await
    .expect("connects to RabbitMQ")
}

/// A connection to `vhost` and a channel on it with publisher confirms.
pub(crate) async fn confirming_channel(vhost: &Vhost) -> (lapin::Connection, lapin::Channel) {
    let conn = amqp_connection(vhost).await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, channel)
}

/// Publishes `body` persistently (with `message_id` and `correlation_id` when given) on a
/// channel with publisher confirms, and waits for the broker's confirm.
pub(crate) async fn publish_confirmed(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    message_id: Option<&str>,
    correlation_id: Option<&str>,
    body: &[u8],
) {
    let mut props = lapin::BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = message_id {
        props = props.with_message_id(id.into());
    }
    if let Some(c) = correlation_id {
        props = props.with_correlation_id(c.into());
    }
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Runs `rabbitmqctl` and panics with its error output if it fails.
pub(crate) fn rabbitmqctl_ok(args: &[&str]) {
    rabbitmqctl(args);
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL database that exists for the life of the value.
pub(crate) struct PgDatabase {
    pub name: String,
}

pub(crate) const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl PgDatabase {
    pub(crate) fn create() -> PgDatabase {
        Self::create_named(&format!("test_{}", uuid::Uuid::new_v4().simple()))
    }

    /// Creates the database `name` (which must not exist) for the life of the value.
    pub(crate) fn create_named(name: &str) -> PgDatabase {
        psql(&format!("CREATE DATABASE {name}"));
        PgDatabase {
            name: name.to_string(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                PG_ADMIN_URL,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([PG_ADMIN_URL, "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Environment for a test marketplace; `extra` overrides.
pub(crate) fn environment(
    vhost: &Vhost,
    data_dir: &std::path::Path,
    extra: &[(&str, String)],
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("AMQP_URL", vhost.amqp_url()),
        ("DATA_DIR", data_dir.display().to_string()),
        ("STEP_TIMEOUT_MS", "1000".into()),
        ("FAULT_INJECTION", "on".into()),
        ("SHUTDOWN_TIMEOUT_MS", "10000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.clone());
    }
    env
}

/// The whole marketplace (`all`) running inside the test process.
pub(crate) struct InProcess {
    pub base_url: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub _data: tempfile::TempDir,
    pub _vhost: Vhost,
}

impl InProcess {
    pub(crate) async fn start(extra: &[(&str, String)]) -> InProcess {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, extra).await
    }

    /// [`InProcess::start`] on `listener`; `base_url` is its port on 127.0.0.1.
    pub(crate) async fn start_on(
        listener: tokio::net::TcpListener,
        extra: &[(&str, String)],
    ) -> InProcess {
        Self::start_with(listener, Vhost::create(), extra).await
    }

    /// [`InProcess::start_on`] on `vhost` (whose URL `extra` may override, e.g. with TLS).
    pub(crate) async fn start_with(
        listener: tokio::net::TcpListener,
        vhost: Vhost,
        extra: &[(&str, String)],
    ) -> InProcess {
        common::telemetry::init("test");
        let data = tempfile::tempdir().unwrap();
        let env = environment(&vhost, data.path(), extra);
        let config =
            Config::from_lookup(|k| env.get(k).cloned()).expect("valid test configuration");
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(marketplace::serve(
            "all",
            config,
            listener,
            shutdown.clone(),
        ));
        let m = InProcess {
            base_url,
            shutdown,
            task,
            _data: data,
            _vhost: vhost,
        };
        wait_until_ready(&m.base_url).await;
        m
    }

    /// Shuts down as SIGTERM would and returns the drain's result.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.expect("marketplace task")
    }
}

/// An HTTP client for the marketplace under test (plain HTTP). It loads no root
/// certificates: with rustls and the system's roots (the TLS work), every client built
/// would parse the whole system store, and a test building one per request spent its
/// cores on that instead of on the marketplace.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .build()
        .unwrap()
}

/// Waits for `/readyz` and for the inventory read model to be populated.
pub(crate) async fn wait_until_ready(base_url: &str) {
    let c = client();
    for _ in 0..300 {
        let ready = c
            .get(format!("{base_url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            let inv: Value = match c.get(format!("{base_url}/api/inventory")).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if inv.as_array().is_some_and(|a| !a.is_empty()) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("marketplace at {base_url} never became ready");
}

pub(crate) async fn purchase(base_url: &str, body: Value) -> String {
    let r = client()
        .post(format!("{base_url}/api/purchase/"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "purchase {body}");
    let v: Value = r.json().await.unwrap();
    v["order_id"].as_str().expect("order_id").to_string()
}

/// `GET {base_url}{path}`, its body as JSON.
pub(crate) async fn get_json(base_url: &str, path: &str) -> Value {
    client()
        .get(format!("{base_url}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The order as `GET /api/orders/{id}` shows it now.
pub(crate) async fn get_order(base_url: &str, order_id: &str) -> Value {
    get_json(base_url, &format!("/api/orders/{order_id}")).await
}

/// Polls the order until its status is final; panics after `bound`.
pub(crate) async fn final_order(base_url: &str, order_id: &str, bound: Duration) -> Value {
    let c = client();
    let started = tokio::time::Instant::now();
    loop {
        let r = c
            .get(format!("{base_url}/api/orders/{order_id}"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            if v["status"] != "PROCESSING" && v["phase"] == "done" {
                return v;
            }
        }
        assert!(
            started.elapsed() < bound,
            "order {order_id} not final within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The user's credits, or None for a user the payment worker has not seen (yet).
pub(crate) async fn credits(base_url: &str, username: &str) -> Option<i64> {
    let r = client()
        .get(format!("{base_url}/api/users/{username}"))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    let v: Value = r.json().await.unwrap();
    Some(
        v["credits"]
            .as_i64()
            .unwrap_or_else(|| panic!("credits of {username}: {v}")),
    )
}

pub(crate) async fn stock(base_url: &str) -> i64 {
    let v = get_json(base_url, "/api/inventory").await;
    v[0]["stock"].as_i64().expect("stock")
}

/// One purchase and what must come of it.
pub(crate) struct Scenario {
    pub flag: Option<&'static str>,
    pub price: i64,
    pub amount: i64,
    pub status: &'static str,
    /// Compensations the timeline must show as done, newest first.
    pub compensations: &'static [&'static str],
}

pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        flag: None,
        price: 10,
        amount: 2,
        status: "SUCCESS",
        compensations: &[],
    },
    Scenario {
        flag: None,
        price: 300,
        amount: 2,
        status: "INSUFFICIENT_FUND",
        compensations: &[],
    },
    Scenario {
        flag: None,
        price: 0,
        amount: 100_000,
        status: "INSUFFICIENT_INVENTORY",
        compensations: &["payment.refund"],
    },
    Scenario {
        flag: Some("kill_create"),
        price: 1,
        amount: 1,
        status: "UNKNOWN",
        compensations: &[],
    },
    Scenario {
        flag: Some("kill_payment"),
        price: 1,
        amount: 1,
        status: "UNKNOWN",
        compensations: &["payment.refund"],
    },
    Scenario {
        flag: Some("kill_inventory"),
        price: 1,
        amount: 1,
        status: "UNKNOWN",
        compensations: &["inventory.release", "payment.refund"],
    },
    Scenario {
        flag: Some("kill_deliver"),
        price: 1,
        amount: 1,
        status: "UNKNOWN",
        compensations: &["delivery.cancel", "inventory.release", "payment.refund"],
    },
    Scenario {
        flag: Some("timeout_payment"),
        price: 1,
        amount: 1,
        status: "TIMEOUT",
        compensations: &["payment.refund"],
    },
    Scenario {
        flag: Some("timeout_inventory"),
        price: 1,
        amount: 1,
        status: "TIMEOUT",
        compensations: &["inventory.release", "payment.refund"],
    },
    Scenario {
        flag: Some("timeout_deliver"),
        price: 1,
        amount: 1,
        status: "TIMEOUT",
        compensations: &["delivery.cancel", "inventory.release", "payment.refund"],
    },
];

/// Runs every scenario concurrently, each with a user of its own, and checks statuses,
/// compensations, credits and the stock.
pub(crate) async fn run_scenarios(base_url: &str) {
    let stock_before = stock(base_url).await;
    let runs = SCENARIOS.iter().map(|s| async move {
        let user = format!(
            "{}-{}",
            s.flag.unwrap_or(s.status),
            uuid::Uuid::new_v4().simple()
        );
        let mut body = json!({"username": user, "price": s.price, "amount": s.amount});
        if let Some(flag) = s.flag {
            body[flag] = json!(true);
        }
        let id = purchase(base_url, body).await;
        let order = final_order(base_url, &id, Duration::from_secs(10)).await;
        assert_eq!(order["status"], s.status, "{:?}: {order:#}", s.flag);
        let done_compensations: Vec<&str> = order["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["event"] == "done" && s.compensations.contains(&e["step"].as_str().unwrap())
            })
            .map(|e| e["step"].as_str().unwrap())
            .collect();
        assert_eq!(
            done_compensations, s.compensations,
            "{:?}: {order:#}",
            s.flag
        );
        let charged = if s.status == "SUCCESS" {
            s.price * s.amount
        } else {
            0
        };
        let sold = if s.status == "SUCCESS" { s.amount } else { 0 };
        // A user whose charge never ran (kill_create, kill_payment) was never seen by
        // payment: unknown to the API, and so still at the initial 500 credits.
        if matches!(s.flag, Some("kill_create" | "kill_payment")) {
            let r = client()
                .get(format!("{base_url}/api/users/{user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{:?}: payment never saw {user}", s.flag);
        } else {
            wait_for(
                || async { credits(base_url, &user).await == Some(500 - charged) },
                &format!("credits of {user}"),
            )
            .await;
        }
        (s, id, sold)
    });
    let results = futures::future::join_all(runs).await;
    let sold: i64 = results.iter().map(|(_, _, sold)| sold).sum();
    wait_for(
        || async { stock(base_url).await == stock_before - sold },
        "stock",
    )
    .await;

    // The compatibility listing: oldest first, and without the order whose create failed.
    let all: Value = client()
        .get(format!("{base_url}/api/all-transaction"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    for (s, id, _) in &results {
        assert_eq!(
            listed.contains(&id.as_str()),
            s.flag != Some("kill_create"),
            "{:?} listing",
            s.flag
        );
    }
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(listed, sorted, "all-transaction is oldest first");
}

/// Waits (up to 10 s) until `/readyz` at `url` answers 200: `what` names it in the panic.
pub(crate) async fn wait_for_readyz(url: &str, what: &str) {
    let ready = || async {
        client()
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    wait_for(ready, &format!("{what} ready")).await;
}

/// Polls `check` for up to 10 s: read models follow the workers by a few milliseconds.
pub(crate) async fn wait_for<F, Fut>(check: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: condition not reached within 10 s");
}

/// A child process that is killed if the test ends before stopping it.
pub(crate) struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Targets as separate processes of the release-profile binary under test.
pub(crate) struct Split {
    pub backend_url: String,
    processes: Vec<(String, Process)>,
}

impl Split {
    pub(crate) async fn start(
        vhost: &Vhost,
        data_dir: &std::path::Path,
        targets: &[&str],
        extra: &[(&str, String)],
    ) -> Split {
        let mut processes = Vec::new();
        let mut backend_url = String::new();
        for (i, target) in targets.iter().enumerate() {
            let port = free_port();
            let mut env = extra.to_vec();
            env.push(("HTTP_ADDR", format!("127.0.0.1:{port}")));
            let env = environment(vhost, data_dir, &env);
            let log = std::fs::File::create(data_dir.join(format!("{target}-{i}.log"))).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_marketplace"))
                .arg(target)
                .envs(env)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("marketplace binary starts");
            processes.push((target.to_string(), Process(child)));
            let url = format!("http://127.0.0.1:{port}");
            if *target == "backend" {
                backend_url = url;
            } else {
                wait_for_readyz(&url, target).await;
            }
        }
        wait_until_ready(&backend_url).await;
        Split {
            backend_url,
            processes,
        }
    }

    /// SIGTERM to every process; each must exit 0 within 15 s.
    pub(crate) async fn stop(self) {
        for (target, mut p) in self.processes {
            let pid = p.0.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let mut exited = None;
            for _ in 0..150 {
                if let Some(status) = p.0.try_wait().unwrap() {
                    exited = Some(status);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let status =
                exited.unwrap_or_else(|| panic!("{target} did not exit within 15 s of SIGTERM"));
            assert!(status.success(), "{target} exited with {status}");
        }
    }
}
