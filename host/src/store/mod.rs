//! The state store: every run's journal, the escalation queue and the
//! breakers' shared states, behind one interface ([`Store`]), so a backend
//! is one more implementation of it. [`SqliteStore`] is the default
//! (`state = "sqlite:PATH"`): one file per config, shared by every process
//! on the machine. [`PgStore`] (`state = "postgres://..."`) is one
//! PostgreSQL schema shared by hosts on many machines.
//!
//! [`Journal`] and [`Queue`] are async: a backend across the network
//! awaits its round trips, and SQLite's blocking writes are [`offload`]ed
//! so they never hold up the runtime's other tasks. [`BreakerStore`] is
//! called from inside a call's guard, at most every
//! [`crate::guard::shared::SYNC_EVERY`] per target: it answers at once (a
//! local file, a short busy timeout) or fails, and a failure only leaves the
//! breaker as this process sees it.

mod codec;
pub mod location;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;

use crate::escalation::{Escalation, Filter, Resolution, Resolved, Stats};
use crate::journal::{Claimed, Entry, EntryKind, Loaded, RunRecord, RunStatus, Snapshot};
use crate::outcome::EscalationReason;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

pub use location::{Location, PgLocation};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Why the store failed; names the run and entry when damage is found.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: String, message: String },
    #[error("no run `{0}` in the state store")]
    NoSuchRun(String),
    #[error(
        "run {run}: journal entry {seq} is damaged: {message}; nothing was changed (inspect \
        with `backstop runs show {run}`)"
    )]
    Damaged {
        run: String,
        seq: u64,
        message: String,
    },
    #[error("no state store at {0} yet (nothing has been run with this config)")]
    Missing(String),
    #[error("state store: {}", sql_message(.0))]
    Sql(#[from] rusqlite::Error),
    /// PostgreSQL refused, failed or could not be reached; `location` has
    /// no password in it.
    #[error("state store {location}: {message}")]
    Postgres { location: String, message: String },
    /// Another host (or process) holds the run's lease.
    #[error(
        "run {run} is held by {holder} (its lease ends in {} unless renewed)",
        humantime::format_duration(std::time::Duration::from_millis(*ends_in_ms as u64))
    )]
    Held {
        run: String,
        holder: String,
        pid: Option<u32>,
        ends_in_ms: i64,
    },
    /// This host held the run's lease and no longer does: it was paused,
    /// cut off or slow past the lease, and another took the run over.
    #[error(
        "run {run}: this host's lease on it was taken over by {holder} (this host was paused, \
        cut off or slow past its lease); nothing more was written for it here"
    )]
    LeaseLost { run: String, holder: String },
    /// The store holds a schema a later backstop wrote.
    #[error(
        "state store {location}: its schema is at version {found}, newer than this backstop \
        knows ({known}): run a backstop at least as new as the one that migrated it"
    )]
    Newer {
        location: String,
        found: i64,
        known: i64,
    },
}

/// SQLite's words, with what "database is locked" means here.
fn sql_message(e: &rusqlite::Error) -> String {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
        return format!(
            "{e}: another process held the store's write lock for the whole {} this write waits",
            humantime::format_duration(std::time::Duration::from_secs(10))
        );
    }
    e.to_string()
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

/// Runs' journals. Every write is durable when it returns.
#[async_trait]
pub trait Journal: Send + Sync {
    async fn create_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError>;
    /// [`Journal::create_run`] and [`Journal::enqueue`] in one write, so no
    /// crash between them leaves a run nobody will drive.
    async fn create_queued_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError>;
    /// Appends an entry and returns its `seq`.
    async fn append(
        &self,
        run: &str,
        kind: EntryKind,
        step: u64,
        payload: &Value,
    ) -> Result<u64, StoreError>;
    async fn write_snapshot(&self, run: &str, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// The run, its last snapshot and the entries after it.
    async fn load(&self, run: &str) -> Result<Loaded, StoreError>;
    /// Every entry of a run, checked.
    async fn entries(&self, run: &str) -> Result<Vec<Entry>, StoreError>;
    /// The last entry of `kind` for `step`, if any.
    async fn find(
        &self,
        run: &str,
        step: u64,
        kind: EntryKind,
    ) -> Result<Option<Entry>, StoreError>;
    async fn set_status(
        &self,
        run: &str,
        status: RunStatus,
        step: u64,
        output: Option<&Value>,
    ) -> Result<(), StoreError>;
    async fn set_owner(&self, run: &str, pid: Option<u32>) -> Result<(), StoreError>;
    /// Takes `run`'s lease for this process, on a store shared by many
    /// hosts: until [`Journal::drop_lease`], every write of the run through
    /// this handle is fenced by it (refused once another took the run
    /// over), and it is renewed in the background. [`StoreError::Held`]
    /// while another holds it. `Ok(false)` when the store has no leases
    /// (SQLite: one machine, where an OS file lock decides).
    async fn take_lease(&self, _run: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Gives `run`'s lease back (called from a guard's drop: bounded, and
    /// a failure only leaves the lease to expire).
    fn drop_lease(&self, _run: &str) {}
    async fn run(&self, run: &str) -> Result<RunRecord, StoreError>;
    /// Puts `run` in the run queue, for any host's worker to drive (again).
    async fn enqueue(&self, run: &str) -> Result<(), StoreError>;
    /// Up to `max` queued runs for this host's workers: each is due (a run
    /// claimed before and left queued waits longer each time) and, on a
    /// store shared by many hosts, nobody holds its lease (this store then
    /// holds it; [`Journal::take_lease`] takes it up).
    async fn claim(&self, max: u32) -> Result<Vec<Claimed>, StoreError>;
    /// Takes a claimed run out of the queue, unless it was queued again
    /// since the claim.
    async fn dequeue(&self, claimed: &Claimed) -> Result<(), StoreError>;
    async fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// The `limit` most recently updated runs, newest first.
    async fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError>;
}

/// The escalation queue. Resolving is first-wins, across processes.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Opens an escalation, or returns the open one already waiting for the
    /// same run, step and reason; `true` when this call opened it.
    async fn escalate(&self, e: Escalation) -> Result<(Escalation, bool), QueueError>;
    async fn escalation(&self, id: &str) -> Result<Escalation, QueueError>;
    /// Records a resolution unless one is already recorded.
    async fn resolve(
        &self,
        id: &str,
        resolution: Resolution,
        by: &str,
    ) -> Result<Resolved, QueueError>;
    async fn escalations(&self, filter: &Filter) -> Result<Vec<Escalation>, QueueError>;
    /// Depth and age, counted without decoding every record (a metrics
    /// scrape calls this).
    async fn escalation_stats(&self) -> Result<Stats, QueueError>;
}

/// A breaker's state as a row holds it: an open row whose `open_until`
/// has passed is half-open. The forced states are an operator's, held
/// until someone resets the breaker; the breakers' own writes never
/// replace them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowState {
    Open,
    Closed,
    ForcedOpen,
    ForcedClosed,
}

