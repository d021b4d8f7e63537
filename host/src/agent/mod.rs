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

mod lock;

use crate::config::agents::{render, render_str, Ref};
use crate::config::{AgentConfig, AgentKind, CircuitOpenPolicy, Step, StepAction};
use crate::escalation::{Escalation, Resolution};
use crate::journal::{Entry, EntryKind, Journal, RunStatus, Snapshot, StoreError, SNAPSHOT_EVERY};
use crate::models::{Block, ChatRequest, ChatResponse, Content, Message, Role, ToolDef};
use crate::outcome::{Attempt, Effect, EscalationReason, Outcome};
use crate::runtime::Reconciled;
use crate::Backstop;
pub use lock::RunLock;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Why a run could not start or resume. Failures inside a run are not
/// errors: they end in `needs-attention` or `failed`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown agent `{name}`{hint}")]
    UnknownAgent { name: String, hint: String },
    #[error("run {run} is active in another process{}; wait for it or stop it first", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { run: String, pid: Option<u32> },
    #[error("run {run} was started with a different configuration: {changes}; pass --allow-drift to resume anyway")]
    Drift { run: String, changes: String },
    #[error("run {run}: {message}")]
    Invalid { run: String, message: String },
    #[error("run {run}: cannot lock the run: {message}")]
    Lock { run: String, message: String },
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

enum Flow<T> {
    Go(T),
    Stop(Attention),
    Abort(String),
}

enum End {
    Finished(Value),
    Failed(String),
    Attention(Attention),
}

/// A run in progress in this process.
struct Run<'a> {
    b: &'a Backstop,
    journal: crate::journal::Offloaded<'a>,
    id: String,
    agent: AgentConfig,
    task: String,
    /// Entries known from the journal (on resume), by step and kind.
    recorded: HashMap<(u64, EntryKind), Entry>,
    /// Outputs of steps, by pipeline step name (looked up lazily).
    outputs: HashMap<String, Value>,
    last_seq: u64,
    snapshot_seq: u64,
    /// The highest step the journal held when this process took the run:
    /// later steps can only have entries this process wrote itself.
    known_steps: u64,
    /// Taken over from the journal (not started by this process): a step
    /// with no record may still have run.
    resumed: bool,
    progress: &'a mut (dyn FnMut(Progress) + Send + Sync),
}

