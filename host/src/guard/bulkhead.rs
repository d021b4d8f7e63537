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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
pub struct Bulkhead {
    name: Arc<str>,
    policy: BulkheadPolicy,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// A slot held for one attempt; dropping it frees the slot.
pub struct Slot {
    _permits: smallvec::SmallVec<[OwnedSemaphorePermit; 2]>,
    /// Whether the call waited in a queue (so the clock moved).
    pub waited: bool,
}

impl Bulkhead {
    pub fn new(name: impl Into<Arc<str>>, policy: BulkheadPolicy) -> Bulkhead {
        Bulkhead {
            name: name.into(),
            policy,
            slots: Arc::new(Semaphore::new(policy.max_concurrent as usize)),
            queued: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> BulkheadPolicy {
        self.policy
    }

    /// Calls running now.
    pub fn in_use(&self) -> usize {
        self.policy.max_concurrent as usize - self.slots.available_permits()
    }

    /// Calls waiting now.
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting at most `within` in the queue.
    async fn take(
        &self,
        within: Duration,
        waited: &mut bool,
    ) -> Result<OwnedSemaphorePermit, Failure> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        *waited = true;
        // Count ourselves in the queue first, so two callers cannot both
        // see the last free place.
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.queued);
        if before >= self.policy.max_queue as usize {
            return Err(self.full("its queue is full"));
        }
        match tokio::time::timeout(within, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(self.full("it is closed")),
            Err(_) => Err(self.full("no slot freed before the call's deadline")),
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

/// Takes a slot of the target's bulkhead, then of the host's, each wait
/// counted against `within`. Taking the target's first means a tool whose
/// own bulkhead is full never holds a host-wide slot while it waits.
pub async fn enter(
    target: Option<&Bulkhead>,
    host: Option<&Bulkhead>,
    within: Duration,
) -> Result<Slot, Failure> {
    let mut waited = false;
    let mut permits = smallvec::SmallVec::new();
    if let Some(b) = target {
        // The clock is read only when a wait happens: the free path
        // costs a semaphore operation per bulkhead, nothing more.
        let started = tokio::time::Instant::now();
        permits.push(b.take(within, &mut waited).await?);
        if let Some(h) = host {
            let left = if waited {
                within.saturating_sub(started.elapsed())
            } else {
                within
            };
            permits.push(h.take(left, &mut waited).await?);
        }
    } else if let Some(h) = host {
        permits.push(h.take(within, &mut waited).await?);
    }
    Ok(Slot {
        _permits: permits,
        waited,
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
