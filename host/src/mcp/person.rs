//! Calls that need a person, asked of the client when it can answer:
//! before the call runs (an irreversible tool, or one the TOML marks
//! `approval = true`), or after it stopped for one (`needs-human`: the tool
//! said so; `ambiguous-state`: a side effect stopped half way, or an
//! earlier request started the call and never finished it).
//!
//! The question is an escalation on the queue, and the client's answer its
//! resolution, recorded once (first wins) however often the client
//! retries. It is asked as an input-required result under 2026-07-28 (the
//! client calls again with the answer and the escalation's id as
//! `requestState`) and as elicitation under 2025-11-25. A client that
//! cannot answer gets an error result naming the escalation and how to
//! resolve it; once resolved, it calls again with `_meta.escalation`.
//!
//! What the person decided runs at most once: the call is journaled as a
//! one-step run (agent [`MCP_AGENT`]) whose intent is written before the
//! tool runs and whose result answers every later retry. A retry that
//! finds the intent without a result (the host stopped mid-call) asks the
//! tool's `reconcile`, runs a call that is safe to repeat again with the
//! same key, and otherwise asks a person about the ambiguous state.

use super::{result, McpServer};
use crate::agent::{reconcile_chain, Host};
use crate::escalation::{redact, Escalation, Resolution, ResolutionKind};
use crate::journal::{EntryKind, RunStatus, MCP_AGENT};
use crate::outcome::{Attempt, EscalationReason, Outcome};
use crate::runtime::Reconciled;
use crate::store::{QueueError, Store};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ElicitRequest,
    ElicitRequestParams, ElicitResult, ElicitationAction, InputRequest, InputRequests,
    InputRequiredResult, MetaObject, ProtocolVersion,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::ErrorData as McpError;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The key of the answer in an input-required round.
const ANSWER: &str = "approval";

/// Longest a 2025-11-25 client may take to answer an elicitation.
const ELICIT_WAIT: Duration = Duration::from_secs(600);

/// Questions one request may ask in a row (a person asking to retry a call
/// that stops for a person again): past it, the client gets the newest
/// escalation's id.
const MAX_ROUNDS: usize = 8;

/// Largest result a person may give through the client.
const MAX_SUPPLIED: usize = 256 << 10;

/// Whether an outcome stopped for a person, and why.
pub(super) fn stops_for_person(o: &Outcome) -> Option<EscalationReason> {
    match o.error.as_ref()?.escalate? {
        r @ (EscalationReason::NeedsHuman | EscalationReason::AmbiguousState) => Some(r),
        _ => None,
    }
}

