//! `marketplace loadgen`: drives a running marketplace over HTTP and reports what it
//! sustained: accepted and completed orders per second, final statuses, POST→final latency
//! and RabbitMQ deliveries per order; optionally next to what the broker itself sustains
//! for the saga's pattern (`--ceiling`).
//!
//! The file has two halves. The pure core (argument parsing, the request mix, percentiles,
//! Prometheus text parsing, timestamps, the report and its table) has no I/O and is unit
//! tested below. The I/O around it posts, polls, reads orders and measures the broker.
//!
//! Where the numbers come from, and why:
//! - *Latency* is `updated_at − created_at` of each final order, both stamped by the
//!   server's clock: no client/server clock skew, and no client queueing in the number.
//! - *Final so far* (progress, and the cheap part of the wait) is the delta of
//!   `marketplace_orders_total` on `/metrics`: one request however many orders are open.
//!   Per-order reads (`GET /api/orders/{id}`) are the truth the report is built from.
//! - *Messages per order* is the delta of `marketplace_messages_consumed_total` (deliveries
//!   handled, every queue) over the run, divided by the orders that finished. Any other
//!   traffic on the same marketplace during the run is counted too.

use std::{
    collections::{BTreeMap, VecDeque},
    io::IsTerminal,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

// ───────────────────────────── pure core ─────────────────────────────

/// `marketplace loadgen --help`.
pub const USAGE: &str = "\
marketplace loadgen: drive a running marketplace over HTTP and report what it sustained

Usage:
  marketplace loadgen [--url URL] (--rate N | --concurrency N) (--duration D | --count N)
                      [--users N] [--price N] [--amount N] [--mix SHARES] [--seed N]
                      [--wait D] [--json] [--no-progress] [--metrics-url URL]...
                      [--ceiling [--ceiling-duration D] [--amqp-url URL]]

Load (one of):
  --rate N             open loop: N POSTs per second at fixed arrival times, whatever the
                       answers take (at most 4096 outstanding; arrivals beyond are skipped
                       and counted)
  --concurrency N      closed loop: N clients, each posting as soon as its last answer came

Bound of the posting phase (one or both; whichever comes first):
  --duration D         e.g. 10s, 500ms, 2m
  --count N            N POSTs (arrivals, with --rate)

Orders:
  --url URL            the marketplace [default: http://127.0.0.1:8000]
  --users N            distinct buyers lg-<run>-<i % N> (each starts with 500 credits)
                       [default: enough credits for the planned orders, at least 100]
  --price N            price of one token [default: 1]
  --amount N           tokens per order [default: 1]
  --mix SHARES         per-request shares (0..1, summing to at most 1) of special orders;
                       the rest are plain purchases. Keys: insufficient_fund (price above
                       the credits), out_of_stock (amount 1000000, price 0), kill_create,
                       kill_payment, timeout_payment, kill_inventory, timeout_inventory,
                       kill_deliver, timeout_deliver (fault flags; the server must run
                       with FAULT_INJECTION=on). `none` for plain purchases only.
                       [default: insufficient_fund=0.05,out_of_stock=0.01,kill_payment=0.01,timeout_inventory=0.01]
  --seed N             seed of the mix (the same seed picks the same kinds) [default: random]

Completion and report:
  --wait D             after posting, how long to wait for accepted orders to be final
                       [default: 60s]
  --metrics-url URL    where /metrics is read (repeat for a split deployment: every
                       process's counters are summed) [default: --url]
  --json               one JSON object on stdout instead of the table
  --no-progress        no progress bar (there is none either when stderr is not a terminal)

Broker ceiling:
  --ceiling            first measure what RabbitMQ sustains for the saga's pattern (a
                       quorum queue, persistent 300-byte messages, publisher confirms, manual
                       acks) and report the marketplace's completed/s as a share of it
  --ceiling-duration D how long to measure [default: 5s]
  --amqp-url URL       [default: $AMQP_URL, or amqp://guest:guest@127.0.0.1:5672/%2f]

Exit status: 0 with a report, 1 if the run could not be made, 2 for bad arguments.
";

/// Outstanding POSTs an open loop allows before it skips arrivals: large enough never to
/// bind on a healthy marketplace, small enough to keep sockets and memory bounded on a
/// stalled one.
pub const MAX_OUTSTANDING: usize = 4096;
/// Credits of a new user (the server's `INITIAL_CREDITS` default).
pub const INITIAL_CREDITS: i64 = 500;
/// Price of an `insufficient_fund` order: above any new user's credits.
pub const INSUFFICIENT_PRICE: i64 = 100_000;
/// Amount of an `out_of_stock` order: above any stock.
pub const OUT_OF_STOCK_AMOUNT: i64 = 1_000_000;
/// Deliveries the least a five-step saga costs, for a ceiling without a measured figure:
/// the order's placement, five commands and five replies.
pub const MIN_MESSAGES_PER_ORDER: f64 = 11.0;
/// Concurrent order reads at the end: enough to be quick, few enough not to be a load.
pub const READ_CONCURRENCY: usize = 32;
/// Orders per second assumed to size the users of a closed loop bounded by time only
/// (nothing else says how many orders it will place).
const ASSUMED_MAX_ORDERS_PER_S: u64 = 2_000;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8000";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_MIX: &str =
    "insufficient_fund=0.05,out_of_stock=0.01,kill_payment=0.01,timeout_inventory=0.01";

/// What a request is made to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Plain,
    InsufficientFund,
    OutOfStock,
    /// One of the server's fault flags, by its request field.
    Fault(&'static str),
}

/// The fault flags the purchase API knows.
pub use backend::api::purchase::FAULT_FLAGS;

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::InsufficientFund => "insufficient_fund",
            Kind::OutOfStock => "out_of_stock",
            Kind::Fault(flag) => flag,
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        match name {
            "insufficient_fund" => Some(Kind::InsufficientFund),
            "out_of_stock" => Some(Kind::OutOfStock),
            _ => FAULT_FLAGS
                .into_iter()
                .find(|f| *f == name)
                .map(Kind::Fault),
        }
    }
}

/// Shares of special requests; whatever they leave is plain purchases.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    shares: Vec<(Kind, f64)>,
}

impl Mix {
    /// `key=share,...` with shares in 0..1 summing to at most 1, or `none`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Mix { shares: Vec::new() });
        }
        let mut shares: Vec<(Kind, f64)> = Vec::new();
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?} is not key=share"))?;
            let key = key.trim();
            let kind = Kind::from_name(key).ok_or_else(|| {
                format!(
                    "--mix: unknown key {key:?} (known: insufficient_fund, out_of_stock, {})",
                    FAULT_FLAGS.join(", ")
                )
            })?;
            let share: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| format!("--mix: {key}={value}: a share is a number in 0..1"))?;
            if shares.iter().any(|(k, _)| *k == kind) {
                return Err(format!("--mix: {key} given twice"));
            }
            shares.push((kind, share));
        }
        let total: f64 = shares.iter().map(|(_, v)| v).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!("--mix: shares sum to {total}, more than 1"));
        }
        Ok(Mix { shares })
    }

    /// The kind of request `index` under `seed`. A pure function of both, so a closed
    /// loop's clients, whatever order they race in, send the same kinds as a rerun.
    pub fn pick(&self, seed: u64, index: u64) -> Kind {
        let u = unit(seed, index);
        let mut upto = 0.0;
        for (kind, share) in &self.shares {
            upto += share;
            if u < upto {
                return *kind;
            }
        }
        Kind::Plain
    }

    /// As the report shows it: key → share.
    pub fn as_map(&self) -> BTreeMap<String, f64> {
        self.shares
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect()
    }
}

