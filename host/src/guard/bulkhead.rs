//! Bulkheads: a cap on how many calls of one target (and of the whole
//! host) run at once, with a bounded queue in front.
//!
//! Without them one slow tool with a thousand callers took every instance
//! slot of the shared pool, and an unrelated tool's call then failed. A
//! call that finds its target's bulkhead full waits in the queue, but no
//! longer than its deadline allows, and is refused at once when the queue
//! is full too: the chain then falls back, as it does for an open breaker.

use crate::outcome::{Failure, FailureClass};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Limits of one bulkhead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkheadPolicy {
    /// Calls running at once.
    pub max_concurrent: u32,
    /// Calls waiting for a slot; more are refused at once.
    pub max_queue: u32,
}

impl BulkheadPolicy {
    pub const DEFAULT_TARGET: BulkheadPolicy = BulkheadPolicy {
        max_concurrent: 256,
        max_queue: 1024,
    };
}

/// One bulkhead, shared by every chain calling its target.
///
/// A counter, not a semaphore, on the path every call takes: a free slot
/// costs one atomic add and its release one subtract and one load (a tokio
/// semaphore's release takes a lock). Only a full bulkhead queues, on a
/// `Notify` that a release signals while anyone waits.
pub struct Bulkhead {
    name: Arc<str>,
    policy: BulkheadPolicy,
    in_use: AtomicUsize,
    queued: AtomicUsize,
    freed: Notify,
}

/// One bulkhead slot; dropping it frees the slot.
pub struct Held<'a>(&'a Bulkhead);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.0.queued.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// A slot held for one attempt; dropping it frees the slot. Two fields,
/// not a list: the path every call takes should not loop.
pub struct Slot<'a> {
    _target: Option<Held<'a>>,
    _host: Option<Held<'a>>,
}

impl Bulkhead {
    pub fn new(name: impl Into<Arc<str>>, policy: BulkheadPolicy) -> Bulkhead {
        Bulkhead {
            name: name.into(),
            policy,
            in_use: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    pub fn policy(&self) -> BulkheadPolicy {
        self.policy
    }

    /// Calls running now.
    pub fn in_use(&self) -> usize {
        self.in_use
            .load(Ordering::Relaxed)
            .min(self.policy.max_concurrent as usize)
    }

    /// Calls waiting now.
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> Option<Held<'_>> {
        if self.in_use.fetch_add(1, Ordering::AcqRel) < self.policy.max_concurrent as usize {
            Some(Held(self))
        } else {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }

    /// Takes a slot, waiting at most `within` in the queue.
    async fn take(&self, within: Duration) -> Result<Held<'_>, Failure> {
        if let Some(h) = self.try_take() {
            return Ok(h);
        }
        // Count ourselves in the queue before trying again, so a release
        // from here on sees us waiting and signals.
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.queued);
        if before >= self.policy.max_queue as usize {
            return Err(self.full("its queue is full"));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.freed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(h) = self.try_take() {
                return Ok(h);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.full("no slot freed before the call's deadline"));
            }
        }
    }

    fn full(&self, why: &str) -> Failure {
        Failure::new(
            FailureClass::BulkheadFull,
            format!(
                "bulkhead `{}` full ({} running, {} waiting): {why}",
                self.name, self.policy.max_concurrent, self.policy.max_queue
            ),
        )
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a free slot of the target's bulkhead and of the host's, without
/// waiting; `None` when either is full (then [`enter`] queues). The path
/// every call takes when nothing is saturated.
pub fn try_enter<'a>(target: Option<&'a Bulkhead>, host: Option<&'a Bulkhead>) -> Option<Slot<'a>> {
    let target = match target {
        Some(b) => Some(b.try_take()?),
        None => None,
    };
    let host = match host {
        Some(b) => Some(b.try_take()?),
        None => None,
    };
    Some(Slot {
        _target: target,
        _host: host,
    })
}

/// Takes a slot of the target's bulkhead, then of the host's, each wait
/// counted against `within`. Taking the target's first means a tool whose
/// own bulkhead is full never holds a host-wide slot while it waits.
pub async fn enter<'a>(
    target: Option<&'a Bulkhead>,
    host: Option<&'a Bulkhead>,
    within: Duration,
) -> Result<Slot<'a>, Failure> {
    let started = tokio::time::Instant::now();
    let target = match target {
        Some(b) => Some(b.take(within).await?),
        None => None,
    };
    let host = match host {
        Some(h) => Some(h.take(within.saturating_sub(started.elapsed())).await?),
        None => None,
    };
    Ok(Slot {
        _target: target,
        _host: host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_queues_then_refuses() {
        let b = Arc::new(Bulkhead::new(
            "t",
            BulkheadPolicy {
                max_concurrent: 2,
                max_queue: 1,
            },
        ));
        let s1 = enter(Some(&b), None, Duration::from_secs(1)).await.unwrap();
        let _s2 = enter(Some(&b), None, Duration::from_secs(1)).await.unwrap();
        assert_eq!(b.in_use(), 2);
        // Third waits in the queue; fourth finds the queue full.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                enter(Some(&b), None, Duration::from_secs(5))
                    .await
                    .map(|_| ())
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(b.waiting(), 1);
        let refused = enter(Some(&b), None, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.class, FailureClass::BulkheadFull);
        assert!(
            refused.message.contains("queue is full"),
            "{}",
            refused.message
        );
        drop(s1);
        waiter.await.unwrap().unwrap();
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_counts_against_the_deadline() {
        let b = Bulkhead::new(
            "t",
            BulkheadPolicy {
                max_concurrent: 1,
                max_queue: 10,
            },
        );
        let _held = enter(Some(&b), None, Duration::from_secs(1)).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let f = enter(Some(&b), None, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        assert!(f.message.contains("deadline"), "{}", f.message);
        assert_eq!(b.waiting(), 0);
    }

    #[tokio::test]
    async fn the_host_bulkhead_is_taken_after_the_targets() {
        let t = Bulkhead::new(
            "t",
            BulkheadPolicy {
                max_concurrent: 1,
                max_queue: 0,
            },
        );
        let host = Bulkhead::new(
            "host",
            BulkheadPolicy {
                max_concurrent: 1,
                max_queue: 0,
            },
        );
        let _a = enter(Some(&t), Some(&host), Duration::from_secs(1))
            .await
            .unwrap();
        // Another target's call is refused by the full host bulkhead, and
        // keeps no slot of its own.
        let other = Bulkhead::new(
            "u",
            BulkheadPolicy {
                max_concurrent: 1,
                max_queue: 0,
            },
        );
        assert_eq!(host.in_use(), 1);
        let f = enter(Some(&other), Some(&host), Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(f.message.contains("`host`"), "{}", f.message);
        assert_eq!(other.in_use(), 0, "a refused call holds nothing");
    }
}
