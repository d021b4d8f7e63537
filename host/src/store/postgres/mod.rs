//! The store for many hosts: one PostgreSQL schema holding the journal,
//! the escalation queue and the breakers, reached through a pool of
//! connections.
//!
//! Every connection lives on one small runtime of the store's own (two
//! threads, `backstop-pg`), not on the caller's: a store outlives the
//! runtime that opened it (a test's, a command's), works from synchronous
//! code (the breakers' [`BreakerStore`]) and from any async runtime, and a
//! call cancelled half way never cancels a write half way (the write's task
//! runs to its end, so it either committed or did not). Each operation is
//! bounded: [`OP_TIMEOUT`] for the journal and queue, [`BREAKER_WAIT`] for a
//! breaker's read or write, which after a failure fails at once for
//! [`BREAKER_BACKOFF`] rather than hold up every call while the database is
//! gone.

mod breakers;
mod lease;
mod queue;
#[cfg(any(test, feature = "testkit"))]
pub mod scratch;

pub use breakers::PgBreakers;

use super::codec::{self, checksum, EntryRow};
use super::{BreakerStore, Journal, Migrated, PgLocation, Store, StoreError};
use crate::journal::{Claimed, Entry, EntryKind, Loaded, RunRecord, RunStatus, Snapshot};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_postgres::NoTls;

/// Longest a journal or queue operation waits, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a breaker's read or write holds up the call that makes it.
pub const BREAKER_WAIT: Duration = Duration::from_millis(250);
/// After a breaker operation failed, how long the next ones fail at once.
pub const BREAKER_BACKOFF: Duration = Duration::from_secs(1);
/// Longest opening a connection waits for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Append-only list of migrations; `backstop_schema` records each applied.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE runs (
        rid BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        step BIGINT NOT NULL DEFAULT 0,
        started_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        output TEXT,
        owner_pid BIGINT
    );
    CREATE INDEX runs_by_start ON runs (started_at DESC, rid DESC);
    CREATE TABLE entries (
        rid BIGINT NOT NULL REFERENCES runs (rid),
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        step BIGINT NOT NULL,
        payload TEXT NOT NULL,
        checksum BIGINT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (rid, seq)
    );
    CREATE INDEX entries_by_step ON entries (rid, step, kind, seq);
    CREATE TABLE snapshots (
        rid BIGINT PRIMARY KEY REFERENCES runs (rid),
        seq BIGINT NOT NULL,
        state TEXT NOT NULL,
        checksum BIGINT NOT NULL
    );
    CREATE TABLE escalations (
        id TEXT PRIMARY KEY,
        run TEXT NOT NULL,
        step BIGINT NOT NULL,
        reason TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        resolved_at BIGINT,
        resolved_by TEXT,
        resolution TEXT
    );
    CREATE INDEX escalations_open ON escalations (resolved_at, created_at);
    CREATE INDEX escalations_by_run ON escalations (run, step);
    -- One open escalation per run, step and reason, across hosts.
    CREATE UNIQUE INDEX escalations_one_open ON escalations (run, step, reason)
        WHERE resolved_at IS NULL;
    CREATE TABLE breakers (
        target TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        open_until BIGINT NOT NULL DEFAULT 0,
        opened BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL DEFAULT 0,
        writer BIGINT NOT NULL DEFAULT 0,
        updated_at BIGINT NOT NULL,
        probes BIGINT NOT NULL DEFAULT 0,
        probe_until BIGINT NOT NULL DEFAULT 0,
        set_by TEXT NOT NULL DEFAULT ''
    );
",
    "
    -- Who drives each run (see lease.rs), and which holder wrote each entry.
    ALTER TABLE runs
        ADD COLUMN lease_owner TEXT,
        ADD COLUMN lease_node TEXT,
        ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE entries ADD COLUMN token BIGINT NOT NULL DEFAULT 0;
