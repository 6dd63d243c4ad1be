//! What the stores rely on from a SQLite connection, whose statements run on the calling
//! task's thread (the patched driver in vendor/sqlx-sqlite): a transaction commits, rolls
//! back when dropped, survives a failing statement, and excludes every other writer.

use sqlx::Row;

use super::*;

async fn db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let config = Config::from_lookup(|k| (k == "DATA_DIR").then(|| path.clone())).unwrap();
    let db = Db::open(&config, "db-test", &COMMON_MIGRATIONS, &Shutdown::new())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO counter (id, n) VALUES (1, 0), (2, 0), (3, 0)")
        .execute(db.pool())
        .await
        .unwrap();
    (db, dir)
}

async fn n(db: &Db, id: i64) -> i64 {
    sqlx::query("SELECT n FROM counter WHERE id = $1")
        .bind(id)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0)
}

async fn add(tx: &mut Tx, id: i64, by: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE counter SET n = n + $1 WHERE id = $2")
        .bind(by)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map(drop)
}

#[tokio::test]
async fn a_committed_transaction_stays_and_a_dropped_one_leaves_nothing() {
    let (db, _dir) = db().await;
    let mut tx = db.begin().await.unwrap();
    add(&mut tx, 1, 5).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    add(&mut tx, 1, 100).await.unwrap();
    drop(tx);

    assert_eq!(n(&db, 1).await, 5);
    // The connection went back to the pool out of its transaction: the next one begins.
    let mut tx = db.begin().await.unwrap();
    add(&mut tx, 1, 1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n(&db, 1).await, 6);
}

#[tokio::test]
async fn a_failing_statement_fails_alone_and_the_transaction_still_rolls_back() {
    let (db, _dir) = db().await;
    let mut tx = db.begin().await.unwrap();
    add(&mut tx, 2, 7).await.unwrap();
    let err = sqlx::query("INSERT INTO counter (id, n) VALUES (1, 0)")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    add(&mut tx, 2, 1).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(n(&db, 2).await, 0);
}

#[tokio::test]
async fn a_savepoint_rolls_back_without_the_transaction_around_it() {
    let (db, _dir) = db().await;
    let mut tx = db.begin().await.unwrap();
    add(&mut tx, 3, 1).await.unwrap();
    {
        let mut inner = sqlx::Connection::begin(&mut *tx).await.unwrap();
        sqlx::query("UPDATE counter SET n = n + 10 WHERE id = 3")
            .execute(&mut *inner)
            .await
            .unwrap();
        // Dropped: back to the savepoint.
    }
    tx.commit().await.unwrap();
    assert_eq!(n(&db, 3).await, 1);
}

#[tokio::test]
async fn reads_give_every_row_or_the_first_one() {
    let (db, _dir) = db().await;
    let rows = sqlx::query("SELECT id FROM counter ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 2, 3]);
    let first: Option<i64> = sqlx::query_scalar("SELECT id FROM counter ORDER BY id DESC")
        .fetch_optional(db.pool())
        .await
        .unwrap();
    assert_eq!(first, Some(3));
    // A statement after a read cut short starts afresh.
    let none: Option<i64> = sqlx::query_scalar("SELECT id FROM counter WHERE id > 3")
        .fetch_optional(db.pool())
        .await
        .unwrap();
    assert_eq!(none, None);
}

/// Read-modify-write transactions from tasks on several threads: none sees another's
/// uncommitted state or loses its update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_several_threads_lose_no_update() {
    let (db, _dir) = db().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let mut tx = db.begin().await.unwrap();
                    let seen: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                    sqlx::query("UPDATE counter SET n = $1 WHERE id = 1")
                        .bind(seen + 1)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(n(&db, 1).await, 400);
}
