//! How the saga answers each input: a reply, a deadline, a dead letter. `Draft` builds the
//! next state and its commands; the compensations run newest first.

use contracts::domain::OrderStatus;
use contracts::messages::{Refusal, Step, StepCommand, StepResult, TimelineEntry, TimelineEvent};

use crate::{Saga, SagaState, Timing, Transition};

impl Saga {
    pub(crate) fn unchanged(&self) -> Transition {
        Transition {
            saga: self.clone(),
            commands: Vec::new(),
            ignored: true,
        }
    }

    /// Recorded, not silently dropped: a late reply shows in the timeline that a timed-out
    /// step ran after all (its compensation, or its tombstone, keeps money and stock right).
    pub(crate) fn record_ignored(&self, step: Step, detail: String, now_ms: i64) -> Transition {
        let mut draft = Draft::new(self, now_ms);
        draft.record(step, TimelineEvent::Ignored, Some(detail));
        draft.finish()
    }

    pub(crate) fn on_reply(
        &self,
        step: Step,
        result: StepResult,
        now: i64,
        timing: &Timing,
    ) -> Transition {
        let mut draft = Draft::new(self, now);
        let (event, detail) = describe(&result);
        draft.record(step, event, detail);
        match (self.state.clone(), result) {
            (SagaState::Running { .. }, result) => draft.forward_replied(step, &result, timing),
            (
                SagaState::Compensating {
                    status,
                    mut pending,
                    ..
                },
                StepResult::Done | StepResult::Skipped,
            ) => {
                pending.remove(0);
                draft.compensate(status, pending, timing);
            }
            (SagaState::Rejecting { status, .. }, StepResult::Done | StepResult::Skipped) => {
                draft.saga.state = SagaState::Done { status };
            }
            // A compensation that failed stays in flight: its deadline sends it again.
            _ => {}
        }
        draft.finish()
    }

    pub(crate) fn on_deadline(&self, awaited: Step, now: i64, timing: &Timing) -> Transition {
        let mut draft = Draft::new(self, now);
        match self.state.clone() {
            SagaState::Running { step, .. } => {
                draft.record(step, TimelineEvent::TimedOut, None);
                draft.fail(OrderStatus::Timeout, step, true, timing);
            }
            // Compensations never expire: send the same command again, waiting longer.
            SagaState::Compensating {
                status,
                pending,
                attempt,
                ..
            } => {
                let attempt = attempt.saturating_add(1);
                draft.send(awaited, attempt, None);
                draft.saga.state = SagaState::Compensating {
                    status,
                    pending,
                    attempt,
                    deadline_ms: now.saturating_add(timing.backoff_ms(attempt)),
                };
            }
            SagaState::Rejecting {
                status, attempt, ..
            } => {
                let attempt = attempt.saturating_add(1);
                draft.send(Step::RejectOrder, attempt, Some(status));
                draft.saga.state = SagaState::Rejecting {
                    status,
                    attempt,
                    deadline_ms: now.saturating_add(timing.backoff_ms(attempt)),
                };
            }
            SagaState::Done { .. } => return self.unchanged(),
        }
        draft.finish()
    }

    /// A dead-lettered forward step may have run, so the saga fails UNKNOWN; a dead-lettered
    /// compensation must still happen, so it is only postponed (and visible as stuck).
    pub(crate) fn on_dead_letter(
        &self,
        awaited: Step,
        reason: String,
        now: i64,
        timing: &Timing,
    ) -> Transition {
        let mut draft = Draft::new(self, now);
        draft.record(awaited, TimelineEvent::DeadLettered, Some(reason));
        match &mut draft.saga.state {
            SagaState::Running { step, .. } => {
                let step = *step;
                draft.fail(OrderStatus::Unknown, step, true, timing);
            }
            SagaState::Compensating {
                attempt,
                deadline_ms,
                ..
            }
            | SagaState::Rejecting {
                attempt,
                deadline_ms,
                ..
            } => *deadline_ms = now.saturating_add(timing.backoff_ms(*attempt)),
            SagaState::Done { .. } => return self.unchanged(),
        }
        draft.finish()
    }
}

/// The compensations to run when the saga fails at `failed`, newest first: those of every
/// forward step before it, and its own when it may have run (it replied Failed, timed out
/// or was dead-lettered, as opposed to a business refusal, which applies nothing).
pub fn compensations_for(failed: Step, may_have_run: bool) -> Vec<Step> {
    let mut undo: Vec<Step> = Step::FORWARD
        .into_iter()
        .take_while(|&s| s != failed)
        .chain(may_have_run.then_some(failed))
        .filter_map(Step::compensation)
        .collect();
    undo.reverse();
    undo
}

