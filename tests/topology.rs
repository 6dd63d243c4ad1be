//! The topology check at start: a queue somebody declared differently stops the start with
//! a message that names the queue, the argument and the way out; a queue declared the right
//! way is accepted as it is.

mod support;

use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use support::*;

/// Declares `queue` in `vhost` with `args`, as another program would have.
async fn declare(vhost: &Vhost, queue: &str, args: FieldTable) {
    let conn = amqp_connection(vhost).await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}

/// Starts `target` on the vhost and returns how `serve` ended (it must end by itself).
async fn start(vhost: &Vhost, target: &str) -> anyhow::Result<()> {
    common::telemetry::init("test");
    let data = tempfile::tempdir().unwrap();
    let env = environment(vhost, data.path(), &[]);
    let config = common::config::Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = common::shutdown::Shutdown::new();
    let serve = marketplace::serve(target, config, listener, shutdown.clone());
    match tokio::time::timeout(std::time::Duration::from_secs(20), serve).await {
        Ok(result) => result,
        Err(_) => panic!("serve neither failed nor stopped"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_in_place_of_a_quorum_queue_stops_the_start_and_says_why() {
    let vhost = Vhost::create();
    declare(&vhost, "payment", FieldTable::default()).await;

    let error = start(&vhost, "payment").await.expect_err("must not start");
    let message = format!("{error:#}");
    // RabbitMQ names the first argument that differs (here the dead-letter exchange, which
    // it compares before the queue type); the message names it and the way out.
    assert!(message.contains(r#"queue "payment""#), "{message}");
    assert!(
        message.contains("x-dead-letter-exchange is none; needed: 'marketplace.dlx'"),
        "{message}"
    );
    assert!(message.contains("quorum queues"), "{message}");
    assert!(message.contains("rabbitmqctl delete_queue"), "{message}");
    // Only the queue that differs is named.
    assert!(!message.contains(r#"queue "order""#), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_with_another_delivery_limit_is_named() {
    let vhost = Vhost::create();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(50));
    declare(&vhost, "inventory", args).await;

    let error = start(&vhost, "inventory")
        .await
        .expect_err("must not start");
    let message = format!("{error:#}");
    assert!(message.contains(r#"queue "inventory""#), "{message}");
    assert!(message.contains("x-delivery-limit"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_the_right_way_beforehand_is_accepted() {
    common::telemetry::init("test");
    let vhost = Vhost::create();
    declare(&vhost, "delivery", common::bus::queue_arguments(true)).await;
    let shutdown = common::shutdown::Shutdown::new();
    let data = tempfile::tempdir().unwrap();
    let env = environment(&vhost, data.path(), &[]);
    let config = common::config::Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(marketplace::serve(
        "delivery",
        config,
        listener,
        shutdown.clone(),
    ));
    wait_for_readyz(&base_url, "the delivery target").await;
    shutdown.cancel();
    task.await.unwrap().expect("drains cleanly");
}