impl RowState {
    /// Anything unknown reads as closed: a damaged row must not hold a
    /// breaker open.
    pub fn parse(s: &str) -> RowState {
        match s {
            "open" => RowState::Open,
            "forced-open" => RowState::ForcedOpen,
            "forced-closed" => RowState::ForcedClosed,
            _ => RowState::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Open => "open",
            RowState::Closed => "closed",
            RowState::ForcedOpen => "forced-open",
            RowState::ForcedClosed => "forced-closed",
        }
    }
}

/// One target's shared breaker state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BreakerRow {
    pub target: String,
    pub state: RowState,
    /// Milliseconds since the Unix epoch.
    pub open_until: i64,
    /// Times opened, by every process.
    pub opened: u64,
    /// Bumped on every write, so a reader sees what changed.
    pub version: i64,
    pub writer: i64,
    pub updated_at: i64,
    /// Who set it by hand last, when the last change was by hand.
    pub set_by: String,
}

/// Breaker states shared by every process on one store.
pub trait BreakerStore: Send + Sync {
    fn read(&self, target: &str) -> Result<Option<BreakerRow>, StoreError>;
    fn all(&self) -> Result<Vec<BreakerRow>, StoreError>;
    /// Whether this process may send one of `max` half-open probes to
    /// `target` now, holding the claim for `for_ms`: a claim was free, or
    /// the store holds no open state for the target.
    fn claim_probe(&self, target: &str, max: u32, for_ms: i64) -> Result<bool, StoreError>;
    /// Records that `target`'s breaker opened (until `open_until`, Unix
    /// ms) or closed; returns the row's version after. A forced row is
    /// left as it is.
    fn write(&self, target: &str, open_until: Option<i64>, writer: i64) -> Result<i64, StoreError>;
    /// Sets `target`'s breaker by hand: `Closed` resets it, the forced
    /// states hold until the next reset. `by` says who; returns the row's
    /// new version.
    fn set(&self, target: &str, state: RowState, by: &str, writer: i64) -> Result<i64, StoreError>;
    /// Counts one failed call of `target` for every process sharing the
    /// store; returns the failures counted since the count began, within
    /// `window_ms` of its first (an open or close starts it again).
    fn count_failure(&self, target: &str, window_ms: i64) -> Result<u32, StoreError>;
}

/// Everything a host keeps in its state store.
#[async_trait]
pub trait Store: Journal + Queue {
    /// Where the store is, for messages.
    fn location(&self) -> String;
    /// Whether the store answers now, within a second (readiness checks
    /// and scrapes ask; a local file always answers).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The breaker states, on a connection of their own (a breaker's read
    /// must not wait behind a journal's fsync).
    fn breakers(&self) -> Result<Box<dyn BreakerStore>, StoreError>;
}

/// Opens (creating and migrating when needed) the store at `at`.
pub fn open(at: &Location) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match at {
        Location::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
        Location::Postgres(pg) => Arc::new(PgStore::open(pg)?),
    })
}

/// Opens the store at `at` for reading only: commands that only read
/// work on a read-only file, a full disk and beside another process's
/// write, and never create, migrate or change anything.
pub fn open_read_only(at: &Location) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match at {
        Location::Sqlite(path) => Arc::new(SqliteStore::open_read_only(path)?),
        Location::Postgres(pg) => Arc::new(PgStore::open_read_only(pg)?),
    })
}

/// What [`migrate`] did: the schema version before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
}

/// Brings the store at `at` to this backstop's schema (creating it when
/// nothing is there), as opening it to write does, and says from which
/// version. A schema newer than this backstop knows is refused, unchanged.
pub fn migrate(at: &Location) -> Result<Migrated, StoreError> {
    match at {
        Location::Sqlite(path) => SqliteStore::migrate_at(path),
        Location::Postgres(pg) => PgStore::migrate_at(pg),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `f`, which blocks on the store (an fsync, a busy wait), without
/// holding up the other tasks of a multi-threaded runtime: the worker hands
/// them to another thread first. On any other runtime, or none, it just
/// runs `f`.
pub fn offload<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
