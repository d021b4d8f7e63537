//! Agent runs that survive crashes.
//!
//! A run is journaled as it goes: the intent of every tool call is durable
//! before the tool runs, and every result before the run moves on. Resume
//! replays the journal instead of repeating work: each step first looks
//! for its journaled result, and only runs when there is none. An intent
//! without a result is the dangerous case: it is re-run only for read-only
//! or idempotent chains; otherwise the tool's `reconcile` is asked, and if
//! the answer is unknown the run stops in `needs-attention` with
//! `ambiguous-state`. Irreversible tools are never re-run on resume.

mod attention;
mod host;
mod lock;
mod memory;
mod pipeline;
pub mod queue;
mod resume;
mod step;
mod tool_loop;

#[cfg(test)]
mod tests;

pub use host::{Host, HostFuture};
pub use lock::RunLock;
pub use step::reconcile_chain;

use crate::config::AgentKind;
use crate::journal::{EntryKind, RunStatus};
use crate::outcome::{Attempt, AttemptClass, EscalationReason, Outcome};
use crate::store::StoreError;
use memory::Run;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Why a run could not start or resume. Failures inside a run are not
/// errors: they end in `needs-attention` or `failed`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown agent `{name}`{hint}")]
    UnknownAgent { name: String, hint: String },
    #[error(
        "run {run} is an MCP client's call, not an agent's: it runs when the client calls \
        again naming escalation{}",
        escalation.as_deref().map(|e| format!(" {e}")).unwrap_or_default()
    )]
    McpCall {
        run: String,
        escalation: Option<String>,
    },
    #[error("run {run} is active in another process{}; wait for it or stop it \
        first", match (holder, pid) {
            (Some(h), _) => format!(" ({h})"),
            (None, Some(p)) => format!(" (pid {p})"),
            (None, None) => String::new(),
        })]
    Busy {
        run: String,
        pid: Option<u32>,
        /// Who holds its lease, on a store shared by many hosts.
        holder: Option<String>,
    },
    #[error(
        "run {run} was started with a different configuration: {changes}; pass --allow-drift \
        to resume anyway"
    )]
    Drift { run: String, changes: String },
    #[error("run {run}: agent `{agent}` is no longer in the config")]
    AgentGone { run: String, agent: String },
    /// A step's input could not be rendered from its template.
    #[error("run {run}: {message}")]
    Template { run: String, message: String },
    /// A model's answer in a tool loop is not a chat response.
    #[error("run {run}: model answer is not a chat response: {message}")]
    BadAnswer { run: String, message: String },
    #[error("run {run}: {source}")]
    Queue {
        run: String,
        #[source]
        source: crate::store::QueueError,
    },
    #[error("run {run}: cannot lock the run: {message}")]
    Lock { run: String, message: String },
    #[error("run {run}: no chain, tool or model `{chain}` to call")]
    UnknownChain { run: String, chain: String },
}

/// A step that needs a person before the run can go on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub step: u64,
    pub reason: EscalationReason,
    /// The chain (tool or model) the step called.
    pub chain: String,
    pub input: Value,
    pub key: String,
    pub message: String,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The escalation waiting in the queue for this step.
    #[serde(default)]
    pub escalation: Option<String>,
}

/// How a run (or a resume) ended, for now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    pub run: String,
    pub agent: String,
    pub status: RunStatus,
    pub step: u64,
    pub output: Option<Value>,
    pub attention: Option<Attention>,
}

/// What a run reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    Started {
        run: String,
        agent: String,
    },
    Resumed {
        run: String,
        agent: String,
    },
    /// A step ran (or, on resume, was found done in the journal).
    Step {
        step: u64,
        line: String,
    },
}

pub(super) enum Flow<T> {
    Go(T),
    Stop(Attention),
    Abort(String),
}

pub(super) enum End {
    Finished(Value),
    Failed(String),
    Attention(Attention),
}