/// A uniform number in [0, 1) from (seed, index): SplitMix64, whose output is fixed by its
/// definition (a library RNG's stream may change between versions; a seed must not).
pub fn unit(seed: u64, index: u64) -> f64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The body of a purchase of `kind`.
pub fn purchase_body(kind: Kind, username: &str, price: i64, amount: i64) -> Value {
    match kind {
        Kind::Plain => json!({"username": username, "price": price, "amount": amount}),
        Kind::InsufficientFund => {
            json!({"username": username, "price": INSUFFICIENT_PRICE, "amount": amount})
        }
        Kind::OutOfStock => {
            json!({"username": username, "price": 0, "amount": OUT_OF_STOCK_AMOUNT})
        }
        Kind::Fault(flag) => {
            json!({"username": username, "price": price, "amount": amount, flag: true})
        }
    }
}

/// How the load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop: arrivals per second.
    Rate(f64),
    /// Closed loop: clients.
    Concurrency(usize),
}

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub url: String,
    pub load: Load,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub users: u64,
    pub price: i64,
    pub amount: i64,
    pub mix: Mix,
    pub seed: Option<u64>,
    pub wait: Duration,
    pub metrics_urls: Vec<String>,
    pub json: bool,
    pub progress: bool,
    pub ceiling: bool,
    pub ceiling_duration: Duration,
    pub amqp_url: String,
}

/// The flags that take a value.
const VALUE_FLAGS: [&str; 14] = [
    "--url",
    "--rate",
    "--concurrency",
    "--duration",
    "--count",
    "--users",
    "--price",
    "--amount",
    "--mix",
    "--seed",
    "--wait",
    "--metrics-url",
    "--ceiling-duration",
    "--amqp-url",
];

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Run(Box<Options>),
}

impl Options {
    /// Parses the arguments after `loadgen`; `env` looks up environment variables
    /// (`AMQP_URL`), so that parsing stays a pure function.
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, String> {
        let mut url = DEFAULT_URL.to_string();
        let (mut rate, mut concurrency) = (None, None);
        let (mut duration, mut count, mut users) = (None, None, None);
        let (mut price, mut amount) = (1i64, 1i64);
        let mut mix = Mix::parse(DEFAULT_MIX).expect("the default mix parses");
        let mut seed = None;
        let mut wait = Duration::from_secs(60);
        let mut metrics_urls = Vec::new();
        let (mut json, mut progress, mut ceiling) = (false, true, false);
        let mut ceiling_duration = Duration::from_secs(5);
        let mut amqp_url = env("AMQP_URL")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());

        let mut it = args.iter();
        while let Some(arg) = it.next() {
            // `--flag=value` or `--flag value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let switch = |on: &mut bool, value: bool| -> Result<(), String> {
                match inline {
                    None => {
                        *on = value;
                        Ok(())
                    }
                    Some(_) => Err(format!("{flag} takes no value")),
                }
            };
            match flag {
                "-h" | "--help" => return Ok(Command::Help),
                "--json" => switch(&mut json, true)?,
                "--no-progress" => switch(&mut progress, false)?,
                "--ceiling" => switch(&mut ceiling, true)?,
                _ if !VALUE_FLAGS.contains(&flag) => {
                    return Err(format!("unknown argument {arg:?}"));
                }
                _ => {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .cloned()
                            .ok_or_else(|| format!("{flag} needs a value"))?,
                    };
                    match flag {
                        "--url" => url = base_url(&value, flag)?,
                        "--rate" => {
                            rate = Some(
                                value
                                    .parse::<f64>()
                                    .ok()
                                    .filter(|r| r.is_finite() && *r > 0.0)
                                    .ok_or_else(|| {
                                        format!("--rate: requests per second (> 0), not {value:?}")
                                    })?,
                            )
                        }
                        "--concurrency" => {
                            concurrency =
                                Some(positive(&value, flag)?.min(MAX_OUTSTANDING as u64) as usize)
                        }
                        "--duration" => duration = Some(parse_duration(&value, flag, false)?),
                        "--count" => count = Some(positive(&value, flag)?),
                        "--users" => users = Some(positive(&value, flag)?),
                        "--price" => price = non_negative(&value, flag)?,
                        "--amount" => amount = positive(&value, flag)? as i64,
                        "--mix" => mix = Mix::parse(&value)?,
                        "--seed" => {
                            seed = Some(
                                value
                                    .parse()
                                    .map_err(|_| format!("--seed: an integer, not {value:?}"))?,
                            )
                        }
                        "--wait" => wait = parse_duration(&value, flag, true)?,
                        "--metrics-url" => metrics_urls.push(base_url(&value, flag)?),
                        "--ceiling-duration" => {
                            ceiling_duration = parse_duration(&value, flag, false)?
                        }
                        "--amqp-url" => amqp_url = value,
                        _ => unreachable!("{flag} is in VALUE_FLAGS"),
                    }
                }
            }
        }
        let load = match (rate, concurrency) {
            (Some(r), None) => Load::Rate(r),
            (None, Some(c)) => Load::Concurrency(c),
            (None, None) => return Err("one of --rate or --concurrency is needed".into()),
            (Some(_), Some(_)) => {
                return Err("--rate and --concurrency exclude each other".into());
            }
        };
        if duration.is_none() && count.is_none() {
            return Err("one of --duration or --count (or both) is needed".into());
        }
        if price.checked_mul(amount).is_none() {
            return Err("--price × --amount does not fit in 64 bits".into());
        }
        let users = users.unwrap_or_else(|| {
            default_users(planned_orders(load, duration, count), price * amount)
        });
        if metrics_urls.is_empty() {
            metrics_urls.push(url.clone());
        }
        Ok(Command::Run(Box::new(Options {
            url,
            load,
            duration,
            count,
            users,
            price,
            amount,
            mix,
            seed,
            wait,
            metrics_urls,
            json,
            progress,
            ceiling,
            ceiling_duration,
            amqp_url,
        })))
    }
}

fn base_url(value: &str, flag: &str) -> Result<String, String> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.trim_end_matches('/').to_string())
    } else {
        Err(format!("{flag}: an http:// URL, not {value:?}"))
    }
}

fn positive(value: &str, flag: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && *n <= i64::MAX as u64)
        .ok_or_else(|| format!("{flag}: a whole number above 0, not {value:?}"))
}

fn non_negative(value: &str, flag: &str) -> Result<i64, String> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("{flag}: a whole number, 0 or more, not {value:?}"))
}

/// `10s`, `1.5s`, `500ms`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(value: &str, flag: &str, zero_ok: bool) -> Result<Duration, String> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let secs = number.parse::<f64>().map(|n| n * scale);
    match secs {
        Ok(s) if s.is_finite() && (s > 0.0 || (zero_ok && s == 0.0)) && s < 1e9 => {
            Ok(Duration::from_secs_f64(s))
        }
        _ => Err(format!(
            "{flag}: a duration such as 10s, 500ms or 2m, not {value:?}"
        )),
    }
}

