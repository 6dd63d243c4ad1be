//! The message contracts: every body that crosses RabbitMQ is one of these, as JSON.
//!
//! Each queue carries one enum, tagged by `"type"`, so a consumer decodes exactly what its
//! queue may hold and anything else is a poison message (dead-lettered, never guessed at).
//! Every message also carries, as AMQP properties, a unique `message_id` (the inbox key)
//! and `correlation_id` = the order id (the saga id).

use serde::{Deserialize, Serialize};

use crate::domain::{OrderId, OrderStatus, OrderTerms, Product, Quantity, Username};

mod timeline;
pub use timeline::{Phase, TimelineEntry, TimelineEvent};

/// Every step of the purchase saga: five forward steps and four compensations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    CreateOrder,
    ChargePayment,
    ReserveStock,
    ScheduleDelivery,
    CompleteOrder,
    CancelDelivery,
    ReleaseStock,
    RefundPayment,
    RejectOrder,
}

/// The worker that owns a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worker {
    Order,
    Payment,
    Inventory,
    Delivery,
}

impl Step {
    /// The forward steps, in the order the saga runs them.
    pub const FORWARD: [Step; 5] = [
        Step::CreateOrder,
        Step::ChargePayment,
        Step::ReserveStock,
        Step::ScheduleDelivery,
        Step::CompleteOrder,
    ];

    pub const ALL: [Step; 9] = [
        Step::CreateOrder,
        Step::ChargePayment,
        Step::ReserveStock,
        Step::ScheduleDelivery,
        Step::CompleteOrder,
        Step::CancelDelivery,
        Step::ReleaseStock,
        Step::RefundPayment,
        Step::RejectOrder,
    ];

    /// The name used in logs, the timeline and the API (`payment.charge`, …).
    pub fn name(self) -> &'static str {
        match self {
            Step::CreateOrder => "order.create",
            Step::ChargePayment => "payment.charge",
            Step::ReserveStock => "inventory.reserve",
            Step::ScheduleDelivery => "delivery.schedule",
            Step::CompleteOrder => "order.complete",
            Step::CancelDelivery => "delivery.cancel",
            Step::ReleaseStock => "inventory.release",
            Step::RefundPayment => "payment.refund",
            Step::RejectOrder => "order.reject",
        }
    }

    pub fn worker(self) -> Worker {
        match self {
            Step::CreateOrder | Step::CompleteOrder | Step::RejectOrder => Worker::Order,
            Step::ChargePayment | Step::RefundPayment => Worker::Payment,
            Step::ReserveStock | Step::ReleaseStock => Worker::Inventory,
            Step::ScheduleDelivery | Step::CancelDelivery => Worker::Delivery,
        }
    }

    pub fn is_compensation(self) -> bool {
        !Step::FORWARD.contains(&self)
    }

    /// The step that undoes this forward step's effect, if it has one to undo.
    /// `order.create` has none here: `order.reject` always ends a failed saga instead.
    pub fn compensation(self) -> Option<Step> {
        match self {
            Step::ChargePayment => Some(Step::RefundPayment),
            Step::ReserveStock => Some(Step::ReleaseStock),
            Step::ScheduleDelivery => Some(Step::CancelDelivery),
            _ => None,
        }
    }
}

/// A failure the test suite asks a worker to simulate (see the compatibility contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Fail the step with an unexpected error, changing nothing.
    Kill,
    /// Stall past the step deadline, then run the step as usual (tombstones make it a no-op
    /// when its compensation got there first).
    Stall,
}

/// [`Faults`] from its flags' names, written once: the struct, the names in order, and
/// the iteration and setting by name that the API and loadgen use.
macro_rules! fault_flags {
    ($($flag:ident),+ $(,)?) => {
        /// The fault flags of a purchase request, as the compatibility contract names them.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Faults {
            $(pub $flag: bool,)+
        }

        impl Faults {
            /// How many flags there are.
            pub const COUNT: usize = [$(stringify!($flag)),+].len();

            /// The flags' names, in the contract's order (the first one set is named in a 403).
            pub const NAMES: [&'static str; Self::COUNT] = [$(stringify!($flag)),+];

            /// Each flag's name and whether it is set, in the contract's order.
            pub fn flags(&self) -> impl Iterator<Item = (&'static str, bool)> {
                [$((stringify!($flag), self.$flag)),+].into_iter()
            }

            /// Sets the flag named `name`; false when there is no such flag.
            pub fn set(&mut self, name: &str, on: bool) -> bool {
                match name {
                    $(stringify!($flag) => self.$flag = on,)+
                    _ => return false,
                }
                true
            }
        }
    };
}

fault_flags!(
    kill_create,
    kill_payment,
    timeout_payment,
    kill_inventory,
    timeout_inventory,
    kill_deliver,
    timeout_deliver,
);