fn new_run_id() -> String {
    format!("r{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

pub(super) fn summary(o: &Outcome) -> String {
    match (&o.served_by, &o.error) {
        (Some(by), _) if o.degraded => format!(
            "served by {by} (DEGRADED: {})",
            o.degraded_reason.as_deref().unwrap_or("fallback")
        ),
        (Some(by), _) => format!("served by {by}"),
        (None, Some(e)) => format!("FAILED: {}: {}", e.class, e.message),
        (None, None) => "no result".into(),
    }
}

/// The rejection note of an outcome a person rejected.
pub(super) fn rejection(o: &Outcome) -> Option<String> {
    (!o.ok
        && o.attempts
            .first()
            .is_some_and(|a| a.class == AttemptClass::Rejected))
    .then(|| {
        o.error
            .as_ref()
            .map(|e| e.message.to_string())
            .unwrap_or_default()
    })
}

/// Run options.
#[derive(Clone, Debug, Default)]
pub struct ResumeOptions {
    /// Resume even though the config or a component changed.
    pub allow_drift: bool,
}

/// Starts a run of `agent` on `task`, journaled in the host's state
/// store. `progress` sees the run id first, then each step.
pub async fn run(
    host: &dyn Host,
    agent: &str,
    task: &str,
    progress: &mut (dyn FnMut(Progress) + Send + Sync),
) -> Result<RunReport, RunError> {
    let agent = resume::agent(host, agent)?;
    let journal = host.journal()?;
    let id = new_run_id();
    journal.create_run(&id, &agent.name, task).await?;
    let _lock = RunLock::acquire(host.config(), &id, &journal).await?;
    journal.set_owner(&id, Some(std::process::id())).await?;
    let name = agent.name.clone();
    let mut run = Run::new(host, journal.as_ref(), &id, agent, task, progress);
    // The id is out before anything else is written, so a run killed
    // from here on can be named to `resume`.
    (run.progress)(Progress::Started {
        run: id,
        agent: name,
    });
    crate::journal::kill::point("run-created");
    run.start().await
}

/// Resumes run `id` from its journal, in this process. Refused while
/// another process holds the run, and when the config or a component
/// changed since the run started (unless allowed).
pub async fn resume(
    host: &dyn Host,
    id: &str,
    options: &ResumeOptions,
    progress: &mut (dyn FnMut(Progress) + Send + Sync),
) -> Result<RunReport, RunError> {
    let journal = host.journal()?;
    let record = journal.run(id).await?;
    if record.agent == crate::journal::MCP_AGENT {
        let escalation = journal
            .escalations(&crate::escalation::Filter {
                run: Some(id.to_owned()),
                all: true,
                ..Default::default()
            })
            .await
            .ok()
            .and_then(|e| e.last().map(|e| e.id.clone()));
        return Err(RunError::McpCall {
            run: id.to_owned(),
            escalation,
        });
    }
    let _lock = RunLock::acquire(host.config(), id, &journal).await?;
    match resume::reload(host, journal.as_ref(), record, options, progress).await? {
        resume::Reloaded::Ended(report) => Ok(report),
        resume::Reloaded::NotStarted(mut run) => run.start().await,
        resume::Reloaded::At(mut run, start) => run.execute(start).await,
    }
}

impl Run<'_> {
    /// Journals `run-started` and runs from the first step.
    async fn start(&mut self) -> Result<RunReport, RunError> {
        let started = json!({
            "agent": self.agent.name,
            "task": self.task,
            "fingerprint": resume::fingerprint(self.host),
        });
        self.append(EntryKind::RunStarted, 0, started).await?;
        self.execute(0).await
    }

    async fn execute(&mut self, start: usize) -> Result<RunReport, RunError> {
        // Killed after `run-finished` was journaled but before the run's
        // row said so: the journal is the truth, and it is written once.
        if let Some(done) = self
            .recorded
            .values()
            .find(|e| e.kind == EntryKind::RunFinished)
            .cloned()
        {
            let status = if done.payload["status"] == "finished" {
                RunStatus::Finished
            } else {
                RunStatus::Failed
            };
            let out = done.payload["output"].clone();
            self.store
                .set_status(&self.id, status, done.step, Some(&out))
                .await?;
            self.store.set_owner(&self.id, None).await?;
            return Ok(RunReport {
                run: self.id.clone(),
                agent: self.agent.name.clone(),
                status,
                step: done.step,
                output: Some(out),
                attention: None,
            });
        }
        let end = match self.agent.kind.clone() {
            AgentKind::Pipeline(steps) => self.pipeline(&steps, start).await?,
            AgentKind::Loop {
                model,
                tools,
                max_steps,
                system,
            } => self.tool_loop(&model, &tools, max_steps, system).await?,
        };
        let step = self.store.run(&self.id).await?.step;
        let (status, output, attention) = match end {
            End::Finished(out) => {
                self.append(
                    EntryKind::RunFinished,
                    step,
                    json!({"status": "finished", "output": out}),
                )
                .await?;
                self.store
                    .set_status(&self.id, RunStatus::Finished, step, Some(&out))
                    .await?;
                (RunStatus::Finished, Some(out), None)
            }
            End::Failed(message) => {
                let out = json!({"error": message});
                self.append(
                    EntryKind::RunFinished,
                    step,
                    json!({"status": "failed", "output": out}),
                )
                .await?;
                self.store
                    .set_status(&self.id, RunStatus::Failed, step, Some(&out))
                    .await?;
                (RunStatus::Failed, Some(out), None)
            }
            End::Attention(att) => {
                self.store
                    .set_status(&self.id, RunStatus::NeedsAttention, att.step, None)
                    .await?;
                (RunStatus::NeedsAttention, None, Some(att))
            }
        };
        self.store.set_owner(&self.id, None).await?;
        Ok(RunReport {
            run: self.id.clone(),
            agent: self.agent.name.clone(),
            status,
            step,
            output,
            attention,
        })
    }
}
