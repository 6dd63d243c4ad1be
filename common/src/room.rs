//! Flow control: a bound on work that outlives the message that started it.
//!
//! A saga lives long after its `PlaceOrder` is acked. Without a bound, a burst starts every
//! saga at once, the workers' queues fill with commands, and step deadlines fire for time
//! spent in queues the marketplace filled itself. With one, a new order is taken from its
//! queue only when a slot is free; the rest wait there, durably, and every saga that runs
//! gets the workers' full attention.
//!
//! `used` is an estimate kept by the owner: raised when work starts, lowered when it ends,
//! and re-set from the store now and then (the store is the truth: after a restart, and
//! across replicas sharing one store, only it knows how many sagas run).

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// Slots for long-lived work. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Room {
    limit: i64,
    used: AtomicI64,
    freed: Notify,
}

impl Room {
    /// A room of `limit` slots (at least 1), all free.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: i64::try_from(limit.max(1)).unwrap_or(i64::MAX),
            used: AtomicI64::new(0),
            freed: Notify::new(),
        }
    }

    /// Slots in use, as far as this room knows.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst).max(0) as usize
    }

    /// `n` pieces of work started.
    pub fn take(&self, n: usize) {
        self.used.fetch_add(n as i64, Ordering::SeqCst);
    }

    /// `n` pieces of work ended.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n as i64, Ordering::SeqCst);
            self.freed.notify_waiters();
            self.freed.notify_one();
        }
    }

    /// Replaces the estimate with a count from the store. Work taken while the count was
    /// read is missed until the next recount: the bound is approximate by that much.
    pub fn recount(&self, used: usize) {
        let before = self.used.swap(used as i64, Ordering::SeqCst);
        if (used as i64) < before {
            self.freed.notify_waiters();
            self.freed.notify_one();
        }
    }

    /// How many slots are free now (0 when full).
    pub fn available(&self) -> usize {
        (self.limit - self.used.load(Ordering::SeqCst)).max(0) as usize
    }

    /// Waits until at least one slot is free, and returns how many are.
    pub async fn free(&self) -> usize {
        loop {
            let notified = self.freed.notified();
            let free = self.available();
            if free > 0 {
                return free;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
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
}
