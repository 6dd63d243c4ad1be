//! `marketplace import`, the real binary, against a whole marketplace running in this
//! process (own vhost, own data, own port): what it places, what it refuses and why, and
//! that a second run places nothing again.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Runs `marketplace import ARGS` and returns its exit code, stdout and stderr.
async fn import(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .arg("import")
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How many orders `username` has, as `GET /api/orders` lists them.
async fn orders_of(base_url: &str, username: &str) -> usize {
    let page: Value = client()
        .get(format!(
            "{base_url}/api/orders?username={username}&limit=200"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["orders"].as_array().unwrap().len()
}

/// (line, order id) of every placed line of a report.
fn placed(report: &Value) -> Vec<(u64, String)> {
    report["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["line"].as_u64().unwrap(),
                o["order_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_places_each_good_line_once_and_names_the_others_with_their_reason() {
    let m = InProcess::start(&[]).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (ann, bob, cyd, dan) = (
        format!("ann-{run}"),
        format!("bob-{run}"),
        format!("cyd-{run}"),
        format!("dan-{run}"),
    );
    // Line 6 is ann's line 2 again: a second purchase, not a repeat. Lines 4 (a negative
    // amount) and 8 (a product not on sale) are refused by the API, line 5 cannot be read
    // (three cells).
    let csv = format!(
        "username,product,price,amount\n\
         {ann},,10,2\n\
         \"{bob}\",late_token,5,1\n\
         {dan},,1,-3\n\
         {cyd},,4\n\
         {ann},,10,2\n\
         {cyd},,\"4\",1\n\
         {dan},ghost_token,1,1\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.csv");
    std::fs::write(&file, csv).unwrap();
    let file = file.to_str().unwrap();

    let (code, stdout, stderr) =
        import(&[file, "--url", &m.base_url, "--json", "--concurrency", "3"]).await;
    assert_eq!(code, 1, "a refused line fails the run\n{stdout}\n{stderr}");
    let first: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(first["lines"], 7, "{first:#}");
    assert_eq!(first["accepted"], 4, "{first:#}");
    assert_eq!(first["already_placed"], 0);
    assert_eq!(first["refused"], 3);
    assert_eq!(first["not_placed"], 0);
    let refusals = first["refusals"].as_array().unwrap();
    assert_eq!(refusals[0]["line"], 4);
    assert_eq!(refusals[0]["status"], 422);
    assert_eq!(refusals[0]["error"], "invalid_field");
    assert!(
        refusals[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("amount: "),
        "{refusals:#?}"
    );
    assert_eq!(refusals[1]["line"], 5);
    assert_eq!(refusals[1]["status"], Value::Null);
    assert_eq!(refusals[1]["error"], "unparsable");
    assert!(refusals[1]["detail"].as_str().unwrap().contains("3 cells"));
    assert_eq!(refusals[2]["line"], 8);
    assert_eq!(refusals[2]["status"], 422);
    assert!(
        refusals[2]["detail"]
            .as_str()
            .unwrap()
            .starts_with("product: "),
        "{refusals:#?}"
    );
    let lines: Vec<u64> = placed(&first).iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [2, 3, 6, 7]);

    // Every accepted order completes.
    for (_, id) in placed(&first) {
        let order = final_order(&m.base_url, &id, Duration::from_secs(30)).await;
        assert_eq!(order["status"], "SUCCESS", "{order:#}");
    }

    // The same file again: nothing new, the same orders, told as already placed.
    let (code, stdout, _) = import(&[file, "--url", &m.base_url, "--json"]).await;
    assert_eq!(code, 1);
    let second: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(second["accepted"], 0, "{second:#}");
    assert_eq!(second["already_placed"], 4);
    assert_eq!(second["refused"], 3);
    assert_eq!(placed(&second), placed(&first));
    assert!(
        second["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["replayed"] == true)
    );
    for (user, count) in [(&ann, 2), (&bob, 1), (&cyd, 1), (&dan, 0)] {
        assert_eq!(orders_of(&m.base_url, user).await, count, "{user}");
    }

    // For people: a table with the refused lines and their reasons.
    let (code, table, _) = import(&[file, "--url", &m.base_url, "--no-progress"]).await;
    assert_eq!(code, 1);
    assert!(table.contains("already placed  4"), "{table}");
    assert!(
        table.contains("line 4      422 invalid_field  amount: "),
        "{table}"
    );
    assert!(table.contains("line 5      unparsable"), "{table}");
    assert!(
        table.contains("line 8      422 invalid_field  product: "),
        "{table}"
    );

    // A file with only good lines succeeds.
    let good = dir.path().join("good.csv");
    std::fs::write(&good, format!("username,price,amount\n{bob},1,1\n")).unwrap();
    let (code, stdout, stderr) =
        import(&[good.to_str().unwrap(), "--url", &m.base_url, "--json"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(orders_of(&m.base_url, &bob).await, 2);
    m.stop().await.unwrap();
}

#[tokio::test]
async fn a_file_that_cannot_be_imported_places_nothing_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    std::fs::write(&file, "user,price,amount\nann,1,1\n").unwrap();
    // No marketplace is needed: nothing is sent.
    let (code, _, stderr) = import(&[file.to_str().unwrap(), "--url", "http://127.0.0.1:9"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown column \"user\""), "{stderr}");
    let (code, _, stderr) = import(&["/nonexistent/file.csv"]).await;
    assert_eq!(code, 2, "{stderr}");
    // A good file and no marketplace: said at once, not after every line's retries.
    std::fs::write(&file, "username,price,amount\nann,1,1\n").unwrap();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) = import(&[file.to_str().unwrap(), "--url", &nobody]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
    let (code, _, _) = import(&["--concurrency", "0", "x.csv"]).await;
    assert_eq!(code, 2);
}
