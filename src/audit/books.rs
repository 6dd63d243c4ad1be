//! The books of each user and each product (invariants 2 and 3 as a whole), and the
//! outboxes (5): pure checks over what the payment and inventory stores sum.

use std::collections::BTreeMap;

use super::Violation;

/// One user's or one product's books, as its store sums them.
#[derive(Debug, Clone, Default)]
pub(super) struct Books {
    /// The username or the product.
    pub(super) name: String,
    /// Credits or stock held now; None for payments of a user who has no account.
    pub(super) held: Option<i64>,
    /// What the account or product opened with; None for those opened before the column
    /// existed (the configured initial amount is assumed).
    pub(super) opening: Option<i64>,
    /// Σ amount of its CHARGED payments, or of its RESERVED reservations.
    pub(super) taken: i64,
    /// How many payments or reservations it has, whatever their status.
    pub(super) order_count: i64,
    /// Its first orders by id (at most [`super::BOOK_ORDERS`]): read only for a violation
    /// listed.
    pub(super) orders: Vec<String>,
}

/// "; the first 100 of its 523 orders listed" when `b` has more orders than it names.
fn more_orders(b: &Books) -> String {
    if b.order_count > b.orders.len() as i64 && !b.orders.is_empty() {
        format!(
            "; the first {} of its {} orders listed",
            b.orders.len(),
            b.order_count
        )
    } else {
        String::new()
    }
}

/// Invariant 2, for one user: the books balance (always: a debit and its payment row are one
/// transaction), and the balance is not negative. A refund that came before its charge
/// leaves a tombstone and no account: only money actually taken from a user without an
/// account is a violation.
pub(super) fn check_account(b: &Books, initial_credits: i64) -> Vec<Violation> {
    let mut found = Vec::new();
    let name = &b.name;
    let charged = b.taken;
    let Some(credits) = b.held else {
        if charged != 0 {
            found.push(Violation {
                detail: format!(
                    "{charged} credits charged to {name}, who has no account{}",
                    more_orders(b)
                ),
                orders: b.orders.clone(),
            });
        }
        return found;
    };
    let opening = b.opening.unwrap_or(initial_credits);
    if opening != credits + charged {
        found.push(Violation {
            detail: format!(
                "{name}: opened with {opening}, holds {credits}, charged {charged} net: \
                 {} credits unaccounted for{}",
                opening - credits - charged,
                more_orders(b)
            ),
            orders: b.orders.clone(),
        });
    }
    if credits < 0 {
        found.push(Violation {
            detail: format!("{name}: negative balance {credits}"),
            orders: vec![],
        });
    }
    found
}

/// Invariant 3, for one product: the same for stock.
pub(super) fn check_product(b: &Books, initial_stock: i64) -> Vec<Violation> {
    let mut found = Vec::new();
    let Some(stock) = b.held else {
        return found;
    };
    let (product, reserved) = (&b.name, b.taken);
    let opening = b.opening.unwrap_or(initial_stock);
    if opening != stock + reserved {
        found.push(Violation {
            detail: format!(
                "{product}: stocked {opening}, holds {stock}, reserved {reserved} net: \
                 {} units unaccounted for{}",
                opening - stock - reserved,
                more_orders(b)
            ),
            orders: b.orders.clone(),
        });
    }
    if stock < 0 {
        found.push(Violation {
            detail: format!("{product}: negative stock {stock}"),
            orders: vec![],
        });
    }
    found
}

/// Invariant 5: messages that never left a service. `outboxes`: service → (waiting messages, oldest
/// created_at_ms).
pub(super) fn check_outboxes(
    outboxes: &BTreeMap<String, (i64, Option<i64>)>,
    now: i64,
    grace_ms: i64,
) -> Vec<Violation> {
    outboxes
        .iter()
        .filter_map(|(service, (waiting, oldest))| {
            let oldest = (*oldest).filter(|oldest| now - oldest >= grace_ms)?;
            Some(Violation {
                detail: format!(
                    "{waiting} message(s) in the {service} outbox, the oldest unpublished for {} s",
                    (now - oldest) / 1000
                ),
                orders: vec![],
            })
        })
        .collect()
}
