//! The progress bar on stderr while a run posts, waits and reads.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::post::{PHASE_POSTING, PHASE_WAITING, Shared};

/// The progress bar on stderr, fed by a ticker from [`Shared`].
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Progress {
    pub(crate) fn start(show: bool, count: Option<u64>, shared: Arc<Shared>) -> Progress {
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

    pub(crate) fn shown(&self) -> bool {
        self.bar.is_some()
    }

    pub(crate) fn set_length(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(n);
        }
    }

    pub(crate) fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