/// The escalation a request names: the `requestState` of an input-required
/// round, or `_meta.escalation`.
pub(super) fn named(
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Option<String> {
    request.request_state.clone().or_else(|| {
        context
            .meta
            .get("escalation")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// What the person can answer: an escalation's allowed resolutions, less
/// `abort` (a one-step run has nothing more to stop than a refusal does).
fn actions(esc: &Escalation) -> Vec<ResolutionKind> {
    ResolutionKind::allowed(esc.reason)
        .into_iter()
        .filter(|k| *k != ResolutionKind::Abort)
        .collect()
}

/// A client's answer as a resolution; `None` when the person dismissed the
/// question (the escalation stays open).
fn answer_of(esc: &Escalation, value: &Value) -> Result<Option<Resolution>, String> {
    let r: ElicitResult = serde_json::from_value(value.clone())
        .map_err(|e| format!("the answer is not an elicitation result: {e}"))?;
    let content = r.content.unwrap_or_default();
    let comment = || {
        content
            .get("comment")
            .and_then(Value::as_str)
            .map(|c| crate::host::clean_actor(&super::clip(c, 1000)))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "refused through the MCP client".into())
    };
    match r.action {
        ElicitationAction::Accept => {}
        ElicitationAction::Decline => return Ok(Some(Resolution::Reject { comment: comment() })),
        _ => return Ok(None),
    }
    if esc.reason == EscalationReason::ApprovalRequired {
        return Ok(Some(match content.get("approve") {
            Some(Value::Bool(true)) => Resolution::Approve,
            _ => Resolution::Reject { comment: comment() },
        }));
    }
    let action = content.get("action").and_then(Value::as_str).unwrap_or("");
    let kind = actions(esc)
        .into_iter()
        .find(|k| k.as_str() == action)
        .ok_or_else(|| {
            format!(
                "`action` must be one of {} (got `{}`)",
                actions(esc)
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::term::visible(&super::clip(action, 64))
            )
        })?;
    Ok(Some(match kind {
        ResolutionKind::Approve => Resolution::Approve,
        ResolutionKind::Retry => Resolution::Retry,
        ResolutionKind::Reject | ResolutionKind::Abort => Resolution::Reject { comment: comment() },
        ResolutionKind::Result => {
            let text = content.get("result").and_then(Value::as_str).unwrap_or("");
            if text.len() > MAX_SUPPLIED {
                return Err(format!(
                    "`result` is {} bytes; at most {MAX_SUPPLIED}",
                    text.len()
                ));
            }
            // JSON when it reads as JSON; otherwise the text itself.
            let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()));
            Resolution::Result { value }
        }
    }))
}

fn what_to_say(esc: &Escalation) -> String {
    let input = super::clip(&esc.input.to_string(), 1000);
    let input = crate::term::visible(&input);
    let why = super::clip(&esc.message, 1000);
    let why = crate::term::visible(&why);
    match esc.reason {
        EscalationReason::ApprovalRequired => format!(
            "`{}` needs your approval before it runs (it cannot be undone). Input: {input}. \
             Escalation {}.",
            esc.chain, esc.id
        ),
        EscalationReason::AmbiguousState => format!(
            "`{}` stopped half way and whether it took effect is unknown: {why}. Input: \
             {input}. Run it again with the same key (approve), give its result (result), or \
             refuse (reject). Escalation {}.",
            esc.chain, esc.id
        ),
        _ => format!(
            "`{}` needs a person: {why}. Input: {input}. Give its result (result), run it \
             again (retry), or refuse (reject). Escalation {}.",
            esc.chain, esc.id
        ),
    }
}

fn question(esc: &Escalation) -> ElicitRequestParams {
    let schema = if esc.reason == EscalationReason::ApprovalRequired {
        json!({
            "type": "object",
            "properties": {
                "approve": {
                    "type": "boolean",
                    "title": "Approve",
                    "description": "Run it (true) or refuse (false)"
                }
            },
            "required": ["approve"]
        })
    } else {
        let kinds: Vec<&str> = actions(esc).iter().map(|k| k.as_str()).collect();
        json!({
            "type": "object",
            "properties": {
                "action": {
                    "type": "string",
                    "title": "What to do",
                    "enum": kinds
                },
                "result": {
                    "type": "string",
                    "title": "Result",
                    "description": "With action `result`: the call's result, as JSON"
                },
                "comment": {
                    "type": "string",
                    "title": "Comment",
                    "description": "With action `reject`: why"
                }
            },
            "required": ["action"]
        })
    };
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: what_to_say(esc),
        requested_schema: serde_json::from_value(schema).expect("a valid elicitation schema"),
    }
}

fn error_result(message: String, esc: Option<&Escalation>) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
    let mut m = serde_json::Map::new();
    let reason = esc.map_or(EscalationReason::NeedsHuman, |e| e.reason);
    m.insert(
        "error".into(),
        json!({"class": "needs-human", "message": message, "escalate": reason}),
    );
    if let Some(e) = esc {
        m.insert("escalation".into(), json!(e.id));
        m.insert("resolution".into(), json!(e.resolution));
        m.insert("resolved_by".into(), json!(e.resolved_by));
        if !e.attempts.is_empty() {
            m.insert("attempts".into(), json!(e.attempts));
        }
    }
    r.meta = Some(MetaObject(m));
    r
}

