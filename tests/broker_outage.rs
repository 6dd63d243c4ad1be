//! A broker outage longer than the step timeout, with a step in flight. The outage is not
//! the step's fault: the worker did its work, and its reply waits in its outbox. The
//! manager does not count the time its own link to the broker was down, and gives the
//! step its whole timeout again once the link is back, so the order finishes SUCCESS with
//! nothing compensated (before, it ended TIMEOUT and was refunded).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn has_entry(order: &Value, step: &str, event: &str) -> bool {
    order["timeline"]
        .as_array()
        .is_some_and(|t| t.iter().any(|e| e["step"] == step && e["event"] == event))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_in_flight_is_not_timed_out_by_an_outage_of_the_broker() {
    const TIMEOUT_MS: u64 = 3_000;
    let m = InProcess::start(&[
        ("STEP_TIMEOUT_MS", TIMEOUT_MS.to_string()),
        // The payment worker holds the command this long, then charges and replies.
        ("FAULT_STALL_MS", "1500".into()),
    ])
    .await;
    let id = purchase(
        &m.base_url,
        json!({"username": "outage", "price": 2, "amount": 1, "timeout_payment": true}),
    )
    .await;
    let base = m.base_url.clone();
    wait_for(
        || {
            let (base, id) = (base.clone(), id.clone());
            async move { has_entry(&get_order(&base, &id).await, "payment.charge", "sent") }
        },
        "the charge to be sent",
    )
    .await;
    // The command was published before the event that shows it as sent; give the worker
    // time to take it, then take the broker away while it stalls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let vhost = m._vhost.name.clone();
    rabbitmqctl_ok(&["delete_vhost", &vhost]);
    // Longer than the step timeout: the charge's deadline passes during the outage, and
    // the worker's reply is written to its outbox meanwhile.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 1_500)).await;
    rabbitmqctl_ok(&["add_vhost", &vhost]);
    rabbitmqctl_ok(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);

    let done = final_order(&m.base_url, &id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "SUCCESS", "{done:#}");
    assert!(!has_entry(&done, "payment.charge", "timed_out"), "{done:#}");
    assert!(!has_entry(&done, "payment.refund", "sent"), "{done:#}");
    assert_eq!(credits(&m.base_url, "outage").await, Some(498));
    m.stop().await.expect("drains cleanly");
}
