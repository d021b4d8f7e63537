//! The run journal: an append-only log of what a run did, durable before
//! the run moves on, so a crashed run resumes where it stopped.
//!
//! These are the journal's records; [`crate::store`] keeps them (with the
//! escalation queue and breaker states) behind one interface.
//!
//! Cost stays flat as a run grows: appending an entry is one indexed
//! insert, a snapshot of counters (not of the run's data) is written every
//! [`SNAPSHOT_EVERY`] entries, and resume reads the last snapshot plus the
//! tail after it; earlier outputs are looked up by index when needed.

pub mod kill;

use serde::{Deserialize, Serialize};
use serde_json::Value;
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

    pub fn parse(s: &str) -> Option<RunStatus> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent name an MCP client's call is journaled under when it needs a
/// person (a one-step run whose step is that call): no agent of a config
/// has it, and resuming such a run is refused; the client's next call,
/// naming its escalation, is what runs it.
pub const MCP_AGENT: &str = "mcp";

/// Whether run `id` is an MCP client's call (see [`MCP_AGENT`]): their ids
/// begin `mcp-`, an agent run's `r`.
pub fn is_mcp_call(id: &str) -> bool {
    id.starts_with("mcp-")
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
    /// Waiting in the run queue for any host's worker (started with
    /// `--detach` or `wait: false`, or resumed through the queue).
    #[serde(default)]
    pub queued: bool,
}

/// A queued run a worker of this host claimed: `gen` tells whether it was
/// queued again since (a person resolving it while it ran).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub run: String,
    pub gen: i64,
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
