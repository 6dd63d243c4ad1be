use super::*;

/// A stored letter with the given address, for the tests of this crate.
pub(crate) fn stored(exchange: Option<&str>, queue: Option<&str>, key: Option<&str>) -> DeadLetter {
    DeadLetter {
        id: "id".into(),
        message_id: "m".into(),
        original_queue: queue.map(Into::into),
        exchange: exchange.map(Into::into),
        routing_key: key.map(Into::into),
        correlation_id: None,
        reason: None,
        delivery_count: 0,
        times_seen: 1,
        order_id: None,
        headers: "{}".into(),
        payload: String::new(),
        first_seen_ms: 0,
        last_seen_ms: 0,
        resolved_at_ms: None,
        replays: 0,
        replayed_at_ms: None,
    }
}

#[test]
fn a_letter_goes_back_to_its_exchange_and_routing_key() {
    let l = stored(
        Some("marketplace"),
        Some("payment"),
        Some("command.payment"),
    );
    assert_eq!(
        destination(&l),
        Some(("marketplace".into(), "command.payment".into()))
    );
}

#[test]
fn a_letter_of_the_default_exchange_goes_back_to_its_queue() {
    for exchange in [None, Some("")] {
        let l = stored(exchange, Some("order"), Some("something.else"));
        assert_eq!(destination(&l), Some((String::new(), "order".into())));
    }
    assert_eq!(destination(&stored(Some(""), None, Some("x"))), None);
    assert_eq!(
        destination(&stored(Some("marketplace"), Some("q"), None)),
        None
    );
}