fn new_run_id() -> String {
    format!("r{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn summary(o: &Outcome) -> String {
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

impl Run<'_> {
    fn append(&mut self, kind: EntryKind, step: u64, payload: Value) -> Result<(), RunError> {
        self.last_seq = self.journal.append(&self.id, kind, step, &payload)?;
        crate::journal::kill::point(kind.as_str());
        self.recorded.insert(
            (step, kind),
            Entry {
                seq: self.last_seq,
                kind,
                step,
                payload,
                at: 0,
            },
        );
        Ok(())
    }

    fn snapshot(&mut self, state: Value) -> Result<(), RunError> {
        if self.last_seq >= self.snapshot_seq + SNAPSHOT_EVERY {
            self.journal.write_snapshot(
                &self.id,
                &Snapshot {
                    seq: self.last_seq,
                    state,
                },
            )?;
            self.snapshot_seq = self.last_seq;
            crate::journal::kill::point("snapshot");
        }
        Ok(())
    }

    /// The newest entry of `kind` for `step`: from memory, else the journal.
    fn lookup(&self, step: u64, kind: EntryKind) -> Result<Option<Entry>, RunError> {
        if let Some(e) = self.recorded.get(&(step, kind)) {
            return Ok(Some(e.clone()));
        }
        if step > self.known_steps {
            return Ok(None);
        }
        Ok(self.journal.find(&self.id, step, kind)?)
    }

    fn key(&self, step: u64) -> String {
        format!("{}:{step}", self.id)
    }

    fn say(&mut self, step: u64, line: String) {
        (self.progress)(Progress::Step { step, line });
    }

    /// The strictest effect among a chain's targets: what is at stake if a
    /// call's fate is unknown.
    fn chain_effect(&self, chain: &str) -> Effect {
        let plan = self.b.config().chain(chain);
        plan.iter()
            .flat_map(|c| c.targets.iter())
            .filter_map(|t| self.b.tool(t).map(|tool| tool.effect()))
            .max()
            .unwrap_or(Effect::ReadOnly)
    }

    /// Records that a step needs a person: an attention entry in the
    /// journal and an escalation in the queue (announced to the webhook).
    fn attention(&mut self, mut att: Attention) -> Result<Flow<Outcome>, RunError> {
        let esc = Escalation {
            id: format!("e{:010x}", rand::random::<u64>() & 0xff_ffff_ffff),
            run: self.id.clone(),
            step: att.step,
            reason: att.reason,
            chain: att.chain.clone(),
            input: att.input.clone(),
            key: att.key.clone(),
            message: att.message.clone(),
            attempts: att.attempts.clone(),
            allowed: Vec::new(),
            created_at: 0,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
        };
        let journal = self.b.journal()?;
        let (esc, new) =
            crate::journal::offload(|| journal.escalate(esc)).map_err(|e| RunError::Invalid {
                run: self.id.clone(),
                message: e.to_string(),
            })?;
        att.escalation = Some(esc.id.clone());
        self.append(
            EntryKind::Attention,
            att.step,
            serde_json::to_value(&att).expect("serializes"),
        )?;
        if new {
            self.b.notify(&esc);
        }
        Ok(Flow::Stop(att))
    }

    /// The newest of the given kinds of entry for `step`.
    fn newest(&self, step: u64, kinds: &[EntryKind]) -> Result<Option<Entry>, RunError> {
        let mut best: Option<Entry> = None;
        for k in kinds {
            if let Some(e) = self.lookup(step, *k)? {
                if best.as_ref().is_none_or(|b| e.seq > b.seq) {
                    best = Some(e);
                }
            }
        }
        Ok(best)
    }

    fn damaged(&self, seq: u64, what: &str, e: impl std::fmt::Display) -> RunError {
        RunError::Store(StoreError::Damaged {
            run: self.id.clone(),
            seq,
            message: format!("{what}: {e}"),
        })
    }

    /// A step found done in the journal: its outcome, announced as such.
    fn replayed(&mut self, step: u64, chain: &str, e: &Entry) -> Result<Outcome, RunError> {
        let outcome = self.outcome_of(e)?;
        self.say(
            step,
            format!(
                "{chain}: done earlier ({}), not repeated",
                summary(&outcome)
            ),
        );
        Ok(outcome)
    }

    fn outcome_of(&self, e: &Entry) -> Result<Outcome, RunError> {
        serde_json::from_value(e.payload["outcome"].clone())
            .map_err(|err| self.damaged(e.seq, "not an outcome", err))
    }

    /// The resolution of an attention's escalation, once a person gave one.
    fn resolution_of(&self, att: &Attention) -> Result<Option<(Resolution, String)>, RunError> {
        let Some(id) = &att.escalation else {
            return Ok(None);
        };
        let esc = self
            .b
            .journal()?
            .escalation(id)
            .map_err(|e| RunError::Invalid {
                run: self.id.clone(),
                message: e.to_string(),
            })?;
        Ok(esc
            .resolution
            .map(|r| (r, esc.resolved_by.unwrap_or_default())))
    }

    /// What a step does about its newest attention: wait, or act on the
    /// resolution (journaled once, so a crash after it acts again).
    fn pending_resolution(
        &mut self,
        step: u64,
        newest: &Entry,
    ) -> Result<Result<(Resolution, String, Attention), Attention>, RunError> {
        if newest.kind == EntryKind::Resolution {
            let r: Resolution = serde_json::from_value(newest.payload["resolution"].clone())
                .map_err(|e| self.damaged(newest.seq, "not a resolution", e))?;
            let att = self.lookup(step, EntryKind::Attention)?.ok_or_else(|| {
                self.damaged(newest.seq, "resolution without attention", "missing")
            })?;
            let att: Attention = serde_json::from_value(att.payload)
                .map_err(|e| self.damaged(newest.seq, "not an attention", e))?;
            return Ok(Ok((
                r,
                newest.payload["by"].as_str().unwrap_or("").to_owned(),
                att,
            )));
        }
        let att: Attention = serde_json::from_value(newest.payload.clone())
            .map_err(|e| self.damaged(newest.seq, "not an attention", e))?;
        match self.resolution_of(&att)? {
            None => Ok(Err(att)),
            Some((r, by)) => {
                self.append(
                    EntryKind::Resolution,
                    step,
                    json!({"escalation": att.escalation, "resolution": r, "by": by}),
                )?;
                Ok(Ok((r, by, att)))
            }
        }
    }

    fn waiting(&mut self, step: u64, att: Attention) -> Flow<Outcome> {
        let id = att.escalation.clone().unwrap_or_default();
        self.say(
            step,
            format!(
                "{}: still waiting for a person: escalation {id} ({})",
                att.chain, att.reason
            ),
        );
        Flow::Stop(att)
    }

    fn person_outcome(
        &self,
        chain: &str,
        key: &str,
        ok: bool,
        value: Option<Value>,
        by: &str,
        note: String,
    ) -> Outcome {
        Outcome {
            ok,
            chain: chain.into(),
            key: key.into(),
            value,
            confidence: None,
            served_by: ok.then(|| format!("person:{by}").into()),
            degraded: ok,
            degraded_reason: ok.then(|| format!("result supplied by a person ({by})")),
            attempts: smallvec::smallvec![Attempt {
                target: format!("person:{by}").into(),
                attempt: 0,
                class: if ok {
                    "supplied".into()
                } else {
                    "rejected".into()
                },
                message: note.clone().into(),
                elapsed_ms: 0,
                delay_ms: 0,
                then: "done".into(),
            }],
            error: (!ok).then_some(crate::outcome::CallError {
                class: crate::FailureClass::Permanent,
                message: note.into(),
                escalate: None,
            }),
            elapsed_ms: 0,
        }
    }

    /// Does what a person decided for a tool step.
    async fn act(
        &mut self,
        step: u64,
        chain: &str,
        input: &Value,
        res: Resolution,
        by: String,
        att: Attention,
    ) -> Result<Flow<Outcome>, RunError> {
        let key = self.key(step);
        match res {
            Resolution::Abort => Ok(Flow::Abort(format!("aborted by {by} at step {step}"))),
            Resolution::Approve if att.reason == EscalationReason::LowConfidence => {
                let r = self.lookup(step, EntryKind::ToolResult)?.ok_or_else(|| {
                    self.damaged(0, "low-confidence attention without a result", step)
                })?;
                let outcome = self.outcome_of(&r)?;
                self.say(
                    step,
                    format!("{chain}: low-confidence result accepted by {by}"),
                );
                Ok(Flow::Go(outcome))
            }
            Resolution::Approve | Resolution::Retry => {
                self.say(
                    step,
                    format!(
                        "{chain}: {} by {by}: running it",
                        if res == Resolution::Retry {
                            "retry asked"
                        } else {
                            "approved"
                        }
                    ),
                );
                self.live(step, chain, input).await
            }
            Resolution::Result { value } => {
                let o = self.person_outcome(
                    chain,
                    &key,
                    true,
                    Some(value),
                    &by,
                    format!("supplied by {by}"),
                );
                self.append(
                    EntryKind::ToolResult,
                    step,
                    json!({"chain": chain, "key": key, "outcome": o, "supplied_by": by}),
                )?;
                self.say(step, format!("{chain}: result supplied by {by}"));
                Ok(Flow::Go(o))
            }
            Resolution::Reject { comment } => {
                let o = self.person_outcome(
                    chain,
                    &key,
                    false,
                    None,
                    &by,
                    format!("rejected by {by}: {comment}"),
                );
                self.append(
                    EntryKind::ToolResult,
                    step,
                    json!({"chain": chain, "key": key, "outcome": o, "rejected_by": by}),
                )?;
                self.say(step, format!("{chain}: rejected by {by}: {comment}"));
                Ok(Flow::Go(o))
            }
        }
    }

    /// Whether a person must approve calls of `chain` first.
    fn needs_approval(&self, chain: &str) -> bool {
        self.b
            .config()
            .chain(chain)
            .iter()
            .flat_map(|c| c.targets.iter())
            .any(|t| {
                self.b.tool(t).is_some_and(|tool| {
                    tool.config()
                        .approval
                        .unwrap_or(tool.effect() == Effect::Irreversible)
                })
            })
    }

    /// Whether a person approved (or asked to retry) this step.
    fn approved(&self, step: u64) -> Result<bool, RunError> {
        Ok(self.lookup(step, EntryKind::Resolution)?.is_some_and(|r| {
            matches!(
                serde_json::from_value(r.payload["resolution"].clone()),
                Ok(Resolution::Approve | Resolution::Retry)
            )
        }))
    }

    /// Runs a tool chain as step `step`, or takes its result from the
    /// journal. The newest journal entry of the step decides: a result is
    /// final; an attention waits for its resolution; a resolution is acted
    /// on; an intent without a result means the last process stopped
    /// while the tool may have been running.
    async fn tool_step(
        &mut self,
        step: u64,
        chain: &str,
        input: &Value,
    ) -> Result<Flow<Outcome>, RunError> {
        let newest = self.newest(
            step,
            &[
                EntryKind::ToolIntent,
                EntryKind::ToolResult,
                EntryKind::Attention,
                EntryKind::Resolution,
            ],
        )?;
        // A resumed run with nothing journaled for a step that has side
        // effects: the record may be what was lost (a store cut back after
        // a crash), not the call. A tool that can tell is asked first, so a
        // lost record does not become a second effect.
        if newest.is_none() && self.resumed && !self.chain_effect(chain).repeatable() {
            let key = self.key(step);
            if let Some((target, Reconciled::Done(out))) = self.reconcile(chain, &key).await {
                let outcome = self.record_reconciled(step, chain, &key, &target, out)?;
                self.say(
                    step,
                    format!("{chain}: reconciled: it had already happened (its journal record is missing), not repeated"),
                );
                return Ok(Flow::Go(outcome));
            }
        }
        match newest.as_ref().map(|e| e.kind) {
            Some(EntryKind::ToolResult) => Ok(Flow::Go(self.replayed(
                step,
                chain,
                newest.as_ref().expect("matched"),
            )?)),
            Some(EntryKind::Attention) | Some(EntryKind::Resolution) => {
                match self.pending_resolution(step, newest.as_ref().expect("matched"))? {
                    Err(att) => Ok(self.waiting(step, att)),
                    Ok((res, by, att)) => self.act(step, chain, input, res, by, att).await,
                }
            }
            Some(EntryKind::ToolIntent) => {
                self.interrupted(step, chain, newest.expect("matched"))
                    .await
            }
            _ if self.needs_approval(chain) => {
                let att = Attention {
                    step,
                    reason: EscalationReason::ApprovalRequired,
                    chain: chain.to_owned(),
                    input: input.clone(),
                    key: self.key(step),
                    message: format!("`{chain}` needs a person's approval before it runs"),
                    attempts: Vec::new(),
                    escalation: None,
                };
                let flow = self.attention(att)?;
                if let Flow::Stop(a) = &flow {
                    self.say(
                        step,
                        format!(
                            "{chain}: NEEDS APPROVAL: escalation {}",
                            a.escalation.as_deref().unwrap_or("")
                        ),
                    );
                }
                Ok(flow)
            }
            _ => self.live(step, chain, input).await,
        }
    }

    /// Journals what `reconcile` said a call already produced, as that
    /// step's result.
    fn record_reconciled(
        &mut self,
        step: u64,
        chain: &str,
        key: &str,
        target: &str,
        out: crate::target::TargetOutput,
    ) -> Result<Outcome, RunError> {
        let outcome = Outcome {
            ok: true,
            chain: chain.into(),
            key: key.into(),
            value: Some(out.value),
            confidence: out.confidence,
            served_by: Some(target.into()),
            degraded: false,
            degraded_reason: None,
            attempts: smallvec::smallvec![Attempt {
                target: target.into(),
                attempt: 0,
                class: "reconciled".into(),
                message: "the tool says this call already happened".into(),
                elapsed_ms: 0,
                delay_ms: 0,
                then: "done".into(),
            }],
            error: None,
            elapsed_ms: 0,
        };
        self.append(
            EntryKind::ToolResult,
            step,
            json!({"chain": chain, "key": key, "outcome": outcome, "reconciled": true}),
        )?;
        Ok(outcome)
    }

    /// A previous process committed the intent and then stopped: the tool
    /// may or may not have run.
    async fn interrupted(
        &mut self,
        step: u64,
        chain: &str,
        intent: Entry,
    ) -> Result<Flow<Outcome>, RunError> {
        let key = self.key(step);
        let input = intent.payload["input"].clone();
        let effect = self.chain_effect(chain);
        if effect.repeatable() {
            self.say(
                step,
                format!(
                    "{chain}: interrupted earlier; {effect}, so running it again with the same key"
                ),
            );
            return self.live(step, chain, &input).await;
        }
        let approved = self.approved(step)?;
        let why = match self.reconcile(chain, &key).await {
            Some((target, Reconciled::Done(out))) => {
                let outcome = self.record_reconciled(step, chain, &key, &target, out)?;
                self.say(
                    step,
                    format!("{chain}: reconciled: it had already happened, not repeated"),
                );
                return Ok(Flow::Go(outcome));
            }
            // The tool says it did not happen: running it now is running
            // it once. An irreversible tool needs that to be approved.
            Some((_, Reconciled::NotDone)) if effect == Effect::SideEffect || approved => {
                self.say(
                    step,
                    format!("{chain}: reconciled: it had not happened, running it now"),
                );
                return self.live(step, chain, &input).await;
            }
            Some((_, Reconciled::NotDone)) => {
                "irreversible tools are never re-run on resume".to_owned()
            }
            _ => "the tool cannot say whether it ran (no `reconcile`, or it answered unknown)"
                .to_owned(),
        };
        let att = Attention {
            step,
            reason: EscalationReason::AmbiguousState,
            chain: chain.to_owned(),
            input,
            key,
            message: format!("the run stopped while `{chain}` ({effect}) was running; {why}"),
            attempts: Vec::new(),
            escalation: None,
        };
        self.say(
            step,
            format!("{chain}: NEEDS ATTENTION: ambiguous state ({why})"),
        );
        self.attention(att)
    }

    /// Commits the intent, runs the chain, commits the result.
    async fn live(
        &mut self,
        step: u64,
        chain: &str,
        input: &Value,
    ) -> Result<Flow<Outcome>, RunError> {
        let key = self.key(step);
        self.append(
            EntryKind::ToolIntent,
            step,
            json!({"chain": chain, "input": input, "key": key, "effect": self.chain_effect(chain)}),
        )?;
        let mut outcome = self.call(chain, input.clone(), key.clone()).await?;
        // With `on_circuit_open = "wait"`, a chain whose every breaker is
        // open waits for the first half-open probe instead of escalating.
        let mut waits = 0;
        while self.b.config().escalation.on_circuit_open == CircuitOpenPolicy::Wait
            && outcome.error.as_ref().and_then(|e| e.escalate)
                == Some(EscalationReason::CircuitOpen)
            && waits < 3
        {
            let wait = self
                .b
                .next_probe_in(chain)
                .unwrap_or(std::time::Duration::from_secs(1))
                .max(std::time::Duration::from_millis(10));
            self.say(
                step,
                format!(
                    "{chain}: every breaker is open; waiting {:.1}s for a probe",
                    wait.as_secs_f64()
                ),
            );
            tokio::time::sleep(wait).await;
            outcome = self.call(chain, input.clone(), key.clone()).await?;
            waits += 1;
        }
        let escalate = outcome.error.as_ref().and_then(|e| e.escalate);
        if escalate == Some(EscalationReason::AmbiguousState) {
            // The tool stopped half way: its effect is unknown, so no result
            // is recorded; resolving decides.
            let att = Attention {
                step,
                reason: EscalationReason::AmbiguousState,
                chain: chain.to_owned(),
                input: input.clone(),
                key,
                message: outcome
                    .error
                    .as_ref()
                    .map(|e| e.message.to_string())
                    .unwrap_or_default(),
                attempts: outcome.attempts.to_vec(),
                escalation: None,
            };
            self.say(
                step,
                format!(
                    "{chain}: NEEDS ATTENTION: ambiguous state ({})",
                    att.message
                ),
            );
            return self.attention(att);
        }
        self.append(
            EntryKind::ToolResult,
            step,
            json!({"chain": chain, "key": key, "outcome": outcome}),
        )?;
        self.say(step, format!("{chain}: {}", summary(&outcome)));
        if let (Some(threshold), Some(c)) = (
            self.b.config().escalation.confidence_threshold,
            outcome.confidence,
        ) {
            if outcome.ok && c < threshold {
                let att = Attention {
                    step,
                    reason: EscalationReason::LowConfidence,
                    chain: chain.to_owned(),
                    input: input.clone(),
                    key,
                    message: format!("confidence {c:.2} is below the threshold {threshold:.2}"),
                    attempts: outcome.attempts.to_vec(),
                    escalation: None,
                };
                self.say(step, format!("{chain}: NEEDS ATTENTION: {}", att.message));
                return self.attention(att);
            }
        }
        Ok(Flow::Go(outcome))
    }

    async fn call(&self, chain: &str, input: Value, key: String) -> Result<Outcome, RunError> {
        self.b
            .call_with_key(chain, input, key)
            .await
            .map_err(|e| RunError::Invalid {
                run: self.id.clone(),
                message: e.to_string(),
            })
    }

    /// Asks each target of the chain that can reconcile; the first definite
    /// answer wins.
    async fn reconcile(&self, chain: &str, key: &str) -> Option<(String, Reconciled)> {
        let plan = self.b.config().chain(chain)?;
        let mut not_done: Option<String> = None;
        for t in &plan.targets {
            let Some(tool) = self.b.tool(t).filter(|tool| tool.can_reconcile()) else {
                continue;
            };
            match tool.reconcile(key).await {
                Ok(Reconciled::Done(out)) => return Some((t.clone(), Reconciled::Done(out))),
                Ok(Reconciled::NotDone) => not_done = Some(t.clone()),
                _ => return Some((t.clone(), Reconciled::Unknown)),
            }
        }
        // Every target that could have run must say "not done"; a target
        // that cannot reconcile leaves the answer unknown.
        let all_can = plan.targets.iter().all(|t| {
            self.b
                .tool(t)
                .is_none_or(|tool| tool.can_reconcile() || tool.effect().repeatable())
        });
        match not_done {
            Some(t) if all_can => Some((t, Reconciled::NotDone)),
            _ => None,
        }
    }

    /// Asks a model chain as step `step`, or takes the answer from the
    /// journal. Model calls are read-only: a call in flight at a crash is
    /// simply made again.
    async fn model_step(
        &mut self,
        step: u64,
        chain: &str,
        request: &ChatRequest,
    ) -> Result<Flow<Outcome>, RunError> {
        let newest = self.newest(
            step,
            &[
                EntryKind::ModelCall,
                EntryKind::Attention,
                EntryKind::Resolution,
            ],
        )?;
        match newest.as_ref().map(|e| e.kind) {
            Some(EntryKind::ModelCall) => {
                return Ok(Flow::Go(self.replayed(
                    step,
                    chain,
                    newest.as_ref().expect("matched"),
                )?));
            }
            Some(EntryKind::Attention) | Some(EntryKind::Resolution) => {
                match self.pending_resolution(step, newest.as_ref().expect("matched"))? {
                    Err(att) => return Ok(self.waiting(step, att)),
                    Ok((Resolution::Abort, by, _)) => {
                        return Ok(Flow::Abort(format!("aborted by {by} at step {step}")))
                    }
                    Ok((Resolution::Result { value }, by, _)) => {
                        let value = match value {
                            Value::String(text) => {
                                json!({"model": format!("person:{by}"), "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": {"input_tokens": 0, "output_tokens": 0}, "text": text})
                            }
                            other => other,
                        };
                        let o = self.person_outcome(
                            chain,
                            &self.key(step),
                            true,
                            Some(value),
                            &by,
                            format!("supplied by {by}"),
                        );
                        self.append(
                            EntryKind::ModelCall,
                            step,
                            json!({"chain": chain, "outcome": o, "supplied_by": by}),
                        )?;
                        self.say(step, format!("{chain}: answer supplied by {by}"));
                        return Ok(Flow::Go(o));
                    }
                    Ok((Resolution::Reject { comment }, by, _)) => {
                        let o = self.person_outcome(
                            chain,
                            &self.key(step),
                            false,
                            None,
                            &by,
                            format!("rejected by {by}: {comment}"),
                        );
                        self.append(
                            EntryKind::ModelCall,
                            step,
                            json!({"chain": chain, "outcome": o, "rejected_by": by}),
                        )?;
                        return Ok(Flow::Go(o));
                    }
                    Ok((_, by, _)) => self.say(step, format!("{chain}: retry asked by {by}")),
                }
            }
            _ => {}
        }
        let input = serde_json::to_value(request).expect("a request serializes");
        let outcome = self.call(chain, input, self.key(step)).await?;
        self.append(
            EntryKind::ModelCall,
            step,
            json!({"chain": chain, "outcome": outcome}),
        )?;
        self.say(step, format!("{chain}: {}", summary(&outcome)));
        Ok(Flow::Go(outcome))
    }

    fn failed_attention(&self, step: u64, chain: &str, input: Value, o: &Outcome) -> Attention {
        let e = o.error.clone();
        Attention {
            step,
            reason: e
                .as_ref()
                .and_then(|e| e.escalate)
                .unwrap_or(EscalationReason::RetriesExhausted),
            chain: chain.to_owned(),
            input,
            key: o.key.to_string(),
            message: e
                .map(|e| format!("{}: {}", e.class, e.message))
                .unwrap_or_default(),
            attempts: o.attempts.to_vec(),
            escalation: None,
        }
    }

    async fn pipeline(&mut self, steps: &[Step], start: usize) -> Result<End, RunError> {
        // Resumed past some steps: the run's output so far is the last
        // completed step's (a resume after the last step finishes with it).
        let mut last = match start.checked_sub(1).and_then(|i| steps.get(i)) {
            Some(done) => self
                .lookup_ref(&Ref::Output {
                    step: done.name.clone(),
                    path: Vec::new(),
                })
                .map_err(|message| RunError::Invalid {
                    run: self.id.clone(),
                    message,
                })?,
            None => Value::Null,
        };
        for (i, st) in steps.iter().enumerate().skip(start) {
            let step = i as u64 + 1;
            let (chain, input, flow) = match &st.action {
                StepAction::Tool { chain, input } => {
                    let input = self.render(input)?;
                    let flow = self.tool_step(step, chain, &input).await?;
                    (chain, input, flow)
                }
                StepAction::Model {
                    chain,
                    prompt,
                    system,
                } => {
                    let mut request = ChatRequest::prompt(self.render_text(prompt)?);
                    request.system = system.as_ref().map(|s| self.render_text(s)).transpose()?;
                    let flow = self.model_step(step, chain, &request).await?;
                    (chain, json!(request), flow)
                }
            };
            let outcome = match flow {
                Flow::Go(o) => o,
                Flow::Stop(att) => return Ok(End::Attention(att)),
                Flow::Abort(why) => return Ok(End::Failed(why)),
            };
            if let Some(rejected) = rejection(&outcome) {
                return Ok(End::Failed(format!(
                    "step {step} ({}): {rejected}",
                    st.name
                )));
            }
            if !outcome.ok {
                let att = self.failed_attention(step, chain, input, &outcome);
                self.say(step, format!("{chain}: NEEDS ATTENTION: {}", att.reason));
                if let Flow::Stop(att) = self.attention(att)? {
                    return Ok(End::Attention(att));
                }
            }
            let out = outcome.value.unwrap_or(Value::Null);
            self.outputs.insert(st.name.clone(), out.clone());
            last = out;
            self.snapshot(json!({"next": i + 1}))?;
        }
        Ok(End::Finished(last))
    }

    fn lookup_ref(&mut self, r: &Ref) -> Result<Value, String> {
        let name = match r {
            Ref::Task => return Ok(Value::String(self.task.clone())),
            Ref::Output { step, .. } | Ref::Text { step } => step.clone(),
        };
        let value = match self.outputs.get(&name) {
            Some(v) => v.clone(),
            None => {
                let AgentKind::Pipeline(steps) = &self.agent.kind else {
                    return Err("no steps in a tool loop".into());
                };
                let idx = steps
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or_else(|| format!("no step `{name}`"))?;
                let kind = match steps[idx].action {
                    StepAction::Tool { .. } => EntryKind::ToolResult,
                    StepAction::Model { .. } => EntryKind::ModelCall,
                };
                let entry = self
                    .lookup(idx as u64 + 1, kind)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("step `{name}` has no result in the journal"))?;
                let v = entry.payload["outcome"]["value"].clone();
                self.outputs.insert(name.clone(), v.clone());
                v
            }
        };
        Ok(match r {
            Ref::Text { .. } => value.get("text").cloned().unwrap_or(Value::Null),
            Ref::Output { path, .. } => path
                .iter()
                .fold(value, |v, p| v.get(p).cloned().unwrap_or(Value::Null)),
            Ref::Task => unreachable!(),
        })
    }

    fn render(&mut self, template: &Value) -> Result<Value, RunError> {
        render(template, &mut |r| self.lookup_ref(r)).map_err(|m| RunError::Invalid {
            run: self.id.clone(),
            message: m,
        })
    }

    fn render_text(&mut self, template: &str) -> Result<String, RunError> {
        match render_str(template, &mut |r| self.lookup_ref(r)).map_err(|m| RunError::Invalid {
            run: self.id.clone(),
            message: m,
        })? {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }

    fn tool_defs(&self, tools: &[String]) -> Vec<ToolDef> {
        tools
            .iter()
            .map(|chain| {
                let first = self
                    .b
                    .config()
                    .chain(chain)
                    .and_then(|c| c.targets.first().cloned())
                    .unwrap_or_default();
                let d = self.b.tool(&first).map(|t| t.description().clone());
                ToolDef {
                    name: chain.clone(),
                    description: d
                        .as_ref()
                        .map(|d| d.description.clone())
                        .unwrap_or_default(),
                    input_schema: d
                        .map(|d| d.input_schema)
                        .unwrap_or(json!({"type": "object"})),
                }
            })
            .collect()
    }

    async fn tool_loop(
        &mut self,
        model: &str,
        tools: &[String],
        max_steps: u32,
        system: Option<String>,
    ) -> Result<End, RunError> {
        let defs = self.tool_defs(tools);
        let mut messages = vec![Message {
            role: Role::User,
            content: Content::Text(self.task.clone()),
        }];
        let mut step = 0u64;
        for _ in 0..max_steps {
            step += 1;
            let request = ChatRequest {
                system: system.clone(),
                messages: messages.clone(),
                tools: defs.clone(),
                max_tokens: None,
                temperature: None,
            };
            let outcome = match self.model_step(step, model, &request).await? {
                Flow::Go(o) => o,
                Flow::Stop(att) => return Ok(End::Attention(att)),
                Flow::Abort(why) => return Ok(End::Failed(why)),
            };
            if let Some(rejected) = rejection(&outcome) {
                return Ok(End::Failed(format!("step {step} ({model}): {rejected}")));
            }
            if !outcome.ok {
                let att = self.failed_attention(
                    step,
                    model,
                    json!({"messages": messages.len()}),
                    &outcome,
                );
                return Ok(match self.attention(att)? {
                    Flow::Stop(att) => End::Attention(att),
                    Flow::Go(_) | Flow::Abort(_) => unreachable!("attention always stops"),
                });
            }
            let response: ChatResponse =
                serde_json::from_value(outcome.value.clone().unwrap_or_default()).map_err(|e| {
                    RunError::Invalid {
                        run: self.id.clone(),
                        message: format!("model answer is not a chat response: {e}"),
                    }
                })?;
            messages.push(Message {
                role: Role::Assistant,
                content: Content::Blocks(response.content.clone()),
            });
            let uses: Vec<(String, String, Value)> = response
                .content
                .iter()
                .filter_map(|b| match b {
                    Block::ToolUse { id, name, input } => {
                        Some((id.clone(), name.clone(), input.clone()))
                    }
                    _ => None,
                })
                .collect();
            if uses.is_empty() {
                return Ok(End::Finished(
                    json!({"text": response.text, "served_by": outcome.served_by, "degraded": outcome.degraded}),
                ));
            }
            let mut results = Vec::new();
            for (id, name, input) in uses {
                step += 1;
                if !tools.contains(&name) {
                    results.push(Block::ToolResult {
                        tool_use_id: id,
                        content: format!("no tool named `{name}`"),
                        is_error: true,
                    });
                    continue;
                }
                let o = match self.tool_step(step, &name, &input).await? {
                    Flow::Go(o) => o,
                    Flow::Stop(att) => return Ok(End::Attention(att)),
                    Flow::Abort(why) => return Ok(End::Failed(why)),
                };
                let needs_person = match o.error.as_ref().and_then(|e| e.escalate) {
                    Some(
                        r @ (EscalationReason::NeedsHuman | EscalationReason::ApprovalRequired),
                    ) => Some(r),
                    _ => None,
                };
                // A person's answer (supplied or rejected) goes to the model.
                if let (Some(reason), None) = (needs_person, rejection(&o)) {
                    let mut att = self.failed_attention(step, &name, input, &o);
                    att.reason = reason;
                    if let Flow::Stop(att) = self.attention(att)? {
                        return Ok(End::Attention(att));
                    }
                }
                let content = json!({
                    "ok": o.ok, "value": o.value, "served_by": o.served_by, "degraded": o.degraded,
                    "degraded_reason": o.degraded_reason, "error": o.error.as_ref().map(|e| &e.message),
                });
                results.push(Block::ToolResult {
                    tool_use_id: id,
                    content: content.to_string(),
                    is_error: !o.ok,
                });
            }
            messages.push(Message {
                role: Role::User,
                content: Content::Blocks(results),
            });
            self.snapshot(json!({"step": step}))?;
        }
        Ok(End::Failed(format!(
            "no final answer after max_steps = {max_steps} model calls"
        )))
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
            self.journal
                .set_status(&self.id, status, done.step, Some(&out))?;
            self.journal.set_owner(&self.id, None)?;
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
        let step = self.journal.run(&self.id)?.step;
        let (status, output, attention) = match end {
            End::Finished(out) => {
                self.append(
                    EntryKind::RunFinished,
                    step,
                    json!({"status": "finished", "output": out}),
                )?;
                self.journal
                    .set_status(&self.id, RunStatus::Finished, step, Some(&out))?;
                (RunStatus::Finished, Some(out), None)
            }
            End::Failed(message) => {
                let out = json!({"error": message});
                self.append(
                    EntryKind::RunFinished,
                    step,
                    json!({"status": "failed", "output": out}),
                )?;
                self.journal
                    .set_status(&self.id, RunStatus::Failed, step, Some(&out))?;
                (RunStatus::Failed, Some(out), None)
            }
            End::Attention(att) => {
                self.journal
                    .set_status(&self.id, RunStatus::NeedsAttention, att.step, None)?;
                (RunStatus::NeedsAttention, None, Some(att))
            }
        };
        self.journal.set_owner(&self.id, None)?;
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

/// The rejection note of an outcome a person rejected.
fn rejection(o: &Outcome) -> Option<String> {
    (!o.ok && o.attempts.first().is_some_and(|a| a.class == "rejected")).then(|| {
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

impl Backstop {
    fn agent(&self, name: &str) -> Result<AgentConfig, RunError> {
        self.config()
            .agents
            .get(name)
            .cloned()
            .ok_or_else(|| RunError::UnknownAgent {
                name: name.to_owned(),
                hint: match self.config().agents.keys().cloned().collect::<Vec<_>>() {
                    v if v.is_empty() => " (the config declares no agents)".into(),
                    v => format!(" (known: {})", v.join(", ")),
                },
            })
    }

    fn fingerprint(&self) -> Value {
        let components: serde_json::Map<String, Value> = self
            .tools()
            .map(|t| (t.name().to_owned(), json!(t.digest())))
            .collect();
        json!({"config": self.config().digest, "components": components})
    }

    /// Starts a run of `agent` on `task`, journaled in the config's state
    /// store. `progress` sees the run id first, then each step.
    pub async fn run_agent(
        &self,
        agent: &str,
        task: &str,
        progress: &mut (dyn FnMut(Progress) + Send + Sync),
    ) -> Result<RunReport, RunError> {
        let agent = self.agent(agent)?;
        let journal = self.journal()?;
        let id = new_run_id();
        journal.create_run(&id, &agent.name, task)?;
        let _lock = RunLock::acquire(self.config(), &id, journal.as_ref())?;
        journal.set_owner(&id, Some(std::process::id()))?;
        let mut run = Run {
            b: self,
            journal: crate::journal::Offloaded(journal.as_ref()),
            id: id.clone(),
            agent: agent.clone(),
            task: task.to_owned(),
            recorded: HashMap::new(),
            outputs: HashMap::new(),
            last_seq: 0,
            snapshot_seq: 0,
            known_steps: 0,
            resumed: false,
            progress,
        };
        // The id is out before anything else is written, so a run killed
        // from here on can be named to `resume`.
        (run.progress)(Progress::Started {
            run: id,
            agent: agent.name.clone(),
        });
        crate::journal::kill::point("run-created");
        let started = json!({"agent": agent.name, "task": task, "fingerprint": self.fingerprint()});
        run.append(EntryKind::RunStarted, 0, started)?;
        run.execute(0).await
    }

    /// Resumes run `id` from its journal, in this process. Refused while
    /// another process holds the run, and when the config or a component
    /// changed since the run started (unless allowed).
    pub async fn resume_run(
        &self,
        id: &str,
        options: &ResumeOptions,
        progress: &mut (dyn FnMut(Progress) + Send + Sync),
    ) -> Result<RunReport, RunError> {
        let journal = self.journal()?;
        let record = journal.run(id)?;
        let _lock = RunLock::acquire(self.config(), id, journal.as_ref())?;
        let loaded = journal.load(id)?;
        if matches!(loaded.run.status, RunStatus::Finished | RunStatus::Failed) {
            return Ok(RunReport {
                run: id.to_owned(),
                agent: record.agent,
                status: loaded.run.status,
                step: loaded.run.step,
                output: loaded.run.output,
                attention: None,
            });
        }
        let Some(started) = journal.find(id, 0, EntryKind::RunStarted)? else {
            // Killed after the run's row was made, before its first entry:
            // nothing of it ran, so it starts now, under this config.
            if !journal.entries(id)?.is_empty() {
                return Err(RunError::Invalid {
                    run: id.to_owned(),
                    message: "its journal has entries but no run-started entry".into(),
                });
            }
            let agent = self.agent(&record.agent).map_err(|_| RunError::Invalid {
                run: id.to_owned(),
                message: format!("agent `{}` is no longer in the config", record.agent),
            })?;
            journal.set_owner(id, Some(std::process::id()))?;
            let mut run = Run {
                b: self,
                journal: crate::journal::Offloaded(journal.as_ref()),
                id: id.to_owned(),
                agent: agent.clone(),
                task: record.task.clone(),
                recorded: HashMap::new(),
                outputs: HashMap::new(),
                last_seq: 0,
                snapshot_seq: 0,
                known_steps: 0,
                // Its records may be what was lost: ask before effects.
                resumed: true,
                progress,
            };
            (run.progress)(Progress::Resumed {
                run: id.to_owned(),
                agent: agent.name.clone(),
            });
            let started = json!({"agent": agent.name, "task": record.task, "fingerprint": self.fingerprint()});
            run.append(EntryKind::RunStarted, 0, started)?;
            return run.execute(0).await;
        };
        if !options.allow_drift {
            let changes = drift(&started.payload["fingerprint"], &self.fingerprint());
            if !changes.is_empty() {
                return Err(RunError::Drift {
                    run: id.to_owned(),
                    changes: changes.join(", "),
                });
            }
        }
        let agent = self.agent(&record.agent).map_err(|_| RunError::Invalid {
            run: id.to_owned(),
            message: format!("agent `{}` is no longer in the config", record.agent),
        })?;
        journal.set_owner(id, Some(std::process::id()))?;
        journal.set_status(id, RunStatus::Running, loaded.run.step, None)?;
        // A pipeline starts from its snapshot and replays the tail; a tool
        // loop rebuilds its conversation, so it reads the whole journal.
        let (start, entries) = match &agent.kind {
            AgentKind::Pipeline(_) => {
                let start = loaded
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.state["next"].as_u64())
                    .unwrap_or(0) as usize;
                (start, loaded.tail)
            }
            AgentKind::Loop { .. } => (0, journal.entries(id)?),
        };
        let mut recorded = HashMap::new();
        let mut last_seq = loaded.snapshot.as_ref().map_or(0, |s| s.seq);
        for e in entries {
            last_seq = last_seq.max(e.seq);
            recorded.insert((e.step, e.kind), e);
        }
        let mut run = Run {
            b: self,
            journal: crate::journal::Offloaded(journal.as_ref()),
            id: id.to_owned(),
            agent: agent.clone(),
            task: record.task.clone(),
            recorded,
            outputs: HashMap::new(),
            last_seq,
            snapshot_seq: loaded.snapshot.map_or(0, |s| s.seq),
            known_steps: loaded.run.step,
            resumed: true,
            progress,
        };
        run.append(
            EntryKind::Resumed,
            loaded.run.step,
            json!({"pid": std::process::id(), "from_step": loaded.run.step}),
        )?;
        (run.progress)(Progress::Resumed {
            run: id.to_owned(),
            agent: agent.name,
        });
        run.execute(start).await
    }
}

/// What differs between the fingerprint a run started with and now.
fn drift(then: &Value, now: &Value) -> Vec<String> {
    let mut changes = Vec::new();
    if then["config"] != now["config"] {
        changes.push("the config file changed".to_owned());
    }
    let empty = serde_json::Map::new();
    let (a, b) = (
        then["components"].as_object().unwrap_or(&empty),
        now["components"].as_object().unwrap_or(&empty),
    );
    for (tool, digest) in a {
        match b.get(tool) {
            None => changes.push(format!("tool `{tool}` was removed")),
            Some(d) if d != digest => {
                changes.push(format!("the component of tool `{tool}` changed"))
            }
            _ => {}
        }
    }
    for tool in b.keys().filter(|t| !a.contains_key(*t)) {
        changes.push(format!("tool `{tool}` was added"));
    }
    changes
}