/// Orders the run may place at most: `--count`, or what `--rate` places in `--duration`;
/// a closed loop bounded by time only is sized at [`ASSUMED_MAX_ORDERS_PER_S`].
pub fn planned_orders(load: Load, duration: Option<Duration>, count: Option<u64>) -> u64 {
    let by_time = duration.map(|d| match load {
        Load::Rate(r) => (r * d.as_secs_f64()).ceil() as u64,
        Load::Concurrency(_) => (ASSUMED_MAX_ORDERS_PER_S as f64 * d.as_secs_f64()).ceil() as u64,
    });
    match (count, by_time) {
        (Some(c), Some(t)) => c.min(t),
        (Some(c), None) => c,
        (None, Some(t)) => t,
        (None, None) => 0,
    }
}

/// Users so that every order's charge is covered by its buyer's 500 credits, with a fifth
/// spare for the mix's uneven spread over users (each buys at most 400 credits' worth), and
/// never fewer than 100. Runs must not end in INSUFFICIENT_FUND for want of users.
pub fn default_users(planned: u64, charge: i64) -> u64 {
    const FLOOR: u64 = 100;
    if charge <= 0 {
        return FLOOR;
    }
    let per_user = ((INITIAL_CREDITS * 4 / 5) / charge).max(1) as u64;
    FLOOR.max(planned.div_ceil(per_user))
}

/// The buyer of request `index`: users are per run, so that runs never share balances.
pub fn username(run_id: &str, index: u64, users: u64) -> String {
    format!("lg-{run_id}-{}", index % users.max(1))
}

/// The nearest-rank percentile `p` (0..100] of ascending `sorted`; None when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50, p90, p99 and max, in milliseconds; null in JSON when nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Latency {
    pub fn of(mut values: Vec<f64>) -> Latency {
        values.sort_by(f64::total_cmp);
        let at = |p| percentile(&values, p).map(round3);
        Latency {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: values.last().copied().map(round3),
        }
    }
}

/// Three decimals: microseconds of a millisecond figure, and no float noise in the JSON.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition; comments and unreadable lines are skipped.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    // A quoted value, with \\, \" and \n escapes.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = &body[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The counters the load generator reads from `/metrics`, summed over every process read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `marketplace_orders_total` by status: sagas finished.
    pub orders: BTreeMap<String, f64>,
    /// `marketplace_messages_consumed_total` by (queue, result).
    pub consumed: BTreeMap<(String, String), f64>,
}

impl Snapshot {
    pub fn parse(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for sample in parse_prometheus(text) {
            match sample.name.as_str() {
                "marketplace_orders_total" => {
                    let status = sample.label("status").unwrap_or("").to_string();
                    *s.orders.entry(status).or_default() += sample.value;
                }
                "marketplace_messages_consumed_total" => {
                    let key = (
                        sample.label("queue").unwrap_or("").to_string(),
                        sample.label("result").unwrap_or("").to_string(),
                    );
                    *s.consumed.entry(key).or_default() += sample.value;
                }
                _ => {}
            }
        }
        s
    }

    /// Adds another process's counters (a split deployment has one `/metrics` each).
    pub fn add(&mut self, other: &Snapshot) {
        for (k, v) in &other.orders {
            *self.orders.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.consumed {
            *self.consumed.entry(k.clone()).or_default() += v;
        }
    }

    /// Sagas finished, any status.
    pub fn finished(&self) -> f64 {
        self.orders.values().sum()
    }

    /// Sagas finished since `before`.
    pub fn finished_since(&self, before: &Snapshot) -> u64 {
        (self.finished() - before.finished()).max(0.0).round() as u64
    }

    /// Handler outcomes per queue since `before`.
    pub fn messages_since(&self, before: &Snapshot) -> BTreeMap<String, QueueMessages> {
        let mut out: BTreeMap<String, QueueMessages> = BTreeMap::new();
        for ((queue, result), after) in &self.consumed {
            let was = before
                .consumed
                .get(&(queue.clone(), result.clone()))
                .copied()
                .unwrap_or(0.0);
            let delta = (after - was).max(0.0).round() as u64;
            let q = out.entry(queue.clone()).or_default();
            match result.as_str() {
                "ok" => q.ok += delta,
                "transient" => q.transient += delta,
                "permanent" => q.permanent += delta,
                _ => {}
            }
        }
        out.retain(|_, q| q.ok + q.transient + q.permanent > 0);
        out
    }
}

/// Handler outcomes of one queue over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueMessages {
    pub ok: u64,
    pub transient: u64,
    pub permanent: u64,
}

impl QueueMessages {
    /// Deliveries handled: each ends acked (ok) or rejected (permanent). Transient counts
    /// retries of a delivery in hand, not messages, so it is left out.
    pub fn delivered(&self) -> u64 {
        self.ok + self.permanent
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the server writes them
/// (`2026-12-01T14:25:43.123Z`; `+00:00` and any number of fraction digits are accepted).
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let time = time
        .strip_suffix(['Z', 'z'])
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, fraction) = match time.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What the end-of-run read found of one accepted order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderState {
    /// Final, with its server-side times (ms since the epoch).
    Final {
        status: String,
        created_ms: i64,
        updated_ms: i64,
    },
    /// Still running when the wait ended, or never readable.
    NotFinal,
    /// 404: the API does not show it.
    NotListed,
}

/// What the posting phase saw.
#[derive(Debug, Clone, Default)]
pub struct Posting {
    pub sent: u64,
    pub accepted: Vec<String>,
    /// By status and the body's `error` code (`503 overloaded`, `503 unavailable`).
    pub refused: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub skipped: u64,
    /// Each answer's time from its (scheduled, in an open loop) start, in ms.
    pub post_ms: Vec<f64>,
    /// First POST to last answer.
    pub elapsed: Duration,
}

/// What the broker sustained for the saga's message pattern.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CeilingMeasure {
    pub duration_s: f64,
    /// Publishes confirmed per second.
    pub published_per_s: f64,
    /// Deliveries consumed and acked per second.
    pub consumed_per_s: f64,
}

impl CeilingMeasure {
    /// Messages per second through the queue: publish and consume both had to keep up.
    pub fn msg_per_s(&self) -> f64 {
        self.published_per_s.min(self.consumed_per_s)
    }
}

/// The ceiling against the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ceiling {
    pub duration_s: f64,
    pub published_per_s: f64,
    pub consumed_per_s: f64,
    pub msg_per_s: f64,
    /// What the orders/s ceiling is divided by: measured, or [`MIN_MESSAGES_PER_ORDER`].
    pub messages_per_order_used: f64,
    pub messages_per_order_measured: bool,
    pub orders_per_s: f64,
    /// The run's completed/s ÷ orders_per_s.
    pub share: Option<f64>,
}

/// The run's parameters, as the report repeats them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub url: String,
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub users: u64,
    pub price: i64,
    pub amount: i64,
    pub mix: BTreeMap<String, f64>,
    pub seed: u64,
    pub wait_s: f64,
    pub metrics_urls: Vec<String>,
}

impl Params {
    pub fn of(o: &Options, seed: u64) -> Params {
        let (mode, rate, concurrency) = match o.load {
            Load::Rate(r) => ("rate", Some(r), None),
            Load::Concurrency(c) => ("concurrency", None, Some(c)),
        };
        Params {
            url: o.url.clone(),
            mode,
            rate,
            concurrency,
            duration_s: o.duration.map(|d| d.as_secs_f64()),
            count: o.count,
            users: o.users,
            price: o.price,
            amount: o.amount,
            mix: o.mix.as_map(),
            seed,
            wait_s: o.wait.as_secs_f64(),
            metrics_urls: o.metrics_urls.clone(),
        }
    }
}