",
    "
    -- The run queue: runs any host's worker may drive (see `claim`).
    ALTER TABLE runs
        ADD COLUMN queued BOOLEAN NOT NULL DEFAULT false,
        ADD COLUMN queue_gen BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN claims BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN not_before BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX runs_queue ON runs (not_before, rid) WHERE queued;
",
    "
    -- Failures counted by every host (a breaker's `shared_failures`).
    ALTER TABLE breakers
        ADD COLUMN failures BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN failures_until BIGINT NOT NULL DEFAULT 0;
",
];

/// The database's clock in Unix ms: leases are timed by it alone, so hosts
/// whose clocks disagree still agree on who holds a run.
pub(crate) const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::BIGINT";

/// The condition a write of a run must meet, `$T` being the writer's
/// token: it holds the run's lease, or (with no token) nobody does.
fn fenced(t: &str) -> String {
    format!(
        "(CASE WHEN {t}::BIGINT IS NULL THEN (lease_owner IS NULL OR lease_until < {NOW_MS}) \
        ELSE lease_token = {t}::BIGINT END)"
    )
}

/// This backstop's schema version.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// The store's own runtime, made on first use and never dropped (dropping
/// a runtime from inside another panics; this one lives with the process).
fn runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backstop-pg")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| StoreError::Postgres {
        location: "(PostgreSQL)".into(),
        message: format!("cannot start the store's runtime: {e}"),
    })
}

/// Runs `fut` on the store's runtime, bounded by `limit`, and waits for it
/// from async code (any runtime).
async fn on_pg<T: Send + 'static>(
    shown: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    // The bound is made inside the task, on the store's clock: made here it
    // would take the caller's (a paused test clock, say).
    let task = runtime()?.spawn(async move { tokio::time::timeout(limit, fut).await });
    match task.await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(timed_out(shown, limit)),
        Err(e) => Err(StoreError::Postgres {
            location: shown.to_owned(),
            message: format!("the operation's task failed: {e}"),
        }),
    }
}

/// Runs `fut` on the store's runtime, bounded by `limit`, and waits for it
/// from synchronous code (on a multi-threaded runtime's worker, the wait
/// hands the worker's other tasks on first).
pub(crate) fn block_on_pg<T: Send + 'static>(
    shown: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(tokio::time::timeout(limit, fut).await);
    });
    // A little longer than the task's own bound, which is what answers.
    let got = super::offload(|| rx.recv_timeout(limit + Duration::from_millis(100)));
    match got {
        Ok(Ok(r)) => r,
        _ => Err(timed_out(shown, limit)),
    }
}

fn timed_out(shown: &str, limit: Duration) -> StoreError {
    StoreError::Postgres {
        location: shown.to_owned(),
        message: format!(
            "no answer within {} (is the server up and reachable?)",
            humantime::format_duration(limit)
        ),
    }
}

/// PostgreSQL's words: the server's message with its detail, or what
/// failed on the way to it.
pub(crate) fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(&format!(": {s}"));
        source = s.source();
    }
    m
}

/// What a store's tasks share.
pub(crate) struct Inner {
    pool: Pool,
    /// The location as messages show it (no password).
    shown: String,
    /// The next `seq` of each run this process writes: a run has one
    /// writer, so it is known without asking; the entries' primary key
    /// refuses a second writer's entry rather than interleave it.
    next_seq: Mutex<HashMap<String, u64>>,
    /// Unix ms until which breaker operations fail at once.
    breakers_down_until: std::sync::atomic::AtomicI64,
    /// The runs this store holds (or held and lost), by id.
    leases: Mutex<HashMap<String, lease::Lease>>,
    me: lease::Holder,
    lease_ttl: Duration,
}

impl Inner {
    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            location: self.shown.clone(),
            message: pg_message(&e),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Postgres {
            location: self.shown.clone(),
            message: match e {
                deadpool_postgres::PoolError::Backend(e) => pg_message(&e),
                e => e.to_string(),
            },
        })
    }

    fn seqs(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.next_seq.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, run: &str) {
        self.seqs().remove(run);
    }
}

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    read_only: bool,
}

