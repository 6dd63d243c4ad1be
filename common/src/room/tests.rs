use std::{sync::Arc, time::Duration};

use super::*;

#[test]
fn a_room_counts_what_is_taken_and_released() {
    let room = Room::new(3);
    assert_eq!(room.available(), 3);
    room.take(2);
    assert_eq!((room.used(), room.available()), (2, 1));
    room.take(2);
    assert_eq!(room.available(), 0, "over the limit is full, not negative");
    room.release(3);
    assert_eq!(room.available(), 2);
    room.recount(0);
    assert_eq!(room.available(), 3);
}

#[test]
fn slow_steps_cut_the_bound_at_most_every_interval_and_never_below_its_floor() {
    let room = Room::new(256);
    // A step that took more than a quarter of its deadline.
    room.observe(300, 1000, 10_000);
    assert_eq!(room.limit(), 192);
    // The same congestion, reported by the next replies: one signal.
    room.observe(900, 1000, 10_100);
    assert_eq!(room.limit(), 192);
    room.observe(900, 1000, 10_000 + CUT_EVERY_MS);
    assert_eq!(room.limit(), 144);
    for i in 2..100 {
        room.observe(900, 1000, 10_000 + i * CUT_EVERY_MS);
    }
    assert_eq!(
        room.limit(),
        8,
        "the floor: eight sagas (fewer for a smaller bound)"
    );
    let tiny = Room::new(4);
    for i in 0..10 {
        tiny.observe(900, 1000, i * CUT_EVERY_MS);
    }
    assert_eq!(tiny.limit(), 1);
}

#[test]
fn fast_steps_grow_the_bound_back_up_to_the_configured_limit() {
    let room = Room::new(64);
    room.observe(900, 1000, 0);
    assert_eq!(room.limit(), 48);
    for _ in 0..FAST_STEPS_PER_SLOT {
        room.observe(10, 1000, 1);
    }
    assert_eq!(room.limit(), 49);
    for _ in 0..10_000 {
        room.observe(10, 1000, 2);
    }
    assert_eq!(room.limit(), 64, "never past the configured limit");
    room.take(64);
    assert_eq!(room.available(), 0);
}

#[tokio::test]
async fn a_grown_bound_wakes_the_waiter() {
    let room = Arc::new(Room::new(16));
    room.observe(900, 1000, 0);
    room.take(room.limit());
    let waiter = tokio::spawn({
        let room = room.clone();
        async move { room.free().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    for _ in 0..FAST_STEPS_PER_SLOT {
        room.observe(10, 1000, 1);
    }
    let free = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("a grown bound wakes the waiter")
        .unwrap();
    assert_eq!(free, 1);
}

#[tokio::test]
async fn a_full_room_waits_until_work_ends() {
    let room = Arc::new(Room::new(1));
    room.take(1);
    let waiter = tokio::spawn({
        let room = room.clone();
        async move { room.free().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "nothing is free yet");
    room.release(1);
    let free = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("a release wakes the waiter")
        .unwrap();
    assert_eq!(free, 1);
}

#[tokio::test]
async fn a_recount_below_the_estimate_wakes_the_waiter() {
    let room = Arc::new(Room::new(2));
    room.take(5);
    let waiter = tokio::spawn({
        let room = room.clone();
        async move { room.free().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    room.recount(1);
    let free = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the recount wakes the waiter")
        .unwrap();
    assert_eq!(free, 1);
}
