//! One step's execution: replayed from the journal, run live, reconciled
//! after a crash, or done as a person decided.

use super::memory::Run;
use super::{summary, Attention, Flow, Host, RunError};
use crate::config::CircuitOpenPolicy;
use crate::escalation::Resolution;
use crate::journal::{Entry, EntryKind};
use crate::models::ChatRequest;
use crate::outcome::{Effect, EscalationReason, Outcome};
use crate::runtime::Reconciled;
use serde_json::{json, Value};

impl Run<'_> {
    pub(super) fn chain_effect(&self, chain: &str) -> Effect {
        self.host.chain_effect(chain)
    }

    pub(super) fn needs_approval(&self, chain: &str) -> bool {
        self.host.needs_approval(chain)
    }

    /// A step found done in the journal: its outcome, announced as such.
    pub(super) fn replayed(
        &mut self,
        step: u64,
        chain: &str,
        e: &Entry,
    ) -> Result<Outcome, RunError> {
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

    /// Runs a tool chain as step `step`, or takes its result from the
    /// journal. The newest journal entry of the step decides: a result is
    /// final; an attention waits for its resolution; a resolution is acted
    /// on; an intent without a result means the last process stopped
    /// while the tool may have been running.
    pub(super) async fn tool_step(
        &mut self,
        step: u64,
        chain: &str,
        input: &Value,
    ) -> Result<Flow<Outcome>, RunError> {
        let newest = self
            .newest(
                step,
                &[
                    EntryKind::ToolIntent,
                    EntryKind::ToolResult,
                    EntryKind::Attention,
                    EntryKind::Resolution,
                ],
            )
            .await?;
        // A resumed run with nothing journaled for a step that has side
        // effects: the record may be what was lost (a store cut back after
        // a crash), not the call. A tool that can tell is asked first, so a
        // lost record does not become a second effect.
        if newest.is_none() && self.resumed && !self.chain_effect(chain).repeatable() {
            let key = self.key(step);
            if let Some((target, Reconciled::Done(out))) = self.reconcile(chain, &key).await {
                let outcome = self
                    .record_reconciled(step, chain, &key, &target, out)
                    .await?;
                self.say(
                    step,
                    format!(
                        "{chain}: reconciled: it had already happened (its journal record is \
                        missing), not repeated"
                    ),
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
                match self
                    .pending_resolution(step, newest.as_ref().expect("matched"))
                    .await?
                {
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
                let flow = self.attention(att).await?;
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

    /// Commits the intent, runs the chain, commits the result.
    pub(super) async fn live(
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
        )
        .await?;
        let mut outcome = self.call(chain, input.clone(), key.clone()).await?;
        // With `on_circuit_open = "wait"`, a chain whose every breaker is
        // open waits for the first half-open probe instead of escalating.
        let mut waits = 0;
        while self.host.config().escalation.on_circuit_open == CircuitOpenPolicy::Wait
            && outcome.error.as_ref().and_then(|e| e.escalate)
                == Some(EscalationReason::CircuitOpen)
            && waits < 3
        {
            let wait = self
                .host
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
            return self.attention(att).await;
        }
        self.append(
            EntryKind::ToolResult,
            step,
            json!({"chain": chain, "key": key, "outcome": outcome}),
        )
        .await?;
        self.say(step, format!("{chain}: {}", summary(&outcome)));
        if let (Some(threshold), Some(c)) = (
            self.host.config().escalation.confidence_threshold,
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
                return self.attention(att).await;
            }
        }
        Ok(Flow::Go(outcome))
    }

    /// A previous process committed the intent and then stopped: the tool
    /// may or may not have run.
    pub(super) async fn interrupted(
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
        let approved = self.approved(step).await?;
        let why = match self.reconcile(chain, &key).await {
            Some((target, Reconciled::Done(out))) => {
                let outcome = self
                    .record_reconciled(step, chain, &key, &target, out)
                    .await?;
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
        self.attention(att).await
    }

    pub(super) async fn reconcile(&self, chain: &str, key: &str) -> Option<(String, Reconciled)> {
        reconcile_chain(self.host, chain, key).await
    }

    /// Journals what `reconcile` said a call already produced, as that
    /// step's result.
    pub(super) async fn record_reconciled(
        &mut self,
        step: u64,
        chain: &str,
        key: &str,
        target: &str,
        out: crate::target::TargetOutput,
    ) -> Result<Outcome, RunError> {
        let outcome = Outcome::reconciled(chain, key, target, out.value, out.confidence);
        self.append(
            EntryKind::ToolResult,
            step,
            json!({"chain": chain, "key": key, "outcome": outcome, "reconciled": true}),
        )
        .await?;
        Ok(outcome)
    }

    /// Does what a person decided for a tool step.
    pub(super) async fn act(
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
                let r = self
                    .lookup(step, EntryKind::ToolResult)
                    .await?
                    .ok_or_else(|| {
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
                let o = Outcome::by_person(
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
                )
                .await?;
                self.say(step, format!("{chain}: result supplied by {by}"));
                Ok(Flow::Go(o))
            }
            Resolution::Reject { comment } => {
                let o = Outcome::by_person(
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
                )
                .await?;
                self.say(step, format!("{chain}: rejected by {by}: {comment}"));
                Ok(Flow::Go(o))
            }
        }
    }

    /// Asks a model chain as step `step`, or takes the answer from the
    /// journal. Model calls are read-only: a call in flight at a crash is
    /// simply made again.
    pub(super) async fn model_step(
        &mut self,
        step: u64,
        chain: &str,
        request: &ChatRequest,
    ) -> Result<Flow<Outcome>, RunError> {
        let newest = self
            .newest(
                step,
                &[
                    EntryKind::ModelCall,
                    EntryKind::Attention,
                    EntryKind::Resolution,
                ],
            )
            .await?;
        match newest.as_ref().map(|e| e.kind) {
            Some(EntryKind::ModelCall) => {
                return Ok(Flow::Go(self.replayed(
                    step,
                    chain,
                    newest.as_ref().expect("matched"),
                )?));
            }
            Some(EntryKind::Attention) | Some(EntryKind::Resolution) => {
                match self
                    .pending_resolution(step, newest.as_ref().expect("matched"))
                    .await?
                {
                    Err(att) => return Ok(self.waiting(step, att)),
                    Ok((Resolution::Abort, by, _)) => {
                        return Ok(Flow::Abort(format!("aborted by {by} at step {step}")))
                    }
                    Ok((Resolution::Result { value }, by, _)) => {
                        let value = match value {
                            Value::String(text) => {
                                json!({"model": format!("person:{by}"),
                                    "content": [{"type": "text", "text": text}],
                                        "stop_reason": "end_turn", "usage": {"input_tokens": 0,
                                            "output_tokens": 0}, "text": text})
                            }
                            other => other,
                        };
                        let o = Outcome::by_person(
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
                        )
                        .await?;
                        self.say(step, format!("{chain}: answer supplied by {by}"));
                        return Ok(Flow::Go(o));
                    }
                    Ok((Resolution::Reject { comment }, by, _)) => {
                        let o = Outcome::by_person(
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
                        )
                        .await?;
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
        )
        .await?;
        self.say(step, format!("{chain}: {}", summary(&outcome)));
        Ok(Flow::Go(outcome))
    }

    pub(super) async fn call(
        &self,
        chain: &str,
        input: Value,
        key: String,
    ) -> Result<Outcome, RunError> {
        self.host
            .call(chain, input, key)
            .await
            .ok_or_else(|| RunError::UnknownChain {
                run: self.id.clone(),
                chain: chain.to_owned(),
            })
    }
}

/// Asks each target of `chain` that can reconcile whether the call with
/// `key` happened; the first definite answer wins. "Not done" only when
/// every target that could have run says so (a target that cannot
/// reconcile, and is not safe to repeat, leaves the answer unknown).
pub async fn reconcile_chain(
    host: &(impl Host + ?Sized),
    chain: &str,
    key: &str,
) -> Option<(String, Reconciled)> {
    let plan = host.config().chain(chain)?;
    let mut not_done: Option<String> = None;
    for t in &plan.targets {
        if !host.can_reconcile(t) {
            continue;
        }
        match host.reconcile(t, key).await {
            Ok(Reconciled::Done(out)) => return Some((t.clone(), Reconciled::Done(out))),
            Ok(Reconciled::NotDone) => not_done = Some(t.clone()),
            _ => return Some((t.clone(), Reconciled::Unknown)),
        }
    }
    let all_can = plan.targets.iter().all(|t| {
        host.tool_effect(t)
            .is_none_or(|effect| host.can_reconcile(t) || effect.repeatable())
    });
    match not_done {
        Some(t) if all_can => Some((t, Reconciled::NotDone)),
        _ => None,
    }
}
