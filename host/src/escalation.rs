//! The escalation queue: what no machine can fix waits here, durably, in
//! the same store as the journal, until a person (or a supervisor agent)
//! resolves it; the run then resumes from its journal.
//!
//! Resolving is first-wins: a second resolution of the same escalation,
//! from this process or another, changes nothing and returns the first.

use crate::journal::{now_ms, SqliteJournal, StoreError};
use crate::outcome::{Attempt, EscalationReason};
use rusqlite::{params, OptionalExtension};
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
            EscalationReason::RetriesExhausted | EscalationReason::CircuitOpen => {
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

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no escalation `{0}`")]
    NoSuch(String),
    #[error("escalation {id} ({reason}) does not allow `{kind}`; allowed: {allowed}")]
    NotAllowed {
        id: String,
        reason: EscalationReason,
        kind: &'static str,
        allowed: String,
    },
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Store(StoreError::Sql(e))
    }
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
            "`{text}` is not one of retries-exhausted, ambiguous-state, low-confidence, \
            needs-human, approval-required, circuit-open"
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

fn decode(
    record: String,
    resolved_at: Option<i64>,
    resolved_by: Option<String>,
    resolution: Option<String>,
) -> Result<Escalation, QueueError> {
    let mut e: Escalation = serde_json::from_str(&record).map_err(|err| {
        QueueError::Store(StoreError::Damaged {
            run: "(escalation queue)".into(),
            seq: 0,
            message: format!("escalation record is not valid: {err}"),
        })
    })?;
    e.resolved_at = resolved_at;
    e.resolved_by = resolved_by;
    e.resolution = resolution
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|err| {
            QueueError::Store(StoreError::Damaged {
                run: e.run.clone(),
                seq: 0,
                message: format!("resolution of {} is not valid: {err}", e.id),
            })
        })?;
    Ok(e)
}

const COLUMNS: &str = "record, resolved_at, resolved_by, resolution";

/// A row: the record, when, by whom and how it was resolved.
type Row = (String, Option<i64>, Option<String>, Option<String>);

impl SqliteJournal {
    /// Opens an escalation, or returns the open one already waiting for the
    /// same run, step and reason.
    pub fn escalate(&self, mut e: Escalation) -> Result<(Escalation, bool), QueueError> {
        let conn = self.lock();
        let existing: Option<Row> = conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM escalations WHERE run = ?1 AND step = ?2 AND \
                    reason = ?3 AND resolved_at IS NULL"
                ),
                params![e.run, e.step as i64, e.reason.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        if let Some((rec, at, by, res)) = existing {
            return Ok((decode(rec, at, by, res)?, false));
        }
        e.input = redact(&e.input);
        e.allowed = ResolutionKind::allowed(e.reason);
        e.created_at = now_ms();
        conn.execute(
            "INSERT INTO escalations (id, run, step, reason, record, created_at) VALUES (?1, ?2, \
                ?3, ?4, ?5, ?6)",
            params![
                e.id,
                e.run,
                e.step as i64,
                e.reason.as_str(),
                serde_json::to_string(&e).expect("serializes"),
                e.created_at
            ],
        )?;
        Ok((e, true))
    }

    pub fn escalation(&self, id: &str) -> Result<Escalation, QueueError> {
        let conn = self.lock();
        let row: Option<Row> = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM escalations WHERE id = ?1"),
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (rec, at, by, res) = row.ok_or_else(|| QueueError::NoSuch(id.to_owned()))?;
        decode(rec, at, by, res)
    }

    /// Records a resolution unless one is already recorded (first wins,
    /// across processes: the update only applies to an open escalation).
    pub fn resolve(
        &self,
        id: &str,
        resolution: Resolution,
        by: &str,
    ) -> Result<Resolved, QueueError> {
        let current = self.escalation(id)?;
        if current.resolution.is_none() && !current.allowed.contains(&resolution.kind()) {
            return Err(QueueError::NotAllowed {
                id: id.to_owned(),
                reason: current.reason,
                kind: resolution.kind().as_str(),
                allowed: current
                    .allowed
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let n = self.lock().execute(
            "UPDATE escalations SET resolution = ?2, resolved_by = ?3, resolved_at = ?4 WHERE id = \
                ?1 AND resolved_at IS NULL",
            params![id, serde_json::to_string(&resolution).expect("serializes"), by, now_ms()],
        )?;
        Ok(Resolved {
            escalation: self.escalation(id)?,
            first: n == 1,
        })
    }

    pub fn escalations(&self, filter: &Filter) -> Result<Vec<Escalation>, QueueError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS}, created_at FROM escalations ORDER BY created_at, id"
        ))?;
        let now = now_ms();
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rec, at, by, res, created): (
                String,
                Option<i64>,
                Option<String>,
                Option<String>,
                i64,
            ) = row?;
            if !filter.all && at.is_some() {
                continue;
            }
            if filter.older_than_ms.is_some_and(|age| now - created < age) {
                continue;
            }
            let e = decode(rec, at, by, res)?;
            if filter.reason.is_some_and(|r| r != e.reason)
                || filter.run.as_ref().is_some_and(|r| r != &e.run)
            {
                continue;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Counted in SQL (a metrics scrape calls this): no record is read.
    pub fn escalation_stats(&self) -> Result<Stats, QueueError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT reason, COUNT(*), MIN(created_at) FROM escalations
             WHERE resolved_at IS NULL GROUP BY reason ORDER BY MIN(created_at)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let (mut open, mut oldest, mut by_reason) = (0u64, None::<i64>, Vec::new());
        for row in rows {
            let (reason, n, first) = row?;
            open += n.max(0) as u64;
            oldest = Some(oldest.map_or(first, |o| o.min(first)));
            by_reason.push((reason, n.max(0) as u64));
        }
        let resolved: i64 = conn.query_row(
            "SELECT COUNT(*) FROM escalations WHERE resolved_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(Stats {
            open,
            oldest_open_age_ms: oldest.map(|o| (now_ms() - o).max(0)),
            by_reason,
            resolved: resolved.max(0) as u64,
        })
    }
}