fn how_to_resolve(esc: &Escalation) -> String {
    let flags: Vec<&str> = actions(esc)
        .iter()
        .map(|k| match k {
            ResolutionKind::Approve => "--approve",
            ResolutionKind::Retry => "--retry",
            ResolutionKind::Result => "--result JSON",
            ResolutionKind::Reject | ResolutionKind::Abort => "--reject COMMENT",
        })
        .collect();
    let (first, rest) = flags.split_first().expect("every reason allows something");
    let need = if esc.reason == EscalationReason::ApprovalRequired {
        format!("`{}` needs a person's approval before it runs", esc.chain)
    } else {
        format!(
            "`{}` needs a person ({}: {})",
            esc.chain,
            esc.reason,
            crate::term::visible(&super::clip(&esc.message, 500))
        )
    };
    format!(
        "{need}: escalation {id} is open. Resolve it with `backstop escalations resolve {id} \
         {first}` (or {}), or POST /v1/escalations/{id}/resolve, then call again with \
         _meta.escalation = \"{id}\".",
        rest.join(", "),
        id = esc.id
    )
}

fn queue_error(e: QueueError) -> McpError {
    McpError::internal_error(format!("the escalation queue: {e}"), None)
}

fn store_error(e: impl std::fmt::Display) -> McpError {
    McpError::internal_error(format!("the state store: {e}"), None)
}

/// A new escalation's particulars.
struct Opening<'a> {
    reason: EscalationReason,
    chain: &'a str,
    input: &'a Value,
    /// The key the call runs under; `None` for a new one-step run's own.
    key: Option<&'a str>,
    message: String,
    attempts: Vec<Attempt>,
}

impl<'a> Opening<'a> {
    fn approval(chain: &'a str, input: &'a Value) -> Self {
        Opening {
            reason: EscalationReason::ApprovalRequired,
            chain,
            input,
            key: None,
            message: format!("`{chain}` needs a person's approval before it runs"),
            attempts: Vec::new(),
        }
    }

    fn stopped(o: &'a Outcome, reason: EscalationReason, input: &'a Value) -> Self {
        Opening {
            reason,
            chain: &o.chain,
            input,
            key: Some(&o.key),
            message: o
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.class, e.message))
                .unwrap_or_default(),
            attempts: o.attempts.to_vec(),
        }
    }
}

/// What running an approved (or retried) call came to.
enum Ran {
    Done(Box<Outcome>),
    /// An earlier request started it and did not finish: a person must say.
    Ambiguous(String),
    /// It is running in this process for another request.
    Busy(String),
}

impl McpServer {
    /// A call that asks a person first, or one naming its escalation.
    pub(super) async fn with_person(
        &self,
        chain: &str,
        input: Value,
        named: Option<String>,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let store = self.backstop.store().map_err(store_error)?;
        let esc = match named {
            Some(id) => match self.existing(&store, &id, chain, &input).await? {
                Ok(esc) => esc,
                Err(why) => return Ok(error_result(why, None).into()),
            },
            None => self.open(&store, Opening::approval(chain, &input)).await?,
        };
        self.decide(&store, esc, input, request, context).await
    }

    /// A call that stopped for a person (`needs-human`, `ambiguous-state`).
    pub(super) async fn stopped(
        &self,
        outcome: &Outcome,
        reason: EscalationReason,
        input: Value,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let store = self.backstop.store().map_err(store_error)?;
        let esc = self
            .open(&store, Opening::stopped(outcome, reason, &input))
            .await?;
        self.decide(&store, esc, input, request, context).await
    }

