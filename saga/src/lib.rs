//! The purchase saga as a pure state machine: `(Saga, Input, now) -> (Saga, commands)`.
//!
//! No async, no I/O and no clock: the caller passes the time in, persists the returned saga
//! and publishes the returned commands in one transaction. That keeps every step × outcome
//! testable in microseconds, and lets a restarted manager resume from the persisted state.

use contracts::domain::{OrderId, OrderStatus, OrderTerms};
use contracts::messages::{
    Faults, Phase, Step, StepCommand, StepReply, TimelineEntry, TimelineEvent,
};
use serde::{Deserialize, Serialize};

mod rules;
use rules::{Draft, describe};
pub use rules::{compensations_for, refusal_status};

/// Timing knobs, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a forward step may take before the saga gives up with TIMEOUT; also the
    /// first wait before a compensation is retried.
    pub step_timeout_ms: i64,
    /// The longest wait between two attempts of a compensation, so a stuck worker that
    /// recovers is noticed quickly even after many attempts.
    pub max_retry_ms: i64,
}

impl Timing {
    /// How long to wait for `attempt` (1-based) of a compensation before sending it again:
    /// `step_timeout_ms × 2^(attempt-1)`, capped at `max_retry_ms`. Saturates instead of
    /// overflowing because a compensation may be retried forever.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        2i64.checked_pow(attempt.saturating_sub(1))
            .and_then(|factor| self.step_timeout_ms.checked_mul(factor))
            .map_or(self.max_retry_ms, |wait| wait.min(self.max_retry_ms))
    }
}

/// Where the saga waits. One variant per waiting point, persisted as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SagaState {
    /// Waiting for the reply of a forward step.
    Running { step: Step, deadline_ms: i64 },
    /// Undoing: `pending` are the compensations still to run, newest first; the head is in
    /// flight. Never empty: the last compensation done moves the saga to `Rejecting`.
    Compensating {
        status: OrderStatus,
        pending: Vec<Step>,
        attempt: u32,
        deadline_ms: i64,
    },
    /// All compensations done; recording the final status with `order.reject`.
    Rejecting {
        status: OrderStatus,
        attempt: u32,
        deadline_ms: i64,
    },
    /// Finished: nothing is awaited any more.
    Done { status: OrderStatus },
}

/// The whole saga: what was ordered, where it waits, and its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub order_id: OrderId,
    pub terms: OrderTerms,
    /// Copied into the command of each forward step they target.
    pub faults: Faults,
    /// True once order.create replied Done (such orders are listed by the API).
    pub created: bool,
    pub state: SagaState,
    /// Incremented by every transition that changes anything (used for optimistic
    /// concurrency and projections).
    pub version: i64,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    /// The whole history, seq from 1.
    pub timeline: Vec<TimelineEntry>,
    /// The order's trace, so that every transition (also one a deadline causes, with no
    /// message to carry a context) joins it. Absent when tracing is off, and from sagas
    /// stored before tracing existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<SagaTrace>,
}

/// Where a saga stands in its order's trace. Filled and read by the handler only: the
/// decisions never look at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaTrace {
    /// 32 hex digits.
    pub trace_id: String,
    /// The span that started the saga (the manager's consumption of `PlaceOrder`).
    pub parent_span_id: String,
    /// The saga's own span (16 hex digits), recorded when the saga finishes; every step
    /// attempt is its child.
    pub span_id: String,
    pub sampled: bool,
    pub started_at_ms: i64,
    /// The step attempt in flight: its span is recorded when its reply, deadline or dead
    /// letter closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenStep>,
}

/// A step command sent and not answered yet, as a span waiting to be recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenStep {
    pub step: Step,
    pub span_id: String,
    pub sent_at_ms: i64,
    /// `attempt N` of a retried compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What can happen to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A worker answered a command.
    Reply(StepReply),
    /// The timer set at the saga's `deadline_ms()` fired (it may be stale), with what the
    /// manager knows of its own link to the broker at that moment.
    Deadline(Link),
    /// A command or reply of this saga was dead-lettered; `step` when it could be read.
    DeadLettered { step: Option<Step>, reason: String },
    /// A `PlaceOrder` of this order was dead-lettered although its saga exists: a duplicate
    /// (e.g. a redelivery that kept failing), so it concerns no step in flight.
    PlaceOrderDeadLettered { reason: String },
}

/// The manager's link to the broker when a deadline fires. A step is not late for time
/// in which neither its command nor its reply could travel: the deadline counts from the
/// decision to send, and an outage of the manager's own broker connection does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connected, and not since a recent outage: the deadline stands. Also the case for a
    /// manager that restarted: a deadline that passed while it was down fires at once.
    Steady,
    /// Disconnected now, after having been connected: no reply can arrive, and a command
    /// still in the outbox cannot leave. The deadline waits for the link.
    Down,
    /// Connected again at this time after an outage: the awaited step gets its whole wait
    /// again from then (its command leaves the outbox, its reply the worker's, now).
    RestoredAt(i64),
}

/// The result of a decision: the saga to persist and the commands to publish with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub saga: Saga,
    pub commands: Vec<StepCommand>,
    /// True when the input changed nothing, so there is nothing to persist or publish.
    pub ignored: bool,
}

