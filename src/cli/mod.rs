//! What the command-line tools that drive a running marketplace over HTTP (`loadgen`,
//! `import`) share: the marketplace's URL and how it is given, how a failed request is
//! named, and the progress bar.

pub(crate) mod progress;

use std::{future::Future, process::ExitCode};

/// How a tool ends: runs `work` on a runtime of its own, then prints its report (as JSON
/// with `json`, else as `table` renders it) and exits 0 if it is `ok`, 1 if not; an error
/// of `work` is printed under `tool`'s name and exits with `on_error`.
pub(crate) fn finish<R: serde::Serialize>(
    tool: &str,
    json: bool,
    work: impl Future<Output = anyhow::Result<R>>,
    table: impl FnOnce(&R) -> String,
    ok: impl FnOnce(&R) -> bool,
    on_error: ExitCode,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("marketplace {tool}: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
            } else {
                print!("{}", table(&report));
            }
            if ok(&report) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("marketplace {tool}: {e:#}");
            on_error
        }
    }
}

/// The marketplace both tools talk to unless `--url` says otherwise.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// `value` as a base URL (no trailing `/`), or why not; `flag` names it in the error.
pub(crate) fn base_url(value: &str, flag: &str) -> Result<String, String> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.trim_end_matches('/').to_string())
    } else {
        Err(format!("{flag}: an http:// URL, not {value:?}"))
    }
}

/// A request that got no HTTP answer, in one word: `timeout`, `connect`, `body` or
/// `transport`.
pub(crate) fn transport_error(e: &reqwest::Error) -> String {
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
