//! Sharing breaker states between processes through the state store.
//!
//! A process writes when one of its breakers opens or closes, and reads a
//! target's row at most every [`SYNC_EVERY`], just before it would call the
//! target; a row written by another process since the last read is taken
//! on ([`Breaker::adopt`]). A breaker opened by a `backstop call` is thus
//! open for the server running beside it, and after a restart.

use super::breaker::{Breaker, Change, Forced, Remote, SharedBreaker};
use crate::store::{BreakerRow, BreakerStore, RowState};
use std::time::Duration;
use tokio::time::Instant;

/// How stale a process's view of another's breaker may be, unless the
/// config's `[engine] breaker_sync` says otherwise.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

pub struct BreakerSync {
    store: Box<dyn BreakerStore>,
    /// Tells this process's own rows from others'.
    writer: i64,
    every: Duration,
}

fn lock(b: &SharedBreaker) -> std::sync::MutexGuard<'_, Breaker> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_wall_ms() -> i64 {
    crate::store::now_ms()
}

impl BreakerSync {
    pub fn new(store: Box<dyn BreakerStore>, every: Duration) -> Self {
        BreakerSync {
            store,
            writer: rand::random::<i64>() & i64::MAX,
            every,
        }
    }

    pub fn store(&self) -> &dyn BreakerStore {
        self.store.as_ref()
    }

    /// Whether to read the shared state now; marks the next read.
    pub(crate) fn due(&self, b: &mut Breaker, now: Instant) -> bool {
        if b.next_sync.is_some_and(|next| now < next) {
            return false;
        }
        b.next_sync = Some(now + self.every);
        true
    }

    /// Reads `target`'s row and takes on a newer state written elsewhere.
    /// A store that cannot be read leaves the breaker as it is.
    pub(crate) fn pull(&self, target: &str, breaker: &SharedBreaker, now: Instant) {
        let row = match self.store.read(target) {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(
                    target_name = target,
                    "cannot read the shared breaker state: {e}"
                );
                return;
            }
        };
        let mut b = lock(breaker);
        if row.version <= b.seen_version {
            return;
        }
        b.seen_version = row.version;
        if row.writer != self.writer {
            b.adopt(remote(&row, now_wall_ms()), now);
        }
    }

    /// Whether this process may send a half-open probe to `target` now
    /// (see [`BreakerStore::claim_probe`]). A store that cannot be asked
    /// does not block the probe: a stuck breaker is worse than two probes.
    pub(crate) fn claim_probe(&self, target: &str, max: u32, timeout: Duration) -> bool {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2);
        self.store.claim_probe(target, max, ms).unwrap_or_else(|e| {
            tracing::warn!(target_name = target, "cannot claim the shared probe: {e}");
            true
        })
    }

    /// Counts a failed call of `target` for every process and says whether
    /// the count reached `trigger`. A store that cannot be asked counts
    /// nothing: the breaker then stands on this process's own counts.
    pub(crate) fn count_failure(&self, target: &str, trigger: u32, window: Duration) -> bool {
        let ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
        match self.store.count_failure(target, ms) {
            Ok(n) => n >= trigger,
            Err(e) => {
                tracing::warn!(
                    target_name = target,
                    "cannot count the failure for all: {e}"
                );
                false
            }
        }
    }

    /// Writes an operator's `action` for the other processes (this one's
    /// breaker already has it).
    pub(crate) fn set(
        &self,
        target: &str,
        breaker: &SharedBreaker,
        action: Action,
        by: &str,
    ) -> Result<(), crate::store::StoreError> {
        let version = self
            .store
            .set(target, action.row_state(), by, self.writer)?;
        let mut b = lock(breaker);
        b.seen_version = b.seen_version.max(version);
        Ok(())
    }

    /// Writes an open or a close for the other processes.
    pub(crate) fn push(&self, target: &str, breaker: &SharedBreaker, change: Change) {
        let open_until = match change {
            Change::Opened { until } => {
                let left = until.saturating_duration_since(Instant::now());
                Some(now_wall_ms() + i64::try_from(left.as_millis()).unwrap_or(i64::MAX / 2))
            }
            Change::Closed => None,
        };
        match self.store.write(target, open_until, self.writer) {
            Ok(version) => {
                let mut b = lock(breaker);
                b.seen_version = b.seen_version.max(version);
            }
            Err(e) => {
                tracing::warn!(target_name = target, "cannot share the breaker state: {e}")
            }
        }
    }
}

/// What a stored row means now.
pub fn remote(row: &BreakerRow, now_ms: i64) -> Remote {
    match row.state {
        RowState::Open => Remote::Open {
            remaining: Duration::from_millis(row.open_until.saturating_sub(now_ms).max(0) as u64),
        },
        RowState::ForcedOpen => Remote::Forced(Forced::Open),
        RowState::ForcedClosed => Remote::Forced(Forced::Closed),
        // A close by hand is a reset: counts cleared, whatever was forced
        // let go.
        RowState::Closed if !row.set_by.is_empty() => Remote::Reset,
        RowState::Closed => Remote::Closed,
    }
}

/// What an operator does to a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Closed, counts cleared, no longer forced.
    Reset,
    ForceOpen,
    ForceClose,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::ForceOpen => "force-open",
            Action::ForceClose => "force-close",
        }
    }

    fn row_state(self) -> RowState {
        match self {
            Action::Reset => RowState::Closed,
            Action::ForceOpen => RowState::ForcedOpen,
            Action::ForceClose => RowState::ForcedClosed,
        }
    }
}

/// Writes an operator's `action` on `target` to the store, for every
/// process sharing it (each takes it on at its next read, within
/// [`SYNC_EVERY`]); `by` says who. For a process without the breaker in
/// memory, such as `backstop breakers`.
pub fn set_in_store(
    store: &dyn BreakerStore,
    target: &str,
    action: Action,
    by: &str,
) -> Result<i64, crate::store::StoreError> {
    store.set(
        target,
        action.row_state(),
        by,
        rand::random::<i64>() & i64::MAX,
    )
}
