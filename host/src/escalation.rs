//! The escalation queue: what no machine can fix waits here, durably, in
//! the same store as the journal, until a person (or a supervisor agent)
//! resolves it; the run then resumes from its journal.
//!
//! Resolving is first-wins: a second resolution of the same escalation,
//! from this process or another, changes nothing and returns the first.

use crate::outcome::{Attempt, EscalationReason};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// How a person answered an escalation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Resolution {
    /// Run the pending call (or accept a low-confidence result).
    Approve,
    /// Do not run it: the run sees a tool error carrying the comment.
    Reject { comment: String },
    /// This is the step's result (recorded as supplied by a person).
    Result { value: Value },
    /// Try the step again.
    Retry,
    /// Stop the run.
    Abort,
}

impl Resolution {
    pub fn kind(&self) -> ResolutionKind {
        match self {
            Resolution::Approve => ResolutionKind::Approve,
            Resolution::Reject { .. } => ResolutionKind::Reject,
            Resolution::Result { .. } => ResolutionKind::Result,
            Resolution::Retry => ResolutionKind::Retry,
            Resolution::Abort => ResolutionKind::Abort,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolution::Approve => f.write_str("approve"),
            Resolution::Reject { comment } => write!(f, "reject: {comment}"),
            Resolution::Result { value } => write!(f, "result: {value}"),
            Resolution::Retry => f.write_str("retry"),
            Resolution::Abort => f.write_str("abort"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResolutionKind {
    Approve,
    Reject,
    Result,
    Retry,
    Abort,
}

impl ResolutionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolutionKind::Approve => "approve",
            ResolutionKind::Reject => "reject",
            ResolutionKind::Result => "result",
            ResolutionKind::Retry => "retry",
            ResolutionKind::Abort => "abort",
        }
    }

    /// What makes sense for each reason.
    pub fn allowed(reason: EscalationReason) -> Vec<ResolutionKind> {
        use ResolutionKind::*;
        match reason {
            EscalationReason::ApprovalRequired => vec![Approve, Reject, Abort],
            EscalationReason::AmbiguousState => vec![Approve, Result, Reject, Abort],
            EscalationReason::LowConfidence => vec![Approve, Result, Retry, Reject, Abort],
            EscalationReason::NeedsHuman => vec![Result, Retry, Reject, Abort],
            EscalationReason::RetriesExhausted
            | EscalationReason::Failed
            | EscalationReason::CircuitOpen => {
                vec![Retry, Result, Reject, Abort]
            }
        }
    }
}

/// One escalation, with everything needed to decide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub id: String,
    pub run: String,
    pub step: u64,
    pub reason: EscalationReason,
    /// The chain (tool or model) the step called.
    pub chain: String,
    /// The call's input, with secret-looking fields redacted.
    pub input: Value,
    pub key: String,
    /// What went wrong, in words (the error chain).
    pub message: String,
    pub attempts: Vec<Attempt>,
    pub allowed: Vec<ResolutionKind>,
    pub created_at: i64,
    pub resolved_at: Option<i64>,
    pub resolved_by: Option<String>,
    pub resolution: Option<Resolution>,
}

/// The answer to a resolve: the resolution in force, and whether this call
/// set it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub escalation: Escalation,
    pub first: bool,
}

/// Replaces values of secret-looking keys (`api_key`, `token`, ...).
pub fn redact(v: &Value) -> Value {
    const SECRET: [&str; 6] = [
        "key",
        "token",
        "secret",
        "password",
        "authorization",
        "credential",
    ];
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = SECRET.iter().any(|s| {
                        lower == *s
                            || lower.ends_with(&format!("_{s}"))
                            || lower.starts_with(&format!("{s}_"))
                    });
                    (
                        k.clone(),
                        if secret {
                            Value::String("[redacted]".into())
                        } else {
                            redact(x)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// Filters for listing.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub reason: Option<EscalationReason>,
    pub run: Option<String>,
    /// Only those created at least this long ago.
    pub older_than_ms: Option<i64>,
    /// Include resolved ones.
    pub all: bool,
}

/// A reason as an operator types it; the error starts with the value,
/// for the caller to prefix with the flag or parameter it came from.
pub fn parse_reason(text: &str) -> Result<EscalationReason, String> {
    serde_json::from_value(Value::String(text.to_owned())).map_err(|_| {
        format!(
            "`{text}` is not one of retries-exhausted, failed, ambiguous-state, \
            low-confidence, needs-human, approval-required, circuit-open"
        )
    })
}

/// An age such as `10m` or `1h 30m`, in milliseconds; a bare number is
/// refused (seconds or minutes?). Errors as for [`parse_reason`].
pub fn parse_age(text: &str) -> Result<i64, String> {
    if !text.contains(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("`{text}`: give a unit, such as `10m` or `2h`"));
    }
    humantime::parse_duration(text)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .map_err(|e| format!("`{text}`: {e}"))
}

/// Queue depth and age, for operators and alerts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub open: u64,
    pub oldest_open_age_ms: Option<i64>,
    pub by_reason: Vec<(String, u64)>,
    pub resolved: u64,
}
