//! What the delivery store shows the audit: each order's delivery status, read with
//! [`common::snapshot::statuses`] from [`TABLE`].

/// The table keyed by order id: one delivery per order.
pub const TABLE: &str = "deliveries";
