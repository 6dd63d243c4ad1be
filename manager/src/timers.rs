//! Deadlines: an in-memory min-heap for precision, filled from the database at start and
//! re-checked against it every second, so a restarted manager fires every deadline that
//! passed while it was down, and a deadline another replica held is not lost.
//!
//! Every transition arms its saga's next deadline, and most sagas move on long before it:
//! only the deadline a saga was last given here fires. The others are dropped when they
//! come due, without a look at the database (which would cost a transaction per step of
//! every order, for nothing). A deadline this process does not know of, or forgot, is
//! found by the backstop scan.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{domain::OrderId, shutdown::Shutdown, time::now_ms};
use tokio::sync::Notify;

/// Pending deadlines, earliest on top.
type Heap = BinaryHeap<Reverse<(i64, OrderId)>>;

#[derive(Clone, Default)]
pub(crate) struct Timers {
    armed: Arc<Mutex<Armed>>,
    changed: Arc<Notify>,
}

/// The heap, and the deadline each saga was last given: a heap entry that is not its
/// saga's current deadline is stale.
#[derive(Default)]
struct Armed {
    heap: Heap,
    current: HashMap<OrderId, i64>,
}

const BACKSTOP: Duration = Duration::from_secs(1);

impl Timers {
    /// Arms `order_id`'s deadline at `at_ms`, replacing the one it had.
    pub(crate) fn schedule(&self, at_ms: i64, order_id: OrderId) {
        let mut armed = self.armed.lock().expect("timer heap poisoned");
        armed.heap.push(Reverse((at_ms, order_id)));
        armed.current.insert(order_id, at_ms);
        drop(armed);
        self.changed.notify_one();
    }

    /// Disarms `order_id`: its saga awaits nothing any more.
    pub(crate) fn cancel(&self, order_id: OrderId) {
        self.armed
            .lock()
            .expect("timer heap poisoned")
            .current
            .remove(&order_id);
    }

    /// Removes every timer due at `now_ms` and returns the sagas whose current deadline
    /// it was, and when the next timer is due.
    fn take_due(&self, now_ms: i64) -> (Vec<OrderId>, Option<i64>) {
        let mut armed = self.armed.lock().expect("timer heap poisoned");
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = armed.heap.peek().copied() {
            if at > now_ms {
                return (due, Some(at));
            }
            armed.heap.pop();
            if armed.current.get(&id) == Some(&at) {
                armed.current.remove(&id);
                due.push(id);
            }
        }
        (due, None)
    }

    /// Calls `fire` for each due timer until `shutdown`. Stale timers are harmless: the
    /// saga ignores a deadline it is no longer waiting for.
    pub(crate) async fn run<F, Fut>(self, shutdown: Shutdown, fire: F)
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
                () = shutdown.cancelled() => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
