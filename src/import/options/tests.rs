use super::*;

fn parse(args: &[&str]) -> Result<Command, String> {
    Options::parse(&args.iter().map(ToString::to_string).collect::<Vec<_>>())
}

#[test]
fn defaults_need_only_the_file() {
    let Command::Run(o) = parse(&["orders.csv"]).unwrap() else {
        panic!("a run")
    };
    assert_eq!(
        o,
        Options {
            file: "orders.csv".into(),
            url: DEFAULT_URL.into(),
            concurrency: 8,
            batch: None,
            json: false,
            progress: true,
        }
    );
}

#[test]
fn every_flag_is_read_in_either_spelling() {
    let Command::Run(o) = parse(&[
        "--url=http://h:1/",
        "--concurrency",
        "3",
        "x.csv",
        "--batch",
        "monday",
        "--json",
        "--no-progress",
    ])
    .unwrap() else {
        panic!("a run")
    };
    assert_eq!(o.url, "http://h:1");
    assert_eq!(o.concurrency, 3);
    assert_eq!(o.batch.as_deref(), Some("monday"));
    assert!(o.json && !o.progress);
    assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
}

#[test]
fn bad_arguments_say_what_is_wrong() {
    for (args, says) in [
        (vec![], "which file"),
        (vec!["a.csv", "b.csv"], "one file at a time"),
        (vec!["a.csv", "--concurrency", "0"], "--concurrency"),
        (vec!["a.csv", "--concurrency", "257"], "--concurrency"),
        (vec!["a.csv", "--url", "localhost:8000"], "--url"),
        (vec!["a.csv", "--url"], "needs a value"),
        (vec!["a.csv", "--json=yes"], "takes no value"),
        (vec!["a.csv", "--batch", ""], "--batch"),
        (vec!["a.csv", "--fast"], "unknown argument"),
    ] {
        let e = parse(&args).unwrap_err();
        assert!(e.contains(says), "{args:?}: {e}");
    }
}
