//! The run journal: an append-only log of what a run did, durable before
//! the run moves on, so a crashed run resumes where it stopped.
//!
//! [`Journal`] is the storage trait (a Postgres backend can implement it);
//! [`SqliteJournal`] is the default (`state = "sqlite:PATH"`).
//!
//! Cost stays flat as a run grows: appending an entry is one indexed
//! insert, a snapshot of counters (not of the run's data) is written every
//! [`SNAPSHOT_EVERY`] entries, and resume reads the last snapshot plus the
//! tail after it; earlier outputs are looked up by index when needed.

mod breakers;
pub mod kill;
mod sqlite;

pub use breakers::{BreakerRow, BreakerStore, RowState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use sqlite::SqliteJournal;
use std::fmt;

/// A snapshot is written after this many entries.
pub const SNAPSHOT_EVERY: u64 = 64;

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    RunStarted,
    ModelCall,
    ToolIntent,
    ToolResult,
    Attention,
    Resolution,
    Resumed,
    RunFinished,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::RunStarted => "run-started",
            EntryKind::ModelCall => "model-call",
            EntryKind::ToolIntent => "tool-intent",
            EntryKind::ToolResult => "tool-result",
            EntryKind::Attention => "attention",
            EntryKind::Resolution => "resolution",
            EntryKind::Resumed => "resumed",
            EntryKind::RunFinished => "run-finished",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// 1-based position in the run's journal.
    pub seq: u64,
    pub kind: EntryKind,
    /// The run step this entry belongs to.
    pub step: u64,
    pub payload: Value,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    NeedsAttention,
    Finished,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::NeedsAttention => "needs-attention",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<RunStatus> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's row: what `backstop runs` lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub agent: String,
    pub task: String,
    pub status: RunStatus,
    /// The last step reached.
    pub step: u64,
    pub started_at: i64,
    pub updated_at: i64,
    /// The final output, once finished.
    pub output: Option<Value>,
    /// The process that last owned the run.
    pub owner_pid: Option<u32>,
}

/// The compact snapshot: counters, not data, so its size is constant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The journal position it reflects.
    pub seq: u64,
    pub state: Value,
}

/// What resume needs: the run, its last snapshot and the entries after it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub run: RunRecord,
    pub snapshot: Option<Snapshot>,
    pub tail: Vec<Entry>,
}

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

/// Storage for runs. Every method is durable when it returns.
pub trait Journal: Send + Sync {
    fn create_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError>;
    /// Appends an entry and returns its `seq`.
    fn append(
        &self,
        run: &str,
        kind: EntryKind,
        step: u64,
        payload: &Value,
    ) -> Result<u64, StoreError>;
    fn write_snapshot(&self, run: &str, snapshot: &Snapshot) -> Result<(), StoreError>;
    fn load(&self, run: &str) -> Result<Loaded, StoreError>;
    /// Every entry of a run, checked.
    fn entries(&self, run: &str) -> Result<Vec<Entry>, StoreError>;
    /// The last entry of `kind` for `step`, if any.
    fn find(&self, run: &str, step: u64, kind: EntryKind) -> Result<Option<Entry>, StoreError>;
    fn set_status(
        &self,
        run: &str,
        status: RunStatus,
        step: u64,
        output: Option<&Value>,
    ) -> Result<(), StoreError>;
    fn set_owner(&self, run: &str, pid: Option<u32>) -> Result<(), StoreError>;
    fn run(&self, run: &str) -> Result<RunRecord, StoreError>;
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;
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

/// A journal whose every call is [`offload`]ed: what a run in an async
/// server writes through, so 16 runs journaling at once do not stall
/// `/healthz` behind their fsyncs.
#[derive(Clone, Copy)]
pub struct Offloaded<'a>(pub &'a dyn Journal);

impl Journal for Offloaded<'_> {
    fn create_run(&self, id: &str, agent: &str, task: &str) -> Result<(), StoreError> {
        offload(|| self.0.create_run(id, agent, task))
    }
    fn append(
        &self,
        run: &str,
        kind: EntryKind,
        step: u64,
        payload: &Value,
    ) -> Result<u64, StoreError> {
        offload(|| self.0.append(run, kind, step, payload))
    }
    fn write_snapshot(&self, run: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        offload(|| self.0.write_snapshot(run, snapshot))
    }
    fn load(&self, run: &str) -> Result<Loaded, StoreError> {
        offload(|| self.0.load(run))
    }
    fn entries(&self, run: &str) -> Result<Vec<Entry>, StoreError> {
        offload(|| self.0.entries(run))
    }
    fn find(&self, run: &str, step: u64, kind: EntryKind) -> Result<Option<Entry>, StoreError> {
        offload(|| self.0.find(run, step, kind))
    }
    fn set_status(
        &self,
        run: &str,
        status: RunStatus,
        step: u64,
        output: Option<&Value>,
    ) -> Result<(), StoreError> {
        offload(|| self.0.set_status(run, status, step, output))
    }
    fn set_owner(&self, run: &str, pid: Option<u32>) -> Result<(), StoreError> {
        offload(|| self.0.set_owner(run, pid))
    }
    fn run(&self, run: &str) -> Result<RunRecord, StoreError> {
        offload(|| self.0.run(run))
    }
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        offload(|| self.0.runs())
    }
}