fn pool(at: &PgLocation, read_only: bool) -> Result<Pool, StoreError> {
    let mut config = at.config();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("backstop");
    }
    // A connection whose peer went silent is given up in seconds, not
    // after the kernel's default of two hours.
    config
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(15));
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(" -c search_path={}", at.schema));
    if read_only {
        options.push_str(" -c default_transaction_read_only=on");
    }
    config.options(options.trim());
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(at.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(OP_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Postgres {
            location: at.to_string(),
            message: e.to_string(),
        })
}

/// The schema's version, or `None` when it holds no Backstop tables.
async fn version_of(
    c: &impl deadpool_postgres::GenericClient,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists: bool = c
        .query_one("SELECT to_regclass('backstop_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let v: Option<i64> = c
        .query_one("SELECT MAX(version)::BIGINT FROM backstop_schema", &[])
        .await?
        .get(0);
    Ok(Some(v.unwrap_or(0)))
}

impl PgStore {
    fn new(at: &PgLocation, read_only: bool) -> Result<PgStore, StoreError> {
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool: pool(at, read_only)?,
                shown: at.to_string(),
                next_seq: Mutex::default(),
                breakers_down_until: 0.into(),
                leases: Mutex::default(),
                me: lease::Holder::this_process(),
                lease_ttl: at.lease,
            }),
            read_only,
        })
    }

    /// Opens the store, creating its schema and tables or bringing them up
    /// to date; several hosts starting at once migrate once (the first
    /// takes a lock the others wait on).
    pub fn open(at: &PgLocation) -> Result<PgStore, StoreError> {
        let store = PgStore::new(at, false)?;
        store.migrate(at)?;
        Ok(store)
    }

    /// [`super::migrate`] for PostgreSQL.
    pub fn migrate_at(at: &PgLocation) -> Result<Migrated, StoreError> {
        PgStore::new(at, false)?.migrate(at)
    }

    /// Opens the store for commands that only read: nothing is created or
    /// migrated, and the server refuses any write.
    pub fn open_read_only(at: &PgLocation) -> Result<PgStore, StoreError> {
        let store = PgStore::new(at, true)?;
        let inner = store.inner.clone();
        let version = block_on_pg(&inner.shown.clone(), OP_TIMEOUT, async move {
            let c = inner.client().await?;
            version_of(&c).await.map_err(|e| inner.err(e))
        })?;
        match version {
            None => Err(StoreError::Missing(at.to_string())),
            Some(v) if v > schema_version() => Err(StoreError::Newer {
                location: at.to_string(),
                found: v,
                known: schema_version(),
            }),
            Some(v) if v < schema_version() => Err(StoreError::Open {
                path: at.to_string(),
                message: format!(
                    "the store is at schema version {v} of {}: `backstop migrate` (or any \
                    command that writes) brings it up to date",
                    schema_version()
                ),
            }),
            Some(_) => Ok(store),
        }
    }

    fn migrate(&self, at: &PgLocation) -> Result<Migrated, StoreError> {
        let inner = self.inner.clone();
        let schema = at.schema.clone();
        let location = at.to_string();
        block_on_pg(&location.clone(), OP_TIMEOUT, async move {
            let mut c = inner.client().await?;
            let err = |e| inner.err(e);
            // Read first: a store that needs nothing takes no lock.
            if let Some(v) = version_of(&c).await.map_err(err)? {
                if v > schema_version() {
                    return Err(StoreError::Newer {
                        location,
                        found: v,
                        known: schema_version(),
                    });
                }
                if v == schema_version() {
                    return Ok(Migrated { from: v, to: v });
                }
            }
            let tx = c.transaction().await.map_err(err)?;
            // Hosts migrating the same schema at once queue here.
            tx.execute(
                "SELECT pg_advisory_xact_lock(1651, hashtext($1))",
                &[&schema],
            )
            .await
            .map_err(err)?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS \"{schema}\".backstop_schema (
                     version BIGINT PRIMARY KEY,
                     migrated_at BIGINT NOT NULL
                 );"
            ))
            .await
            .map_err(err)?;
            let from = version_of(&tx).await.map_err(err)?.unwrap_or(0);
            if from > schema_version() {
                return Err(StoreError::Newer {
                    location,
                    found: from,
                    known: schema_version(),
                });
            }
            for (n, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
                tx.batch_execute(sql).await.map_err(err)?;
                tx.execute(
                    "INSERT INTO backstop_schema (version, migrated_at) VALUES ($1, $2)",
                    &[&(n as i64 + 1), &super::now_ms()],
                )
                .await
                .map_err(err)?;
            }
            tx.commit().await.map_err(err)?;
            Ok(Migrated {
                from,
                to: schema_version(),
            })
        })
    }

    /// Runs `f` with the store's shared part on its runtime.
    async fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        on_pg(&self.inner.shown, OP_TIMEOUT, f(self.inner.clone())).await
    }
}

