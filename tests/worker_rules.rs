//! The rules that keep money and stock right, checked on each worker directly against real
//! databases (SQLite and PostgreSQL): a repeated command changes nothing, a compensation
//! that comes first leaves a tombstone, concurrent debits never overdraw.

mod support;

use std::sync::Arc;

use common::{
    bus::HandlerError,
    config::Config,
    db::Db,
    domain::{Credits, OrderId, OrderStatus, OrderTerms, Quantity, Username},
    messages::{Refusal, Step, StepCommand, StepResult},
    shutdown::Shutdown,
    worker::StepLogic,
};
use sqlx::Row;
use support::PgDatabase;

/// A database for one worker: SQLite in a temp dir, or a fresh PostgreSQL database.
struct Store {
    db: Db,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

async fn store(
    service: &str,
    migrations: &'static sqlx::migrate::Migrator,
    postgres: bool,
) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let pg = postgres.then(PgDatabase::create);
    let data_dir = dir.path().display().to_string();
    let url = pg.as_ref().map(support::PgDatabase::url);
    let config = Config::from_lookup(|k| match k {
        "DATA_DIR" => Some(data_dir.clone()),
        "DATABASE_URL" => url.clone(),
        _ => None,
    })
    .unwrap();
    let db = Db::open(&config, service, migrations, &Shutdown::new())
        .await
        .unwrap();
    Store {
        db,
        _dir: dir,
        _pg: pg,
    }
}

fn command(order_id: OrderId, step: Step, price: i64, amount: i64) -> StepCommand {
    StepCommand {
        order_id,
        step,
        terms: OrderTerms::new(
            Username::parse("carol").unwrap(),
            Credits::new(price).unwrap(),
            Quantity::new(amount).unwrap(),
        )
        .unwrap(),
        fault: None,
        reject_status: None,
    }
}

async fn run<L: StepLogic>(logic: &L, db: &Db, cmd: &StepCommand) -> StepResult {
    let mut tx = db.begin().await.unwrap();
    let result = match logic.apply(&mut tx, cmd, &mut Vec::new()).await {
        Ok(r) => r,
        Err(HandlerError::Transient(e) | HandlerError::Permanent(e)) => panic!("{e:#}"),
    };
    tx.commit().await.unwrap();
    result
}

