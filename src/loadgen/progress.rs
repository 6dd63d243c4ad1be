//! What loadgen's progress bar shows while a run posts, waits and reads: the shared bar
//! (`crate::cli::progress`) redrawn from [`Shared`].

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::time::Instant;

use super::post::{PHASE_POSTING, PHASE_WAITING, Shared};
use crate::cli::progress::Progress;

/// The progress bar on stderr (if `show`), fed from [`Shared`].
pub(crate) fn start(show: bool, count: Option<u64>, shared: Arc<Shared>) -> Progress {
    // (when, accepted, final): rates over the last two seconds.
    let mut history: VecDeque<(Instant, u64, u64)> = VecDeque::new();
    Progress::start(show, count, "posting", move |bar| {
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
        match shared.phase.load(Ordering::Relaxed) {
            PHASE_POSTING => bar.set_position(sent),
            PHASE_WAITING => {
                bar.set_prefix("waiting");
                bar.set_position(finals);
            }
            _ => {
                bar.set_prefix("reading");
                bar.set_position(shared.read.load(Ordering::Relaxed));
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
    })
}