/// The final status a business refusal leads to.
pub fn refusal_status(reason: Refusal) -> OrderStatus {
    match reason {
        Refusal::InsufficientFunds => OrderStatus::InsufficientFund,
        Refusal::InsufficientStock => OrderStatus::InsufficientInventory,
    }
}

/// The timeline event and detail of a reply.
pub(crate) fn describe(result: &StepResult) -> (TimelineEvent, Option<String>) {
    match result {
        StepResult::Done => (TimelineEvent::Done, None),
        StepResult::Refused { reason } => {
            let reason = match reason {
                Refusal::InsufficientFunds => "insufficient_funds",
                Refusal::InsufficientStock => "insufficient_stock",
            };
            (TimelineEvent::Refused, Some(reason.to_owned()))
        }
        StepResult::Failed { error } => (TimelineEvent::Failed, Some(error.clone())),
        StepResult::Skipped => (TimelineEvent::Skipped, None),
    }
}

/// A transition being built: the next saga, the commands so far, and the time.
pub(crate) struct Draft {
    saga: Saga,
    commands: Vec<StepCommand>,
    now: i64,
}

impl Draft {
    pub(crate) fn new(saga: &Saga, now: i64) -> Self {
        Self {
            saga: saga.clone(),
            commands: Vec::new(),
            now,
        }
    }

    pub(crate) fn finish(mut self) -> Transition {
        self.saga.version += 1;
        self.saga.updated_at_ms = self.now;
        Transition {
            saga: self.saga,
            commands: self.commands,
            ignored: false,
        }
    }

    pub(crate) fn record(&mut self, step: Step, event: TimelineEvent, detail: Option<String>) {
        let seq = self.saga.timeline.len() as i64 + 1;
        self.saga.timeline.push(TimelineEntry {
            seq,
            at_ms: self.now,
            step,
            event,
            detail,
            span_id: None,
        });
    }

    /// Queues the command for `step` and records it, so the timeline shows every attempt.
    fn send(&mut self, step: Step, attempt: u32, reject_status: Option<OrderStatus>) {
        self.commands.push(StepCommand {
            order_id: self.saga.order_id,
            step,
            terms: self.saga.terms.clone(),
            fault: self.saga.faults.for_step(step),
            reject_status,
        });
        let detail = (attempt > 1).then(|| format!("attempt {attempt}"));
        self.record(step, TimelineEvent::Sent, detail);
    }

    pub(crate) fn run_forward(&mut self, step: Step, timing: &Timing) {
        self.send(step, 1, None);
        self.saga.state = SagaState::Running {
            step,
            deadline_ms: self.now.saturating_add(timing.step_timeout_ms),
        };
    }

    fn forward_replied(&mut self, step: Step, result: &StepResult, timing: &Timing) {
        match result {
            StepResult::Done => {
                if step == Step::CreateOrder {
                    self.saga.created = true;
                }
                match next_forward(step) {
                    Some(next) => self.run_forward(next, timing),
                    None => {
                        self.saga.state = SagaState::Done {
                            status: OrderStatus::Success,
                        }
                    }
                }
            }
            StepResult::Refused { reason } => {
                self.fail(refusal_status(*reason), step, false, timing);
            }
            // Skipped should not happen to a step that is running (no compensation was
            // sent yet); the worker and the manager disagree, so assume the worst.
            StepResult::Failed { .. } | StepResult::Skipped => {
                self.fail(OrderStatus::Unknown, step, true, timing);
            }
        }
    }

    fn fail(&mut self, status: OrderStatus, at: Step, may_have_run: bool, timing: &Timing) {
        self.compensate(status, compensations_for(at, may_have_run), timing);
    }

    /// Sends the head of `pending` or, when nothing is left to undo, the rejection.
    fn compensate(&mut self, status: OrderStatus, pending: Vec<Step>, timing: &Timing) {
        let deadline_ms = self.now.saturating_add(timing.step_timeout_ms);
        match pending.first() {
            Some(&head) => {
                self.send(head, 1, None);
                self.saga.state = SagaState::Compensating {
                    status,
                    pending,
                    attempt: 1,
                    deadline_ms,
                };
            }
            None => {
                self.send(Step::RejectOrder, 1, Some(status));
                self.saga.state = SagaState::Rejecting {
                    status,
                    attempt: 1,
                    deadline_ms,
                };
            }
        }
    }
}

fn next_forward(step: Step) -> Option<Step> {
    let i = Step::FORWARD.iter().position(|&s| s == step)?;
    Step::FORWARD.get(i + 1).copied()
}