async fn scalar(db: &Db, sql: &'static str, bind: &str) -> i64 {
    sqlx::query(sql)
        .bind(bind)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

async fn credits(db: &Db) -> i64 {
    scalar(
        db,
        "SELECT credits FROM accounts WHERE username = $1",
        "carol",
    )
    .await
}

async fn payment_rules(postgres: bool) {
    let s = store("payment", &payment::MIGRATIONS, postgres).await;
    let p = payment::Payments {
        initial_credits: 500,
    };

    // A repeated charge debits once and repeats its answer.
    let a = OrderId::new();
    assert_eq!(
        run(&p, &s.db, &command(a, Step::ChargePayment, 10, 3)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&p, &s.db, &command(a, Step::ChargePayment, 10, 3)).await,
        StepResult::Done
    );
    assert_eq!(credits(&s.db).await, 470);

    // A repeated refund credits once.
    assert_eq!(
        run(&p, &s.db, &command(a, Step::RefundPayment, 10, 3)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&p, &s.db, &command(a, Step::RefundPayment, 10, 3)).await,
        StepResult::Done
    );
    assert_eq!(credits(&s.db).await, 500);
    // A charge after its refund is a no-op.
    assert_eq!(
        run(&p, &s.db, &command(a, Step::ChargePayment, 10, 3)).await,
        StepResult::Skipped
    );
    assert_eq!(credits(&s.db).await, 500);

    // A refund that overtakes its charge leaves a tombstone; the late charge does nothing.
    let b = OrderId::new();
    assert_eq!(
        run(&p, &s.db, &command(b, Step::RefundPayment, 100, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&p, &s.db, &command(b, Step::ChargePayment, 100, 1)).await,
        StepResult::Skipped
    );
    assert_eq!(credits(&s.db).await, 500);

    // Insufficient funds: declined, nothing debited, the same answer when repeated, and the
    // compensation of a declined charge refunds nothing.
    let c = OrderId::new();
    let declined = StepResult::Refused {
        reason: Refusal::InsufficientFunds,
    };
    assert_eq!(
        run(&p, &s.db, &command(c, Step::ChargePayment, 501, 1)).await,
        declined
    );
    assert_eq!(
        run(&p, &s.db, &command(c, Step::ChargePayment, 501, 1)).await,
        declined
    );
    assert_eq!(
        run(&p, &s.db, &command(c, Step::RefundPayment, 501, 1)).await,
        StepResult::Done
    );
    assert_eq!(credits(&s.db).await, 500);

    // 20 concurrent charges of 100 against 500 credits: exactly 5 succeed, never below 0.
    let db = s.db.clone();
    let p = Arc::new(p);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (db, p) = (db.clone(), p.clone());
            tokio::spawn(async move {
                run(
                    &*p,
                    &db,
                    &command(OrderId::new(), Step::ChargePayment, 100, 1),
                )
                .await
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let done = results
        .iter()
        .filter(|r| matches!(r, Ok(StepResult::Done)))
        .count();
    assert_eq!(done, 5);
    assert_eq!(credits(&s.db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_charges_once_refunds_once_tombstones_and_never_overdraws_on_sqlite() {
    payment_rules(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_charges_once_refunds_once_tombstones_and_never_overdraws_on_postgres() {
    payment_rules(true).await;
}

async fn stock(db: &Db) -> i64 {
    scalar(
        db,
        "SELECT stock FROM products WHERE product = $1",
        "late_token",
    )
    .await
}

async fn inventory_rules(postgres: bool) {
    let s = store("inventory", &inventory::MIGRATIONS, postgres).await;
    inventory::stock_products(&s.db, &common::catalog::Catalog::single(50))
        .await
        .unwrap();
    // Restocking at a restart does not reset the stock.
    let i = inventory::Inventory;
    let a = OrderId::new();
    assert_eq!(
        run(&i, &s.db, &command(a, Step::ReserveStock, 1, 10)).await,
        StepResult::Done
    );
    inventory::stock_products(&s.db, &common::catalog::Catalog::single(50))
        .await
        .unwrap();
    assert_eq!(
        run(&i, &s.db, &command(a, Step::ReserveStock, 1, 10)).await,
        StepResult::Done
    );
    assert_eq!(stock(&s.db).await, 40);
    assert_eq!(
        run(&i, &s.db, &command(a, Step::ReleaseStock, 1, 10)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&i, &s.db, &command(a, Step::ReleaseStock, 1, 10)).await,
        StepResult::Done
    );
    assert_eq!(stock(&s.db).await, 50);

    let b = OrderId::new();
    assert_eq!(
        run(&i, &s.db, &command(b, Step::ReleaseStock, 1, 5)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&i, &s.db, &command(b, Step::ReserveStock, 1, 5)).await,
        StepResult::Skipped
    );
    assert_eq!(stock(&s.db).await, 50);

    let refused = StepResult::Refused {
        reason: Refusal::InsufficientStock,
    };
    assert_eq!(
        run(
            &i,
            &s.db,
            &command(OrderId::new(), Step::ReserveStock, 1, 51)
        )
        .await,
        refused
    );

    // 200 concurrent reservations of 1 for the last 50: exactly 50 succeed, stock ends at 0.
    let db = s.db.clone();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                run(
                    &inventory::Inventory,
                    &db,
                    &command(OrderId::new(), Step::ReserveStock, 1, 1),
                )
                .await
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Ok(StepResult::Done)))
            .count(),
        50
    );
    assert_eq!(stock(&s.db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_reserves_once_releases_once_tombstones_and_sells_exactly_the_stock_on_sqlite() {
    inventory_rules(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_reserves_once_releases_once_tombstones_and_sells_exactly_the_stock_on_postgres()
{
    inventory_rules(true).await;
}

#[tokio::test]
async fn order_reject_before_create_leaves_a_tombstone_and_a_late_complete_is_skipped() {
    let s = store("order", &order::MIGRATIONS, false).await;
    let o = order::Orders;
    let a = OrderId::new();
    let mut reject = command(a, Step::RejectOrder, 1, 1);
    reject.reject_status = Some(OrderStatus::Unknown);
    assert_eq!(run(&o, &s.db, &reject).await, StepResult::Done);
    assert_eq!(
        run(&o, &s.db, &command(a, Step::CreateOrder, 1, 1)).await,
        StepResult::Skipped
    );
    assert_eq!(
        run(&o, &s.db, &command(a, Step::CompleteOrder, 1, 1)).await,
        StepResult::Skipped
    );
    let status: String = sqlx::query("SELECT status FROM orders WHERE order_id = $1")
        .bind(a.to_string())
        .fetch_one(s.db.pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_eq!(status, "UNKNOWN");

    // The normal path, with a repeated create and complete.
    let b = OrderId::new();
    assert_eq!(
        run(&o, &s.db, &command(b, Step::CreateOrder, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&o, &s.db, &command(b, Step::CreateOrder, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&o, &s.db, &command(b, Step::CompleteOrder, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&o, &s.db, &command(b, Step::CompleteOrder, 1, 1)).await,
        StepResult::Done
    );
}

#[tokio::test]
async fn delivery_cancel_before_schedule_leaves_a_tombstone() {
    let s = store("delivery", &delivery::MIGRATIONS, false).await;
    let d = delivery::Deliveries;
    let a = OrderId::new();
    assert_eq!(
        run(&d, &s.db, &command(a, Step::CancelDelivery, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&d, &s.db, &command(a, Step::ScheduleDelivery, 1, 1)).await,
        StepResult::Skipped
    );
    let b = OrderId::new();
    assert_eq!(
        run(&d, &s.db, &command(b, Step::ScheduleDelivery, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&d, &s.db, &command(b, Step::ScheduleDelivery, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&d, &s.db, &command(b, Step::CancelDelivery, 1, 1)).await,
        StepResult::Done
    );
    assert_eq!(
        run(&d, &s.db, &command(b, Step::ScheduleDelivery, 1, 1)).await,
        StepResult::Skipped
    );
}
