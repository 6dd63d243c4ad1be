//! What the payment store shows the audit: each order's payment status (read with
//! [`common::snapshot::statuses`] from [`TABLE`]), and the books: every account against
//! its payments.

use common::snapshot::BooksSql;

/// The table keyed by order id: one payment per order.
pub const TABLE: &str = "payments";

/// The accounts, then the payments of users who have no account.
pub const BOOKS: [BooksSql; 2] = [
    BooksSql {
        sums: ACCOUNTS_SQL,
        orders: ACCOUNT_ORDERS_SQL,
    },
    BooksSql {
        sums: UNOWNED_CHARGES_SQL,
        orders: ACCOUNT_ORDERS_SQL,
    },
];

/// Each account with the sums of its payments: one statement, so an account and its
/// payments (written in one transaction) are read consistently. PostgreSQL sums BIGINT
/// as NUMERIC: hence the casts.
const ACCOUNTS_SQL: &str = "\
    SELECT a.username AS name, a.credits AS held, a.opening_credits AS opening,
           COALESCE(p.taken, 0) AS taken, COALESCE(p.order_count, 0) AS order_count
    FROM accounts a LEFT JOIN (
        SELECT username,
               CAST(SUM(CASE WHEN status = 'CHARGED' THEN amount ELSE 0 END) AS BIGINT) AS taken,
               COUNT(*) AS order_count
        FROM payments GROUP BY username
    ) p ON p.username = a.username
    ORDER BY a.username";

/// The payments of users who have no account.
const UNOWNED_CHARGES_SQL: &str = "\
    SELECT p.username AS name, CAST(NULL AS BIGINT) AS held, CAST(NULL AS BIGINT) AS opening,
           CAST(SUM(CASE WHEN p.status = 'CHARGED' THEN p.amount ELSE 0 END) AS BIGINT) AS taken,
           COUNT(*) AS order_count
    FROM payments p
    WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.username = p.username)
    GROUP BY p.username
    ORDER BY p.username";

/// A user's orders.
const ACCOUNT_ORDERS_SQL: &str = "SELECT order_id FROM payments WHERE username = $1";
