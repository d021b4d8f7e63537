//! What `backstop status` shows: breakers, the escalation queue and recent
//! runs, read from the state store, so any process on the machine (or an
//! operator's shell) sees the same picture.

use crate::config::Config;
use crate::escalation::Stats;
use crate::guard::shared::remote;
use crate::guard::{BreakerState, Forced, Remote};
use crate::journal::RunRecord;
use crate::store::{now_ms, BreakerRow, QueueError, Store, StoreError};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub breakers: Vec<BreakerStatus>,
    pub escalations: Stats,
    /// Newest first.
    pub runs: Vec<RunRecord>,
}

/// Every target of `config` with its breaker as the stored `rows` have it
/// (closed when no process has opened it yet).
pub fn stored_breakers(config: &Config, rows: Vec<BreakerRow>) -> Vec<BreakerStatus> {
    let rows: std::collections::HashMap<String, _> =
        rows.into_iter().map(|r| (r.target.clone(), r)).collect();
    let now = now_ms();
    config
        .breaker_targets()
        .into_iter()
        .map(|t| {
            let row = rows.get(t);
            let (state, retry_in_ms, forced) = match row.map(|r| remote(r, now)) {
                Some(Remote::Open { remaining }) if !remaining.is_zero() => {
                    (BreakerState::Open, remaining.as_millis() as u64, None)
                }
                Some(Remote::Open { .. }) => (BreakerState::HalfOpen, 0, None),
                Some(Remote::Forced(Forced::Open)) => (BreakerState::Open, 0, Some(Forced::Open)),
                Some(Remote::Forced(Forced::Closed)) => {
                    (BreakerState::Closed, 0, Some(Forced::Closed))
                }
                _ => (BreakerState::Closed, 0, None),
            };
            BreakerStatus {
                target: t.to_owned(),
                state,
                forced,
                retry_in_ms,
                opened: row.map_or(0, |r| r.opened),
                changed_at: row.map(|r| r.updated_at),
                set_by: row.map(|r| r.set_by.clone()).filter(|b| !b.is_empty()),
            }
        })
        .collect()
}

impl Status {
    /// Reads the status from `config`'s store without loading any tool.
    ///
    /// Only reads: works on a read-only or full store, and while another
    /// process writes to it. No store yet is an empty status.
    pub async fn read(config: &Config, recent_runs: u32) -> Result<Status, StoreError> {
        let store = match crate::store::open_read_only(&config.store) {
            Err(StoreError::Missing(_)) => {
                return Ok(Status {
                    breakers: stored_breakers(config, Vec::new()),
                    escalations: Default::default(),
                    runs: Vec::new(),
                })
            }
            j => j?,
        };
        let breakers = stored_breakers(config, store.breakers()?.all()?);
        Self::with_breakers(store.as_ref(), breakers, recent_runs).await
    }

    pub async fn with_breakers(
        store: &dyn Store,
        breakers: Vec<BreakerStatus>,
        recent_runs: u32,
    ) -> Result<Status, StoreError> {
        let escalations = store.escalation_stats().await.map_err(|e| match e {
            QueueError::Store(s) => s,
            other => StoreError::Open {
                path: store.location(),
                message: other.to_string(),
            },
        })?;
        Ok(Status {
            breakers,
            escalations,
            runs: store.recent_runs(recent_runs).await?,
        })
    }
}

/// A breaker as `backstop status` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BreakerStatus {
    pub target: String,
    pub state: BreakerState,
    /// Held there by an operator until a reset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<Forced>,
    /// Until it admits a call (0 when it would now).
    pub retry_in_ms: u64,
    /// Times opened, by every process sharing the store.
    pub opened: u64,
    /// When it last opened or closed (Unix ms), if ever.
    pub changed_at: Option<i64>,
    /// Who last set it by hand, when that was the last change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_by: Option<String>,
}

impl BreakerStatus {
    /// `open`, `half-open`, `closed`, or `forced-open` / `forced-closed`.
    pub fn state_text(&self) -> &'static str {
        match self.forced {
            Some(Forced::Open) => "forced-open",
            Some(Forced::Closed) => "forced-closed",
            None => self.state.as_str(),
        }
    }
}
