//! What the inventory store shows the audit: each order's reservation status (read with
//! [`common::snapshot::statuses`] from [`TABLE`]), and the books: every product's stock
//! against its reservations and restocks.

use common::snapshot::BooksSql;

/// The table keyed by order id: one reservation per order.
pub const TABLE: &str = "reservations";

/// The products.
pub const BOOKS: [BooksSql; 1] = [BooksSql {
    sums: PRODUCTS_SQL,
    orders: PRODUCT_ORDERS_SQL,
}];

/// Each product with the sums of its reservations; what it opened with counts the
/// operators' restocks.
const PRODUCTS_SQL: &str = "\
    SELECT pr.product AS name, pr.stock AS held,
           pr.opening_stock + COALESCE(rs.restocked, 0) AS opening,
           COALESCE(r.taken, 0) AS taken, COALESCE(r.order_count, 0) AS order_count
    FROM products pr LEFT JOIN (
        SELECT product,
               CAST(SUM(CASE WHEN status = 'RESERVED' THEN amount ELSE 0 END) AS BIGINT) AS taken,
               COUNT(*) AS order_count
        FROM reservations GROUP BY product
    ) r ON r.product = pr.product
    LEFT JOIN (
        SELECT product, CAST(SUM(amount) AS BIGINT) AS restocked FROM restocks GROUP BY product
    ) rs ON rs.product = pr.product
    ORDER BY pr.product";

/// A product's orders.
const PRODUCT_ORDERS_SQL: &str = "SELECT order_id FROM reservations WHERE product = $1";
