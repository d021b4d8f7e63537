//! A tool-loop agent: a model decides which tools to call until it
//! answers, its conversation rebuilt from the journal on resume.

use super::memory::Run;
use super::{rejection, End, Flow, RunError};
use crate::models::{Block, ChatRequest, ChatResponse, Content, Message, Role, ToolDef};
use crate::outcome::EscalationReason;
use serde_json::{json, Value};

impl Run<'_> {
    pub(super) fn tool_defs(&self, tools: &[String]) -> Vec<ToolDef> {
        tools
            .iter()
            .map(|chain| {
                let first = self
                    .host
                    .config()
                    .chain(chain)
                    .and_then(|c| c.targets.first().cloned())
                    .unwrap_or_default();
                let d = self.host.tool_description(&first);
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

    pub(super) async fn tool_loop(
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
                return Ok(match self.attention(att).await? {
                    Flow::Stop(att) => End::Attention(att),
                    Flow::Go(_) | Flow::Abort(_) => unreachable!("attention always stops"),
                });
            }
            let response: ChatResponse =
                serde_json::from_value(outcome.value.clone().unwrap_or_default()).map_err(|e| {
                    RunError::BadAnswer {
                        run: self.id.clone(),
                        message: e.to_string(),
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
                    json!({"text": response.text, "served_by": outcome.served_by,
                        "degraded": outcome.degraded}),
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
                    if let Flow::Stop(att) = self.attention(att).await? {
                        return Ok(End::Attention(att));
                    }
                }
                let content = json!({
                    "ok": o.ok, "value": o.value, "served_by": o.served_by, "degraded": o.degraded,
                    "degraded_reason": o.degraded_reason,
                        "error": o.error.as_ref().map(|e| &e.message),
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
            self.snapshot(json!({"step": step})).await?;
        }
        Ok(End::Failed(format!(
            "no final answer after max_steps = {max_steps} model calls"
        )))
    }
}
