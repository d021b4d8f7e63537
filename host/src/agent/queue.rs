//! The durable run queue's two ends: [`enqueue`] (a run to start, or to go
//! on after a person decided, for any host's worker) and [`work`] (this
//! host's workers: claim due runs, drive each as `resume` does, take it out
//! of the queue once it stops).
//!
//! The queue is rows of the store, so it survives any process: a run
//! queued on a host that then died is claimed by another once its lease
//! ends (SQLite: by the next `serve` on the machine). A worker that stops
//! with an error another attempt may cure (the store unreachable, the run
//! held elsewhere) leaves the run queued; it is claimed again later, each
//! time later still (1 s, doubling, at most a minute) while it makes no
//! progress: a journal write starts the count again, so only a run that
//! keeps failing (or keeps killing its host) before any progress waits
//! long. One that no attempt
//! can cure (the agent gone, the config drifted, damage) takes it out and
//! says why in the log: a person resumes it by hand.

use super::{new_run_id, resume, Host, ResumeOptions, RunError};
use crate::journal::{Claimed, RunStatus};
use crate::store::StoreError;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Queues a new run of `agent` on `task`; returns its id at once.
pub async fn enqueue(host: &dyn Host, agent: &str, task: &str) -> Result<String, RunError> {
    let agent = resume::agent(host, agent)?;
    let journal = host.journal()?;
    let id = new_run_id();
    journal.create_queued_run(&id, &agent.name, task).await?;
    Ok(id)
}

/// Queues run `id` to go on (after a person resolved its escalation).
pub async fn requeue(host: &dyn Host, id: &str) -> Result<(), RunError> {
    let journal = host.journal()?;
    if crate::journal::is_mcp_call(id) {
        return Err(RunError::McpCall {
            run: id.to_owned(),
            escalation: None,
        });
    }
    journal.run(id).await?;
    journal.enqueue(id).await?;
    Ok(())
}

/// How a host's workers go.
#[derive(Clone, Copy, Debug)]
pub struct Workers {
    /// Runs this host drives at once; 0 drives none.
    pub concurrency: usize,
    /// How often to look for queued runs when nothing woke the workers.
    pub poll: Duration,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            concurrency: 4,
            poll: Duration::from_millis(250),
        }
    }
}

/// Whether another attempt cannot change how `e` ends: the run's own
/// records or the config say no. Anything about reaching the store, or
/// who holds the run, may change by the next attempt.
fn permanent(e: &RunError) -> bool {
    use crate::store::QueueError;
    let store = |s: &StoreError| matches!(s, StoreError::Damaged { .. } | StoreError::NoSuchRun(_));
    match e {
        RunError::Store(s) => store(s),
        RunError::Queue { source, .. } => match source {
            QueueError::Store(s) => store(s),
            QueueError::NoSuch(_) | QueueError::NotAllowed { .. } => true,
        },
        RunError::Busy { .. } | RunError::Lock { .. } => false,
        RunError::UnknownAgent { .. }
        | RunError::McpCall { .. }
        | RunError::Drift { .. }
        | RunError::AgentGone { .. }
        | RunError::Template { .. }
        | RunError::BadAnswer { .. }
        | RunError::UnknownChain { .. } => true,
    }
}

/// Drives queued runs, `workers.concurrency` at once, until `stop`
/// resolves; `wake` is notified when this host queued one. Runs already
/// being driven go on to their end.
pub async fn work<H: Host + 'static>(
    host: Arc<H>,
    workers: Workers,
    wake: Arc<Notify>,
    stop: impl std::future::Future<Output = ()>,
) {
    if workers.concurrency == 0 {
        return;
    }
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done = Arc::new(Notify::new());
    tokio::pin!(stop);
    let mut failures = 0u32;
    loop {
        let busy = active.lock().unwrap_or_else(|p| p.into_inner()).len();
        let free = workers.concurrency.saturating_sub(busy);
        if free > 0 {
            let claimed = match host.journal() {
                Ok(j) => j.claim(free as u32).await,
                Err(e) => Err(e),
            };
            match claimed {
                Ok(runs) => {
                    failures = 0;
                    for c in runs {
                        let fresh = active
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(c.run.clone());
                        if fresh {
                            let (host, active, done) = (host.clone(), active.clone(), done.clone());
                            tokio::spawn(async move {
                                drive(host.as_ref(), &c).await;
                                active
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .remove(&c.run);
                                done.notify_one();
                            });
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "run queue: cannot claim runs");
                    }
                }
            }
        }
        // Failing to reach the store: look again less and less often.
        let wait = workers.poll * 2u32.pow(failures.min(5));
        tokio::select! {
            _ = &mut stop => return,
            _ = wake.notified() => {}
            _ = done.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Drives one claimed run until it stops, then takes it out of the queue
/// unless it must be tried again.
async fn drive(host: &dyn Host, claimed: &Claimed) {
    let run = &claimed.run;
    let r = super::resume(host, run, &ResumeOptions::default(), &mut |_| {}).await;
    let Ok(journal) = host.journal() else {
        return;
    };
    let out = match &r {
        Ok(report) if report.status == RunStatus::Running => false,
        Ok(report) => {
            tracing::info!(run, status = %report.status, step = report.step, "queued run stopped");
            true
        }
        Err(e) if permanent(e) => {
            tracing::warn!(run, error = %e, "queued run cannot go on: left to a person");
            true
        }
        Err(e) => {
            tracing::info!(run, error = %e, "queued run will be tried again");
            false
        }
    };
    if out {
        if let Err(e) = journal.dequeue(claimed).await {
            tracing::warn!(run, error = %e, "queued run: cannot take it out of the queue");
        }
    }
    // A claim's lease the run never took up (it stopped before).
    journal.drop_lease(run);
}
