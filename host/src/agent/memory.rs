//! A run's memory of its journal: what it wrote and what it found on
//! resume, looked up by step and kind, and the writes that keep both.

use super::Host;
use super::{Progress, RunError};
use crate::config::AgentConfig;
use crate::journal::{Entry, EntryKind, Snapshot, SNAPSHOT_EVERY};
use crate::outcome::Outcome;
use crate::store::{Store, StoreError};
use serde_json::Value;
use std::collections::HashMap;

/// A run in progress in this process.
pub(super) struct Run<'a> {
    pub(super) host: &'a dyn Host,
    pub(super) store: &'a dyn Store,
    pub(super) id: String,
    pub(super) agent: AgentConfig,
    pub(super) task: String,
    /// Entries known from the journal (on resume), by step and kind.
    pub(super) recorded: HashMap<(u64, EntryKind), Entry>,
    /// Outputs of steps, by pipeline step name (looked up lazily).
    pub(super) outputs: HashMap<String, Value>,
    pub(super) last_seq: u64,
    pub(super) snapshot_seq: u64,
    /// The highest step the journal held when this process took the run:
    /// later steps can only have entries this process wrote itself.
    pub(super) known_steps: u64,
    /// Taken over from the journal (not started by this process): a step
    /// with no record may still have run.
    pub(super) resumed: bool,
    pub(super) progress: &'a mut (dyn FnMut(Progress) + Send + Sync),
}

impl<'a> Run<'a> {
    /// A run that knows nothing of its journal yet.
    pub(super) fn new(
        host: &'a dyn Host,
        store: &'a dyn Store,
        id: &str,
        agent: AgentConfig,
        task: &str,
        progress: &'a mut (dyn FnMut(Progress) + Send + Sync),
    ) -> Self {
        Run {
            host,
            store,
            id: id.to_owned(),
            agent,
            task: task.to_owned(),
            recorded: HashMap::new(),
            outputs: HashMap::new(),
            last_seq: 0,
            snapshot_seq: 0,
            known_steps: 0,
            resumed: false,
            progress,
        }
    }
}

impl Run<'_> {
    pub(super) async fn append(
        &mut self,
        kind: EntryKind,
        step: u64,
        payload: Value,
    ) -> Result<(), RunError> {
        self.last_seq = self.store.append(&self.id, kind, step, &payload).await?;
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

    pub(super) async fn snapshot(&mut self, state: Value) -> Result<(), RunError> {
        if self.last_seq >= self.snapshot_seq + SNAPSHOT_EVERY {
            self.store
                .write_snapshot(
                    &self.id,
                    &Snapshot {
                        seq: self.last_seq,
                        state,
                    },
                )
                .await?;
            self.snapshot_seq = self.last_seq;
            crate::journal::kill::point("snapshot");
        }
        Ok(())
    }

    /// The newest entry of `kind` for `step`: from memory, else the journal.
    pub(super) async fn lookup(
        &self,
        step: u64,
        kind: EntryKind,
    ) -> Result<Option<Entry>, RunError> {
        if let Some(e) = self.recorded.get(&(step, kind)) {
            return Ok(Some(e.clone()));
        }
        if step > self.known_steps {
            return Ok(None);
        }
        Ok(self.store.find(&self.id, step, kind).await?)
    }

    /// The newest of the given kinds of entry for `step`.
    pub(super) async fn newest(
        &self,
        step: u64,
        kinds: &[EntryKind],
    ) -> Result<Option<Entry>, RunError> {
        let mut best: Option<Entry> = None;
        for k in kinds {
            if let Some(e) = self.lookup(step, *k).await? {
                if best.as_ref().is_none_or(|b| e.seq > b.seq) {
                    best = Some(e);
                }
            }
        }
        Ok(best)
    }

    pub(super) fn key(&self, step: u64) -> String {
        format!("{}:{step}", self.id)
    }

    pub(super) fn say(&mut self, step: u64, line: String) {
        (self.progress)(Progress::Step { step, line });
    }

    pub(super) fn damaged(&self, seq: u64, what: &str, e: impl std::fmt::Display) -> RunError {
        RunError::Store(StoreError::Damaged {
            run: self.id.clone(),
            seq,
            message: format!("{what}: {e}"),
        })
    }

    pub(super) fn outcome_of(&self, e: &Entry) -> Result<Outcome, RunError> {
        serde_json::from_value(e.payload["outcome"].clone())
            .map_err(|err| self.damaged(e.seq, "not an outcome", err))
    }
}
