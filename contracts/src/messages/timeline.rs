//! A saga's history as the read models see it: its timeline's entries and its phase.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Step;

/// One line of an order's timeline: what happened to which step, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Position in the saga's history, from 1.
    pub seq: i64,
    pub at_ms: i64,
    pub step: Step,
    pub event: TimelineEvent,
    /// `attempt N` on a retry; the reason of a refusal, failure or dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The span of this entry in the order's trace (16 hex digits): the step attempt's span
    /// for `sent` and its outcome, else the span of the work that recorded it. Absent when
    /// tracing is off, and from entries recorded before tracing existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// What happened to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimelineEvent {
    /// The command left (detail `attempt N` on a retry).
    Sent,
    Done,
    Refused,
    Failed,
    Skipped,
    TimedOut,
    DeadLettered,
    /// A late or duplicate reply.
    Ignored,
}

impl TimelineEvent {
    pub const ALL: [TimelineEvent; 8] = [
        Self::Sent,
        Self::Done,
        Self::Refused,
        Self::Failed,
        Self::Skipped,
        Self::TimedOut,
        Self::DeadLettered,
        Self::Ignored,
    ];

    /// The name on the wire and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Done => "done",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::TimedOut => "timed_out",
            Self::DeadLettered => "dead_lettered",
            Self::Ignored => "ignored",
        }
    }

    /// The event named `name`, as [`TimelineEvent::as_str`] writes it.
    pub fn parse(name: &str) -> Option<TimelineEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// The worker answered the step (done, refused or failed): it ran.
    pub fn is_answer(self) -> bool {
        matches!(self, Self::Done | Self::Refused | Self::Failed)
    }
}

impl fmt::Display for TimelineEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for TimelineEvent {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Where a saga is: going forward, undoing, or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// Compensating, or rejecting an order that never started.
    Compensating,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Self::Running, Self::Compensating, Self::Done];

    /// The name on the wire, in the API and in the databases.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Done => "done",
        }
    }

    /// The phase named `name`, as [`Phase::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Phase> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Phase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests;