const RUN_COLUMNS: &str =
    "id, agent, task, status, step, started_at, updated_at, output, owner_pid, queued";

fn record(r: &tokio_postgres::Row) -> Result<RunRecord, StoreError> {
    record_at(r, 0)
}

fn entry_row(r: &tokio_postgres::Row) -> EntryRow {
    (
        r.get::<_, i64>(0) as u64,
        r.get(1),
        r.get::<_, i64>(2) as u64,
        r.get(3),
        r.get(4),
        r.get(5),
    )
}

impl Inner {
    async fn rid(
        &self,
        c: &impl deadpool_postgres::GenericClient,
        run: &str,
    ) -> Result<i64, StoreError> {
        let row = c
            .query_opt("SELECT rid FROM runs WHERE id = $1", &[&run])
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| r.get(0))
            .ok_or_else(|| StoreError::NoSuchRun(run.to_owned()))
    }

    async fn entries_after(
        &self,
        c: &impl deadpool_postgres::GenericClient,
        run: &str,
        rid: i64,
        after: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let stmt = c
            .prepare_cached(
                "SELECT seq, kind, step, payload, checksum, at FROM entries
                 WHERE rid = $1 AND seq > $2 ORDER BY seq",
            )
            .await
            .map_err(|e| self.err(e))?;
        let rows = c
            .query(&stmt, &[&rid, &(after as i64)])
            .await
            .map_err(|e| self.err(e))?;
        codec::decode_entries(
            run,
            after,
            rows.iter().map(|r| Ok::<_, StoreError>(entry_row(r))),
        )
    }

    async fn append(
        &self,
        run: String,
        kind: EntryKind,
        step: u64,
        text: String,
    ) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let known = self.seqs().get(&run).copied();
        let seq = match known {
            Some(s) => s,
            None => {
                let stmt = c
                    .prepare_cached(
                        "SELECT COALESCE(MAX(e.seq), 0) + 1 FROM entries e
                         JOIN runs r ON r.rid = e.rid WHERE r.id = $1",
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                let n: i64 = c
                    .query_one(&stmt, &[&run])
                    .await
                    .map_err(|e| self.err(e))?
                    .get(0);
                n as u64
            }
        };
        let sum = checksum(&run, seq, kind.as_str(), step, &text);
        let now = super::now_ms();
        // One statement, so one round trip and one commit: the entry and
        // the run's row move together.
        let token = self.fence(&run)?;
        let stmt = c
            .prepare_cached(&format!(
                "WITH r AS (
                    UPDATE runs SET updated_at = $6, step = GREATEST(step, $4), claims = 0,
                        lease_until = CASE WHEN $8::BIGINT IS NULL THEN lease_until
                            ELSE GREATEST(lease_until, {NOW_MS} + $9) END
                    WHERE id = $1 AND {}
                    RETURNING rid, lease_token
                 )
                 INSERT INTO entries (rid, seq, kind, step, payload, checksum, at, token)
                 SELECT rid, $2, $3, $4, $5, $7, $6, lease_token FROM r RETURNING seq",
                fenced("$8")
            ))
            .await
            .map_err(|e| self.err(e))?;
        let written = c
            .query_opt(
                &stmt,
                &[
                    &run,
                    &(seq as i64),
                    &kind.as_str(),
                    &(step as i64),
                    &text,
                    &now,
                    &sum,
                    &token,
                    &(self.lease_ttl.as_millis() as i64),
                ],
            )
            .await;
        match written {
            Ok(Some(_)) => {
                self.seqs().insert(run, seq + 1);
                Ok(seq)
            }
            Ok(None) => {
                self.forget(&run);
                Err(self.refused(&c, &run, token).await)
            }
            Err(e) => {
                self.forget(&run);
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    return Err(StoreError::Postgres {
                        location: self.shown.clone(),
                        message: format!(
                            "run {run}: entry {seq} was written by another writer meanwhile; \
                            this one was not written (two processes are driving the run)"
                        ),
                    });
                }
                Err(self.err(e))
            }
        }
    }

    async fn load(&self, run: String) -> Result<Loaded, StoreError> {
        let mut c = self.client().await?;
        // One snapshot of the database: the run, its snapshot and the
        // entries after it agree with each other.
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let row = tx
            .query_opt(
                &format!("SELECT rid, {RUN_COLUMNS} FROM runs WHERE id = $1"),
                &[&run],
            )
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| StoreError::NoSuchRun(run.clone()))?;
        let rid: i64 = row.get(0);
        let rec = record_at(&row, 1)?;
        let snap = tx
            .query_opt(
                "SELECT seq, state, checksum FROM snapshots WHERE rid = $1",
                &[&rid],
            )
            .await
            .map_err(|e| self.err(e))?;
        let snapshot = match snap {
            Some(r) => Some(codec::decode_snapshot(&run, r.get(0), r.get(1), r.get(2))?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let tail = self.entries_after(&tx, &run, rid, after).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        let last = tail.last().map_or(after, |e| e.seq);
        self.seqs().insert(run, last + 1);
        Ok(Loaded {
            run: rec,
            snapshot,
            tail,
        })
    }
}

