//! The command line of `marketplace import`.

use crate::cli::{DEFAULT_URL, base_url};

/// `marketplace import --help`.
pub(crate) const USAGE: &str = "\
marketplace import: place every purchase of a CSV file through a running marketplace

Usage:
  marketplace import FILE.csv [--url URL] [--concurrency N] [--batch NAME] [--json]
                              [--no-progress]

The file: a header naming the columns username,product,price,amount (in any order;
product may be left out, and an empty product cell means the API's default), then one
purchase per line. Cells may be quoted (\"a,b\"; \"\" is a quote); a quoted cell does not
span lines.

  --url URL          the marketplace [default: http://127.0.0.1:8000]
  --concurrency N    purchases in flight at once, 1 to 256 [default: 8]
  --batch NAME       what the purchases' idempotency keys are made from, with each line's
                     content [default: the file's SHA-256]. Running the same file again
                     places nothing twice; name the batch to keep that across edits of the
                     file (a line fixed or added is placed, the others are not again)
  --json             one JSON object on stdout instead of the table
  --no-progress      no progress bar (there is none either when stderr is not a terminal)

Each line is sent as POST /api/purchase/ with an Idempotency-Key, retried (bounded) on 429,
503, 5xx and lost connections, honouring Retry-After. A line placed by an earlier run is
answered as a replay and counted as already placed. Keys are remembered by the marketplace
for IDEMPOTENCY_KEY_TTL_MS (24 h by default): a run after that places the file again.

Exit status: 0 if every line is placed (now or before), 1 if a line was refused, could not
be read or could not be placed, 2 when nothing was sent: bad arguments, a file that cannot
be imported, or a marketplace that does not answer.
";

/// The most purchases in flight at once.
pub(crate) const MAX_CONCURRENCY: usize = 256;

/// Everything the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    pub file: String,
    pub url: String,
    pub concurrency: usize,
    pub batch: Option<String>,
    pub json: bool,
    pub progress: bool,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Help,
    Run(Options),
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Command, String> {
        let mut file = None;
        let mut url = DEFAULT_URL.to_string();
        let mut concurrency = 8;
        let mut batch = None;
        let (mut json, mut progress) = (false, true);
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || -> Result<String, String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value")),
                }
            };
            match flag {
                "-h" | "--help" => return Ok(Command::Help),
                "--json" | "--no-progress" if inline.is_some() => {
                    return Err(format!("{flag} takes no value"));
                }
                "--json" => json = true,
                "--no-progress" => progress = false,
                "--url" => url = base_url(&value()?, flag)?,
                "--concurrency" => {
                    let v = value()?;
                    concurrency = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
                        .ok_or_else(|| {
                            format!("--concurrency: 1 to {MAX_CONCURRENCY}, not {v:?}")
                        })?;
                }
                "--batch" => {
                    let v = value()?;
                    if v.is_empty() {
                        return Err("--batch: a name, not nothing".into());
                    }
                    batch = Some(v);
                }
                _ if flag.starts_with('-') && flag.len() > 1 => {
                    return Err(format!("unknown argument {arg:?}"));
                }
                _ if file.is_some() => return Err(format!("one file at a time, not also {arg:?}")),
                _ => file = Some(arg.clone()),
            }
        }
        let file = file.ok_or("which file? (marketplace import FILE.csv)")?;
        Ok(Command::Run(Options {
            file,
            url,
            concurrency,
            batch,
            json,
            progress,
        }))
    }
}

#[cfg(test)]
mod tests;
