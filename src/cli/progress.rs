//! The progress bar on stderr: a bar of known length or a spinner, redrawn every 200 ms
//! by a ticker from what the tool's tasks share, or nothing at all when not shown (stderr
//! is not a terminal, or `--no-progress`).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often the ticker redraws.
const TICK: Duration = Duration::from_millis(200);

/// A progress bar and the ticker that redraws it.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// If `show`, a bar of `count` steps (a spinner without one) labelled `prefix`, which
    /// `update` redraws every 200 ms (position, message, prefix) until [`Progress::finish`].
    pub(crate) fn start(
        show: bool,
        count: Option<u64>,
        prefix: &str,
        mut update: impl FnMut(&ProgressBar) + Send + 'static,
    ) -> Progress {
        if !show {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        let bar = match count {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix:>8} {elapsed:>4} [{bar:24}] {pos}/{len} {wide_msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>8} {elapsed:>4} {spinner} {wide_msg}")
                    .expect("a valid template"),
            ),
        };
        bar.set_prefix(prefix.to_string());
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    update(&bar);
                    tokio::time::sleep(TICK).await;
                }
            })
        };
        Progress {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    pub(crate) fn shown(&self) -> bool {
        self.bar.is_some()
    }

    pub(crate) fn set_length(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(n);
        }
    }

    /// Stops the ticker and clears the bar, so that the report that follows stands alone.
    pub(crate) fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