/// [`record`] for a row whose run columns start at `at`.
fn record_at(r: &tokio_postgres::Row, at: usize) -> Result<RunRecord, StoreError> {
    let output: Option<String> = r.get(at + 7);
    let rec = RunRecord {
        id: r.get(at),
        agent: r.get(at + 1),
        task: r.get(at + 2),
        status: RunStatus::Running,
        step: r.get::<_, i64>(at + 4).max(0) as u64,
        started_at: r.get(at + 5),
        updated_at: r.get(at + 6),
        output: output.and_then(|o| serde_json::from_str(&o).ok()),
        owner_pid: r.get::<_, Option<i64>>(at + 8).map(|p| p as u32),
        queued: r.get(at + 9),
    };
    codec::finish_record(rec, r.get::<_, &str>(at + 3))
}

#[async_trait]
impl Journal for PgStore {
    async fn create_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        self.insert_run(id, agent, task, false).await
    }

    async fn create_queued_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        self.insert_run(id, agent, task, true).await
    }

    async fn append(
        &self,
        run: &str,
        kind: EntryKind,
        step: u64,
        payload: &Value,
    ) -> Result<u64, StoreError> {
        let (run, text) = (run.to_owned(), payload.to_string());
        self.with(|s| async move { s.append(run, kind, step, text).await })
            .await
    }

    async fn write_snapshot(&self, run: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        let run = run.to_owned();
        let (seq, text) = (snapshot.seq, snapshot.state.to_string());
        self.with(|s| async move {
            let c = s.client().await?;
            let sum = checksum(&run, seq, "snapshot", 0, &text);
            let token = s.fence(&run)?;
            let n = c
                .execute(
                    &format!(
                        "INSERT INTO snapshots (rid, seq, state, checksum)
                         SELECT rid, $2, $3, $4 FROM runs WHERE id = $1 AND {}
                         ON CONFLICT (rid) DO UPDATE SET
                            seq = excluded.seq, state = excluded.state,
                            checksum = excluded.checksum",
                        fenced("$5")
                    ),
                    &[&run, &(seq as i64), &text, &sum, &token],
                )
                .await
                .map_err(|e| s.err(e))?;
            if n == 0 {
                return Err(s.refused(&c, &run, token).await);
            }
            Ok(())
        })
        .await
    }

    async fn load(&self, run: &str) -> Result<Loaded, StoreError> {
        let run = run.to_owned();
        self.with(|s| async move { s.load(run).await }).await
    }

    async fn entries(&self, run: &str) -> Result<Vec<Entry>, StoreError> {
        let run = run.to_owned();
        self.with(|s| async move {
            let c = s.client().await?;
            let rid = s.rid(&c, &run).await?;
            s.entries_after(&c, &run, rid, 0).await
        })
        .await
    }

    async fn find(
        &self,
        run: &str,
        step: u64,
        kind: EntryKind,
    ) -> Result<Option<Entry>, StoreError> {
        let run = run.to_owned();
        self.with(|s| async move {
            let c = s.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT e.seq, e.kind, e.step, e.payload, e.checksum, e.at
                     FROM runs r LEFT JOIN LATERAL (
                        SELECT * FROM entries
                        WHERE rid = r.rid AND step = $2 AND kind = $3
                        ORDER BY seq DESC LIMIT 1
                     ) e ON true
                     WHERE r.id = $1",
                )
                .await
                .map_err(|e| s.err(e))?;
            let row = c
                .query_opt(&stmt, &[&run, &(step as i64), &kind.as_str()])
                .await
                .map_err(|e| s.err(e))?
                .ok_or_else(|| StoreError::NoSuchRun(run.clone()))?;
            if row.get::<_, Option<i64>>(0).is_none() {
                return Ok(None);
            }
            codec::decode_entry(&run, entry_row(&row)).map(Some)
        })
        .await
    }

    async fn set_status(
        &self,
        run: &str,
        status: RunStatus,
        step: u64,
        output: Option<&Value>,
    ) -> Result<(), StoreError> {
        let run = run.to_owned();
        let output = output.map(|o| o.to_string());
        self.with(|s| async move {
            let c = s.client().await?;
            let token = s.fence(&run)?;
            let stmt = c
                .prepare_cached(&format!(
                    "UPDATE runs SET status = $2, step = GREATEST(step, $3),
                        output = COALESCE($4, output), updated_at = $5
                     WHERE id = $1 AND {}",
                    fenced("$6")
                ))
                .await
                .map_err(|e| s.err(e))?;
            let n = c
                .execute(
                    &stmt,
                    &[
                        &run,
                        &status.as_str(),
                        &(step as i64),
                        &output,
                        &super::now_ms(),
                        &token,
                    ],
                )
                .await
                .map_err(|e| s.err(e))?;
            if n == 0 {
                return Err(s.refused(&c, &run, token).await);
            }
            Ok(())
        })
        .await
    }

    async fn set_owner(&self, run: &str, pid: Option<u32>) -> Result<(), StoreError> {
        let run = run.to_owned();
        if pid.is_none() {
            // Released: whoever drives it next learns its length anew.
            self.inner.forget(&run);
        }
        self.with(|s| async move {
            let c = s.client().await?;
            let token = s.fence(&run)?;
            if pid.is_none() && token.is_some() {
                // Held: the lease names its holder's pid until it is given
                // back (a holder killed in between is then known dead).
                return Ok(());
            }
            let n = c
                .execute(
                    &format!(
                        "UPDATE runs SET owner_pid = $2 WHERE id = $1 AND {}",
                        fenced("$3")
                    ),
                    &[&run, &pid.map(i64::from), &token],
                )
                .await
                .map_err(|e| s.err(e))?;
            if n == 0 {
                return Err(s.refused(&c, &run, token).await);
            }
            Ok(())
        })
        .await
    }

    async fn take_lease(&self, run: &str) -> Result<bool, StoreError> {
        let run = run.to_owned();
        self.with(|s| s.take_lease(run)).await
    }

    fn drop_lease(&self, run: &str) {
        let inner = self.inner.clone();
        let run = run.to_owned();
        // Bounded: a lease that could not be given back expires instead.
        let _ = block_on_pg(
            &self.inner.shown,
            Duration::from_secs(2),
            inner.drop_lease(run),
        );
    }

    async fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        let run = run.to_owned();
        self.with(|s| async move {
            let c = s.client().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
                    &[&run],
                )
                .await
                .map_err(|e| s.err(e))?
                .ok_or_else(|| StoreError::NoSuchRun(run.clone()))?;
            record(&row)
        })
        .await
    }

    async fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.recent_runs(u32::MAX).await
    }

    async fn enqueue(&self, run: &str) -> Result<(), StoreError> {
        let run = run.to_owned();
        self.with(|s| async move {
            let c = s.client().await?;
            let n = c
                .execute(
                    "UPDATE runs SET queued = true, queue_gen = queue_gen + 1, claims = 0,
                        not_before = 0
                     WHERE id = $1",
                    &[&run],
                )
                .await
                .map_err(|e| s.err(e))?;
            if n == 0 {
                return Err(StoreError::NoSuchRun(run));
            }
            Ok(())
        })
        .await
    }

    async fn claim(&self, max: u32) -> Result<Vec<Claimed>, StoreError> {
        self.with(move |s| s.claim(max)).await
    }

    async fn dequeue(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let claimed = claimed.clone();
        self.with(|s| async move {
            let c = s.client().await?;
            // Not while another host drives it: that host took it over
            // from this one, and takes it out when it stops.
            c.execute(
                &format!(
                    "UPDATE runs SET queued = false WHERE id = $1 AND queue_gen = $2
                     AND (lease_owner IS NULL OR lease_until < {NOW_MS} OR lease_owner = $3)"
                ),
                &[&claimed.run, &claimed.gen, &s.me.shown],
            )
            .await
            .map_err(|e| s.err(e))?;
            Ok(())
        })
        .await
    }

    async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        self.with(|s| async move {
            let c = s.client().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, rid DESC \
                        LIMIT $1"
                    ),
                    &[&i64::from(limit)],
                )
                .await
                .map_err(|e| s.err(e))?;
            rows.iter().map(record).collect()
        })
        .await
    }
}

