//! Exchange, queue and routing-key names, in one place, and the declaration of them.
//!
//! Every service declares the whole topology at start (declarations are idempotent), so the
//! services can start in any order and a message published before its consumer exists is
//! still queued.

use crate::messages::{Step, Worker};

/// Topic exchange for commands, replies and requests between services.
pub const EXCHANGE: &str = "marketplace";
/// Topic exchange for events consumed by read models and analytics.
pub const EVENTS_EXCHANGE: &str = "marketplace.events";
/// Fanout exchange every queue dead-letters into.
pub const DLX_EXCHANGE: &str = "marketplace.dlx";

/// Replies and dead-letter notices for the manager: never wait behind new orders.
pub const MANAGER_QUEUE: &str = "manager";
/// New orders (`PlaceOrder`), taken by the manager only when a saga may start: the durable
/// backlog of a burst waits here.
pub const ORDERS_QUEUE: &str = "manager.orders";
pub const ORDER_QUEUE: &str = "order";
pub const PAYMENT_QUEUE: &str = "payment";
pub const INVENTORY_QUEUE: &str = "inventory";
pub const DELIVERY_QUEUE: &str = "delivery";
/// Operators' restocks ([`crate::messages::Restock`]), for the inventory.
pub const RESTOCK_QUEUE: &str = "inventory.restock";
/// Every event, for the backend's read models and sales figures (one consumer, one copy).
pub const BACKEND_EVENTS_QUEUE: &str = "backend.events";
pub const DEAD_LETTER_QUEUE: &str = "dead-letter";

/// Routing keys on [`EXCHANGE`].
pub const RK_PLACE_ORDER: &str = "manager.place-order";
pub const RK_STEP_REPLY: &str = "manager.step-reply";
pub const RK_DEAD_LETTERED: &str = "manager.dead-lettered";
pub const RK_RESTOCK: &str = "inventory.restock";
/// The commands for each worker ([`command_key`]).
pub const RK_COMMAND_ORDER: &str = "command.order";
pub const RK_COMMAND_PAYMENT: &str = "command.payment";
pub const RK_COMMAND_INVENTORY: &str = "command.inventory";
pub const RK_COMMAND_DELIVERY: &str = "command.delivery";
/// Routing keys on [`EVENTS_EXCHANGE`].
pub const RK_ORDER_UPDATED: &str = "event.order-updated";
pub const RK_CREDITS_CHANGED: &str = "event.credits-changed";
pub const RK_STOCK_CHANGED: &str = "event.stock-changed";
/// Several events in one message ([`crate::messages::Events`]).
pub const RK_EVENTS: &str = "event.batch";
/// What the backend's event queue takes: every routing key above on [`EVENTS_EXCHANGE`].
pub const RK_ALL_EVENTS: &str = "event.#";

/// How many times a message may be delivered before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 5;

/// The routing key of the commands for a worker.
pub fn command_key(worker: Worker) -> &'static str {
    match worker {
        Worker::Order => RK_COMMAND_ORDER,
        Worker::Payment => RK_COMMAND_PAYMENT,
        Worker::Inventory => RK_COMMAND_INVENTORY,
        Worker::Delivery => RK_COMMAND_DELIVERY,
    }
}

/// The routing key of the command for one step.
pub fn step_key(step: Step) -> &'static str {
    command_key(step.worker())
}

pub fn worker_queue(worker: Worker) -> &'static str {
    match worker {
        Worker::Order => ORDER_QUEUE,
        Worker::Payment => PAYMENT_QUEUE,
        Worker::Inventory => INVENTORY_QUEUE,
        Worker::Delivery => DELIVERY_QUEUE,
    }
}

/// One queue of the topology and what it is bound to.
pub struct QueueSpec {
    pub name: &'static str,
    pub exchange: &'static str,
    pub bindings: &'static [&'static str],
    /// Whether rejected, expired and over-limit messages go to the dead-letter exchange.
    /// False only for the dead-letter queue itself, which must never drop what it holds.
    pub dead_letters: bool,
}

pub const QUEUES: &[QueueSpec] = &[
    QueueSpec {
        name: MANAGER_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_STEP_REPLY, RK_DEAD_LETTERED],
        dead_letters: true,
    },
    QueueSpec {
        name: ORDERS_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_PLACE_ORDER],
        dead_letters: true,
    },
    QueueSpec {
        name: ORDER_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_COMMAND_ORDER],
        dead_letters: true,
    },
    QueueSpec {
        name: PAYMENT_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_COMMAND_PAYMENT],
        dead_letters: true,
    },
    QueueSpec {
        name: INVENTORY_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_COMMAND_INVENTORY],
        dead_letters: true,
    },
    QueueSpec {
        name: DELIVERY_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_COMMAND_DELIVERY],
        dead_letters: true,
    },
    QueueSpec {
        name: RESTOCK_QUEUE,
        exchange: EXCHANGE,
        bindings: &[RK_RESTOCK],
        dead_letters: true,
    },
    QueueSpec {
        name: BACKEND_EVENTS_QUEUE,
        exchange: EVENTS_EXCHANGE,
        bindings: &[RK_ALL_EVENTS],
        dead_letters: true,
    },
    QueueSpec {
        name: DEAD_LETTER_QUEUE,
        exchange: DLX_EXCHANGE,
        bindings: &[""],
        dead_letters: false,
    },
];

/// Bindings of earlier versions of the topology, removed at declaration so that nothing
/// is routed twice: `(queue, exchange, routing key)`. New orders moved from the manager's
/// queue to their own; the sales figures are now derived by the backend's one event
/// consumer, so the queue that fed them a second copy of every order update gets no more
/// (it is left in place, with whatever it held, for an operator to delete).
pub const RETIRED_BINDINGS: &[(&str, &str, &str)] = &[
    (MANAGER_QUEUE, EXCHANGE, RK_PLACE_ORDER),
    ("analytics.sales", EVENTS_EXCHANGE, RK_ORDER_UPDATED),
];

/// Whether a message rejected from `queue` goes to the dead-letter exchange (true for any
/// queue not in [`QUEUES`], which are not ours to judge).
pub fn dead_letters(queue: &str) -> bool {
    QUEUES
        .iter()
        .find(|q| q.name == queue)
        .is_none_or(|q| q.dead_letters)
}
