//! `marketplace import FILE.csv`: places every purchase of a CSV file through a running
//! marketplace's API, as a client would (`POST /api/purchase/`), and says what became of
//! each line.
//!
//! Idempotent per line: each purchase carries an `Idempotency-Key` made from the batch
//! (the file's SHA-256 unless `--batch` names it) and the line's content, so running the
//! same file twice places nothing twice; the second run's answers are replays, which the
//! API marks (`Idempotent-Replayed: true`) and the summary counts as already placed.
//!
//! The pure parts (the file, the summary, the command line) are tested beside each; the
//! posting is tested against a whole marketplace (`tests/import.rs`).

mod file; // the CSV file: header, lines, keys
mod options; // the command line
mod report; // outcomes and the summary
mod send; // posting, with retries

use std::{
    io::IsTerminal,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;

pub use report::Report;

use crate::cli::progress::Progress;
use file::Line;
use options::{Command, Options, USAGE};
use report::{Outcome, Tally};
use send::Job;

/// `marketplace import ARGS`: parses, imports, prints the summary.
pub fn main(args: &[String]) -> ExitCode {
    let options = match Options::parse(args) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(o)) => o,
        Err(e) => {
            eprintln!("marketplace import: {e}\n(see marketplace import --help)");
            return ExitCode::from(2);
        }
    };
    crate::cli::finish(
        "import",
        options.json,
        run(&options),
        Report::table,
        Report::ok,
        ExitCode::from(2),
    )
}

/// Reads the file and places its purchases. An error means nothing was sent (the file
/// cannot be imported, or the marketplace does not answer).
async fn run(o: &Options) -> anyhow::Result<Report> {
    let bytes = std::fs::read(&o.file).with_context(|| format!("reading {}", o.file))?;
    let parsed =
        file::parse(&bytes, o.batch.as_deref()).map_err(|e| anyhow::anyhow!("{}: {e}", o.file))?;
    let batch = o.batch.clone().unwrap_or(parsed.sha256);
    let mut tally = Tally::default();
    let mut jobs = Vec::new();
    for line in parsed.lines {
        match line {
            Line::Purchase { line, body, key } => jobs.push(Job { line, body, key }),
            Line::Unparsable { line, reason } => tally.add(line, Outcome::Unparsable { reason }),
        }
    }
    let total = tally.done() + jobs.len() as u64;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    // A wrong --url would otherwise cost every line its retries.
    if !jobs.is_empty()
        && let Err(e) = client.get(format!("{}/healthz", o.url)).send().await
    {
        anyhow::bail!(
            "the marketplace at {} does not answer ({}); nothing was sent",
            o.url,
            crate::cli::transport_error(&e)
        );
    }
    let tally = Arc::new(Mutex::new(tally));
    let show = o.progress && std::io::stderr().is_terminal();
    let progress = {
        let tally = tally.clone();
        Progress::start(show, Some(total), "placing", move |bar| {
            let t = tally.lock().expect("not poisoned");
            bar.set_position(t.done());
            bar.set_message(format!(
                "accepted {} · already placed {} · refused {} · not placed {}",
                t.accepted, t.already_placed, t.refused, t.not_placed
            ));
        })
    };
    send::place_all(&client, &o.url, jobs, o.concurrency, &tally).await;
    progress.finish();
    let tally = std::mem::take(&mut *tally.lock().expect("not poisoned"));
    Ok(Report::of(&o.file, &o.url, &batch, tally))
}
