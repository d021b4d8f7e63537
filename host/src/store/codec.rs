//! How a row becomes a record, for every backend alike: an entry's
//! checksum, the checks that name damage instead of guessing past it, a
//! run's status, an escalation's record. A backend only fetches the
//! columns.

use super::{QueueError, StoreError};
use crate::escalation::{Escalation, Resolution, Stats};
use crate::journal::{Entry, EntryKind, RunRecord, RunStatus, Snapshot};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// First 8 bytes of SHA-256 over everything an entry says.
pub(crate) fn checksum(run: &str, seq: u64, kind: &str, step: u64, payload: &str) -> i64 {
    let mut h = Sha256::new();
    for part in [
        run.as_bytes(),
        &seq.to_le_bytes(),
        kind.as_bytes(),
        &step.to_le_bytes(),
        payload.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    i64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// An entry's columns as stored: seq, kind, step, payload, checksum, at.
pub(crate) type EntryRow = (u64, String, u64, String, i64, i64);

pub(crate) fn decode_entry(run: &str, row: EntryRow) -> Result<Entry, StoreError> {
    let (seq, kind, step, payload, sum, at) = row;
    let damaged = |message: String| StoreError::Damaged {
        run: run.to_owned(),
        seq,
        message,
    };
    if checksum(run, seq, &kind, step, &payload) != sum {
        return Err(damaged(
            "checksum mismatch (the entry was altered after it was written)".into(),
        ));
    }
    let kind =
        EntryKind::parse(&kind).ok_or_else(|| damaged(format!("unknown entry kind `{kind}`")))?;
    let payload: Value =
        serde_json::from_str(&payload).map_err(|e| damaged(format!("payload is not JSON: {e}")))?;
    Ok(Entry {
        seq,
        kind,
        step,
        payload,
        at,
    })
}

/// Entries after `after`, in order, each checked: a gap is named as the
/// missing entry, never skipped.
pub(crate) fn decode_entries<E>(
    run: &str,
    after: u64,
    rows: impl IntoIterator<Item = Result<EntryRow, E>>,
) -> Result<Vec<Entry>, StoreError>
where
    StoreError: From<E>,
{
    let mut out = Vec::new();
    for (expected, row) in (after + 1..).zip(rows) {
        let row = row?;
        if row.0 != expected {
            return Err(StoreError::Damaged {
                run: run.to_owned(),
                seq: expected,
                message: "entry is missing".into(),
            });
        }
        out.push(decode_entry(run, row)?);
    }
    Ok(out)
}

/// A run's row with its status checked.
pub(crate) fn finish_record(mut rec: RunRecord, status: &str) -> Result<RunRecord, StoreError> {
    rec.status = RunStatus::parse(status).ok_or_else(|| StoreError::Damaged {
        run: rec.id.clone(),
        seq: 0,
        message: format!("run status `{status}` is unknown"),
    })?;
    Ok(rec)
}

/// An escalation's row: the record, and when, by whom and how it was
/// resolved.
pub(crate) fn decode_escalation(
    record: &str,
    resolved_at: Option<i64>,
    resolved_by: Option<String>,
    resolution: Option<String>,
) -> Result<Escalation, QueueError> {
    let mut e: Escalation = serde_json::from_str(record).map_err(|err| {
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

/// A snapshot's row (seq, state, checksum), checked.
pub(crate) fn decode_snapshot(
    run: &str,
    seq: i64,
    text: &str,
    sum: i64,
) -> Result<Snapshot, StoreError> {
    let damaged = |message: &str| StoreError::Damaged {
        run: run.to_owned(),
        seq: seq as u64,
        message: format!("snapshot: {message}"),
    };
    if checksum(run, seq as u64, "snapshot", 0, text) != sum {
        return Err(damaged("checksum mismatch"));
    }
    Ok(Snapshot {
        seq: seq as u64,
        state: serde_json::from_str(text).map_err(|_| damaged("not JSON"))?,
    })
}

/// Refuses a resolution the escalation's reason does not allow (once
/// resolved, any answer is let through to learn it came second).
pub(crate) fn check_allowed(
    current: &Escalation,
    resolution: &Resolution,
) -> Result<(), QueueError> {
    if current.resolution.is_some() || current.allowed.contains(&resolution.kind()) {
        return Ok(());
    }
    Err(QueueError::NotAllowed {
        id: current.id.clone(),
        reason: current.reason,
        kind: resolution.kind().as_str(),
        allowed: current
            .allowed
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The queue's figures from its open escalations counted by reason
/// (reason, count, oldest `created_at`) and the resolved count.
pub(crate) fn stats(open_by_reason: Vec<(String, i64, i64)>, resolved: i64) -> Stats {
    let (mut open, mut oldest, mut by_reason) = (0u64, None::<i64>, Vec::new());
    for (reason, n, first) in open_by_reason {
        open += n.max(0) as u64;
        oldest = Some(oldest.map_or(first, |o| o.min(first)));
        by_reason.push((reason, n.max(0) as u64));
    }
    Stats {
        open,
        oldest_open_age_ms: oldest.map(|o| (super::now_ms() - o).max(0)),
        by_reason,
        resolved: resolved.max(0) as u64,
    }
}