#[async_trait]
impl Store for PgStore {
    fn location(&self) -> String {
        self.inner.shown.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        on_pg(&self.inner.shown, Duration::from_secs(1), async move {
            let c = inner.client().await?;
            c.simple_query("SELECT 1").await.map_err(|e| inner.err(e))?;
            Ok(())
        })
        .await
    }

    fn breakers(&self) -> Result<Box<dyn BreakerStore>, StoreError> {
        Ok(Box::new(PgBreakers::new(self.inner.clone())))
    }
}

impl PgStore {
    async fn insert_run(
        &self,
        id: &str,
        agent: &str,
        task: &str,
        queued: bool,
    ) -> Result<(), StoreError> {
        let (id, agent, task) = (id.to_owned(), agent.to_owned(), task.to_owned());
        self.with(|s| async move {
            let c = s.client().await?;
            let now = super::now_ms();
            let stmt = c
                .prepare_cached(
                    "INSERT INTO runs
                        (id, agent, task, status, step, started_at, updated_at, queued, queue_gen)
                     VALUES ($1, $2, $3, 'running', 0, $4, $4, $5, $6)",
                )
                .await
                .map_err(|e| s.err(e))?;
            c.execute(
                &stmt,
                &[&id, &agent, &task, &now, &queued, &i64::from(queued)],
            )
            .await
            .map_err(|e| s.err(e))?;
            s.seqs().insert(id, 1);
            Ok(())
        })
        .await
    }

    /// Whether this store was opened for reading only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}
