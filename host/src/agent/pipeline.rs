//! A pipeline agent: named steps in order, each input rendered from the
//! task and earlier steps' outputs.

use super::memory::Run;
use super::{rejection, End, Flow, RunError};
use crate::config::agents::{refs, render, render_str, value_refs, Ref};
use crate::config::{AgentKind, Step, StepAction};
use crate::journal::EntryKind;
use crate::models::ChatRequest;
use serde_json::{json, Value};

impl Run<'_> {
    pub(super) async fn pipeline(&mut self, steps: &[Step], start: usize) -> Result<End, RunError> {
        // Resumed past some steps: the run's output so far is the last
        // completed step's (a resume after the last step finishes with it).
        let mut last = match start.checked_sub(1).and_then(|i| steps.get(i)) {
            Some(done) => self
                .lookup_ref(&Ref::Output {
                    step: done.name.clone(),
                    path: Vec::new(),
                })
                .await
                .map_err(|message| RunError::Template {
                    run: self.id.clone(),
                    message,
                })?,
            None => Value::Null,
        };
        for (i, st) in steps.iter().enumerate().skip(start) {
            let step = i as u64 + 1;
            let (chain, input, flow) = match &st.action {
                StepAction::Tool { chain, input } => {
                    let input = self.render(input).await?;
                    let flow = self.tool_step(step, chain, &input).await?;
                    (chain, input, flow)
                }
                StepAction::Model {
                    chain,
                    prompt,
                    system,
                } => {
                    let mut request = ChatRequest::prompt(self.render_text(prompt).await?);
                    request.system = match system {
                        Some(s) => Some(self.render_text(s).await?),
                        None => None,
                    };
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
                if let Flow::Stop(att) = self.attention(att).await? {
                    return Ok(End::Attention(att));
                }
            }
            let out = outcome.value.unwrap_or(Value::Null);
            self.outputs.insert(st.name.clone(), out.clone());
            last = out;
            self.snapshot(json!({"next": i + 1})).await?;
        }
        Ok(End::Finished(last))
    }

    pub(super) async fn lookup_ref(&mut self, r: &Ref) -> Result<Value, String> {
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
                    .await
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

    /// The values of `refs`, looked up first: rendering itself is
    /// synchronous, a lookup may have to read the journal.
    async fn resolve(&mut self, refs: Vec<Ref>) -> Vec<(Ref, Result<Value, String>)> {
        let mut found = Vec::with_capacity(refs.len());
        for r in refs {
            let value = self.lookup_ref(&r).await;
            found.push((r, value));
        }
        found
    }

    fn template_error(&self, message: String) -> RunError {
        RunError::Template {
            run: self.id.clone(),
            message,
        }
    }

    pub(super) async fn render(&mut self, template: &Value) -> Result<Value, RunError> {
        let refs = value_refs(template).map_err(|m| self.template_error(m))?;
        let found = self.resolve(refs).await;
        render(template, &mut |r| lookup(&found, r)).map_err(|m| self.template_error(m))
    }

    pub(super) async fn render_text(&mut self, template: &str) -> Result<String, RunError> {
        let refs = refs(template).map_err(|m| self.template_error(m))?;
        let found = self.resolve(refs).await;
        match render_str(template, &mut |r| lookup(&found, r))
            .map_err(|m| self.template_error(m))?
        {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }
}

fn lookup(found: &[(Ref, Result<Value, String>)], r: &Ref) -> Result<Value, String> {
    found.iter().find(|(k, _)| k == r).map_or_else(
        || Err("a reference was not looked up".to_owned()),
        |(_, v)| v.clone(),
    )
}
