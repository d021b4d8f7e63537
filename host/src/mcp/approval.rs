//! A call that needs a person's approval (an irreversible tool, or one the
//! TOML marks `approval = true`), asked of the client when it can answer:
//! an input-required result under 2026-07-28 (the client calls again with
//! the answer and the escalation's id as `requestState`), elicitation
//! under 2025-11-25. The question is an escalation on the queue, and the
//! client's answer its resolution, recorded once (first wins) however
//! often the client retries. A client that cannot answer gets an error
//! result naming the escalation and how to resolve it; once resolved, it
//! calls again with `_meta.escalation`.
//!
//! The call itself runs at most once: it is journaled as a one-step run
//! (agent `mcp`) whose intent is written before the tool runs and whose
//! result answers every later retry.

use super::{result, McpServer};
use crate::escalation::{redact, Escalation, Resolution};
use crate::journal::{EntryKind, RunStatus};
use crate::outcome::{Effect, EscalationReason, Outcome};
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

/// The agent name MCP calls are journaled under.
pub const MCP_AGENT: &str = "mcp";

enum Answer {
    Approve,
    Reject,
    /// The person dismissed the question: the escalation stays open.
    Dismissed,
}

fn answer_of(value: &Value) -> Option<Answer> {
    let r: ElicitResult = serde_json::from_value(value.clone()).ok()?;
    Some(match r.action {
        ElicitationAction::Accept => match r.content.as_ref().and_then(|c| c.get("approve")) {
            Some(Value::Bool(true)) => Answer::Approve,
            _ => Answer::Reject,
        },
        ElicitationAction::Decline => Answer::Reject,
        _ => Answer::Dismissed,
    })
}

fn question(esc: &Escalation) -> ElicitRequestParams {
    let schema = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "approve": {
                "type": "boolean",
                "title": "Approve",
                "description": "Run it (true) or refuse (false)"
            }
        },
        "required": ["approve"]
    }))
    .expect("a valid elicitation schema");
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: format!(
            "`{}` needs your approval before it runs (it cannot be undone). Input: {}. \
             Escalation {}.",
            esc.chain,
            crate::term::visible(&super::clip(&esc.input.to_string(), 1000)),
            esc.id
        ),
        requested_schema: schema,
    }
}

fn error_result(message: String, esc: Option<&Escalation>) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
    let mut m = serde_json::Map::new();
    m.insert(
        "error".into(),
        json!({"class": "needs-human", "message": message, "escalate": "approval-required"}),
    );
    if let Some(e) = esc {
        m.insert("escalation".into(), json!(e.id));
        m.insert("resolution".into(), json!(e.resolution));
        m.insert("resolved_by".into(), json!(e.resolved_by));
    }
    r.meta = Some(MetaObject(m));
    r
}

fn how_to_resolve(esc: &Escalation) -> String {
    format!(
        "`{chain}` needs a person's approval before it runs: escalation {id} is open. Resolve it \
         with `backstop escalations resolve {id} --approve` (or --reject), or POST \
         /v1/escalations/{id}/resolve, then call again with _meta.escalation = \"{id}\".",
        chain = esc.chain,
        id = esc.id
    )
}

fn queue_error(e: QueueError) -> McpError {
    McpError::internal_error(format!("the escalation queue: {e}"), None)
}

fn store_error(e: impl std::fmt::Display) -> McpError {
    McpError::internal_error(format!("the state store: {e}"), None)
}

impl McpServer {
    /// Whether any target of `chain` needs a person's approval.
    pub(super) fn needs_approval(&self, chain: &str) -> bool {
        let config = self.backstop.config();
        config.chain(chain).is_some_and(|c| {
            c.targets.iter().any(|t| {
                let effect = self.backstop.tool_effect(t);
                let approval = config.tools.get(t).and_then(|c| c.approval);
                approval.unwrap_or(effect == Some(Effect::Irreversible))
            })
        })
    }