/// The report: stable key names (scripts read the JSON form).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub run_id: String,
    pub params: Params,
    pub posted: u64,
    pub accepted: u64,
    pub refused: u64,
    pub refused_by_kind: BTreeMap<String, u64>,
    pub skipped: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub posting_s: f64,
    pub accepted_per_s: f64,
    /// Client-side POST answer times, from each request's scheduled start.
    pub post_latency_ms: Latency,
    #[serde(rename = "final")]
    pub final_orders: u64,
    pub not_final: u64,
    pub not_listed: u64,
    /// Final orders by status.
    pub statuses: BTreeMap<String, u64>,
    /// Earliest created_at to latest final updated_at (server clock).
    pub completion_window_s: Option<f64>,
    pub completed_per_s: Option<f64>,
    /// Per final order: updated_at − created_at (server clock).
    pub latency_ms: Latency,
    pub messages_per_order: Option<f64>,
    pub messages: BTreeMap<String, QueueMessages>,
    pub stock_before: Option<i64>,
    pub stock_after: Option<i64>,
    pub ceiling: Option<Ceiling>,
    pub warnings: Vec<String>,
}

/// What the phases of a run observed, for [`summarize`].
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub posting: Posting,
    /// One per accepted order.
    pub orders: Vec<OrderState>,
    /// Handler outcomes per queue over the run.
    pub messages: BTreeMap<String, QueueMessages>,
    pub stock_before: Option<i64>,
    pub stock_after: Option<i64>,
    pub ceiling: Option<CeilingMeasure>,
    pub warnings: Vec<String>,
}

/// Builds the report from what each phase observed.
pub fn summarize(run_id: &str, params: Params, seen: Observed) -> Report {
    let Observed {
        posting,
        orders,
        messages,
        stock_before,
        stock_after,
        ceiling,
        warnings,
    } = seen;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let (mut not_final, mut not_listed) = (0, 0);
    let mut latencies = Vec::new();
    let (mut first_created, mut last_final) = (i64::MAX, i64::MIN);
    for o in &orders {
        match o {
            OrderState::Final {
                status,
                created_ms,
                updated_ms,
            } => {
                *statuses.entry(status.clone()).or_default() += 1;
                latencies.push((updated_ms - created_ms).max(0) as f64);
                first_created = first_created.min(*created_ms);
                last_final = last_final.max(*updated_ms);
            }
            OrderState::NotFinal => not_final += 1,
            OrderState::NotListed => not_listed += 1,
        }
    }
    let final_orders = latencies.len() as u64;
    let window_s = (final_orders > 0).then(|| (last_final - first_created).max(0) as f64 / 1000.0);
    let completed_per_s = window_s
        .filter(|w| *w > 0.0)
        .map(|w| final_orders as f64 / w);
    let delivered: u64 = messages.values().map(QueueMessages::delivered).sum();
    let messages_per_order =
        (final_orders > 0 && delivered > 0).then(|| delivered as f64 / final_orders as f64);
    let posting_s = posting.elapsed.as_secs_f64();
    let accepted = posting.accepted.len() as u64;
    let ceiling = ceiling.map(|c| {
        let used = messages_per_order.unwrap_or(MIN_MESSAGES_PER_ORDER);
        let orders_per_s = c.msg_per_s() / used;
        Ceiling {
            duration_s: round3(c.duration_s),
            published_per_s: round3(c.published_per_s),
            consumed_per_s: round3(c.consumed_per_s),
            msg_per_s: round3(c.msg_per_s()),
            messages_per_order_used: round3(used),
            messages_per_order_measured: messages_per_order.is_some(),
            orders_per_s: round3(orders_per_s),
            share: completed_per_s
                .filter(|_| orders_per_s > 0.0)
                .map(|c| c / orders_per_s),
        }
    });
    Report {
        run_id: run_id.to_string(),
        params,
        posted: posting.sent - posting.skipped,
        accepted,
        refused: posting.refused.values().sum(),
        refused_by_kind: posting.refused.clone(),
        skipped: posting.skipped,
        errors: posting.errors.values().sum(),
        errors_by_kind: posting.errors.clone(),
        posting_s: round3(posting_s),
        accepted_per_s: if posting_s > 0.0 {
            round3(accepted as f64 / posting_s)
        } else {
            0.0
        },
        post_latency_ms: Latency::of(posting.post_ms.clone()),
        final_orders,
        not_final,
        not_listed,
        statuses,
        completion_window_s: window_s,
        completed_per_s: completed_per_s.map(round3),
        latency_ms: Latency::of(latencies),
        messages_per_order: messages_per_order.map(round3),
        messages,
        stock_before,
        stock_after,
        ceiling,
        warnings,
    }
}