impl Saga {
    /// A new saga: Running{CreateOrder}, and the CreateOrder command to send.
    pub fn start(
        order_id: OrderId,
        terms: OrderTerms,
        faults: Faults,
        placed_at_ms: i64,
        now_ms: i64,
        timing: &Timing,
    ) -> Transition {
        let saga = Saga {
            order_id,
            terms,
            faults,
            created: false,
            // Overwritten by `run_forward` below; Processing is never observable.
            state: SagaState::Done {
                status: OrderStatus::Processing,
            },
            version: 0,
            placed_at_ms,
            updated_at_ms: now_ms,
            timeline: Vec::new(),
            trace: None,
        };
        let mut draft = Draft::new(&saga, now_ms);
        draft.run_forward(Step::CreateOrder, timing);
        draft.finish()
    }

    /// The saga of an order whose `PlaceOrder` was dead-lettered before any saga existed.
    /// No command was ever sent, so nothing was charged or reserved and nothing needs
    /// undoing: it is finished at once as UNKNOWN, so that the order does not stay
    /// PROCESSING, and a later `PlaceOrder` (a replay) finds it and changes nothing.
    pub fn never_placed(
        order_id: OrderId,
        terms: OrderTerms,
        faults: Faults,
        placed_at_ms: i64,
        reason: &str,
        now_ms: i64,
    ) -> Transition {
        let saga = Saga {
            order_id,
            terms,
            faults,
            created: false,
            state: SagaState::Done {
                status: OrderStatus::Unknown,
            },
            version: 0,
            placed_at_ms,
            updated_at_ms: now_ms,
            timeline: Vec::new(),
            trace: None,
        };
        let mut draft = Draft::new(&saga, now_ms);
        draft.record(
            Step::CreateOrder,
            TimelineEvent::DeadLettered,
            Some(format!("the order was never placed: {reason}")),
        );
        draft.finish()
    }

    /// The decision function: what `input` at `now_ms` does to this saga.
    pub fn apply(&self, input: Input, now_ms: i64, timing: &Timing) -> Transition {
        let Some(awaited) = self.awaited() else {
            // Done: whatever arrives now is an echo of the past and worth no record.
            return self.unchanged();
        };
        match input {
            Input::Deadline(link) if self.due_at(link, timing).is_none_or(|at| now_ms < at) => {
                self.unchanged()
            }
            Input::Deadline(_) => self.on_deadline(awaited, now_ms, timing),
            // The shell routes by order id; a mismatch is not this saga's history.
            Input::Reply(reply) if reply.order_id != self.order_id => self.unchanged(),
            Input::Reply(reply) if reply.step == awaited => {
                self.on_reply(awaited, reply.result, now_ms, timing)
            }
            Input::Reply(reply) => {
                let (event, detail) = describe(&reply.result);
                let detail = match detail {
                    Some(d) => format!("late reply: {event}: {d}"),
                    None => format!("late reply: {event}"),
                };
                self.record_ignored(reply.step, detail, now_ms)
            }
            // An unreadable dead letter most likely concerns what is in flight.
            Input::DeadLettered { step, reason } if step.is_none_or(|s| s == awaited) => {
                self.on_dead_letter(awaited, reason, now_ms, timing)
            }
            Input::DeadLettered { step, reason } => {
                let step = step.unwrap_or(awaited);
                self.record_ignored(step, format!("dead letter: {reason}"), now_ms)
            }
            Input::PlaceOrderDeadLettered { reason } => self.record_ignored(
                Step::CreateOrder,
                format!("dead letter of a duplicate PlaceOrder: {reason}"),
                now_ms,
            ),
        }
    }

    /// The status the API shows: PROCESSING until Done, then the final status.
    pub fn status(&self) -> OrderStatus {
        match self.state {
            SagaState::Done { status } => status,
            _ => OrderStatus::Processing,
        }
    }

    /// Rejecting counts as compensating.
    pub fn phase(&self) -> Phase {
        match self.state {
            SagaState::Running { .. } => Phase::Running,
            SagaState::Compensating { .. } | SagaState::Rejecting { .. } => Phase::Compensating,
            SagaState::Done { .. } => Phase::Done,
        }
    }

    /// When the manager must wake this saga (None when Done).
    pub fn deadline_ms(&self) -> Option<i64> {
        match self.state {
            SagaState::Running { deadline_ms, .. }
            | SagaState::Compensating { deadline_ms, .. }
            | SagaState::Rejecting { deadline_ms, .. } => Some(deadline_ms),
            SagaState::Done { .. } => None,
        }
    }

    /// When the awaited step is really late, given the manager's `link` to the broker:
    /// `deadline_ms()`, moved later by an outage, never while the link is down (None, as
    /// when Done).
    pub fn due_at(&self, link: Link, timing: &Timing) -> Option<i64> {
        let deadline_ms = self.deadline_ms()?;
        match link {
            Link::Steady => Some(deadline_ms),
            Link::Down => None,
            Link::RestoredAt(at) => Some(deadline_ms.max(at.saturating_add(self.wait_ms(timing)?))),
        }
    }

    /// How long the saga waits for the awaited step: a forward step's timeout, or a
    /// compensation's backoff for its attempt.
    fn wait_ms(&self, timing: &Timing) -> Option<i64> {
        match self.state {
            SagaState::Running { .. } => Some(timing.step_timeout_ms),
            SagaState::Compensating { attempt, .. } | SagaState::Rejecting { attempt, .. } => {
                Some(timing.backoff_ms(attempt))
            }
            SagaState::Done { .. } => None,
        }
    }

    /// The step whose reply the saga waits for (None when Done).
    pub fn awaited(&self) -> Option<Step> {
        match &self.state {
            SagaState::Running { step, .. } => Some(*step),
            SagaState::Compensating { pending, .. } => pending.first().copied(),
            SagaState::Rejecting { .. } => Some(Step::RejectOrder),
            SagaState::Done { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests;
