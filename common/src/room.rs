//! Flow control: a bound on work that outlives the message that started it.
//!
//! A saga lives long after its `PlaceOrder` is acked. Without a bound, a burst starts every
//! saga at once, the workers' queues fill with commands, and step deadlines fire for time
//! spent in queues the marketplace filled itself. With one, a new order is taken from its
//! queue only when a slot is free; the rest wait there, durably, and every saga that runs
//! gets the workers' full attention.
//!
//! The bound adapts, as TCP's congestion window does. A fixed one cannot fit every
//! machine: when the workers slow down (a busy host, a slow disk), the commands of the
//! sagas already admitted wait in their queues long enough for deadlines to fire. So each
//! answered step reports how long it took ([`Room::observe`]): a step that used more than a
//! quarter of its deadline cuts the bound by a quarter (at most every [`CUT_EVERY_MS`]), and
//! every few fast ones raise it by one, up to the configured limit. Deadlines then measure
//! a worker's silence, not a queue the marketplace filled.
//!
//! `used` is an estimate kept by the owner: raised when work starts, lowered when it ends,
//! and re-set from the store now and then (the store is the truth: after a restart, and
//! across replicas sharing one store, only it knows how many sagas run).

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// A slow step cuts the bound at most this often: the replies of one congestion all come
/// late together, and count as one signal.
pub const CUT_EVERY_MS: i64 = 250;
/// Fast steps that raise the bound by one.
const FAST_STEPS_PER_SLOT: i64 = 8;

/// Slots for long-lived work. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Room {
    /// The configured bound: the window never grows past it.
    max: i64,
    /// The window never shrinks below it: a sixteenth of `max`, at most eight.
    min: i64,
    /// The bound now (the window).
    limit: AtomicI64,
    used: AtomicI64,
    /// When the window was last cut.
    cut_at_ms: AtomicI64,
    /// Fast steps seen since the window last grew.
    credit: AtomicI64,
    freed: Notify,
}

impl Room {
    /// A room of `limit` slots (at least 1), all free.
    pub fn new(limit: usize) -> Self {
        let max = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        Self {
            max,
            min: (max / 16).clamp(1, 8).min(max),
            limit: AtomicI64::new(max),
            used: AtomicI64::new(0),
            cut_at_ms: AtomicI64::new(i64::MIN),
            credit: AtomicI64::new(0),
            freed: Notify::new(),
        }
    }

    /// Slots in use, as far as this room knows.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst).max(0) as usize
    }

    /// The bound now: between the configured limit and a floor (a sixteenth of it, at most
    /// eight).
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst) as usize
    }

    /// `n` pieces of work started.
    pub fn take(&self, n: usize) {
        self.used.fetch_add(n as i64, Ordering::SeqCst);
    }

    /// `n` pieces of work ended.
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n as i64, Ordering::SeqCst);
            self.wake();
        }
    }

    /// Replaces the estimate with a count from the store. Work taken while the count was
    /// read is missed until the next recount: the bound is approximate by that much.
    pub fn recount(&self, used: usize) {
        let before = self.used.swap(used as i64, Ordering::SeqCst);
        if (used as i64) < before {
            self.wake();
        }
    }

    /// A step of some work was answered `latency_ms` after it was asked, against a
    /// deadline of `deadline_ms`, at `now_ms`: adapts the bound (see the module's
    /// documentation).
    pub fn observe(&self, latency_ms: i64, deadline_ms: i64, now_ms: i64) {
        if latency_ms.saturating_mul(4) > deadline_ms {
            self.credit.store(0, Ordering::SeqCst);
            let last = self.cut_at_ms.load(Ordering::SeqCst);
            if now_ms.saturating_sub(last) >= CUT_EVERY_MS
                && self
                    .cut_at_ms
                    .compare_exchange(last, now_ms, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                let min = self.min;
                let _ = self
                    .limit
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                        Some((l - (l / 4).max(1)).max(min))
                    });
            }
            return;
        }
        if self.credit.fetch_add(1, Ordering::SeqCst) + 1 >= FAST_STEPS_PER_SLOT {
            self.credit.store(0, Ordering::SeqCst);
            let max = self.max;
            let grown = self
                .limit
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                    (l < max).then_some(l + 1)
                })
                .is_ok();
            if grown {
                self.wake();
            }
        }
    }

    /// How many slots are free now (0 when full).
    pub fn available(&self) -> usize {
        (self.limit.load(Ordering::SeqCst) - self.used.load(Ordering::SeqCst)).max(0) as usize
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

    fn wake(&self) {
        self.freed.notify_waiters();
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests;
