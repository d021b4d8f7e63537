//! Who drives a run: a lease on its row, with an expiry (the database's
//! clock, never a host's) and a fencing token that grows with each new
//! owner. Every write of a run this host holds names the token in the same
//! statement, so once another host took the run over (this one paused,
//! partitioned or slow past the lease), nothing more this host writes for
//! it lands, even a write already on its way.
//!
//! A lease is renewed every third of its length while held, and on every
//! journal write. A lease whose holder died on this very machine (same
//! kernel boot, same pid namespace, pid gone) is taken over at once, as
//! SQLite's file lock is; anywhere else it is taken over when it expires.

use super::{Inner, NOW_MS};
use crate::journal::Claimed;
use crate::store::StoreError;
use std::sync::{Arc, Weak};

/// This process, as a lease names it.
pub(crate) struct Holder {
    /// What messages show: `HOST pid PID`.
    pub shown: String,
    /// The machine and pid namespace: where `pid` means this process.
    pub node: String,
    pub pid: u32,
}

impl Holder {
    pub(crate) fn this_process() -> Holder {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let host = read("/proc/sys/kernel/hostname");
        let boot = read("/proc/sys/kernel/random/boot_id");
        let ns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let pid = std::process::id();
        Holder {
            shown: format!("{} pid {pid}", if host.is_empty() { "?" } else { &host }),
            node: format!("{host}/{boot}/{ns}"),
            pid,
        }
    }
}

/// This store's hold on a run.
pub(crate) enum Lease {
    Held {
        token: i64,
        renew: tokio::task::AbortHandle,
        /// Taken by a claim of the run queue, for the worker's
        /// [`Inner::take_lease`] to take up.
        claimed: bool,
    },
    /// Taken over by `by`: every later write of the run is refused here.
    Lost { by: String },
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Inner {
    fn leases(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token a write of `run` must carry: `None` when this store does
    /// not hold the run (the write then lands only while nobody does).
    pub(crate) fn fence(&self, run: &str) -> Result<Option<i64>, StoreError> {
        match self.leases().get(run) {
            Some(Lease::Held { token, .. }) => Ok(Some(*token)),
            Some(Lease::Lost { by }) => Err(StoreError::LeaseLost {
                run: run.to_owned(),
                holder: by.clone(),
            }),
            None => Ok(None),
        }
    }

    /// Marks the hold on `run` with `token` lost (a hold taken since, or
    /// given back, is left as it is).
    pub(crate) fn lost(&self, run: &str, token: i64, by: String) {
        let mut leases = self.leases();
        match leases.get(run) {
            Some(Lease::Held {
                token: t, renew, ..
            }) if *t == token => renew.abort(),
            _ => return,
        }
        leases.insert(run.to_owned(), Lease::Lost { by });
    }

    /// Why a fenced write of `run` changed no row.
    pub(crate) async fn refused(
        &self,
        c: &deadpool_postgres::Client,
        run: &str,
        token: Option<i64>,
    ) -> StoreError {
        let row = c
            .query_opt(
                &format!(
                    "SELECT lease_owner, owner_pid, lease_until - {NOW_MS} FROM runs WHERE id = $1"
                ),
                &[&run],
            )
            .await;
        let row = match row {
            Ok(Some(r)) => r,
            Ok(None) => return StoreError::NoSuchRun(run.to_owned()),
            Err(e) => return self.err(e),
        };
        let holder: Option<String> = row.get(0);
        let holder = holder.unwrap_or_else(|| "another host".into());
        if let Some(token) = token {
            self.lost(run, token, holder.clone());
            return StoreError::LeaseLost {
                run: run.to_owned(),
                holder,
            };
        }
        StoreError::Held {
            run: run.to_owned(),
            holder,
            pid: row.get::<_, Option<i64>>(1).map(|p| p as u32),
            ends_in_ms: row.get::<_, i64>(2).max(0),
        }
    }

    pub(crate) async fn take_lease(self: Arc<Self>, run: String) -> Result<bool, StoreError> {
        if let Some(Lease::Held { claimed, .. }) = self.leases().get_mut(&run) {
            if std::mem::take(claimed) {
                return Ok(true);
            }
            return Err(StoreError::Held {
                run,
                holder: self.me.shown.clone(),
                pid: Some(self.me.pid),
                ends_in_ms: self.lease_ttl.as_millis() as i64,
            });
        }
        let c = self.client().await?;
        let ttl = self.lease_ttl.as_millis() as i64;
        let take = format!(
            "UPDATE runs SET lease_owner = $2, lease_node = $3, owner_pid = $4,
                lease_token = lease_token + 1, lease_until = {NOW_MS} + $5
             WHERE id = $1 AND (lease_owner IS NULL OR lease_until < {NOW_MS} OR lease_token = $6)
             RETURNING lease_token"
        );
        let me = (&self.me.shown, &self.me.node, i64::from(self.me.pid), ttl);
        let mut got = c
            .query_opt(&take, &[&run, me.0, me.1, &me.2, &me.3, &-1i64])
            .await
            .map_err(|e| self.err(e))?;
        if got.is_none() {
            // Held: by a process of this machine that is gone?
            let row = c
                .query_opt(
                    "SELECT lease_node, owner_pid, lease_token FROM runs WHERE id = $1",
                    &[&run],
                )
                .await
                .map_err(|e| self.err(e))?
                .ok_or_else(|| StoreError::NoSuchRun(run.clone()))?;
            let (node, pid, old): (Option<String>, Option<i64>, i64) =
                (row.get(0), row.get(1), row.get(2));
            let dead_here = node.as_deref() == Some(&self.me.node)
                && pid.is_some_and(|p| p as u32 != self.me.pid && !alive(p as u32));
            if dead_here {
                got = c
                    .query_opt(&take, &[&run, me.0, me.1, &me.2, &me.3, &old])
                    .await
                    .map_err(|e| self.err(e))?;
            }
        }
        let Some(row) = got else {
            return Err(self.refused(&c, &run, None).await);
        };
        self.hold(run, row.get(0), false)?;
        Ok(true)
    }

    /// Records that this store holds `run` under `token`, and keeps it.
    fn hold(self: &Arc<Self>, run: String, token: i64, claimed: bool) -> Result<(), StoreError> {
        let renew = super::runtime()?
            .spawn(renew(
                Arc::downgrade(self),
                run.clone(),
                token,
                self.lease_ttl,
            ))
            .abort_handle();
        // Whoever wrote meanwhile moved the run's end: learn it anew.
        self.forget(&run);
        let held = Lease::Held {
            token,
            renew,
            claimed,
        };
        if let Some(Lease::Held { renew, .. }) = self.leases().insert(run, held) {
            renew.abort();
        }
        Ok(())
    }

    /// Claims up to `max` due queued runs nobody holds, taking their
    /// leases in the same statement; hosts claiming at once skip each
    /// other's rows rather than wait on them.
    pub(crate) async fn claim(self: Arc<Self>, max: u32) -> Result<Vec<Claimed>, StoreError> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "WITH c AS (
                    SELECT rid FROM runs
                    WHERE queued AND not_before <= {NOW_MS}
                      AND (lease_owner IS NULL OR lease_until < {NOW_MS})
                    ORDER BY not_before, rid LIMIT $1
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE runs r SET claims = r.claims + 1,
                    not_before = {NOW_MS}
                        + LEAST(60000, (1::BIGINT << LEAST(r.claims, 6)::INT) * 1000),
                    lease_owner = $2, lease_node = $3, owner_pid = $4,
                    lease_token = r.lease_token + 1, lease_until = {NOW_MS} + $5
                 FROM c WHERE r.rid = c.rid
                 RETURNING r.id, r.queue_gen, r.lease_token"
            ))
            .await
            .map_err(|e| self.err(e))?;
        let rows = c
            .query(
                &stmt,
                &[
                    &i64::from(max),
                    &self.me.shown,
                    &self.me.node,
                    &i64::from(self.me.pid),
                    &(self.lease_ttl.as_millis() as i64),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let run: String = r.get(0);
            self.hold(run.clone(), r.get(2), true)?;
            out.push(Claimed { run, gen: r.get(1) });
        }
        Ok(out)
    }