/// POSTs `body` to `url`, retried by `policy` on the same classification
/// as model calls.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    policy: crate::guard::RetryPolicy,
) -> Result<(), crate::Failure> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut previous = std::time::Duration::ZERO;
    for attempt in 1.. {
        let failure = match client
            .post(url)
            .json(body)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let text = r.text().await.unwrap_or_default();
                crate::models::classify::http_failure(
                    status,
                    &headers,
                    &text,
                    std::time::SystemTime::now(),
                )
            }
            Err(e) => crate::models::classify::transport(&e, false),
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match policy.decide(
            &failure,
            crate::Effect::Idempotent,
            attempt,
            previous,
            remaining,
            &mut rng,
        ) {
            crate::guard::Decision::Retry(wait) => {
                tokio::time::sleep(wait).await;
                previous = wait;
            }
            _ => return Err(failure),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn esc(id: &str, reason: EscalationReason) -> Escalation {
        Escalation {
            id: id.into(),
            run: "r1".into(),
            step: 2,
            reason,
            chain: "publish".into(),
            input: json!({"entry": "x", "api_key": "sk-1", "nested": {"auth_token": "t"}}),
            key: "r1:2".into(),
            message: "needs approval".into(),
            attempts: Vec::new(),
            allowed: Vec::new(),
            created_at: 0,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
        }
    }

    #[test]
    fn first_resolution_wins_and_secrets_are_redacted() {
        let d = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(d.path().join("s.db")).unwrap();
        let (e, new) = j
            .escalate(esc("e1", EscalationReason::ApprovalRequired))
            .unwrap();
        assert!(new);
        assert_eq!(e.input["api_key"], "[redacted]");
        assert_eq!(e.input["nested"]["auth_token"], "[redacted]");
        assert_eq!(e.input["entry"], "x");
        // The same run, step and reason while open: the same escalation.
        let (again, new) = j
            .escalate(esc("e2", EscalationReason::ApprovalRequired))
            .unwrap();
        assert!(!new);
        assert_eq!(again.id, "e1");
        let bad = j
            .resolve("e1", Resolution::Retry, "ann")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("does not allow `retry`; allowed: approve, reject, abort"),
            "{bad}"
        );
        let r = j.resolve("e1", Resolution::Approve, "ann").unwrap();
        assert!(r.first);
        let r2 = j
            .resolve(
                "e1",
                Resolution::Reject {
                    comment: "no".into(),
                },
                "bob",
            )
            .unwrap();
        assert!(!r2.first);
        assert_eq!(r2.escalation.resolution, Some(Resolution::Approve));
        assert_eq!(r2.escalation.resolved_by.as_deref(), Some("ann"));
        assert_eq!(j.escalation_stats().unwrap().open, 0);
        assert_eq!(j.escalations(&Filter::default()).unwrap().len(), 0);
        assert_eq!(
            j.escalations(&Filter {
                all: true,
                ..Filter::default()
            })
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn a_damaged_record_is_reported_not_guessed() {
        let d = tempfile::tempdir().unwrap();
        let j = SqliteJournal::open(d.path().join("s.db")).unwrap();
        j.escalate(esc("e1", EscalationReason::NeedsHuman)).unwrap();
        j.lock()
            .execute(
                "UPDATE escalations SET record = 'garbage' WHERE id = 'e1'",
                [],
            )
            .unwrap();
        let e = j.escalation("e1").unwrap_err().to_string();
        assert!(e.contains("escalation record is not valid"), "{e}");
        assert!(
            j.resolve("e1", Resolution::Retry, "ann").is_err(),
            "a damaged escalation is never resolved"
        );
    }
}
