//! Breaker states on PostgreSQL, shared by every host on the database: the
//! same rows and rules as SQLite's (`store/sqlite/breakers.rs`), reached
//! synchronously from a call's guard with a short bound, and not at all for
//! a moment after a failure (a breaker then stands as this host sees it).

use super::{block_on_pg, Inner, BREAKER_BACKOFF, BREAKER_WAIT};
use crate::store::{now_ms, BreakerRow, BreakerStore, RowState, StoreError};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const COLUMNS: &str = "target, state, open_until, opened, version, writer, updated_at, set_by";

fn row(r: &tokio_postgres::Row) -> BreakerRow {
    BreakerRow {
        target: r.get(0),
        state: RowState::parse(r.get::<_, &str>(1)),
        open_until: r.get(2),
        opened: r.get::<_, i64>(3).max(0) as u64,
        version: r.get(4),
        writer: r.get(5),
        updated_at: r.get(6),
        set_by: r.get(7),
    }
}

/// [`BreakerStore`] on the store's pool.
pub struct PgBreakers {
    inner: Arc<Inner>,
}

impl PgBreakers {
    pub(crate) fn new(inner: Arc<Inner>) -> PgBreakers {
        PgBreakers { inner }
    }

    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let down = &self.inner.breakers_down_until;
        if now_ms() < down.load(Ordering::Relaxed) {
            return Err(StoreError::Postgres {
                location: self.inner.shown.clone(),
                message: "unreachable a moment ago; breaker states are this host's own until it \
                    answers again"
                    .into(),
            });
        }
        let r = block_on_pg(&self.inner.shown, BREAKER_WAIT, f(self.inner.clone()));
        if r.is_err() {
            down.store(
                now_ms() + BREAKER_BACKOFF.as_millis() as i64,
                Ordering::Relaxed,
            );
        }
        r
    }
}

impl BreakerStore for PgBreakers {
    fn read(&self, target: &str) -> Result<Option<BreakerRow>, StoreError> {
        let target = target.to_owned();
        self.run(|s| async move {
            let c = s.client().await?;
            let stmt = c
                .prepare_cached(&format!("SELECT {COLUMNS} FROM breakers WHERE target = $1"))
                .await
                .map_err(|e| s.err(e))?;
            let r = c.query_opt(&stmt, &[&target]).await.map_err(|e| s.err(e))?;
            Ok(r.as_ref().map(row))
        })
    }

    fn all(&self) -> Result<Vec<BreakerRow>, StoreError> {
        // Listing is an operator's read, not a call's: the longer bound.
        let inner = self.inner.clone();
        block_on_pg(&self.inner.shown, super::OP_TIMEOUT, async move {
            let c = inner.client().await?;
            let rows = c
                .query(
                    &format!("SELECT {COLUMNS} FROM breakers ORDER BY target"),
                    &[],
                )
                .await
                .map_err(|e| inner.err(e))?;
            Ok(rows.iter().map(row).collect())
        })
    }

    fn claim_probe(&self, target: &str, max: u32, for_ms: i64) -> Result<bool, StoreError> {
        let target = target.to_owned();
        self.run(move |s| async move {
            let c = s.client().await?;
            let now = now_ms();
            // A second of slack on `open_until`, as on SQLite: this host's
            // monotonic clock said the open time is over; the wall clock
            // may lag by a little.
            let stmt = c
                .prepare_cached(
                    "UPDATE breakers SET
                        probes = CASE WHEN probe_until <= $2::BIGINT THEN 1 ELSE probes + 1 END,
                        probe_until = CASE WHEN probe_until <= $2::BIGINT
                            THEN $2::BIGINT + $4::BIGINT ELSE probe_until END
                     WHERE target = $1 AND state = 'open' AND open_until <= $2::BIGINT + 1000
                       AND (probe_until <= $2::BIGINT OR probes < $3::BIGINT)",
                )
                .await
                .map_err(|e| s.err(e))?;
            let claimed = c
                .execute(&stmt, &[&target, &now, &i64::from(max), &for_ms])
                .await
                .map_err(|e| s.err(e))?;
            if claimed == 1 {
                return Ok(true);
            }
            let state = c
                .query_opt("SELECT state FROM breakers WHERE target = $1", &[&target])
                .await
                .map_err(|e| s.err(e))?
                .map(|r| RowState::parse(r.get::<_, &str>(0)));
            Ok(!matches!(
                state,
                Some(RowState::Open | RowState::ForcedOpen)
            ))
        })
    }

