//! Reading the stores: one window of order ids at a time, and the books as each store
//! sums them (see the module's documentation in `audit.rs`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use common::{
    config::Config,
    invariants::Invariant,
    snapshot::{self, BooksSql, OrderWindow},
    targets::Service,
    time::now_ms,
};
use futures::TryStreamExt;
use sqlx::{AnyPool, Row, any::AnyRow};

use super::{
    BOOK_ORDERS, DeadLetterCounts, LISTED, Report, Violation,
    books::{Books, check_account, check_outboxes, check_product},
    check::{Tally, Window, check_window},
};

fn text(row: &AnyRow, column: &str) -> anyhow::Result<String> {
    Ok(row.try_get::<String, _>(column)?)
}

fn int(row: &AnyRow, column: &str) -> anyhow::Result<i64> {
    Ok(row.try_get::<i64, _>(column)?)
}

/// Where each store's table keyed by order id is, downstream first and the backend last:
/// an order that moves while a window is read is then seen final downstream no later than
/// upstream, never the other way round.
const BY_ORDER: [(Service, &str); 7] = [
    (Service::DeadLetter, dead_letter::audit::TABLE),
    (Service::Delivery, delivery::audit::TABLE),
    (Service::Inventory, inventory::audit::TABLE),
    (Service::Payment, payment::audit::TABLE),
    (Service::Order, order::audit::TABLE),
    (Service::Manager, manager::audit::TABLE),
    (Service::Backend, backend::audit::TABLE),
];

/// The stores, one pool each (a single connection: nothing else runs on it while a
/// query streams).
pub(super) struct Stores {
    pub(super) pools: HashMap<&'static str, AnyPool>,
}

impl Stores {
    pub(super) async fn audit(
        &self,
        config: &Config,
        grace_ms: i64,
        window: usize,
    ) -> anyhow::Result<Report> {
        let mut tally = Tally::default();
        let dead_letters = self.dead_letter_counts().await?;

        // The books first: a few of their violations are what matters most in invariants 2
        // and 3 when many orders disagree.
        for books in payment::audit::BOOKS {
            self.books(
                &mut tally,
                Invariant::CreditsBalance,
                Service::Payment,
                books,
                |b| check_account(b, config.initial_credits),
            )
            .await?;
        }
        for books in inventory::audit::BOOKS {
            self.books(
                &mut tally,
                Invariant::StockBalances,
                Service::Inventory,
                books,
                |b| check_product(b, config.initial_stock),
            )
            .await?;
        }

        let mut lo: Option<String> = None;
        loop {
            let hi = self.window_end(lo.as_deref(), window).await?;
            let w = self
                .window(OrderWindow {
                    lo: lo.as_deref(),
                    hi: hi.as_deref(),
                })
                .await?;
            tally.add(check_window(&w, now_ms(), grace_ms));
            match hi {
                Some(hi) => lo = Some(hi),
                None => break,
            }
        }
        // The outboxes last: a reply written late (a step that timed out, then ran), while
        // the windows were read, is then still waiting in its outbox, or already relayed.
        let outboxes = self.outboxes().await?;
        let now = now_ms();
        for v in check_outboxes(&outboxes, now, grace_ms) {
            tally.push(Invariant::NothingLost, v);
        }
        let outbox_backlog = outboxes
            .into_iter()
            .map(|(service, (waiting, _))| (service, waiting))
            .collect();
        Ok(tally.report(now, grace_ms, dead_letters, outbox_backlog))
    }

    fn pool(&self, service: Service) -> &AnyPool {
        &self.pools[service.name()]
    }

    /// The end of the window that starts after `lo`: the smallest of each store's
    /// `window`-th order id after `lo`, so that no store has more than `window` rows in
    /// it; None (open-ended) when every store has fewer.
    async fn window_end(&self, lo: Option<&str>, window: usize) -> anyhow::Result<Option<String>> {
        let mut end: Option<String> = None;
        for (service, table) in BY_ORDER {
            let nth = snapshot::nth_after(self.pool(service), table, lo, window)
                .await
                .with_context(|| format!("reading the {service} store"))?;
            if let Some(id) = nth
                && end.as_ref().is_none_or(|end| &id < end)
            {
                end = Some(id);
            }
        }
        Ok(end)
    }

