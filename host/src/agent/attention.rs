//! Steps that need a person: escalations opened for them, approvals, and
//! the resolutions people give.

use super::memory::Run;
use super::{Attention, Flow, RunError};
use crate::escalation::{Escalation, Resolution};
use crate::journal::{Entry, EntryKind};
use crate::outcome::{EscalationReason, Outcome};
use serde_json::{json, Value};

impl Run<'_> {
    /// Records that a step needs a person: an attention entry in the
    /// journal and an escalation in the queue (announced to the webhook).
    pub(super) async fn attention(
        &mut self,
        mut att: Attention,
    ) -> Result<Flow<Outcome>, RunError> {
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
        let (esc, new) = self
            .store
            .escalate(esc)
            .await
            .map_err(|source| RunError::Queue {
                run: self.id.clone(),
                source,
            })?;
        att.escalation = Some(esc.id.clone());
        self.append(
            EntryKind::Attention,
            att.step,
            serde_json::to_value(&att).expect("serializes"),
        )
        .await?;
        if new {
            self.host.notify(&esc);
        }
        Ok(Flow::Stop(att))
    }

    /// The resolution of an attention's escalation, once a person gave one.
    pub(super) async fn resolution_of(
        &self,
        att: &Attention,
    ) -> Result<Option<(Resolution, String)>, RunError> {
        let Some(id) = &att.escalation else {
            return Ok(None);
        };
        let esc = self
            .store
            .escalation(id)
            .await
            .map_err(|source| RunError::Queue {
                run: self.id.clone(),
                source,
            })?;
        Ok(esc
            .resolution
            .map(|r| (r, esc.resolved_by.unwrap_or_default())))
    }

    /// What a step does about its newest attention: wait, or act on the
    /// resolution (journaled once, so a crash after it acts again).
    pub(super) async fn pending_resolution(
        &mut self,
        step: u64,
        newest: &Entry,
    ) -> Result<Result<(Resolution, String, Attention), Attention>, RunError> {
        if newest.kind == EntryKind::Resolution {
            let r: Resolution = serde_json::from_value(newest.payload["resolution"].clone())
                .map_err(|e| self.damaged(newest.seq, "not a resolution", e))?;
            let att = self
                .lookup(step, EntryKind::Attention)
                .await?
                .ok_or_else(|| {
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
        match self.resolution_of(&att).await? {
            None => Ok(Err(att)),
            Some((r, by)) => {
                self.append(
                    EntryKind::Resolution,
                    step,
                    json!({"escalation": att.escalation, "resolution": r, "by": by}),
                )
                .await?;
                Ok(Ok((r, by, att)))
            }
        }
    }

    pub(super) fn waiting(&mut self, step: u64, att: Attention) -> Flow<Outcome> {
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

    /// Whether a person approved (or asked to retry) this step.
    pub(super) async fn approved(&self, step: u64) -> Result<bool, RunError> {
        Ok(self
            .lookup(step, EntryKind::Resolution)
            .await?
            .is_some_and(|r| {
                matches!(
                    serde_json::from_value(r.payload["resolution"].clone()),
                    Ok(Resolution::Approve | Resolution::Retry)
                )
            }))
    }

    pub(super) fn failed_attention(
        &self,
        step: u64,
        chain: &str,
        input: Value,
        o: &Outcome,
    ) -> Attention {
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
}
