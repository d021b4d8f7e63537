//! The escalation queue's SQL.

use super::SqliteStore;
use crate::escalation::{redact, Escalation, Filter, Resolution, ResolutionKind, Resolved, Stats};
use crate::store::{codec, now_ms, offload, Queue, QueueError};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

fn decode(
    record: String,
    resolved_at: Option<i64>,
    resolved_by: Option<String>,
    resolution: Option<String>,
) -> Result<Escalation, QueueError> {
    codec::decode_escalation(&record, resolved_at, resolved_by, resolution)
}

const COLUMNS: &str = "record, resolved_at, resolved_by, resolution";

/// A row: the record, when, by whom and how it was resolved.
type Row = (String, Option<i64>, Option<String>, Option<String>);

impl SqliteStore {
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
        codec::check_allowed(&current, &resolution)?;
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
        let open = rows.collect::<Result<Vec<_>, _>>()?;
        let resolved: i64 = conn.query_row(
            "SELECT COUNT(*) FROM escalations WHERE resolved_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(codec::stats(open, resolved))
    }
}

#[async_trait]
impl Queue for SqliteStore {
    async fn escalate(&self, e: Escalation) -> Result<(Escalation, bool), QueueError> {
        offload(|| SqliteStore::escalate(self, e))
    }
    async fn escalation(&self, id: &str) -> Result<Escalation, QueueError> {
        offload(|| SqliteStore::escalation(self, id))
    }
    async fn resolve(
        &self,
        id: &str,
        resolution: Resolution,
        by: &str,
    ) -> Result<Resolved, QueueError> {
        offload(|| SqliteStore::resolve(self, id, resolution, by))
    }
    async fn escalations(&self, filter: &Filter) -> Result<Vec<Escalation>, QueueError> {
        offload(|| SqliteStore::escalations(self, filter))
    }
    async fn escalation_stats(&self) -> Result<Stats, QueueError> {
        offload(|| SqliteStore::escalation_stats(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::EscalationReason;
    use crate::store::tests::esc;

    #[test]
    fn a_damaged_record_is_reported_not_guessed() {
        let d = tempfile::tempdir().unwrap();
        let j = SqliteStore::open(d.path().join("s.db")).unwrap();
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