    /// Gives the lease back, if held; the row keeps its token (the next
    /// owner's is higher still).
    pub(crate) async fn drop_lease(self: Arc<Self>, run: String) -> Result<(), StoreError> {
        let held = self.leases().remove(&run);
        self.forget(&run);
        let Some(Lease::Held { token, renew, .. }) = held else {
            return Ok(());
        };
        renew.abort();
        let c = self.client().await?;
        c.execute(
            "UPDATE runs SET lease_owner = NULL, lease_node = NULL, owner_pid = NULL,
                lease_until = 0
             WHERE id = $1 AND lease_token = $2",
            &[&run, &token],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Renews `run`'s lease every third of `ttl` until aborted, or until the
/// row says another holds it. A failed renewal is tried again next time:
/// writes are fenced anyway, so a lease lost meanwhile loses nothing.
async fn renew(inner: Weak<Inner>, run: String, token: i64, ttl: std::time::Duration) {
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Ok(c) = inner.client().await else {
            continue;
        };
        let renewed = c
            .execute(
                &format!(
                    "UPDATE runs SET lease_until = {NOW_MS} + $3
                     WHERE id = $1 AND lease_token = $2"
                ),
                &[&run, &token, &(ttl.as_millis() as i64)],
            )
            .await;
        if let Ok(0) = renewed {
            let holder = c
                .query_opt("SELECT lease_owner FROM runs WHERE id = $1", &[&run])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<_, Option<String>>(0))
                .unwrap_or_else(|| "another host".into());
            inner.lost(&run, token, holder);
            return;
        }
    }
}
