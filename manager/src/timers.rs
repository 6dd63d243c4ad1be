//! Deadlines: an in-memory min-heap for precision, filled from the database at start and
//! re-checked against it every second, so a restarted manager fires every deadline that
//! passed while it was down, and a deadline another replica held is not lost.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{domain::OrderId, shutdown::Shutdown, time::now_ms};
use tokio::sync::Notify;

/// Pending deadlines, earliest on top.
type Heap = BinaryHeap<Reverse<(i64, OrderId)>>;

#[derive(Clone, Default)]
pub struct Timers {
    heap: Arc<Mutex<Heap>>,
    changed: Arc<Notify>,
}

const BACKSTOP: Duration = Duration::from_secs(1);

impl Timers {
    pub fn schedule(&self, at_ms: i64, order_id: OrderId) {
        self.heap
            .lock()
            .expect("timer heap poisoned")
            .push(Reverse((at_ms, order_id)));
        self.changed.notify_one();
    }

    /// Removes and returns every timer due at `now_ms`.
    fn take_due(&self, now_ms: i64) -> (Vec<OrderId>, Option<i64>) {
        let mut heap = self.heap.lock().expect("timer heap poisoned");
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = heap.peek().copied() {
            if at > now_ms {
                return (due, Some(at));
            }
            heap.pop();
            due.push(id);
        }
        (due, None)
    }

    /// Calls `fire` for each due timer until `shutdown`. Stale timers are harmless: the
    /// saga ignores a deadline it is no longer waiting for.
    pub async fn run<F, Fut>(self, shutdown: Shutdown, fire: F)
    where
        F: Fn(OrderId) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            let (due, next) = self.take_due(now_ms());
            for id in due {
                fire(id).await;
            }
            let wait = next.map_or(BACKSTOP, |at| {
                Duration::from_millis((at - now_ms()).clamp(0, 1000) as u64)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_timers_come_out_in_deadline_order_and_the_next_one_is_reported() {
        let t = Timers::default();
        let (a, b, c) = (OrderId::new(), OrderId::new(), OrderId::new());
        t.schedule(30, c);
        t.schedule(10, a);
        t.schedule(20, b);
        let (due, next) = t.take_due(20);
        assert_eq!(due, vec![a, b]);
        assert_eq!(next, Some(30));
        assert_eq!(t.take_due(29).0, vec![]);
        assert_eq!(t.take_due(30).0, vec![c]);
    }
}
