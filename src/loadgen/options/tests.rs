//! Parsing the command line: defaults, both forms of a flag, the environment, what is
//! refused and why, durations and the users a run needs.

use std::collections::BTreeMap;

use super::*;
use crate::loadgen::mix::username;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn parse(s: &str) -> Result<Options, String> {
    match Options::parse(&args(s), |_| None)? {
        Command::Run(o) => Ok(*o),
        Command::Help => Err("help".into()),
    }
}

#[test]
fn arguments_parse_with_defaults() {
    let o = parse("--concurrency 4 --count 40").unwrap();
    assert_eq!(o.url, DEFAULT_URL);
    assert_eq!(o.load, Load::Concurrency(4));
    assert_eq!((o.count, o.duration), (Some(40), None));
    assert_eq!((o.users, o.price, o.amount), (100, 1, 1));
    assert_eq!(o.mix, Mix::parse(DEFAULT_MIX).unwrap());
    assert_eq!(o.wait, Duration::from_secs(60));
    assert_eq!(o.metrics_urls, vec![DEFAULT_URL.to_string()]);
    assert!(o.progress && !o.json && !o.ceiling);
    assert_eq!(o.amqp_url, DEFAULT_AMQP_URL);
}

#[test]
fn arguments_take_both_forms_and_the_environment() {
    let a = args(
        "--url=http://h:1/ --rate 250.5 --duration=2s --count 10 --users 7 --price 0 \
         --amount 3 --mix none --seed 9 --wait 0 --json --no-progress --ceiling \
         --ceiling-duration 1s --metrics-url http://m:2",
    );
    let Command::Run(o) =
        Options::parse(&a, |k| (k == "AMQP_URL").then(|| "amqp://x".into())).unwrap()
    else {
        panic!("not a run")
    };
    assert_eq!(o.url, "http://h:1");
    assert_eq!(o.load, Load::Rate(250.5));
    assert_eq!(
        (o.duration, o.count),
        (Some(Duration::from_secs(2)), Some(10))
    );
    assert_eq!((o.users, o.price, o.amount, o.seed), (7, 0, 3, Some(9)));
    assert_eq!(o.mix.as_map(), BTreeMap::new());
    assert_eq!(o.wait, Duration::ZERO);
    assert!(o.json && !o.progress && o.ceiling);
    assert_eq!(o.ceiling_duration, Duration::from_secs(1));
    assert_eq!(o.metrics_urls, vec!["http://m:2".to_string()]);
    assert_eq!(o.amqp_url, "amqp://x");
}

#[test]
fn bad_arguments_say_what_is_wrong() {
    let cases = [
        ("--count 5", "--rate or --concurrency"),
        ("--rate 5 --concurrency 2 --count 5", "exclude"),
        ("--rate 5", "--duration or --count"),
        ("--rate 0 --count 5", "--rate"),
        ("--concurrency 2 --count 0", "--count"),
        ("--concurrency 2 --duration 10x", "--duration"),
        (
            "--concurrency 2 --count 5 --mix kill_everything=0.1",
            "unknown key",
        ),
        (
            "--concurrency 2 --count 5 --mix kill_payment=0.7,kill_create=0.7",
            "more than 1",
        ),
        ("--concurrency 2 --count 5 --price -1", "--price"),
        ("--concurrency 2 --count 5 --url localhost:8000", "--url"),
        ("--concurrency 2 --count 5 --json=yes", "takes no value"),
        ("--concurrency 2 --count", "needs a value"),
        ("--concurrency 2 --count 5 --frobnicate", "unknown argument"),
    ];
    for (line, expected) in cases {
        let e = parse(line).expect_err(line);
        assert!(e.contains(expected), "{line}: {e}");
    }
    assert_eq!(
        Options::parse(&args("--rate 1 --help"), |_| None),
        Ok(Command::Help)
    );
}

#[test]
fn durations_have_units() {
    let d = |s| parse_duration(s, "--d", false);
    assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(d("10"), Ok(Duration::from_secs(10)));
    assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
    assert!(d("0s").is_err() && d("s").is_err() && d("3 days").is_err());
    assert_eq!(parse_duration("0", "--wait", true), Ok(Duration::ZERO));
}

#[test]
fn users_suffice_for_the_planned_orders() {
    assert_eq!(default_users(40, 1), 100);
    assert_eq!(default_users(400_000, 1), 1000);
    assert_eq!(default_users(10_000, 10), 250); // 40 orders of 10 each per user
    assert_eq!(default_users(1_000, 0), 100);
    assert_eq!(default_users(1_000, 1_000), 1_000); // each order refused anyway
    let o = parse("--rate 1000 --duration 60s").unwrap();
    assert_eq!(o.users, 150);
    let o = parse("--rate 1000 --duration 60s --count 1000").unwrap();
    assert_eq!(o.users, 100);
    assert_eq!(username("abcd", 105, 100), "lg-abcd-5");
}
