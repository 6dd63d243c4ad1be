use super::*;

#[tokio::test]
async fn a_settlement_the_client_answers_passes_through() {
    assert!(settled(async { Ok(true) }).await.unwrap());
    assert!(!settled(async { Ok(false) }).await.unwrap());
    let refused = settled(async {
        Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            "basic.ack",
        )))
    })
    .await;
    assert!(refused.is_err());
}

/// An ack asked for while the connection dies may never be answered: the consumer must not
/// wait on it for good.
#[tokio::test]
async fn a_settlement_never_answered_fails_after_the_bound() {
    let started = std::time::Instant::now();
    let err = settled(std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("not taken within"), "{err}");
    assert!(started.elapsed() >= SETTLE_TIMEOUT);
}