    fn write(&self, target: &str, open_until: Option<i64>, writer: i64) -> Result<i64, StoreError> {
        let target = target.to_owned();
        self.run(move |s| async move {
            let c = s.client().await?;
            let (state, until, opened) = match open_until {
                Some(u) => (RowState::Open, u, 1i64),
                None => (RowState::Closed, 0, 0),
            };
            let stmt = c
                .prepare_cached(
                    "INSERT INTO breakers
                        (target, state, open_until, opened, version, writer, updated_at)
                     VALUES ($1, $2, $3, $4, 1, $5, $6)
                     ON CONFLICT (target) DO UPDATE SET
                        state = excluded.state, open_until = excluded.open_until,
                        opened = breakers.opened + excluded.opened,
                        version = breakers.version + 1,
                        writer = excluded.writer, updated_at = excluded.updated_at,
                        probes = 0, probe_until = 0, set_by = '',
                        failures = 0, failures_until = 0
                     WHERE breakers.state NOT IN ('forced-open', 'forced-closed')
                     RETURNING version",
                )
                .await
                .map_err(|e| s.err(e))?;
            let written = c
                .query_opt(
                    &stmt,
                    &[
                        &target,
                        &state.as_str(),
                        &until,
                        &opened,
                        &writer,
                        &now_ms(),
                    ],
                )
                .await
                .map_err(|e| s.err(e))?;
            match written {
                Some(r) => Ok(r.get(0)),
                // Forced by an operator: unchanged, at the version it has.
                None => Ok(c
                    .query_one("SELECT version FROM breakers WHERE target = $1", &[&target])
                    .await
                    .map_err(|e| s.err(e))?
                    .get(0)),
            }
        })
    }

    fn count_failure(&self, target: &str, window_ms: i64) -> Result<u32, StoreError> {
        let target = target.to_owned();
        self.run(move |s| async move {
            let c = s.client().await?;
            let stmt = c
                .prepare_cached(
                    "INSERT INTO breakers (target, state, updated_at, failures, failures_until)
                     VALUES ($1, 'closed', $2::BIGINT, 1, $2::BIGINT + $3::BIGINT)
                     ON CONFLICT (target) DO UPDATE SET
                        failures = CASE WHEN breakers.failures_until <= $2::BIGINT THEN 1
                            ELSE breakers.failures + 1 END,
                        failures_until = CASE WHEN breakers.failures_until <= $2::BIGINT
                            THEN $2::BIGINT + $3::BIGINT ELSE breakers.failures_until END
                     RETURNING failures",
                )
                .await
                .map_err(|e| s.err(e))?;
            let n: i64 = c
                .query_one(&stmt, &[&target, &now_ms(), &window_ms])
                .await
                .map_err(|e| s.err(e))?
                .get(0);
            Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
        })
    }

    fn set(&self, target: &str, state: RowState, by: &str, writer: i64) -> Result<i64, StoreError> {
        let (target, by) = (target.to_owned(), by.to_owned());
        // An operator's act: the longer bound, and never refused for the
        // calls' back-off.
        let inner = self.inner.clone();
        block_on_pg(&self.inner.shown, super::OP_TIMEOUT, async move {
            let c = inner.client().await?;
            let opened = i64::from(state == RowState::ForcedOpen);
            let r = c
                .query_one(
                    "INSERT INTO breakers
                        (target, state, open_until, opened, version, writer, updated_at, set_by)
                     VALUES ($1, $2, 0, $3, 1, $4, $5, $6)
                     ON CONFLICT (target) DO UPDATE SET
                        state = excluded.state, open_until = 0,
                        opened = breakers.opened + CASE
                            WHEN breakers.state IN ('open', 'forced-open') THEN 0
                            ELSE excluded.opened END,
                        version = breakers.version + 1, writer = excluded.writer,
                        updated_at = excluded.updated_at, probes = 0, probe_until = 0,
                        set_by = excluded.set_by, failures = 0, failures_until = 0
                     RETURNING version",
                    &[&target, &state.as_str(), &opened, &writer, &now_ms(), &by],
                )
                .await
                .map_err(|e| inner.err(e))?;
            Ok(r.get(0))
        })
    }
}
