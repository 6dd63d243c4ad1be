//! The command line: flags and their values, durations, defaults, and the help text.

use std::time::Duration;

use super::mix::Mix;
pub(crate) use crate::cli::{DEFAULT_URL, base_url};

/// `marketplace loadgen --help`.
pub(crate) const USAGE: &str = "\
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
pub(crate) const MAX_OUTSTANDING: usize = 4096;
/// Credits of a new user (the server's `INITIAL_CREDITS` default).
pub(crate) const INITIAL_CREDITS: i64 = 500;
/// Orders per second assumed to size the users of a closed loop bounded by time only
/// (nothing else says how many orders it will place).
const ASSUMED_MAX_ORDERS_PER_S: u64 = 2_000;

pub(crate) const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub(crate) const DEFAULT_MIX: &str =
    "insufficient_fund=0.05,out_of_stock=0.01,kill_payment=0.01,timeout_inventory=0.01";

/// How the load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Load {
    /// Open loop: arrivals per second.
    Rate(f64),
    /// Closed loop: clients.
    Concurrency(usize),
}

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
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
pub(crate) enum Command {
    Help,
    Run(Box<Options>),
}

impl Options {
    /// Parses the arguments after `loadgen`; `env` looks up environment variables
    /// (`AMQP_URL`), so that parsing stays a pure function.
    pub(super) fn parse(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Command, String> {
        let mut flags = Flags::new(&env);
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
                "--json" => switch(&mut flags.json, true)?,
                "--no-progress" => switch(&mut flags.progress, false)?,
                "--ceiling" => switch(&mut flags.ceiling, true)?,
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
                    flags.set(flag, value)?;
                }
            }
        }
        let options = flags.into_options(&env)?;
        Ok(Command::Run(Box::new(options)))
    }
}

/// The command line's values as they are read, before the checks that need them together.
struct Flags {
    url: String,
    rate: Option<f64>,
    concurrency: Option<usize>,
    duration: Option<Duration>,
    count: Option<u64>,
    users: Option<u64>,
    price: i64,
    amount: i64,
    mix: Mix,
    seed: Option<u64>,
    wait: Duration,
    metrics_urls: Vec<String>,
    json: bool,
    progress: bool,
    ceiling: bool,
    ceiling_duration: Duration,
    amqp_url: String,
}

impl Flags {
    /// The defaults, with `--amqp-url` from `AMQP_URL` when it is set.
    fn new(env: &impl Fn(&str) -> Option<String>) -> Flags {
        Flags {
            url: DEFAULT_URL.to_string(),
            rate: None,
            concurrency: None,
            duration: None,
            count: None,
            users: None,
            price: 1,
            amount: 1,
            mix: Mix::parse(DEFAULT_MIX).expect("the default mix parses"),
            seed: None,
            wait: Duration::from_secs(60),
            metrics_urls: Vec::new(),
            json: false,
            progress: true,
            ceiling: false,
            ceiling_duration: Duration::from_secs(5),
            amqp_url: env("AMQP_URL")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_AMQP_URL.to_string()),
        }
    }

    /// Sets `flag`, one of [`VALUE_FLAGS`], to `value`.
    fn set(&mut self, flag: &str, value: String) -> Result<(), String> {
        match flag {
            "--url" => self.url = base_url(&value, flag)?,
            "--rate" => {
                self.rate = Some(
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r > 0.0)
                        .ok_or_else(|| {
                            format!("--rate: requests per second (> 0), not {value:?}")
                        })?,
                );
            }
            "--concurrency" => {
                self.concurrency =
                    Some(positive(&value, flag)?.min(MAX_OUTSTANDING as u64) as usize);
            }
            "--duration" => self.duration = Some(parse_duration(&value, flag, false)?),
            "--count" => self.count = Some(positive(&value, flag)?),
            "--users" => self.users = Some(positive(&value, flag)?),
            "--price" => self.price = non_negative(&value, flag)?,
            "--amount" => self.amount = positive(&value, flag)? as i64,
            "--mix" => self.mix = Mix::parse(&value)?,
            "--seed" => {
                self.seed = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--seed: an integer, not {value:?}"))?,
                );
            }
            "--wait" => self.wait = parse_duration(&value, flag, true)?,
            "--metrics-url" => self.metrics_urls.push(base_url(&value, flag)?),
            "--ceiling-duration" => self.ceiling_duration = parse_duration(&value, flag, false)?,
            "--amqp-url" => self.amqp_url = value,
            _ => unreachable!("{flag} is in VALUE_FLAGS"),
        }
        Ok(())
    }

    /// The options, once the flags agree with each other; the defaults that depend on
    /// other flags filled in (`env` gives `TLS_CA_FILE`).
    fn into_options(self, env: &impl Fn(&str) -> Option<String>) -> Result<Options, String> {
        let Flags {
            url,
            rate,
            concurrency,
            duration,
            count,
            users,
            price,
            amount,
            mix,
            seed,
            wait,
            mut metrics_urls,
            json,
            progress,
            ceiling,
            ceiling_duration,
            mut amqp_url,
        } = self;
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
        // The ceiling's broker may be behind a private CA, like the services'.
        if let Some(ca) = env("TLS_CA_FILE").filter(|s| !s.is_empty()) {
            amqp_url = common::tls::amqp_url_with_ca(&amqp_url, &ca);
        }
        Ok(Options {
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
        })
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
pub(crate) fn parse_duration(value: &str, flag: &str, zero_ok: bool) -> Result<Duration, String> {
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
pub(crate) fn planned_orders(load: Load, duration: Option<Duration>, count: Option<u64>) -> u64 {
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
pub(crate) fn default_users(planned: u64, charge: i64) -> u64 {
    const FLOOR: u64 = 100;
    if charge <= 0 {
        return FLOOR;
    }
    let per_user = ((INITIAL_CREDITS * 4 / 5) / charge).max(1) as u64;
    FLOOR.max(planned.div_ceil(per_user))
}

#[cfg(test)]
mod tests;