    /// Every store's snapshot of the order ids in `window`.
    async fn window(&self, window: OrderWindow<'_>) -> anyhow::Result<Window> {
        let reading = |service: Service| format!("reading the {service} store");
        let statuses = |service: Service, table: &'static str| async move {
            snapshot::statuses(self.pool(service), table, window)
                .await
                .with_context(|| reading(service))
        };
        let mut w = Window::default();
        w.dead_lettered_orders.extend(
            dead_letter::audit::orders(self.pool(Service::DeadLetter), window)
                .await
                .with_context(|| reading(Service::DeadLetter))?,
        );
        w.deliveries
            .extend(statuses(Service::Delivery, delivery::audit::TABLE).await?);
        w.reservations
            .extend(statuses(Service::Inventory, inventory::audit::TABLE).await?);
        w.payments
            .extend(statuses(Service::Payment, payment::audit::TABLE).await?);
        w.order_records.extend(
            order::audit::records(self.pool(Service::Order), window)
                .await
                .with_context(|| reading(Service::Order))?,
        );
        w.sagas.extend(
            manager::audit::sagas(self.pool(Service::Manager), window)
                .await
                .with_context(|| reading(Service::Manager))?,
        );
        w.orders = backend::audit::accepted(self.pool(Service::Backend), window)
            .await
            .with_context(|| reading(Service::Backend))?;
        Ok(w)
    }

    /// Streams the books `books.sums` sums in `service`'s store, checks each, and lists
    /// the violations of the first [`LISTED`] that have any, each naming its first orders
    /// (`books.orders`, read once the stream is done: the store has one connection).
    async fn books(
        &self,
        tally: &mut Tally,
        invariant: Invariant,
        service: Service,
        books: BooksSql,
        check: impl Fn(&Books) -> Vec<Violation>,
    ) -> anyhow::Result<()> {
        let pool = self.pool(service);
        let mut listed = Vec::new();
        {
            let mut rows = sqlx::query(books.sums).fetch(pool);
            while let Some(r) = rows
                .try_next()
                .await
                .with_context(|| format!("summing the {service} store's books"))?
            {
                let holder = Books {
                    name: text(&r, "name")?,
                    held: r.try_get::<Option<i64>, _>("held")?,
                    opening: r.try_get::<Option<i64>, _>("opening")?,
                    taken: int(&r, "taken")?,
                    order_count: int(&r, "order_count")?,
                    orders: vec![],
                };
                let found = check(&holder);
                if found.is_empty() {
                    continue;
                }
                if listed.len() < LISTED && tally.has_room(invariant) {
                    listed.push(holder);
                } else {
                    tally.unlisted(invariant, found.len());
                }
            }
        }
        for mut holder in listed {
            let sql = format!("{} ORDER BY order_id LIMIT {BOOK_ORDERS}", books.orders);
            holder.orders = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(holder.name.clone())
                .fetch_all(pool)
                .await
                .with_context(|| format!("reading the {service} store"))?
                .iter()
                .map(|r| text(r, "order_id"))
                .collect::<anyhow::Result<_>>()?;
            for v in check(&holder) {
                tally.push(invariant, v);
            }
        }
        Ok(())
    }

    async fn dead_letter_counts(&self) -> anyhow::Result<DeadLetterCounts> {
        let counts = dead_letter::audit::counts(self.pool(Service::DeadLetter))
            .await
            .context("reading the dead-letter store")?;
        Ok(DeadLetterCounts {
            open: counts.open,
            total: counts.total,
        })
    }

    /// service → (waiting messages, oldest created_at_ms).
    async fn outboxes(&self) -> anyhow::Result<BTreeMap<String, (i64, Option<i64>)>> {
        let mut outboxes = BTreeMap::new();
        for service in Service::ALL {
            let waiting = common::outbox::waiting(self.pool(service))
                .await
                .with_context(|| format!("reading the {service} outbox"))?;
            outboxes.insert(service.to_string(), waiting);
        }
        Ok(outboxes)
    }
}