    /// Gets the person's answer unless the escalation has one, and does
    /// what it says.
    async fn decide(
        &self,
        store: &Arc<dyn Store>,
        mut esc: Escalation,
        input: Value,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        // The answers sent with this request are for the escalation it
        // names, not for one a retry opens.
        let mut responses = request
            .input_responses
            .as_ref()
            .filter(|_| request.request_state.as_deref() == Some(esc.id.as_str()))
            .and_then(|r| r.get(ANSWER).cloned());
        for _ in 0..MAX_ROUNDS {
            if esc.resolution.is_none() {
                let answer = match responses.take() {
                    Some(v) => answer_of(&esc, &v),
                    None => match self.ask(&esc, context).await? {
                        Asked::Answer(a) => a,
                        Asked::Later(response) => return Ok(response),
                    },
                };
                let resolution = match answer {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let why = format!(
                            "the question was dismissed; escalation {} stays open. {}",
                            esc.id,
                            how_to_resolve(&esc)
                        );
                        return Ok(error_result(why, Some(&esc)).into());
                    }
                    Err(bad) => {
                        let why =
                            format!("the answer was not usable: {bad}. {}", how_to_resolve(&esc));
                        return Ok(error_result(why, Some(&esc)).into());
                    }
                };
                let by = crate::host::clean_actor(&format!(
                    "mcp:{}",
                    context
                        .client_info()
                        .map_or_else(|| "client".to_owned(), |i| i.name)
                ));
                esc = store
                    .resolve(&esc.id, resolution, &by)
                    .await
                    .map_err(queue_error)?
                    .escalation;
            }
            let by = esc.resolved_by.clone().unwrap_or_default();
            match esc.resolution.clone().expect("resolved above") {
                Resolution::Approve | Resolution::Retry => {
                    match self.run_once(store, &esc, input.clone(), context).await? {
                        Ran::Done(outcome) => match stops_for_person(&outcome) {
                            Some(reason) => {
                                esc = self
                                    .open(store, Opening::stopped(&outcome, reason, &input))
                                    .await?;
                            }
                            None => {
                                return Ok(
                                    with_escalation(result::from_outcome(&outcome), &esc).into()
                                )
                            }
                        },
                        Ran::Ambiguous(why) => {
                            let opening = Opening {
                                reason: EscalationReason::AmbiguousState,
                                chain: &esc.chain,
                                input: &input,
                                key: Some(&esc.key),
                                message: why,
                                attempts: Vec::new(),
                            };
                            esc = self.open(store, opening).await?;
                        }
                        Ran::Busy(why) => return Ok(error_result(why, Some(&esc)).into()),
                    }
                }
                Resolution::Result { value } => {
                    let note = format!("supplied by {by}");
                    let o = Outcome::by_person(&esc.chain, &esc.key, true, Some(value), &by, note);
                    let o = self.record(store, &esc, o).await?;
                    return Ok(with_escalation(result::from_outcome(&o), &esc).into());
                }
                Resolution::Reject { .. } | Resolution::Abort => {
                    let _ = store
                        .set_status(&esc.run, RunStatus::Failed, esc.step, None)
                        .await;
                    let verb = if esc.reason == EscalationReason::ApprovalRequired {
                        "was not approved"
                    } else {
                        "was refused"
                    };
                    let why = format!(
                        "`{}` {verb}: escalation {} was resolved `{}` by {by}",
                        esc.chain,
                        esc.id,
                        esc.resolution
                            .as_ref()
                            .map_or("-".to_owned(), |r| r.to_string()),
                    );
                    return Ok(error_result(why, Some(&esc)).into());
                }
            }
        }
        let why = format!(
            "a person was asked {MAX_ROUNDS} times in one request. {}",
            how_to_resolve(&esc)
        );
        Ok(error_result(why, Some(&esc)).into())
    }

    /// The escalation a retry names, if it is this call's.
    async fn existing(
        &self,
        store: &Arc<dyn Store>,
        id: &str,
        chain: &str,
        input: &Value,
    ) -> Result<Result<Escalation, String>, McpError> {
        let esc = match store.escalation(id).await {
            Ok(esc) => esc,
            Err(QueueError::NoSuch(_)) => {
                return Ok(Err(format!(
                    "no escalation `{}` (the request state or _meta.escalation names none)",
                    crate::term::visible(&super::clip(id, 64))
                )))
            }
            Err(e) => return Err(queue_error(e)),
        };
        let ours = crate::journal::is_mcp_call(&esc.run)
            && esc.chain == chain
            && esc.input == redact(input);
        Ok(if ours {
            Ok(esc)
        } else {
            Err(format!(
                "escalation {} is for another call (`{}` with other input): call again without it \
                 to ask anew",
                esc.id, esc.chain
            ))
        })
    }

    /// A new one-step run and its escalation.
    async fn open(&self, store: &Arc<dyn Store>, o: Opening<'_>) -> Result<Escalation, McpError> {
        let run = format!("mcp-{:016x}", rand::random::<u64>());
        store
            .create_run(&run, MCP_AGENT, o.chain)
            .await
            .map_err(store_error)?;
        let esc = Escalation {
            id: format!("e{:010x}", rand::random::<u64>() & 0xff_ffff_ffff),
            run: run.clone(),
            step: 1,
            reason: o.reason,
            chain: o.chain.to_owned(),
            input: redact(o.input),
            key: o.key.map_or_else(|| format!("{run}:1"), str::to_owned),
            message: o.message,
            attempts: o.attempts,
            allowed: Vec::new(),
            created_at: 0,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
        };
        let (esc, _) = store.escalate(esc).await.map_err(queue_error)?;
        store
            .set_status(&run, RunStatus::NeedsAttention, 1, None)
            .await
            .map_err(store_error)?;
        self.backstop.notify(&esc);
        Ok(esc)
    }

    /// Asks the client, in the way its revision and capabilities allow.
    async fn ask(
        &self,
        esc: &Escalation,
        context: &RequestContext<RoleServer>,
    ) -> Result<Asked, McpError> {
        let can_elicit = context
            .client_capabilities()
            .is_some_and(|c| c.elicitation.is_some());
        if !can_elicit {
            return Ok(Asked::Later(
                error_result(how_to_resolve(esc), Some(esc)).into(),
            ));
        }
        let stateless = context
            .protocol_version()
            .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        if stateless {
            let mut requests = InputRequests::new();
            requests.insert(
                ANSWER.to_owned(),
                InputRequest::Elicitation(ElicitRequest::new(question(esc))),
            );
            let r = InputRequiredResult::new(Some(requests), Some(esc.id.clone()));
            return Ok(Asked::Later(CallToolResponse::InputRequired(r)));
        }
        let asked = context
            .peer
            .create_elicitation_with_timeout(question(esc), Some(ELICIT_WAIT))
            .await;
        match asked {
            Ok(r) => Ok(Asked::Answer(answer_of(
                esc,
                &serde_json::to_value(r).expect("a result serializes"),
            ))),
            Err(e) => {
                let why = format!("the client could not answer ({e}). {}", how_to_resolve(esc));
                Ok(Asked::Later(error_result(why, Some(esc)).into()))
            }
        }
    }

    /// The step's journaled result, if an earlier request recorded one.
    async fn recorded(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
    ) -> Result<Option<Outcome>, McpError> {
        let Some(entry) = store
            .find(&esc.run, esc.step, EntryKind::ToolResult)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        serde_json::from_value(entry.payload["outcome"].clone())
            .map(Some)
            .map_err(|e| store_error(format!("a journaled outcome does not read: {e}")))
    }

    /// Journals `o` as the step's result, unless an earlier request did
    /// (then that one stands), and ends the run.
    async fn record(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
        o: Outcome,
    ) -> Result<Outcome, McpError> {
        let _turn = self.running.lock().await;
        if let Some(earlier) = self.recorded(store, esc).await? {
            return Ok(earlier);
        }
        self.finish(store, esc, o).await
    }

    async fn finish(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
        o: Outcome,
    ) -> Result<Outcome, McpError> {
        store
            .append(
                &esc.run,
                EntryKind::ToolResult,
                esc.step,
                &json!({"outcome": o}),
            )
            .await
            .map_err(store_error)?;
        let status = if o.ok {
            RunStatus::Finished
        } else {
            RunStatus::Failed
        };
        let _ = store
            .set_status(&esc.run, status, esc.step, o.value.as_ref())
            .await;
        Ok(o)
    }

    /// Runs the decided call unless an earlier request did: the intent is
    /// journaled first, the outcome after, and a retry gets the outcome.
    async fn run_once(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
        input: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<Ran, McpError> {
        let turn = self.running.lock().await;
        if let Some(o) = self.recorded(store, esc).await? {
            return Ok(Ran::Done(Box::new(o)));
        }
        let started = store
            .find(&esc.run, esc.step, EntryKind::ToolIntent)
            .await
            .map_err(store_error)?;
        if started.is_some() {
            if let Some(busy) = self.busy(esc) {
                return Ok(busy);
            }
            drop(turn);
            return self.interrupted(store, esc, input, context).await;
        }
        store
            .append(
                &esc.run,
                EntryKind::ToolIntent,
                esc.step,
                &json!({"chain": esc.chain, "key": esc.key}),
            )
            .await
            .map_err(store_error)?;
        self.go(store, esc, input, turn, context).await
    }

    /// Runs the call whose intent is journaled and journals its outcome.
    /// The call is marked in flight (released under `turn`'s lock, which
    /// the caller holds) so a concurrent retry waits instead.
    async fn go(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
        input: Value,
        turn: tokio::sync::MutexGuard<'_, ()>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Ran, McpError> {
        let _flight = InFlight::new(&self.in_flight, &esc.run);
        drop(turn);
        // A cancelled call, or one that could not start, leaves the intent
        // without a result: the next retry reconciles.
        let outcome = self
            .call_reporting(&esc.chain, input, esc.key.as_str().into(), context)
            .await?;
        // Recorded even when it stopped for a person again: the answer
        // was consent to this one run, and a retry naming this escalation
        // is asked anew instead of running the call again.
        let o = self.finish(store, esc, outcome).await?;
        Ok(Ran::Done(Box::new(o)))
    }

    /// Whether `esc`'s call is running in this process for another request.
    fn busy(&self, esc: &Escalation) -> Option<Ran> {
        let running = self
            .in_flight
            .lock()
            .expect("not poisoned")
            .contains(&esc.run);
        running.then(|| {
            Ran::Busy(format!(
                "`{}` is running for an earlier request (run {}, escalation {}): call again \
                 when it has finished",
                esc.chain, esc.run, esc.id
            ))
        })
    }

    /// The intent is journaled and no result: a host stopped mid-call.
    /// What the tool says (`reconcile`) decides; a call safe to repeat is
    /// run again with the same key; otherwise a person must say.
    async fn interrupted(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
        input: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<Ran, McpError> {
        let host: &dyn Host = &*self.backstop;
        let effect = host.chain_effect(&esc.chain);
        let rerun = match reconcile_chain(host, &esc.chain, &esc.key).await {
            Some((target, Reconciled::Done(out))) => {
                let o =
                    Outcome::reconciled(&esc.chain, &esc.key, &target, out.value, out.confidence);
                return Ok(Ran::Done(Box::new(self.record(store, esc, o).await?)));
            }
            Some((_, Reconciled::NotDone)) => true,
            _ => effect.repeatable(),
        };
        if !rerun {
            return Ok(Ran::Ambiguous(format!(
                "an earlier request started `{}` ({effect}) and did not finish (the host \
                 stopped?); the tool cannot say whether it ran",
                esc.chain
            )));
        }
        let turn = self.running.lock().await;
        if let Some(busy) = self.busy(esc) {
            return Ok(busy);
        }
        if let Some(o) = self.recorded(store, esc).await? {
            return Ok(Ran::Done(Box::new(o)));
        }
        self.go(store, esc, input, turn, context).await
    }
}

/// A run whose call is running in this process, until dropped.
struct InFlight<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    run: String,
}

impl<'a> InFlight<'a> {
    fn new(set: &'a std::sync::Mutex<std::collections::HashSet<String>>, run: &str) -> Self {
        set.lock().expect("not poisoned").insert(run.to_owned());
        InFlight {
            set,
            run: run.to_owned(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.run);
        }
    }
}

enum Asked {
    Answer(Result<Option<Resolution>, String>),
    /// Answered later: an input-required result, or an error result that
    /// says how.
    Later(CallToolResponse),
}

fn with_escalation(mut r: CallToolResult, esc: &Escalation) -> CallToolResult {
    if let Some(m) = r.meta.as_mut() {
        m.0.insert("escalation".into(), json!(esc.id));
        m.0.insert("resolved_by".into(), json!(esc.resolved_by));
    }
    r
}
