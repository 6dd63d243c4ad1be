//! What an import did, line by line, and the summary made of it: a table for people,
//! `--json` for programs.

use serde::Serialize;

/// How one line ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `202`: placed now, or (`replayed`: the answer carried `Idempotent-Replayed: true`)
    /// by an earlier run with the same key.
    Placed { order_id: String, replayed: bool },
    /// The API refused it (`4xx` but `429`), with its error code and detail.
    Refused {
        status: u16,
        error: String,
        detail: String,
    },
    /// Not a record of the file: never sent.
    Unparsable { reason: String },
    /// No answer that decides, after every attempt (overloaded, unavailable, unreachable).
    NotPlaced { detail: String },
}

/// The outcomes so far, by line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub outcomes: Vec<(u64, Outcome)>,
    pub accepted: u64,
    pub already_placed: u64,
    pub refused: u64,
    pub not_placed: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, line: u64, outcome: Outcome) {
        match &outcome {
            Outcome::Placed {
                replayed: false, ..
            } => self.accepted += 1,
            Outcome::Placed { replayed: true, .. } => self.already_placed += 1,
            Outcome::Refused { .. } | Outcome::Unparsable { .. } => self.refused += 1,
            Outcome::NotPlaced { .. } => self.not_placed += 1,
        }
        self.outcomes.push((line, outcome));
    }

    pub(crate) fn done(&self) -> u64 {
        self.outcomes.len() as u64
    }
}

/// The summary of an import (`--json` prints it as is).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub file: String,
    pub url: String,
    /// What the idempotency keys were made from: `--batch`, or the file's SHA-256.
    pub batch: String,
    /// Purchases the file holds (lines after the header, blank ones aside).
    pub lines: u64,
    /// Placed by this run.
    pub accepted: u64,
    /// Placed by an earlier run with the same keys: answered as replays, nothing placed.
    pub already_placed: u64,
    /// Refused by the API, or not a record of the file.
    pub refused: u64,
    /// Without a deciding answer after every attempt: run the import again (it places
    /// nothing twice).
    pub not_placed: u64,
    /// Every order, by line.
    pub orders: Vec<PlacedLine>,
    /// Every refused line, with why.
    pub refusals: Vec<RefusedLine>,
    /// Every line not placed, with the last error.
    pub failures: Vec<FailedLine>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PlacedLine {
    pub line: u64,
    pub order_id: String,
    /// True when an earlier run placed it.
    pub replayed: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusedLine {
    pub line: u64,
    /// The API's status; null for a line that was not sent (unparsable).
    pub status: Option<u16>,
    /// The API's error code (`invalid_field`, …), or `unparsable`.
    pub error: String,
    /// The API's detail (it starts with the field's name), or what is wrong with the line.
    pub detail: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FailedLine {
    pub line: u64,
    pub detail: String,
}

impl Report {
    pub(crate) fn of(file: &str, url: &str, batch: &str, tally: Tally) -> Report {
        let mut outcomes = tally.outcomes;
        outcomes.sort_by_key(|(line, _)| *line);
        let (mut orders, mut refusals, mut failures) = (Vec::new(), Vec::new(), Vec::new());
        for (line, outcome) in outcomes {
            match outcome {
                Outcome::Placed { order_id, replayed } => orders.push(PlacedLine {
                    line,
                    order_id,
                    replayed,
                }),
                Outcome::Refused {
                    status,
                    error,
                    detail,
                } => refusals.push(RefusedLine {
                    line,
                    status: Some(status),
                    error,
                    detail,
                }),
                Outcome::Unparsable { reason } => refusals.push(RefusedLine {
                    line,
                    status: None,
                    error: "unparsable".into(),
                    detail: reason,
                }),
                Outcome::NotPlaced { detail } => failures.push(FailedLine { line, detail }),
            }
        }
        Report {
            file: file.to_string(),
            url: url.to_string(),
            batch: batch.to_string(),
            lines: (orders.len() + refusals.len() + failures.len()) as u64,
            accepted: tally.accepted,
            already_placed: tally.already_placed,
            refused: tally.refused,
            not_placed: tally.not_placed,
            orders,
            refusals,
            failures,
        }
    }

    /// Whether every line was placed, now or before.
    pub fn ok(&self) -> bool {
        self.refused == 0 && self.not_placed == 0
    }

    /// The summary as a table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "marketplace import: {} into {}", self.file, self.url);
        let _ = writeln!(s, "  {:<16}{}", "batch", self.batch);
        let _ = writeln!(s, "  {:<16}{}", "lines", self.lines);
        let _ = writeln!(s, "  {:<16}{}", "accepted", self.accepted);
        let _ = writeln!(
            s,
            "  {:<16}{}{}",
            "already placed",
            self.already_placed,
            if self.already_placed > 0 {
                "  (placed by an earlier run: answered as replays of their Idempotency-Key)"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "  {:<16}{}", "refused", self.refused);
        if self.not_placed > 0 {
            let _ = writeln!(
                s,
                "  {:<16}{}  (no deciding answer: run the import again, it places nothing twice)",
                "not placed", self.not_placed
            );
        }
        if !self.refusals.is_empty() {
            let _ = writeln!(s, "\nrefused:");
            for r in &self.refusals {
                let why = match r.status {
                    Some(status) => format!("{status} {}", r.error),
                    None => r.error.clone(),
                };
                let _ = writeln!(s, "  line {:<6} {:<18} {}", r.line, why, r.detail);
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\nnot placed:");
            for f in &self.failures {
                let _ = writeln!(s, "  line {:<6} {}", f.line, f.detail);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
