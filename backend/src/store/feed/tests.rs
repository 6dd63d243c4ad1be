use common::{config::Config, shutdown::Shutdown};

use super::*;

async fn db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let config = Config::from_lookup(|k| (k == "DATA_DIR").then(|| path.clone())).unwrap();
    let db = Db::open(&config, "backend", &crate::MIGRATIONS, &Shutdown::new())
        .await
        .unwrap();
    (db, dir)
}

async fn append_n(db: &Db, users: &[&str], at_ms: i64) {
    let rows: Vec<NewRow> = users
        .iter()
        .map(|u| NewRow {
            order_id: OrderId::new(),
            username: u.to_string(),
            payload: format!("{{\"username\":\"{u}\"}}"),
        })
        .collect();
    let mut tx = db.begin().await.unwrap();
    append(&mut tx, db.backend(), &rows, at_ms).await.unwrap();
    tx.commit().await.unwrap();
}

async fn seqs(db: &Db, after_seq: i64, filter: &Filter) -> Vec<i64> {
    after(db, after_seq, filter, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

#[tokio::test]
async fn seqs_follow_each_other_across_transactions_and_filters_apply() {
    let (db, _dir) = db().await;
    assert_eq!(bounds(&db).await.unwrap(), None);
    append_n(&db, &["ann", "bob", "ann"], 1).await;
    append_n(&db, &["bob"], 2).await;
    assert_eq!(seqs(&db, 0, &Filter::default()).await, [1, 2, 3, 4]);
    assert_eq!(seqs(&db, 2, &Filter::default()).await, [3, 4]);
    let anns = Filter {
        username: Some("ann".into()),
        order_id: None,
    };
    assert_eq!(seqs(&db, 0, &anns).await, [1, 3]);
    assert_eq!(bounds(&db).await.unwrap(), Some((1, 4)));
}

#[tokio::test]
async fn pruning_goes_by_age_and_count_from_the_oldest_end_and_keeps_the_newest_row() {
    let (db, _dir) = db().await;
    for at in 1..=10 {
        append_n(&db, &["ann"], at * 1000).await;
    }
    // Nothing is old, nothing is too many.
    assert_eq!(prune(&db, 0, 100).await.unwrap(), 0);
    // By count: the newest three stay.
    assert_eq!(prune(&db, 0, 3).await.unwrap(), 7);
    assert_eq!(bounds(&db).await.unwrap(), Some((8, 10)));
    // By age: rows written before 9 s go.
    assert_eq!(prune(&db, 9000, 100).await.unwrap(), 1);
    assert_eq!(bounds(&db).await.unwrap(), Some((9, 10)));
    // Everything is old: all but the newest go, and the next seq follows it.
    assert_eq!(prune(&db, i64::MAX, 0).await.unwrap(), 1);
    assert_eq!(bounds(&db).await.unwrap(), Some((10, 10)));
    append_n(&db, &["ann"], 11_000).await;
    assert_eq!(bounds(&db).await.unwrap(), Some((10, 11)));
}