impl Faults {
    /// The fault to inject into one step, if any. Kill wins over a stall on the same step.
    pub fn for_step(&self, step: Step) -> Option<Fault> {
        let (kill, stall) = match step {
            Step::CreateOrder => (self.kill_create, false),
            Step::ChargePayment => (self.kill_payment, self.timeout_payment),
            Step::ReserveStock => (self.kill_inventory, self.timeout_inventory),
            Step::ScheduleDelivery => (self.kill_deliver, self.timeout_deliver),
            _ => (false, false),
        };
        if kill {
            Some(Fault::Kill)
        } else if stall {
            Some(Fault::Stall)
        } else {
            None
        }
    }
}

/// A command from the manager to a worker: run `step` for `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCommand {
    pub order_id: OrderId,
    pub step: Step,
    pub terms: OrderTerms,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// For `order.reject`: the final status to record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_status: Option<OrderStatus>,
}

/// Why a worker refused a step for a business reason (not an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    InsufficientFunds,
    InsufficientStock,
}

/// How a step ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StepResult {
    /// The step's effect is applied (or, for a compensation, undone or tombstoned).
    Done,
    /// Business refusal: nothing was applied.
    Refused { reason: Refusal },
    /// Unexpected failure: treat the step as possibly applied.
    Failed { error: String },
    /// A forward step that found its compensation's tombstone: nothing was applied.
    Skipped,
}

/// A worker's reply to a `StepCommand`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReply {
    pub order_id: OrderId,
    pub step: Step,
    #[serde(flatten)]
    pub result: StepResult,
}

/// The backend asks the manager to start a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub terms: OrderTerms,
    #[serde(default)]
    pub faults: Faults,
    /// When the backend accepted the order (ms since the Unix epoch).
    pub placed_at_ms: i64,
}

/// The dead-letter service tells the manager that a message of a saga was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettered {
    pub order_id: OrderId,
    /// The step whose command or reply was dead-lettered, when it could be read.
    pub step: Option<Step>,
    pub dead_letter_id: String,
    pub reason: String,
    /// When the dead letter is the saga's own `PlaceOrder` (so the saga never started): the
    /// order it carried, which the manager needs to record the order as finished. Absent
    /// from older senders, hence the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_order: Option<PlaceOrder>,
}

/// Everything the manager's queue may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManagerMessage {
    PlaceOrder(PlaceOrder),
    StepReply(StepReply),
    DeadLettered(DeadLettered),
}

/// An operator's restock (backend → inventory, on [`crate::topology::RESTOCK_QUEUE`]):
/// `amount` more of `product`. `restock_id` makes it count once however often it is
/// delivered; the audit adds the restocks to the opening stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restock {
    pub restock_id: uuid::Uuid,
    pub product: Product,
    pub amount: Quantity,
    pub requested_at_ms: i64,
}

/// The saga's state after a transition, as the read models see it. Carries the whole
/// timeline, so a projection only keeps the highest `version` and needs no ordering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderUpdated {
    pub order_id: OrderId,
    pub terms: OrderTerms,
    pub status: OrderStatus,
    pub phase: Phase,
    /// True once `order.create` succeeded: only such orders are listed by
    /// `/api/all-transaction` (the compatibility contract).
    pub created: bool,
    pub version: i64,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    pub timeline: Vec<TimelineEntry>,
    /// The order's trace (32 hex digits), when traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A user's balance changed (published by payment; `version` orders the updates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsChanged {
    pub username: Username,
    pub credits: i64,
    pub version: i64,
}

/// A product's stock changed (published by inventory; `version` orders the updates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockChanged {
    pub product: String,
    pub stock: i64,
    pub version: i64,
}

/// Everything published on the events exchange, for read models and analytics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    OrderUpdated(OrderUpdated),
    CreditsChanged(CreditsChanged),
    StockChanged(StockChanged),
}

impl Event {
    /// What the event describes (an order, a balance, a stock) and how new it is: of two
    /// events about one subject, the one with the higher version supersedes the other.
    fn subject(&self) -> (String, i64) {
        match self {
            Event::OrderUpdated(u) => (format!("order/{}", u.order_id), u.version),
            Event::CreditsChanged(c) => (format!("credits/{}", c.username.as_str()), c.version),
            Event::StockChanged(s) => (format!("stock/{}", s.product), s.version),
        }
    }
}

/// Of several events about one subject, only the newest (the first of equals), the others
/// in their order: readers keep the highest version, so the rest would change nothing.
pub fn newest_only(events: Vec<Event>) -> Vec<Event> {
    let mut newest: std::collections::HashMap<String, (i64, usize)> = Default::default();
    for (i, event) in events.iter().enumerate() {
        let (subject, version) = event.subject();
        let kept = newest.entry(subject).or_insert((version, i));
        if version > kept.0 {
            *kept = (version, i);
        }
    }
    let keep: std::collections::HashSet<usize> = newest.values().map(|&(_, i)| i).collect();
    events
        .into_iter()
        .enumerate()
        .filter_map(|(i, e)| keep.contains(&i).then_some(e))
        .collect()
}

/// Several events in one message: a batch of transitions publishes its events together,
/// so the readers take one delivery for many. Each event keeps its own version, so the
/// readers need no order between or within batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests;
