//! `/metrics` after known traffic: the exposition is parsed and every count checked exactly,
//! all-in-one (in-process) and with each target as a process of its own.

mod support;

use std::{collections::BTreeMap, process::Command, time::Duration};

use futures::StreamExt;
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions},
    types::FieldTable,
};
use serde_json::json;
use support::*;

/// One sample of the text exposition: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (version 0.0.4): comments skipped, label values
/// unescaped, a sample per line.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().expect("labels end with }");
                match c {
                    '}' => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("a quoted value ends").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("an escape").1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                other => value.push(other),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    other => key.push(other),
                }
            }
        }
        let value = rest.trim().split(' ').next().unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// A parsed scrape, queried by name and a subset of labels.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// The sum of the samples of `name` whose labels include `labels` (0 when none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

async fn scrape(base_url: &str) -> Scrape {
    let r = client()
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    Scrape(parse(&r.text().await.unwrap()))
}

/// Publishes undecodable messages to the payment queue while a consumer of the test's own
/// takes one of them and closes its channel without acking it, so the payment worker gets
/// that one redelivered. Returns how many were published: each ends as a dead letter.
async fn garbage_with_one_redelivery(amqp_url: &str) -> usize {
    let conn = amqp_connection_to(amqp_url).await;
    let thief = conn.create_channel().await.unwrap();
    thief
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut stolen = thief
        .basic_consume(
            "payment".into(),
            "metrics-test-thief".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    let mut published = 0;
    loop {
        assert!(published < 50, "the test consumer never got a message");
        let props = BasicProperties::default()
            .with_message_id(format!("garbage-{published}").into())
            .with_delivery_mode(2);
        publisher
            .basic_publish(
                "".into(),
                "payment".into(),
                BasicPublishOptions::default(),
                b"this is not json",
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        published += 1;
        // Round robin between the worker and this consumer: one of the next few is ours.
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(300), stolen.next()).await
        {
            delivery.expect("a delivery");
            break;
        }
    }
    // Unacked: closing the channel returns the message to the queue, marked redelivered.
    thief.close(200, "done".into()).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    published
}

/// Waits until `/metrics` satisfies `check` (the relay and the read models follow the
/// sagas by milliseconds); returns that scrape.
async fn scrape_until(base_url: &str, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..400 {
        let s = scrape(base_url).await;
        if check(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not reached within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let m = InProcess::start(&[]).await;
    let base = m.base_url.as_str();
    let mut orders = Vec::new();
    for i in 0..3 {
        let user = format!("rich-{i}");
        orders.push(purchase(base, json!({"username": user, "price": 10, "amount": 1})).await);
    }
    orders.push(purchase(base, json!({"username": "poor", "price": 300, "amount": 2})).await);
    let killed = json!({"username": "unlucky", "price": 1, "amount": 1, "kill_deliver": true});
    orders.push(purchase(base, killed).await);
    for id in &orders {
        final_order(base, id, Duration::from_secs(10)).await;
    }
    let c = client();
    let r = c
        .get(format!(
            "{base}/api/users/nobody-{}",
            uuid::Uuid::new_v4().simple()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(format!("{base}/no/such/path")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{base}/api/purchase/"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let garbage = garbage_with_one_redelivery(&m._vhost.amqp_url()).await as f64;

    let s = scrape_until(base, "quiescence", |s| {
        s.sum("marketplace_sagas_in_flight", &[]) == 0.0
            && s.sum("marketplace_outbox_backlog_messages", &[]) == 0.0
            && s.sum("marketplace_dead_letters_total", &[]) == garbage
            // The gauge is read from the store before the counters are rendered: a letter
            // committed in between is counted and not yet open in the same scrape.
            && s.sum("marketplace_dead_letters_open", &[]) == garbage
    })
    .await;

    // Orders by final status, and the whole-saga histogram.
    for (status, n) in [
        ("SUCCESS", 3.0),
        ("INSUFFICIENT_FUND", 1.0),
        ("UNKNOWN", 1.0),
    ] {
        let l = [("status", status)];
        assert_eq!(s.sum("marketplace_orders_total", &l), n, "{status}");
        let count = "marketplace_saga_duration_seconds_count";
        assert_eq!(s.sum(count, &l), n, "{status}");
        let inf = [("status", status), ("le", "+Inf")];
        assert_eq!(s.sum("marketplace_saga_duration_seconds_bucket", &inf), n);
    }
    assert_eq!(s.sum("marketplace_orders_total", &[]), 5.0);

    // Compensations: kill_deliver undoes three steps; both failures end with order.reject.
    for (step, n) in [
        ("delivery.cancel", 1.0),
        ("inventory.release", 1.0),
        ("payment.refund", 1.0),
        ("order.reject", 2.0),
    ] {
        let l = [("step", step)];
        assert_eq!(s.sum("marketplace_compensations_total", &l), n, "{step}");
    }
    assert_eq!(s.sum("marketplace_compensations_total", &[]), 5.0);

    // One latency observation per answered command.
    let count = "marketplace_saga_step_duration_seconds_count";
    for (step, outcome, n) in [
        ("order.create", "done", 5.0),
        ("payment.charge", "done", 4.0),
        ("payment.charge", "refused", 1.0),
        ("inventory.reserve", "done", 4.0),
        ("delivery.schedule", "done", 3.0),
        ("delivery.schedule", "failed", 1.0),
        ("order.complete", "done", 3.0),
        ("delivery.cancel", "done", 1.0),
        ("inventory.release", "done", 1.0),
        ("payment.refund", "done", 1.0),
        ("order.reject", "done", 2.0),
    ] {
        let l = [("step", step), ("outcome", outcome)];
        assert_eq!(s.sum(count, &l), n, "{step} {outcome}");
    }
    assert_eq!(s.sum(count, &[]), 26.0);

    // HTTP: by route template (never the raw path) and status.
    let http = "marketplace_http_requests_total";
    let route = |method, route, status| [("method", method), ("route", route), ("status", status)];
    assert_eq!(s.sum(http, &route("POST", "/api/purchase/", "202")), 5.0);
    assert_eq!(s.sum(http, &route("POST", "/api/purchase/", "400")), 1.0);
    assert_eq!(
        s.sum(http, &route("GET", "/api/users/{username}", "404")),
        1.0
    );
    assert_eq!(s.sum(http, &route("GET", "unmatched", "404")), 1.0);
    assert!(s.has(http, &[("route", "/api/orders/{id}"), ("status", "200")]));
    assert!(
        s.matching(http, &[])
            .all(|x| !x.labels["route"].contains("nobody")),
        "a raw path became a label"
    );
    let timed = [("method", "POST"), ("route", "/api/purchase/")];
    assert_eq!(
        s.sum("marketplace_http_request_duration_seconds_count", &timed),
        6.0
    );

    // Consumers: every command and reply handled once; the garbage rejected, one redelivered.
    let consumed = "marketplace_messages_consumed_total";
    for (queue, n) in [
        ("manager.orders", 5.0),
        ("manager", 26.0),
        ("order", 10.0),
        ("payment", 6.0),
        ("inventory", 5.0),
        ("delivery", 5.0),
        ("dead-letter", garbage),
    ] {
        let l = [("queue", queue), ("result", "ok")];
        assert_eq!(s.sum(consumed, &l), n, "{queue}");
    }
    let rejected = [("queue", "payment"), ("result", "permanent")];
    assert_eq!(s.sum(consumed, &rejected), garbage);
    assert_eq!(s.sum(consumed, &[("result", "permanent")]), garbage);
    let redeliveries = "marketplace_consumer_redeliveries_total";
    assert_eq!(s.sum(redeliveries, &[("queue", "payment")]), 1.0);
    assert_eq!(s.sum(redeliveries, &[]), 1.0);

    // Dead letters: counted by the queue they died in, and open until resolved.
    let dead = [("queue", "payment")];
    assert_eq!(s.sum("marketplace_dead_letters_total", &dead), garbage);
    let open = [("service", "dead-letter")];
    assert_eq!(s.sum("marketplace_dead_letters_open", &open), garbage);

    // Gauges read from each service's database: all there, all drained.
    for service in marketplace::services() {
        let l = [("service", service)];
        assert!(
            s.has("marketplace_outbox_backlog_messages", &l),
            "{service}"
        );
    }
    assert!(s.has("marketplace_sagas_in_flight", &[("service", "manager")]));
    m.stop().await.unwrap();
}

/// Every target, each as a process of its own, answers `/metrics` with its own numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_serves_its_own_metrics() {
    let vhost = Vhost::create();
    let data = tempfile::tempdir().unwrap();
    let targets = SPLIT_TARGETS;
    let mut processes = Vec::new();
    let mut urls = BTreeMap::new();
    for target in targets {
        let port = free_port();
        let env = environment(
            &vhost,
            data.path(),
            &[("HTTP_ADDR", format!("127.0.0.1:{port}"))],
        );
        let log = std::fs::File::create(data.path().join(format!("{target}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .arg(target)
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("marketplace binary starts");
        processes.push(Process(child));
        urls.insert(target, format!("http://127.0.0.1:{port}"));
    }
    wait_until_ready(&urls["backend"]).await;
    for target in targets {
        let url = &urls[target];
        wait_for(
            || async {
                client()
                    .get(format!("{url}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
            &format!("{target} ready"),
        )
        .await;
    }

    let body = json!({"username": "split", "price": 10, "amount": 1});
    let id = purchase(&urls["backend"], body).await;
    let order = final_order(&urls["backend"], &id, Duration::from_secs(10)).await;
    assert_eq!(order["status"], "SUCCESS");

    let manager = scrape_until(&urls["manager"], "manager counted the order", |s| {
        s.sum("marketplace_orders_total", &[("status", "SUCCESS")]) == 1.0
    })
    .await;
    assert_eq!(manager.sum("marketplace_sagas_in_flight", &[]), 0.0);
    for target in targets {
        let s = scrape_until(&urls[target], "outbox drained", |s| {
            s.has(
                "marketplace_outbox_backlog_messages",
                &[("service", target)],
            ) && s.sum("marketplace_outbox_backlog_messages", &[]) == 0.0
        })
        .await;
        // Only this target's services appear: each process has its own registry.
        let services: Vec<&str> = s
            .matching("marketplace_outbox_backlog_messages", &[])
            .map(|x| x.labels["service"].as_str())
            .collect();
        assert_eq!(services, [target], "{target}");
        assert_eq!(
            s.has("marketplace_orders_total", &[]),
            target == "manager",
            "{target}"
        );
        assert!(s.has("marketplace_http_requests_total", &[("route", "/readyz")]));
    }
    // The payment worker handled exactly the one charge.
    let payment = scrape(&urls["payment"]).await;
    let ok = [("queue", "payment"), ("result", "ok")];
    assert_eq!(payment.sum("marketplace_messages_consumed_total", &ok), 1.0);
    let dl = scrape(&urls["dead-letter"]).await;
    assert_eq!(dl.sum("marketplace_dead_letters_open", &[]), 0.0);
    drop(processes);
}

#[test]
fn the_parser_reads_labels_escapes_and_special_values() {
    let text = "# HELP x a help\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"\\\\{id}\"} 3\ny 1.5\nh_bucket{le=\"+Inf\"} 7\n";
    let s = parse(text);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].labels["b"], "q\"\\{id}");
    assert_eq!(s[0].value, 3.0);
    assert_eq!(s[1].name, "y");
    assert_eq!(s[2].labels["le"], "+Inf");
    assert_eq!(s[2].value, 7.0);
}