    pub(super) async fn approved_call(
        &self,
        chain: &str,
        input: Value,
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let store = self.backstop.store().map_err(store_error)?;
        let named = request.request_state.clone().or_else(|| {
            context
                .meta
                .get("escalation")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let esc = match named {
            Some(id) => match self.existing(&store, &id, chain, &input).await? {
                Ok(esc) => esc,
                Err(why) => return Ok(error_result(why, None).into()),
            },
            None => self.open(&store, chain, &input).await?,
        };
        let esc = if esc.resolution.is_some() {
            esc
        } else {
            let answer = match request.input_responses.as_ref().and_then(|r| r.get(ANSWER)) {
                Some(v) => answer_of(v),
                None => match self.ask(&esc, context).await? {
                    Asked::Answer(a) => a,
                    Asked::Later(response) => return Ok(response),
                },
            };
            let resolution = match answer {
                Some(Answer::Approve) => Resolution::Approve,
                Some(Answer::Reject) => Resolution::Reject {
                    comment: "refused through the MCP client".into(),
                },
                Some(Answer::Dismissed) | None => {
                    let why = format!(
                        "the question was dismissed; escalation {} stays open. {}",
                        esc.id,
                        how_to_resolve(&esc)
                    );
                    return Ok(error_result(why, Some(&esc)).into());
                }
            };
            let by = crate::host::clean_actor(&format!(
                "mcp:{}",
                context
                    .client_info()
                    .map_or_else(|| "client".to_owned(), |i| i.name)
            ));
            store
                .resolve(&esc.id, resolution, &by)
                .await
                .map_err(queue_error)?
                .escalation
        };
        match esc.resolution {
            Some(Resolution::Approve) => self.run_once(&store, &esc, input, context).await,
            _ => {
                let _ = store
                    .set_status(&esc.run, RunStatus::Failed, esc.step, None)
                    .await;
                let why = format!(
                    "`{}` was not approved: escalation {} was resolved `{}` by {}",
                    esc.chain,
                    esc.id,
                    esc.resolution
                        .as_ref()
                        .map_or("-".to_owned(), |r| r.to_string()),
                    esc.resolved_by.as_deref().unwrap_or("-")
                );
                Ok(error_result(why, Some(&esc)).into())
            }
        }
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
        let ours = esc.run.starts_with("mcp-")
            && esc.chain == chain
            && esc.input == redact(input)
            && esc.reason == EscalationReason::ApprovalRequired;
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

    /// A new one-step run and its approval escalation.
    async fn open(
        &self,
        store: &Arc<dyn Store>,
        chain: &str,
        input: &Value,
    ) -> Result<Escalation, McpError> {
        let run = format!("mcp-{:016x}", rand::random::<u64>());
        store
            .create_run(&run, MCP_AGENT, chain)
            .await
            .map_err(store_error)?;
        let esc = Escalation {
            id: format!("e{:010x}", rand::random::<u64>() & 0xff_ffff_ffff),
            run: run.clone(),
            step: 1,
            reason: EscalationReason::ApprovalRequired,
            chain: chain.to_owned(),
            input: redact(input),
            key: format!("{run}:1"),
            message: format!("`{chain}` needs a person's approval before it runs"),
            attempts: Vec::new(),
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
                &serde_json::to_value(r).expect("a result serializes"),
            ))),
            Err(e) => {
                let why = format!("the client could not answer ({e}). {}", how_to_resolve(esc));
                Ok(Asked::Later(error_result(why, Some(esc)).into()))
            }
        }
    }

    /// Runs the approved call unless an earlier request did: the intent is
    /// journaled first, the outcome after, and a retry gets the outcome.
    async fn run_once(
        &self,
        store: &Arc<dyn Store>,
        esc: &Escalation,
        input: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let turn = self.running.lock().await;
        let done = store
            .find(&esc.run, esc.step, EntryKind::ToolResult)
            .await
            .map_err(store_error)?;
        if let Some(entry) = done {
            let outcome: Outcome = serde_json::from_value(entry.payload["outcome"].clone())
                .map_err(|e| store_error(format!("a journaled outcome does not read: {e}")))?;
            return Ok(with_escalation(result::from_outcome(&outcome), esc).into());
        }
        let started = store
            .find(&esc.run, esc.step, EntryKind::ToolIntent)
            .await
            .map_err(store_error)?;
        if started.is_some() {
            let why = format!(
                "`{}` was started by an earlier request that is still running or did not \
                 finish; whether it ran is unknown (run {}, escalation {}): check before calling \
                 it anew",
                esc.chain, esc.run, esc.id
            );
            return Ok(error_result(why, Some(esc)).into());
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
        drop(turn);
        let outcome = self
            .call_reporting(&esc.chain, input, esc.key.as_str().into(), context)
            .await?;
        store
            .append(
                &esc.run,
                EntryKind::ToolResult,
                esc.step,
                &json!({"outcome": outcome}),
            )
            .await
            .map_err(store_error)?;
        let status = if outcome.ok {
            RunStatus::Finished
        } else {
            RunStatus::Failed
        };
        let _ = store
            .set_status(&esc.run, status, esc.step, outcome.value.as_ref())
            .await;
        Ok(with_escalation(result::from_outcome(&outcome), esc).into())
    }
}

enum Asked {
    Answer(Option<Answer>),
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
