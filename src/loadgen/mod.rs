//! `marketplace loadgen`: drives a running marketplace over HTTP and reports what it
//! sustained: accepted and completed orders per second, final statuses, POST→final latency
//! and RabbitMQ deliveries per order; optionally next to what the broker itself sustains
//! for the saga's pattern (`--ceiling`).
//!
//! The module has two halves. The pure core (argument parsing, the request mix, percentiles,
//! Prometheus text parsing, timestamps, the report and its table) has no I/O and is unit
//! tested beside each part. The I/O around it posts, polls, reads orders and measures the
//! broker.
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

// The pure core.
mod metrics; // Prometheus text, /metrics snapshots and their deltas
mod mix; // the request mix, request bodies, buyers
mod options; // the command line: flags, durations, defaults, --help
mod report; // the report, percentiles, summarize
mod table; // the report as a table for people

// The I/O.
mod ceiling; // what the broker sustains (--ceiling)
mod orders; // reading accepted orders back, server times
mod post; // the posting phase, open or closed loop
mod progress; // the progress bar
mod run; // the phases of a run, in order
mod scrape; // /metrics over HTTP, the wait on it, the stock

use std::process::ExitCode;

pub use mix::{Kind, Mix};

use options::{Command, Options, USAGE};
use run::run;
use table::render_table;

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
    crate::cli::finish(
        "loadgen",
        options.json,
        run(&options),
        render_table,
        |_| true,
        ExitCode::FAILURE,
    )
}
