//! Taking a run over from its journal: refused when the config or a
//! component drifted, rebuilt from the snapshot and the entries after it.

use super::memory::Run;
use super::{Host, Progress, ResumeOptions, RunError, RunReport};
use crate::config::{AgentConfig, AgentKind};
use crate::journal::{EntryKind, RunRecord, RunStatus};
use crate::store::{Store, StoreError};
use serde_json::{json, Value};

/// What a run's journal says to do next.
pub(super) enum Reloaded<'a> {
    /// It had ended: nothing to do.
    Ended(RunReport),
    /// Killed after its row was made, before its first entry: nothing of
    /// it ran, so it starts now, under this config.
    NotStarted(Run<'a>),
    /// It goes on from this pipeline step (0 for a tool loop, which
    /// replays its conversation).
    At(Run<'a>, usize),
}

/// The agent named `name` in the host's config.
pub(super) fn agent(host: &dyn Host, name: &str) -> Result<AgentConfig, RunError> {
    let agents = &host.config().agents;
    agents
        .get(name)
        .cloned()
        .ok_or_else(|| RunError::UnknownAgent {
            name: name.to_owned(),
            hint: match agents.keys().cloned().collect::<Vec<_>>() {
                v if v.is_empty() => " (the config declares no agents)".into(),
                v => format!(" (known: {})", v.join(", ")),
            },
        })
}

/// What a run started under: the config's digest and every component's.
pub(super) fn fingerprint(host: &dyn Host) -> Value {
    let components: serde_json::Map<String, Value> = host
        .tool_digests()
        .into_iter()
        .map(|(tool, digest)| (tool, json!(digest)))
        .collect();
    json!({"config": host.config().digest, "components": components})
}

/// Reads run `record`'s journal and makes the run that continues it.
pub(super) async fn reload<'a>(
    host: &'a dyn Host,
    journal: &'a dyn Store,
    record: RunRecord,
    options: &ResumeOptions,
    progress: &'a mut (dyn FnMut(Progress) + Send + Sync),
) -> Result<Reloaded<'a>, RunError> {
    let id = record.id.as_str();
    let loaded = journal.load(id).await?;
    if matches!(loaded.run.status, RunStatus::Finished | RunStatus::Failed) {
        return Ok(Reloaded::Ended(RunReport {
            run: id.to_owned(),
            agent: record.agent,
            status: loaded.run.status,
            step: loaded.run.step,
            output: loaded.run.output,
            attention: None,
        }));
    }
    let gone = |record: &RunRecord| RunError::AgentGone {
        run: record.id.clone(),
        agent: record.agent.clone(),
    };
    let Some(started) = journal.find(id, 0, EntryKind::RunStarted).await? else {
        if !journal.entries(id).await?.is_empty() {
            return Err(RunError::Store(StoreError::Damaged {
                run: id.to_owned(),
                seq: 0,
                message: "its journal has entries but no run-started entry".into(),
            }));
        }
        let agent = agent(host, &record.agent).map_err(|_| gone(&record))?;
        journal.set_owner(id, Some(std::process::id())).await?;
        let name = agent.name.clone();
        let mut run = Run::new(host, journal, id, agent, &record.task, progress);
        // Its records may be what was lost: ask before effects.
        run.resumed = true;
        (run.progress)(Progress::Resumed {
            run: id.to_owned(),
            agent: name,
        });
        return Ok(Reloaded::NotStarted(run));
    };
    if !options.allow_drift {
        let changes = drift(&started.payload["fingerprint"], &fingerprint(host));
        if !changes.is_empty() {
            return Err(RunError::Drift {
                run: id.to_owned(),
                changes: changes.join(", "),
            });
        }
    }
    let agent = agent(host, &record.agent).map_err(|_| gone(&record))?;
    journal.set_owner(id, Some(std::process::id())).await?;
    journal
        .set_status(id, RunStatus::Running, loaded.run.step, None)
        .await?;
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
        AgentKind::Loop { .. } => (0, journal.entries(id).await?),
    };
    let name = agent.name.clone();
    let mut run = Run::new(host, journal, id, agent, &record.task, progress);
    run.last_seq = loaded.snapshot.as_ref().map_or(0, |s| s.seq);
    for e in entries {
        run.last_seq = run.last_seq.max(e.seq);
        run.recorded.insert((e.step, e.kind), e);
    }
    run.snapshot_seq = loaded.snapshot.map_or(0, |s| s.seq);
    run.known_steps = loaded.run.step;
    run.resumed = true;
    run.append(
        EntryKind::Resumed,
        loaded.run.step,
        json!({"pid": std::process::id(), "from_step": loaded.run.step}),
    )
    .await?;
    (run.progress)(Progress::Resumed {
        run: id.to_owned(),
        agent: name,
    });
    Ok(Reloaded::At(run, start))
}

/// What differs between the fingerprint a run started with and now.
pub(super) fn drift(then: &Value, now: &Value) -> Vec<String> {
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