/// The report as a table for people.
pub fn render_table(r: &Report) -> String {
    use std::fmt::Write;
    let p = &r.params;
    let num = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".to_string(),
    };
    let lat = |l: &Latency| {
        format!(
            "p50 {}  p90 {}  p99 {}  max {}",
            num(l.p50, 1),
            num(l.p90, 1),
            num(l.p99, 1),
            num(l.max, 1)
        )
    };
    let counts = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("  ({})", parts.join(", "))
        }
    };
    let mut s = String::new();
    let _ = writeln!(s, "marketplace loadgen: run {} against {}", r.run_id, p.url);
    let load = match (p.rate, p.concurrency) {
        (Some(rate), _) => format!("open loop, {rate} POST/s"),
        (_, Some(c)) => format!("closed loop, {c} clients"),
        _ => String::new(),
    };
    let mut bound = Vec::new();
    if let Some(d) = p.duration_s {
        bound.push(format!("{d} s"));
    }
    if let Some(c) = p.count {
        bound.push(format!("{c} orders"));
    }
    let _ = writeln!(s, "  {:<22}{load}, until {}", "load", bound.join(" or "));
    let _ = writeln!(
        s,
        "  {:<22}{} users (lg-{}-*), price {}, amount {}",
        "orders", p.users, r.run_id, p.price, p.amount
    );
    let mix: Vec<String> = p.mix.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mix = if mix.is_empty() {
        "none".to_string()
    } else {
        mix.join(" ")
    };
    let _ = writeln!(s, "  {:<22}{mix} (seed {})", "mix", p.seed);

    let _ = writeln!(s, "\nposting");
    let _ = writeln!(s, "  {:<22}{} in {:.2} s", "posted", r.posted, r.posting_s);
    let _ = writeln!(
        s,
        "  {:<22}{}  ({:.1}/s)",
        "accepted", r.accepted, r.accepted_per_s
    );
    let _ = writeln!(
        s,
        "  {:<22}{}{}",
        "refused (429/503)",
        r.refused,
        counts(&r.refused_by_kind)
    );
    let _ = writeln!(s, "  {:<22}{}", "errors", r.errors);
    for (kind, n) in &r.errors_by_kind {
        let _ = writeln!(s, "    {kind:<20}{n}");
    }
    if r.skipped > 0 {
        let _ = writeln!(
            s,
            "  {:<22}{} (over {MAX_OUTSTANDING} outstanding)",
            "skipped arrivals", r.skipped
        );
    }
    let _ = writeln!(s, "  {:<22}{}", "POST answer ms", lat(&r.post_latency_ms));

    let _ = writeln!(s, "\ncompletion (server clock)");
    let _ = writeln!(
        s,
        "  {:<22}{} of {} accepted  (not final: {}, not listed: {})",
        "final", r.final_orders, r.accepted, r.not_final, r.not_listed
    );
    let _ = writeln!(
        s,
        "  {:<22}{}  (first created → last final: {} s)",
        "completed/s",
        num(r.completed_per_s, 1),
        num(r.completion_window_s, 2)
    );
    let _ = writeln!(s, "  {:<22}{}", "POST→final ms", lat(&r.latency_ms));
    if let (Some(b), Some(a)) = (r.stock_before, r.stock_after) {
        let _ = writeln!(s, "  {:<22}{b} → {a}", "stock");
    }

    let _ = writeln!(s, "\nstatuses");
    for (status, n) in &r.statuses {
        let share = 100.0 * *n as f64 / r.final_orders.max(1) as f64;
        let _ = writeln!(s, "  {status:<22}{n:>8}  {share:>5.1}%");
    }
    if r.statuses.is_empty() {
        let _ = writeln!(s, "  (none final)");
    }

    let _ = writeln!(s, "\nmessages (deliveries handled, all queues)");
    let _ = writeln!(
        s,
        "  {:<22}{}",
        "per final order",
        num(r.messages_per_order, 2)
    );
    if !r.messages.is_empty() {
        let _ = writeln!(
            s,
            "  {:<22}{:>8} {:>10} {:>10}",
            "queue", "ok", "transient", "permanent"
        );
        for (q, m) in &r.messages {
            let _ = writeln!(
                s,
                "  {q:<22}{:>8} {:>10} {:>10}",
                m.ok, m.transient, m.permanent
            );
        }
    }

    if let Some(c) = &r.ceiling {
        let _ = writeln!(s, "\nbroker ceiling ({:.1} s measured)", c.duration_s);
        let _ = writeln!(
            s,
            "  {:<22}{:.0}  (published {:.0}/s, consumed {:.0}/s)",
            "messages/s", c.msg_per_s, c.published_per_s, c.consumed_per_s
        );
        let _ = writeln!(
            s,
            "  {:<22}{:.1}  (÷ {:.2} messages per order{})",
            "orders/s allowed",
            c.orders_per_s,
            c.messages_per_order_used,
            if c.messages_per_order_measured {
                ", measured"
            } else {
                ", the least a saga needs"
            }
        );
        let _ = writeln!(
            s,
            "  {:<22}{}",
            "completed/s share",
            c.share
                .map(|v| format!("{:.1}%", v * 100.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "\nwarnings");
        for w in &r.warnings {
            let _ = writeln!(s, "  - {w}");
        }
    }
    s
}

// ───────────────────────────── I/O ─────────────────────────────

/// `marketplace loadgen ARGS`: parses, runs, prints the report.
pub fn main(args: &[String]) -> ExitCode {
    let options = match Options::parse(args, |k| std::env::var(k).ok()) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(o)) => *o,
        Err(e) => {
            eprintln!("marketplace loadgen: {e}\n(see marketplace loadgen --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("marketplace loadgen: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&options)) {
        Ok(report) => {
            if options.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
            } else {
                print!("{}", render_table(&report));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("marketplace loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole measurement: ceiling, posting, waiting, reading, counting.
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let seed = o
        .seed
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(MAX_OUTSTANDING)
        .no_proxy()
        .build()?;
    let mut warnings = Vec::new();

    // Before anything: the marketplace must answer, and the counters are the baseline.
    let before = scrape(&client, &o.metrics_urls)
        .await
        .context("reading /metrics before the run (is the marketplace running?)")?;
    let stock_before = stock(&client, &o.url).await;
    let planned = planned_orders(o.load, o.duration, o.count);
    let plain_share = 1.0 - o.mix.as_map().values().sum::<f64>();
    if let Some(stock) = stock_before {
        let wanted = (planned as f64 * plain_share).ceil() as i64 * o.amount;
        if wanted > stock {
            warnings.push(format!(
                "stock is {stock} and the run may buy up to {wanted} tokens: orders beyond \
                 the stock end INSUFFICIENT_INVENTORY (start the marketplace with a larger \
                 INITIAL_STOCK on fresh data to measure successes)"
            ));
        }
    }
    for w in &warnings {
        eprintln!("marketplace loadgen: warning: {w}");
    }

    let interactive = o.progress && std::io::stderr().is_terminal();
    let ceiling = if o.ceiling {
        if interactive {
            eprintln!(
                "measuring the broker ceiling for {:.1} s…",
                o.ceiling_duration.as_secs_f64()
            );
        }
        Some(
            measure_ceiling(&o.amqp_url, o.ceiling_duration)
                .await
                .context("measuring the broker ceiling")?,
        )
    } else {
        None
    };

    let shared = Arc::new(Shared::default());
    let progress = Progress::start(interactive, o.count, shared.clone());
    // Final-so-far for the progress bar; the wait below polls on its own.
    let poller = progress.shown().then(|| {
        let (client, urls, before, shared) = (
            client.clone(),
            o.metrics_urls.clone(),
            before.clone(),
            shared.clone(),
        );
        tokio::spawn(async move {
            loop {
                if let Ok(now) = scrape(&client, &urls).await {
                    shared
                        .final_seen
                        .store(now.finished_since(&before), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });

    let posting = post(o, &client, &run_id, seed, &shared).await;
    if let Some(p) = poller {
        p.abort();
    }
    let accepted = posting.accepted.len() as u64;

    shared.phase.store(PHASE_WAITING, Ordering::Relaxed);
    progress.set_length(accepted);
    let deadline = Instant::now() + o.wait;
    wait_for_counters(
        &client,
        &o.metrics_urls,
        &before,
        accepted,
        deadline,
        &shared,
    )
    .await;

    shared.phase.store(PHASE_READING, Ordering::Relaxed);
    let orders = read_orders(&client, &o.url, &posting.accepted, deadline, &shared).await;
    progress.finish();

    let after = settled_metrics(&client, &o.metrics_urls).await;
    let messages = match &after {
        Some(after) => after.messages_since(&before),
        None => {
            warnings.push("could not read /metrics after the run".into());
            BTreeMap::new()
        }
    };
    if after.is_some() && messages.is_empty() && accepted > 0 {
        warnings.push(
            "no marketplace_messages_consumed_total moved: in a split deployment pass \
             --metrics-url of every process"
                .into(),
        );
    }
    let stock_after = stock(&client, &o.url).await;
    let seen = Observed {
        posting,
        orders,
        messages,
        stock_before,
        stock_after,
        ceiling,
        warnings,
    };
    Ok(summarize(&run_id, Params::of(o, seed), seen))
}

const PHASE_POSTING: u8 = 0;
const PHASE_WAITING: u8 = 1;
const PHASE_READING: u8 = 2;

/// What the posting tasks, the poller and the progress bar share.
#[derive(Default)]
struct Shared {
    posting: Mutex<Posting>,
    final_seen: AtomicU64,
    read: AtomicU64,
    phase: AtomicU8,
}

/// The answer to one POST.
enum Outcome {
    Accepted(String),
    /// Status and error code.
    Refused(String),
    Error(String),
}

impl Shared {
    fn sent(&self) {
        self.posting.lock().expect("not poisoned").sent += 1;
    }

    fn record(&self, outcome: Outcome, took: Duration) {
        let mut p = self.posting.lock().expect("not poisoned");
        p.post_ms.push(took.as_secs_f64() * 1000.0);
        match outcome {
            Outcome::Accepted(id) => p.accepted.push(id),
            Outcome::Refused(kind) => *p.refused.entry(kind).or_default() += 1,
            Outcome::Error(kind) => *p.errors.entry(kind).or_default() += 1,
        }
    }
}

/// The posting phase, open or closed loop; returns once every POST has its answer.
async fn post(
    o: &Options,
    client: &reqwest::Client,
    run_id: &str,
    seed: u64,
    shared: &Arc<Shared>,
) -> Posting {
    let started = Instant::now();
    let end = o.duration.map(|d| started + d);
    let count = o.count.unwrap_or(u64::MAX);
    let url = format!("{}/api/purchase/", o.url);
    let request = {
        let (mix, run_id, users, price, amount) = (
            o.mix.clone(),
            run_id.to_string(),
            o.users,
            o.price,
            o.amount,
        );
        move |i: u64| {
            let user = username(&run_id, i, users);
            purchase_body(mix.pick(seed, i), &user, price, amount)
        }
    };
    match o.load {
        Load::Concurrency(clients) => {
            let next = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (client, url, shared, next, request) = (
                        client.clone(),
                        url.clone(),
                        shared.clone(),
                        next.clone(),
                        request.clone(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count || end.is_some_and(|e| Instant::now() >= e) {
                                break;
                            }
                            shared.sent();
                            let at = Instant::now();
                            let outcome = post_one(&client, &url, &request(i)).await;
                            shared.record(outcome, at.elapsed());
                        }
                    })
                })
                .collect();
            futures::future::join_all(tasks).await;
        }
        Load::Rate(rate) => {
            let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING));
            let mut i = 0u64;
            while i < count {
                // Fixed arrival times: a late answer never moves the next arrival.
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                if end.is_some_and(|e| at >= e) {
                    break;
                }
                tokio::time::sleep_until(at).await;
                shared.sent();
                match outstanding.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (client, url, shared, body) =
                            (client.clone(), url.clone(), shared.clone(), request(i));
                        tokio::spawn(async move {
                            let outcome = post_one(&client, &url, &body).await;
                            // From the scheduled arrival: time spent behind a late
                            // scheduler counts, as it would for a real client.
                            shared.record(outcome, at.elapsed());
                            drop(permit);
                        });
                    }
                    Err(_) => shared.posting.lock().expect("not poisoned").skipped += 1,
                }
                i += 1;
            }
            // Every permit back: every request answered.
            let _ = outstanding.acquire_many(MAX_OUTSTANDING as u32).await;
        }
    }
    // A copy: the progress bar goes on showing the counts.
    let mut p = shared.posting.lock().expect("not poisoned").clone();
    p.elapsed = started.elapsed();
    p
}

async fn post_one(client: &reqwest::Client, url: &str, body: &Value) -> Outcome {
    let response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Error(transport_error(&e)),
    };
    match response.status().as_u16() {
        202 => match response.json::<Value>().await {
            Ok(v) => match v["order_id"].as_str() {
                Some(id) => Outcome::Accepted(id.to_string()),
                None => Outcome::Error("202 without order_id".into()),
            },
            Err(e) => Outcome::Error(format!("202 body: {}", transport_error(&e))),
        },
        // Admission control: the server asked us to back off. Not retried: the load
        // generator measures what is accepted, it does not make it through.
        status @ (429 | 503) => {
            // The error code tells an overload from a database that does not answer.
            let code = match response.json::<Value>().await {
                Ok(v) => v["error"].as_str().map(str::to_string),
                Err(_) => None,
            };
            Outcome::Refused(match code {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            })
        }
        status => Outcome::Error(format!("HTTP {status}")),
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_decode() || e.is_body() {
        "body".into()
    } else {
        "transport".into()
    }
}

/// The cheap wait: one `/metrics` read per poll until as many sagas finished since
/// `before` as were accepted, or `deadline`. It gives up early when the counter stands still
/// for 5 s (a deployment whose manager is not behind `--metrics-url`, or a slow tail): the
/// per-order reads that follow go on until the deadline anyway.
async fn wait_for_counters(
    client: &reqwest::Client,
    urls: &[String],
    before: &Snapshot,
    accepted: u64,
    deadline: Instant,
    shared: &Shared,
) {
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        let Ok(now) = scrape(client, urls).await else {
            return;
        };
        let finished = now.finished_since(before);
        shared.final_seen.store(finished, Ordering::Relaxed);
        if finished >= accepted {
            return;
        }
        if finished != last.0 {
            last = (finished, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every accepted order, re-reading the ones not final until `deadline`.
async fn read_orders(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    deadline: Instant,
    shared: &Shared,
) -> Vec<OrderState> {
    futures::stream::iter(ids)
        .map(|id| async move {
            let state = read_until_final(client, base, id, deadline).await;
            shared.read.fetch_add(1, Ordering::Relaxed);
            state
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await
}

async fn read_until_final(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    deadline: Instant,
) -> OrderState {
    let url = format!("{base}/api/orders/{id}");
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == 404 {
                return OrderState::NotListed;
            }
            if r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
                && let Some(state) = final_state(&v)
            {
                return state;
            }
        }
        if Instant::now() >= deadline {
            return OrderState::NotFinal;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order's final state, or None while its saga still runs (status PROCESSING, or
/// compensations in progress: phase not `done`).
fn final_state(order: &Value) -> Option<OrderState> {
    let status = order["status"].as_str()?;
    let done = order["phase"].as_str().is_none_or(|p| p == "done");
    if status == "PROCESSING" || !done {
        return None;
    }
    Some(OrderState::Final {
        status: status.to_string(),
        created_ms: parse_rfc3339_ms(order["created_at"].as_str()?)?,
        updated_ms: parse_rfc3339_ms(order["updated_at"].as_str()?)?,
    })
}

/// Every `/metrics` in `urls`, summed.
async fn scrape(client: &reqwest::Client, urls: &[String]) -> anyhow::Result<Snapshot> {
    let mut total = Snapshot::default();
    for url in urls {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .with_context(|| format!("GET {url}/metrics"))?
            .error_for_status()?
            .text()
            .await?;
        total.add(&Snapshot::parse(&text));
    }
    Ok(total)
}

/// The counters once deliveries have stopped moving (the last events of the final orders
/// are still being consumed when the last status shows), waiting at most 3 s.
async fn settled_metrics(client: &reqwest::Client, urls: &[String]) -> Option<Snapshot> {
    let give_up = Instant::now() + Duration::from_secs(3);
    let mut last = scrape(client, urls).await.ok()?;
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = scrape(client, urls).await.ok()?;
        if now.consumed == last.consumed {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// The stock of the first product, if the marketplace reports one.
async fn stock(client: &reqwest::Client, base: &str) -> Option<i64> {
    let v: Value = client
        .get(format!("{base}/api/inventory"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v[0]["stock"].as_i64()
}

/// The progress bar on stderr, fed by a ticker from [`Shared`].
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Progress {
    fn start(show: bool, count: Option<u64>, shared: Arc<Shared>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !show {
            return Progress {
                bar: None,
                ticker: None,
                stop,
            };
        }
        let bar = match count {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>8} {elapsed:>4} [{bar:24}] {pos}/{len} {wide_msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>8} {elapsed:>4} {spinner} {wide_msg}",
                )
                .expect("a valid template"),
            ),
        };
        bar.set_prefix("posting");
        let ticker = {
            let (bar, stop) = (bar.clone(), stop.clone());
            tokio::spawn(async move {
                // (when, accepted, final): rates over the last two seconds.
                let mut history: VecDeque<(Instant, u64, u64)> = VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    let (sent, accepted, refused, errors) = {
                        let p = shared.posting.lock().expect("not poisoned");
                        (
                            p.sent,
                            p.accepted.len() as u64,
                            p.refused.values().sum::<u64>(),
                            p.errors.values().sum::<u64>(),
                        )
                    };
                    let finals = shared.final_seen.load(Ordering::Relaxed);
                    let now = Instant::now();
                    history.push_back((now, accepted, finals));
                    while history
                        .front()
                        .is_some_and(|(t, _, _)| now - *t > Duration::from_secs(2))
                    {
                        history.pop_front();
                    }
                    let (t0, a0, f0) = history.front().copied().expect("just pushed");
                    let dt = (now - t0).as_secs_f64().max(0.001);
                    let phase = shared.phase.load(Ordering::Relaxed);
                    match phase {
                        PHASE_POSTING => bar.set_position(sent),
                        PHASE_WAITING => {
                            bar.set_prefix("waiting");
                            bar.set_position(finals)
                        }
                        _ => {
                            bar.set_prefix("reading");
                            bar.set_position(shared.read.load(Ordering::Relaxed))
                        }
                    }
                    let mut message = format!(
                        "posted {sent} · accepted {accepted} ({:.0}/s) · final {finals} ({:.0}/s)",
                        accepted.saturating_sub(a0) as f64 / dt,
                        finals.saturating_sub(f0) as f64 / dt,
                    );
                    if refused > 0 {
                        message.push_str(&format!(" · refused {refused}"));
                    }
                    if errors > 0 {
                        message.push_str(&format!(" · errors {errors}"));
                    }
                    bar.set_message(message);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
            stop,
        }
    }

    fn shown(&self) -> bool {
        self.bar.is_some()
    }

    fn set_length(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(n);
        }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What RabbitMQ sustains here for the saga's pattern: a durable quorum queue, persistent
/// 300-byte messages published with confirms (256 unconfirmed at most) by one task, one
/// consumer with prefetch 256 acking each delivery. The queue is fresh and deleted after.
pub async fn measure_ceiling(amqp_url: &str, run_for: Duration) -> anyhow::Result<CeilingMeasure> {
    use lapin::{
        BasicProperties, Confirmation,
        options::{
            BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
            ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
        },
        types::{AMQPValue, FieldTable},
    };
    const WINDOW: usize = 256;

    let connect = || async {
        tokio::time::timeout(
            Duration::from_secs(10),
            lapin::Connection::connect_with_runtime(
                amqp_url,
                lapin::ConnectionProperties::default()
                    .with_connection_name("marketplace-loadgen-ceiling".into()),
                async_rs::Runtime::tokio_current(),
            ),
        )
        .await
        .context("connecting to RabbitMQ timed out")?
        .context("connecting to RabbitMQ")
    };
    // Two connections, as two services would have: flow control of the publisher's
    // connection does not hold the consumer's acks back.
    let publisher = connect().await?;
    let consumer = connect().await?;
    let queue = format!("loadgen.ceiling.{}", uuid::Uuid::new_v4());
    let publish = publisher.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    // Removed by the broker a minute after its last use, should this process die first.
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    publish
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring {queue}"))?;

    let measured = async {
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consume = consumer.create_channel().await?;
        consume
            .basic_qos(WINDOW as u16, BasicQosOptions::default())
            .await?;
        let mut deliveries = consume
            .basic_consume(
                queue.as_str().into(),
                "loadgen-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumed = Arc::new(AtomicU64::new(0));
        let acking = {
            let consumed = consumed.clone();
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = deliveries.next().await {
                    if delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            })
        };

        let payload = vec![b'x'; 300];
        let started = Instant::now();
        let end = started + run_for;
        let mut unconfirmed = VecDeque::with_capacity(WINDOW);
        let mut confirmed = 0u64;
        let outcome: anyhow::Result<()> = async {
            while Instant::now() < end {
                if unconfirmed.len() >= WINDOW {
                    let confirm = unconfirmed.pop_front().expect("a full window");
                    match confirm.await? {
                        Confirmation::Ack(_) => confirmed += 1,
                        other => anyhow::bail!("the broker did not confirm: {other:?}"),
                    }
                    continue;
                }
                let confirm = publish
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                unconfirmed.push_back(confirm);
            }
            Ok(())
        }
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let consumed_n = consumed.load(Ordering::Relaxed);
        acking.abort();
        outcome?;
        let _ = consume.close(200, "measured".into()).await;
        Ok::<_, anyhow::Error>(CeilingMeasure {
            duration_s: elapsed,
            published_per_s: confirmed as f64 / elapsed,
            consumed_per_s: consumed_n as f64 / elapsed,
        })
    }
    .await;

    let deleted = publish
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    for conn in [&publisher, &consumer] {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
    }
    let measured = measured?;
    deleted.with_context(|| format!("deleting {queue}"))?;
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_mix_is_seeded_and_keeps_its_shares() {
        let mix = Mix::parse("insufficient_fund=0.2,out_of_stock=0.1,kill_payment=0.05").unwrap();
        let n = 100_000u64;
        let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
        for i in 0..n {
            *counts.entry(mix.pick(42, i)).or_default() += 1;
        }
        let share = |k| counts.get(&k).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share(Kind::InsufficientFund) - 0.2).abs() < 0.01);
        assert!((share(Kind::OutOfStock) - 0.1).abs() < 0.01);
        assert!((share(Kind::Fault("kill_payment")) - 0.05).abs() < 0.01);
        assert!((share(Kind::Plain) - 0.65).abs() < 0.01);
        // The same seed picks the same kinds; another seed others.
        let picks = |seed| (0..200).map(|i| mix.pick(seed, i)).collect::<Vec<_>>();
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        assert!(Mix::parse("none").unwrap().pick(1, 1) == Kind::Plain);
        assert!((0..1000).all(|i| (0.0..1.0).contains(&unit(u64::MAX, i))));
    }

    #[test]
    fn bodies_make_each_kind_of_order() {
        assert_eq!(
            purchase_body(Kind::Plain, "u", 2, 3),
            json!({"username": "u", "price": 2, "amount": 3})
        );
        let poor = purchase_body(Kind::InsufficientFund, "u", 1, 1);
        assert!(
            poor["price"].as_i64().unwrap() * poor["amount"].as_i64().unwrap() > INITIAL_CREDITS
        );
        assert_eq!(
            purchase_body(Kind::OutOfStock, "u", 1, 1),
            json!({"username": "u", "price": 0, "amount": OUT_OF_STOCK_AMOUNT})
        );
        assert_eq!(
            purchase_body(Kind::Fault("timeout_inventory"), "u", 1, 1),
            json!({"username": "u", "price": 1, "amount": 1, "timeout_inventory": true})
        );
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

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let l = Latency::of(vec![5.0, 1.0, 3.0]);
        assert_eq!((l.p50, l.max), (Some(3.0), Some(5.0)));
        assert_eq!(Latency::of(vec![]), Latency::default());
    }

    const METRICS: &str = r#"# HELP marketplace_orders_total Orders finished.
# TYPE marketplace_orders_total counter
marketplace_orders_total{status="SUCCESS"} 10
marketplace_orders_total{status="TIMEOUT"} 2
marketplace_messages_consumed_total{queue="manager",result="ok"} 30
marketplace_messages_consumed_total{queue="manager",result="transient"} 1
marketplace_messages_consumed_total{queue="payment",result="ok"} 12
marketplace_messages_consumed_total{queue="payment",result="permanent"} 1
marketplace_http_requests_total{method="GET",route="/a\"b\\c",status="200"} 5
marketplace_sagas_in_flight 3
histogram_bucket{le="+Inf"} 4 1700000000
"#;

    #[test]
    fn prometheus_text_parses() {
        let samples = parse_prometheus(METRICS);
        assert_eq!(samples.len(), 9);
        assert_eq!(samples[6].label("route"), Some("/a\"b\\c"));
        assert_eq!(samples[7].name, "marketplace_sagas_in_flight");
        assert_eq!(samples[7].value, 3.0);
        assert_eq!(samples[8].value, 4.0);
        assert!(parse_sample("broken{a=\"x} 1").is_none());
    }

    #[test]
    fn snapshots_give_deltas() {
        let before = Snapshot::parse(METRICS);
        assert_eq!(before.finished(), 12.0);
        let mut after = Snapshot::parse(
            r#"marketplace_orders_total{status="SUCCESS"} 15
marketplace_orders_total{status="UNKNOWN"} 1
marketplace_orders_total{status="TIMEOUT"} 2
marketplace_messages_consumed_total{queue="manager",result="ok"} 50
marketplace_messages_consumed_total{queue="manager",result="transient"} 1
marketplace_messages_consumed_total{queue="payment",result="ok"} 12
marketplace_messages_consumed_total{queue="payment",result="permanent"} 1
marketplace_messages_consumed_total{queue="order",result="ok"} 7
"#,
        );
        assert_eq!(after.finished_since(&before), 6);
        let m = after.messages_since(&before);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["manager", "order"]);
        assert_eq!(
            m["manager"],
            QueueMessages {
                ok: 20,
                transient: 0,
                permanent: 0
            }
        );
        assert_eq!(m["order"].delivered(), 7);
        // A split deployment: counters of several processes add up.
        after.add(&Snapshot::parse(
            "marketplace_messages_consumed_total{queue=\"order\",result=\"ok\"} 3",
        ));
        assert_eq!(after.messages_since(&before)["order"].ok, 10);
    }

    #[test]
    fn server_times_parse() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T08:52:07.800Z"),
            Some(1_795_251_127_800)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T08:52:07.8+00:00"),
            Some(1_795_251_127_800)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T08:52:07.8001234Z"),
            Some(1_795_251_127_800)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-21T08:52:07+02:00",
            "2026-11-21 x",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn orders_are_final_only_when_done() {
        let order = |status: &str, phase: &str| {
            json!({"status": status, "phase": phase,
                   "created_at": "1970-01-01T00:00:01.000Z", "updated_at": "1970-01-01T00:00:01.250Z"})
        };
        assert_eq!(final_state(&order("PROCESSING", "running")), None);
        assert_eq!(final_state(&order("PROCESSING", "compensating")), None);
        assert_eq!(final_state(&order("TIMEOUT", "compensating")), None);
        assert_eq!(
            final_state(&order("SUCCESS", "done")),
            Some(OrderState::Final {
                status: "SUCCESS".into(),
                created_ms: 1000,
                updated_ms: 1250
            })
        );
    }

    fn sample_report(ceiling: bool) -> Report {
        let o = parse("--concurrency 4 --count 4 --seed 1 --mix insufficient_fund=0.25").unwrap();
        let posting = Posting {
            sent: 5,
            accepted: vec!["a".into(), "b".into(), "c".into()],
            refused: BTreeMap::from([("503 overloaded".to_string(), 1)]),
            errors: BTreeMap::from([("HTTP 500".to_string(), 1)]),
            skipped: 0,
            post_ms: vec![2.0, 3.0, 4.0, 5.0, 6.0],
            elapsed: Duration::from_millis(500),
        };
        let fin = |status: &str, created_ms, updated_ms| OrderState::Final {
            status: status.into(),
            created_ms,
            updated_ms,
        };
        let orders = [
            fin("SUCCESS", 1_000, 1_010),
            fin("INSUFFICIENT_FUND", 1_100, 1_130),
            OrderState::NotFinal,
        ];
        let messages = BTreeMap::from([(
            "manager".to_string(),
            QueueMessages {
                ok: 20,
                transient: 1,
                permanent: 2,
            },
        )]);
        let measure = CeilingMeasure {
            duration_s: 5.0,
            published_per_s: 1100.0,
            consumed_per_s: 1000.0,
        };
        let seen = Observed {
            posting,
            orders: orders.to_vec(),
            messages,
            stock_before: Some(500),
            stock_after: Some(499),
            ceiling: ceiling.then_some(measure),
            warnings: vec!["a warning".into()],
        };
        summarize("r1", Params::of(&o, 1), seen)
    }

    #[test]
    fn the_report_counts_and_rates() {
        let r = sample_report(true);
        assert_eq!((r.posted, r.accepted, r.refused, r.errors), (5, 3, 1, 1));
        assert_eq!((r.final_orders, r.not_final, r.not_listed), (2, 1, 0));
        assert_eq!(r.accepted_per_s, 6.0);
        assert_eq!(r.completion_window_s, Some(0.13));
        assert_eq!(r.completed_per_s, Some(15.385)); // 2 / 0.13 s
        assert_eq!(
            (r.latency_ms.p50, r.latency_ms.max),
            (Some(10.0), Some(30.0))
        );
        assert_eq!(r.messages_per_order, Some(11.0));
        let c = r.ceiling.as_ref().unwrap();
        assert_eq!((c.msg_per_s, c.orders_per_s), (1000.0, 90.909));
        assert!(c.messages_per_order_measured);
        assert!((c.share.unwrap() - r.completed_per_s.unwrap() / c.orders_per_s).abs() < 1e-3);
    }

    #[test]
    fn the_json_report_has_stable_keys() {
        let v = serde_json::to_value(sample_report(false)).unwrap();
        for key in [
            "run_id",
            "params",
            "posted",
            "accepted",
            "refused",
            "refused_by_kind",
            "skipped",
            "errors",
            "errors_by_kind",
            "accepted_per_s",
            "final",
            "not_final",
            "not_listed",
            "statuses",
            "completed_per_s",
            "latency_ms",
            "post_latency_ms",
            "messages_per_order",
            "messages",
            "ceiling",
            "warnings",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v:#}");
        }
        assert_eq!(v["statuses"], json!({"INSUFFICIENT_FUND": 1, "SUCCESS": 1}));
        assert_eq!(
            v["latency_ms"],
            json!({"p50": 10.0, "p90": 30.0, "p99": 30.0, "max": 30.0})
        );
        assert_eq!(v["params"]["mode"], "concurrency");
        assert_eq!(v["params"]["mix"], json!({"insufficient_fund": 0.25}));
        assert_eq!(v["errors_by_kind"], json!({"HTTP 500": 1}));
        assert_eq!(v["ceiling"], Value::Null);
    }

    #[test]
    fn the_table_shows_every_section() {
        let t = render_table(&sample_report(true));
        for needle in [
            "run r1",
            "closed loop, 4 clients, until 4 orders",
            "accepted              3  (6.0/s)",
            "refused (429/503)     1  (503 overloaded: 1)",
            "HTTP 500",
            "final                 2 of 3 accepted  (not final: 1, not listed: 0)",
            "POST→final ms         p50 10.0  p90 30.0  p99 30.0  max 30.0",
            "INSUFFICIENT_FUND",
            "per final order       11.00",
            "orders/s allowed      90.9",
            "completed/s share",
            "a warning",
        ] {
            assert!(t.contains(needle), "{needle:?} not in\n{t}");
        }
    }
}
