//! Breaker states in the state store, so a breaker opened by one process
//! stays open after a restart and for every process on the machine.
//!
//! Only opens and closes are written (half-open follows from the open
//! time); failure counts stay per process. Its own connection, with a short
//! busy timeout: a call never waits behind a run's journal write for long.

use super::SqliteStore;
use crate::store::{now_ms, BreakerRow, BreakerStore, RowState, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

impl rusqlite::types::ToSql for RowState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for RowState {
    /// Anything unknown reads as closed: a damaged row must not hold a
    /// breaker open.
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(match v {
            rusqlite::types::ValueRef::Text(b) => {
                RowState::parse(std::str::from_utf8(b).unwrap_or(""))
            }
            _ => RowState::Closed,
        })
    }
}

/// [`BreakerStore`] on its own connection to the store's file.
pub struct SqliteBreakers {
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "target, state, open_until, opened, version, writer, updated_at, set_by";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BreakerRow> {
    Ok(BreakerRow {
        target: r.get(0)?,
        state: r.get(1)?,
        open_until: r.get(2)?,
        opened: r.get::<_, i64>(3)?.max(0) as u64,
        version: r.get(4)?,
        writer: r.get(5)?,
        updated_at: r.get(6)?,
        set_by: r.get(7)?,
    })
}

impl SqliteBreakers {
    /// A second connection to `journal`'s file (already migrated).
    pub fn beside(journal: &SqliteStore) -> Result<SqliteBreakers, StoreError> {
        let path = journal.path();
        let conn = Connection::open(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(Duration::from_millis(100))?;
        // A breaker state lost to a power cut only costs a few calls.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(SqliteBreakers {
            conn: Mutex::new(conn),
        })
    }

    /// A read-only connection to `journal`'s file, for commands that only
    /// read (see [`SqliteStore::open_read_only`]).
    pub fn read_only(journal: &SqliteStore) -> Result<SqliteBreakers, StoreError> {
        let path = journal.path();
        let conn = super::connect_read_only(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(SqliteBreakers {
            conn: Mutex::new(conn),
        })
    }

    /// Opens the store at `path`, creating and migrating it as the journal
    /// does.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteBreakers, StoreError> {
        Self::beside(&SqliteStore::open(path)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BreakerStore for SqliteBreakers {
    fn read(&self, target: &str) -> Result<Option<BreakerRow>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM breakers WHERE target = ?1"))?;
        Ok(stmt.query_row([target], row).optional()?)
    }

    fn all(&self) -> Result<Vec<BreakerRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM breakers ORDER BY target"))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Claims one of the `max` half-open probes of `target` for `for_ms`,
    /// for every process sharing the store. True when this process may
    /// probe: a claim was free, or the store holds no open state for the
    /// target to respect.
    fn claim_probe(&self, target: &str, max: u32, for_ms: i64) -> Result<bool, StoreError> {
        // A second of slack on `open_until`: this process's monotonic clock
        // said the open time is over; the wall clock may lag by a little.
        let conn = self.lock();
        let now = now_ms();
        let claimed = conn.execute(
            "UPDATE breakers SET
                probes = CASE WHEN probe_until <= ?2 THEN 1 ELSE probes + 1 END,
                probe_until = CASE WHEN probe_until <= ?2 THEN ?2 + ?4 ELSE probe_until END
             WHERE target = ?1 AND state = 'open' AND open_until <= ?2 + 1000
               AND (probe_until <= ?2 OR probes < ?3)",
            params![target, now, i64::from(max), for_ms],
        )?;
        if claimed == 1 {
            return Ok(true);
        }
        let state: Option<RowState> = conn
            .query_row(
                "SELECT state FROM breakers WHERE target = ?1",
                [target],
                |r| r.get(0),
            )
            .optional()?;
        // A forced-open row admits no probe; anything else not open
        // leaves the probe to this process.
        Ok(!matches!(
            state,
            Some(RowState::Open | RowState::ForcedOpen)
        ))
    }

    /// Records that `target`'s breaker opened (until `open_until`, Unix
    /// ms) or closed; returns the row's new version.
    fn write(&self, target: &str, open_until: Option<i64>, writer: i64) -> Result<i64, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO breakers (target, state, open_until, opened, version, writer, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)
             ON CONFLICT (target) DO UPDATE SET
                state = excluded.state, open_until = excluded.open_until,
                opened = opened + excluded.opened, version = version + 1,
                writer = excluded.writer, updated_at = excluded.updated_at,
                probes = 0, probe_until = 0, set_by = '', failures = 0, failures_until = 0
             WHERE breakers.state NOT IN ('forced-open', 'forced-closed')
             RETURNING version",
        )?;
        let (state, until, opened) = match open_until {
            Some(u) => (RowState::Open, u, 1),
            None => (RowState::Closed, 0, 0),
        };
        let written = stmt
            .query_row(
                params![target, state, until, opened, writer, now_ms()],
                |r| r.get(0),
            )
            .optional()?;
        match written {
            Some(version) => Ok(version),
            // Forced by an operator: unchanged, at the version it has.
            None => Ok(conn.query_row(
                "SELECT version FROM breakers WHERE target = ?1",
                [target],
                |r| r.get(0),
            )?),
        }
    }

    fn count_failure(&self, target: &str, window_ms: i64) -> Result<u32, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO breakers (target, state, updated_at, failures, failures_until)
             VALUES (?1, 'closed', ?2, 1, ?2 + ?3)
             ON CONFLICT (target) DO UPDATE SET
                failures = CASE WHEN failures_until <= ?2 THEN 1 ELSE failures + 1 END,
                failures_until = CASE WHEN failures_until <= ?2 THEN ?2 + ?3
                    ELSE failures_until END
             RETURNING failures",
        )?;
        let n: i64 = stmt.query_row(params![target, now_ms(), window_ms], |r| r.get(0))?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    fn set(&self, target: &str, state: RowState, by: &str, writer: i64) -> Result<i64, StoreError> {
        let conn = self.lock();
        let opened = i64::from(state == RowState::ForcedOpen);
        Ok(conn.query_row(
            "INSERT INTO breakers
                (target, state, open_until, opened, version, writer, updated_at, set_by)
             VALUES (?1, ?2, 0, ?3, 1, ?4, ?5, ?6)
             ON CONFLICT (target) DO UPDATE SET
                state = excluded.state, open_until = 0,
                opened = opened + CASE WHEN breakers.state IN ('open', 'forced-open')
                    THEN 0 ELSE excluded.opened END,
                version = version + 1, writer = excluded.writer,
                updated_at = excluded.updated_at, probes = 0, probe_until = 0,
                set_by = excluded.set_by, failures = 0, failures_until = 0
             RETURNING version",
            params![target, state, opened, writer, now_ms(), by],
            |r| r.get(0),
        )?)
    }
}
