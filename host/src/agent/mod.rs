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
use crate::config::{AgentConfig, AgentKind, Step, StepAction};
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
}

enum End {
    Finished(Value),
    Failed(String),
    Attention(Attention),
}

/// A run in progress in this process.
struct Run<'a> {
    b: &'a Backstop,
    journal: &'a dyn Journal,
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
    progress: &'a mut (dyn FnMut(Progress) + Send),
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

    fn attention(&mut self, att: Attention) -> Result<Flow<Outcome>, RunError> {
        let last = self.lookup(att.step, EntryKind::Attention)?;
        // Asking again after a resume that changed nothing adds no entry.
        let same = last.as_ref().is_some_and(|e| {
            e.seq
                >= self
                    .lookup(att.step, EntryKind::ToolIntent)
                    .ok()
                    .flatten()
                    .map_or(0, |i| i.seq)
                && e.payload["reason"] == json!(att.reason)
        });
        if !same {
            self.append(
                EntryKind::Attention,
                att.step,
                serde_json::to_value(&att).expect("serializes"),
            )?;
        }
        Ok(Flow::Stop(att))
    }

    /// Runs a tool chain as step `step`, or takes its result from the
    /// journal. `retry_failed` re-runs a journaled failure (a pipeline
    /// resumed at the step where it stopped).
    async fn tool_step(
        &mut self,
        step: u64,
        chain: &str,
        input: &Value,
        retry_failed: bool,
    ) -> Result<Flow<Outcome>, RunError> {
        if let Some(r) = self.lookup(step, EntryKind::ToolResult)? {
            let outcome: Outcome =
                serde_json::from_value(r.payload["outcome"].clone()).map_err(|e| {
                    RunError::Store(StoreError::Damaged {
                        run: self.id.clone(),
                        seq: r.seq,
                        message: format!("tool result is not an outcome: {e}"),
                    })
                })?;
            let intent_after = self
                .lookup(step, EntryKind::ToolIntent)?
                .is_some_and(|i| i.seq > r.seq);
            if !intent_after && (outcome.ok || !retry_failed) {
                let line = format!(
                    "{chain}: done earlier ({}), not repeated",
                    summary(&outcome)
                );
                self.say(step, line);
                return Ok(Flow::Go(outcome));
            }
        }
        let key = self.key(step);
        let pending = self
            .lookup(step, EntryKind::ToolIntent)?
            .filter(|i| self.recorded_result_seq(step) < i.seq);
        if let Some(intent) = pending {
            // A previous process committed the intent and then stopped:
            // the tool may or may not have run.
            let effect = self.chain_effect(chain);
            if !effect.repeatable() {
                match self.reconcile(chain, &key).await {
                    Some((target, Reconciled::Done(out))) => {
                        let outcome = Outcome {
                            ok: true,
                            chain: chain.to_owned(),
                            key: key.clone(),
                            value: Some(out.value),
                            confidence: out.confidence,
                            served_by: Some(target.clone()),
                            degraded: false,
                            degraded_reason: None,
                            attempts: vec![Attempt {
                                target,
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
                        self.append(EntryKind::ToolResult, step, json!({"chain": chain, "key": key, "outcome": outcome, "reconciled": true}))?;
                        self.say(
                            step,
                            format!("{chain}: reconciled: it had already happened, not repeated"),
                        );
                        return Ok(Flow::Go(outcome));
                    }
                    Some((_, Reconciled::NotDone)) if effect == Effect::SideEffect => {
                        self.say(
                            step,
                            format!("{chain}: reconciled: it had not happened, running it now"),
                        );
                    }
                    answer => {
                        let why = match answer {
                            Some((_, Reconciled::NotDone)) => "irreversible tools are never re-run on resume".to_owned(),
                            _ => "the tool cannot say whether it ran (no `reconcile`, or it answered unknown)".to_owned(),
                        };
                        let att = Attention {
                            step,
                            reason: EscalationReason::AmbiguousState,
                            chain: chain.to_owned(),
                            input: intent.payload["input"].clone(),
                            key: key.clone(),
                            message: format!(
                                "the run stopped while `{chain}` ({effect}) was running; {why}"
                            ),
                            attempts: Vec::new(),
                        };
                        self.say(
                            step,
                            format!("{chain}: NEEDS ATTENTION: ambiguous state ({why})"),
                        );
                        return self.attention(att);
                    }
                }
            } else {
                self.say(step, format!("{chain}: interrupted earlier; {effect}, so running it again with the same key"));
            }
        } else {
            self.append(EntryKind::ToolIntent, step, json!({"chain": chain, "input": input, "key": key, "effect": self.chain_effect(chain)}))?;
        }
        let outcome = self
            .b
            .call_with_key(chain, input.clone(), key.clone())
            .await
            .map_err(|e| RunError::Invalid {
                run: self.id.clone(),
                message: e.to_string(),
            })?;
        let escalate = outcome.error.as_ref().and_then(|e| e.escalate);
        if escalate == Some(EscalationReason::AmbiguousState) {
            // The tool stopped half way: its effect is unknown, so no result
            // is recorded and resume will ask `reconcile`.
            let att = Attention {
                step,
                reason: EscalationReason::AmbiguousState,
                chain: chain.to_owned(),
                input: input.clone(),
                key,
                message: outcome
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
                attempts: outcome.attempts.clone(),
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
        Ok(Flow::Go(outcome))
    }

    fn recorded_result_seq(&self, step: u64) -> u64 {
        self.lookup(step, EntryKind::ToolResult)
            .ok()
            .flatten()
            .map_or(0, |r| r.seq)
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
        retry_failed: bool,
    ) -> Result<Outcome, RunError> {
        if let Some(r) = self.lookup(step, EntryKind::ModelCall)? {
            let outcome: Outcome =
                serde_json::from_value(r.payload["outcome"].clone()).map_err(|e| {
                    RunError::Store(StoreError::Damaged {
                        run: self.id.clone(),
                        seq: r.seq,
                        message: format!("model call is not an outcome: {e}"),
                    })
                })?;
            if outcome.ok || !retry_failed {
                self.say(
                    step,
                    format!(
                        "{chain}: done earlier ({}), not repeated",
                        summary(&outcome)
                    ),
                );
                return Ok(outcome);
            }
        }
        let input = serde_json::to_value(request).expect("a request serializes");
        let outcome = self
            .b
            .call_with_key(chain, input, self.key(step))
            .await
            .map_err(|e| RunError::Invalid {
                run: self.id.clone(),
                message: e.to_string(),
            })?;
        self.append(
            EntryKind::ModelCall,
            step,
            json!({"chain": chain, "outcome": outcome}),
        )?;
        self.say(step, format!("{chain}: {}", summary(&outcome)));
        Ok(outcome)
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
            key: o.key.clone(),
            message: e
                .map(|e| format!("{}: {}", e.class, e.message))
                .unwrap_or_default(),
            attempts: o.attempts.clone(),
        }
    }

    async fn pipeline(&mut self, steps: &[Step], start: usize) -> Result<End, RunError> {
        let mut last = Value::Null;
        for (i, st) in steps.iter().enumerate() {
            let step = i as u64 + 1;
            if i < start {
                continue; // done before the snapshot
            }
            // The step where a previous process stopped is retried if it failed.
            let retry_failed = true;
            let (chain, out) = match &st.action {
                StepAction::Tool { chain, input } => {
                    let input = self.render(input)?;
                    let outcome = match self.tool_step(step, chain, &input, retry_failed).await? {
                        Flow::Go(o) => o,
                        Flow::Stop(att) => return Ok(End::Attention(att)),
                    };
                    if !outcome.ok {
                        let att = self.failed_attention(step, chain, input, &outcome);
                        if let Flow::Stop(att) = self.attention(att)? {
                            return Ok(End::Attention(att));
                        }
                    }
                    (chain, outcome.value.unwrap_or(Value::Null))
                }
                StepAction::Model {
                    chain,
                    prompt,
                    system,
                } => {
                    let mut request = ChatRequest::prompt(self.render_text(prompt)?);
                    request.system = system.as_ref().map(|s| self.render_text(s)).transpose()?;
                    let outcome = self.model_step(step, chain, &request, retry_failed).await?;
                    if !outcome.ok {
                        let att = self.failed_attention(step, chain, json!(request), &outcome);
                        if let Flow::Stop(att) = self.attention(att)? {
                            return Ok(End::Attention(att));
                        }
                    }
                    (chain, outcome.value.unwrap_or(Value::Null))
                }
            };
            let _ = chain;
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
            let outcome = self.model_step(step, model, &request, true).await?;
            if !outcome.ok {
                let att = self.failed_attention(
                    step,
                    model,
                    json!({"messages": messages.len()}),
                    &outcome,
                );
                return Ok(match self.attention(att)? {
                    Flow::Stop(att) => End::Attention(att),
                    Flow::Go(_) => unreachable!(),
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
                let o = match self.tool_step(step, &name, &input, false).await? {
                    Flow::Go(o) => o,
                    Flow::Stop(att) => return Ok(End::Attention(att)),
                };
                if let Some(
                    reason @ (EscalationReason::NeedsHuman | EscalationReason::ApprovalRequired),
                ) = o.error.as_ref().and_then(|e| e.escalate)
                {
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
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<RunReport, RunError> {
        let agent = self.agent(agent)?;
        let journal = self.journal()?;
        let id = new_run_id();
        journal.create_run(&id, &agent.name, task)?;
        let _lock = RunLock::acquire(self.config(), &id, journal.as_ref())?;
        journal.set_owner(&id, Some(std::process::id()))?;
        let mut run = Run {
            b: self,
            journal: journal.as_ref(),
            id: id.clone(),
            agent: agent.clone(),
            task: task.to_owned(),
            recorded: HashMap::new(),
            outputs: HashMap::new(),
            last_seq: 0,
            snapshot_seq: 0,
            known_steps: 0,
            progress,
        };
        let started = json!({"agent": agent.name, "task": task, "fingerprint": self.fingerprint()});
        run.append(EntryKind::RunStarted, 0, started)?;
        (run.progress)(Progress::Started {
            run: id,
            agent: agent.name,
        });
        run.execute(0).await
    }

    /// Resumes run `id` from its journal, in this process. Refused while
    /// another process holds the run, and when the config or a component
    /// changed since the run started (unless allowed).
    pub async fn resume_run(
        &self,
        id: &str,
        options: &ResumeOptions,
        progress: &mut (dyn FnMut(Progress) + Send),
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
        let started =
            journal
                .find(id, 0, EntryKind::RunStarted)?
                .ok_or_else(|| RunError::Invalid {
                    run: id.to_owned(),
                    message: "its journal has no run-started entry".into(),
                })?;
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
            journal: journal.as_ref(),
            id: id.to_owned(),
            agent: agent.clone(),
            task: record.task.clone(),
            recorded,
            outputs: HashMap::new(),
            last_seq,
            snapshot_seq: loaded.snapshot.map_or(0, |s| s.seq),
            known_steps: loaded.run.step,
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
