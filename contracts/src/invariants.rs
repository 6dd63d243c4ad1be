//! The five invariants the marketplace keeps, which the audit checks (`/api/audit`), and
//! the rows of the services' snapshots it checks them over that are more than an order id
//! and a status.

use std::fmt;

use crate::messages::TimelineEvent;

/// An invariant, numbered as the audit's report numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// 1: every accepted order reaches a final status.
    EveryOrderFinishes,
    /// 2: credits balance, and only SUCCESS orders stay charged.
    CreditsBalance,
    /// 3: stock balances, only SUCCESS orders keep their reservation, never negative.
    StockBalances,
    /// 4: no step's effect is applied twice for one order.
    NoEffectTwice,
    /// 5: no message is lost.
    NothingLost,
}

impl Invariant {
    pub const ALL: [Invariant; 5] = [
        Self::EveryOrderFinishes,
        Self::CreditsBalance,
        Self::StockBalances,
        Self::NoEffectTwice,
        Self::NothingLost,
    ];

    /// Its number in the report, from 1.
    pub fn id(self) -> u8 {
        self as u8 + 1
    }

    /// Its place in [`Invariant::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// What it says, as the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::EveryOrderFinishes => "every accepted order reaches a final status",
            Self::CreditsBalance => {
                "credits: opening = balance + charged - refunded; only SUCCESS orders stay charged"
            }
            Self::StockBalances => {
                "stock: opening + restocks = stock + reserved - released; only SUCCESS orders keep their reservation; never negative"
            }
            Self::NoEffectTwice => "no step's effect is applied twice for one order",
            Self::NothingLost => {
                "no message is lost: whatever could not be processed is in the dead-letter store"
            }
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id(), self.name())
    }
}

/// An accepted order as the backend's read model shows it to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedOrder {
    pub order_id: String,
    pub status: String,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A saga as the manager stores it: what the audit needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub status: String,
    pub phase: String,
    pub updated_at_ms: i64,
    /// (step, event) for every timeline entry; None for an event the audit does not know.
    pub timeline: Vec<(String, Option<TimelineEvent>)>,
}

#[cfg(test)]
mod tests;
