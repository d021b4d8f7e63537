//! The escalation queue's SQL on PostgreSQL: one open escalation per run,
//! step and reason (a partial unique index, so two hosts escalating the
//! same step at once open one), and first-wins resolution.

use super::{Inner, PgStore};
use crate::escalation::{redact, Escalation, Filter, Resolution, ResolutionKind, Resolved, Stats};
use crate::store::{codec, now_ms, Queue, QueueError, StoreError};
use async_trait::async_trait;
use std::sync::Arc;

const COLUMNS: &str = "record, resolved_at, resolved_by, resolution";

fn decode(r: &tokio_postgres::Row) -> Result<Escalation, QueueError> {
    codec::decode_escalation(r.get::<_, &str>(0), r.get(1), r.get(2), r.get(3))
}

impl Inner {
    async fn escalation(&self, id: &str) -> Result<Escalation, QueueError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {COLUMNS} FROM escalations WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| QueueError::NoSuch(id.to_owned()))?;
        decode(&row)
    }

    async fn escalate(&self, mut e: Escalation) -> Result<(Escalation, bool), QueueError> {
        let c = self.client().await?;
        e.input = redact(&e.input);
        e.allowed = ResolutionKind::allowed(e.reason);
        e.created_at = now_ms();
        let record = serde_json::to_string(&e).expect("serializes");
        // The open one may be resolved between our insert and our read:
        // then the next insert opens a new one.
        for _ in 0..3 {
            let inserted = c
                .query_opt(
                    "INSERT INTO escalations (id, run, step, reason, record, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (run, step, reason) WHERE resolved_at IS NULL DO NOTHING
                     RETURNING id",
                    &[
                        &e.id,
                        &e.run,
                        &(e.step as i64),
                        &e.reason.as_str(),
                        &record,
                        &e.created_at,
                    ],
                )
                .await
                .map_err(|err| self.err(err))?;
            if inserted.is_some() {
                return Ok((e, true));
            }
            let open = c
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM escalations
                         WHERE run = $1 AND step = $2 AND reason = $3 AND resolved_at IS NULL"
                    ),
                    &[&e.run, &(e.step as i64), &e.reason.as_str()],
                )
                .await
                .map_err(|err| self.err(err))?;
            if let Some(row) = open {
                return Ok((decode(&row)?, false));
            }
        }
        Err(QueueError::Store(StoreError::Postgres {
            location: self.shown.clone(),
            message: format!(
                "run {} step {}: the open {} escalation kept being resolved while this one was \
                opened; try again",
                e.run, e.step, e.reason
            ),
        }))
    }

    async fn resolve(
        &self,
        id: String,
        resolution: Resolution,
        by: String,
    ) -> Result<Resolved, QueueError> {
        let current = self.escalation(&id).await?;
        codec::check_allowed(&current, &resolution)?;
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE escalations SET resolution = $2, resolved_by = $3, resolved_at = $4
                 WHERE id = $1 AND resolved_at IS NULL",
                &[
                    &id,
                    &serde_json::to_string(&resolution).expect("serializes"),
                    &by,
                    &now_ms(),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        drop(c);
        Ok(Resolved {
            escalation: self.escalation(&id).await?,
            first: n == 1,
        })
    }

    async fn escalations(&self, filter: Filter) -> Result<Vec<Escalation>, QueueError> {
        let c = self.client().await?;
        let created_by = filter.older_than_ms.map(|age| now_ms() - age);
        let rows = c
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM escalations
                     WHERE ($1 OR resolved_at IS NULL)
                       AND ($2::BIGINT IS NULL OR created_at <= $2)
                       AND ($3::TEXT IS NULL OR run = $3)
                       AND ($4::TEXT IS NULL OR reason = $4)
                     ORDER BY created_at, id"
                ),
                &[
                    &filter.all,
                    &created_by,
                    &filter.run,
                    &filter.reason.map(|r| r.as_str()),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(decode).collect()
    }

    async fn escalation_stats(&self) -> Result<Stats, QueueError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT reason, COUNT(*), MIN(created_at) FROM escalations
                 WHERE resolved_at IS NULL GROUP BY reason ORDER BY MIN(created_at)",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        let open = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let resolved: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM escalations WHERE resolved_at IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        Ok(codec::stats(open, resolved))
    }
}

impl PgStore {
    async fn queue<T, F, Fut>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>> + Send + 'static,
    {
        // The queue's own error kinds cross the runtime inside a Result.
        let fut = f(self.inner.clone());
        self.with(|_| async move { Ok(fut.await) }).await?
    }
}

#[async_trait]
impl Queue for PgStore {
    async fn escalate(&self, e: Escalation) -> Result<(Escalation, bool), QueueError> {
        self.queue(|s| async move { s.escalate(e).await }).await
    }
    async fn escalation(&self, id: &str) -> Result<Escalation, QueueError> {
        let id = id.to_owned();
        self.queue(|s| async move { s.escalation(&id).await }).await
    }
    async fn resolve(
        &self,
        id: &str,
        resolution: Resolution,
        by: &str,
    ) -> Result<Resolved, QueueError> {
        let (id, by) = (id.to_owned(), by.to_owned());
        self.queue(|s| async move { s.resolve(id, resolution, by).await })
            .await
    }
    async fn escalations(&self, filter: &Filter) -> Result<Vec<Escalation>, QueueError> {
        let filter = filter.clone();
        self.queue(|s| async move { s.escalations(filter).await })
            .await
    }
    async fn escalation_stats(&self) -> Result<Stats, QueueError> {
        self.queue(|s| async move { s.escalation_stats().await })
            .await
    }
}
