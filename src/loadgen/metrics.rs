//! The Prometheus text format as `/metrics` serves it, and the counters the load generator
//! reads from it.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub(super) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition; comments and unreadable lines are skipped.
pub(crate) fn parse_prometheus(text: &str) -> Vec<Sample> {
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
pub(crate) struct Snapshot {
    /// `marketplace_orders_total` by status: sagas finished.
    pub orders: BTreeMap<String, f64>,
    /// `marketplace_messages_consumed_total` by (queue, result).
    pub consumed: BTreeMap<(String, String), f64>,
}

impl Snapshot {
    pub(super) fn parse(text: &str) -> Snapshot {
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
    pub(super) fn add(&mut self, other: &Snapshot) {
        for (k, v) in &other.orders {
            *self.orders.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.consumed {
            *self.consumed.entry(k.clone()).or_default() += v;
        }
    }

    /// Sagas finished, any status.
    pub(super) fn finished(&self) -> f64 {
        self.orders.values().sum()
    }

    /// Sagas finished since `before`.
    pub(super) fn finished_since(&self, before: &Snapshot) -> u64 {
        (self.finished() - before.finished()).max(0.0).round() as u64
    }

    /// Handler outcomes per queue since `before`.
    pub(super) fn messages_since(&self, before: &Snapshot) -> BTreeMap<String, QueueMessages> {
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
pub(crate) struct QueueMessages {
    pub ok: u64,
    pub transient: u64,
    pub permanent: u64,
}

impl QueueMessages {
    /// Deliveries handled: each ends acked (ok) or rejected (permanent). Transient counts
    /// retries of a delivery in hand, not messages, so it is left out.
    pub(super) fn delivered(&self) -> u64 {
        self.ok + self.permanent
    }
}

#[cfg(test)]
mod tests;
