//! Goal 1: what the guards add around a call that returns at once, against
//! calling the same target bare, and what an open breaker's rejection
//! costs. Single-threaded, so the allocation count is this call's own.

use crate::stats::{allocations, per_op, Spread};
use backstop::guard::{
    Backoff, Breaker, BreakerPolicy, Breakers, ChainRunner, ChainTarget, Jitter, RetryPolicy,
};
use backstop::target::{CallCtx, CallTarget, TargetOutput};
use backstop::{Effect, Failure};
use rand::{rngs::StdRng, SeedableRng};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A target that answers at once without allocating.
struct Noop;

impl CallTarget for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    fn effect(&self) -> Effect {
        Effect::ReadOnly
    }
    fn timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn call<'a>(
        &'a self,
        _input: &'a serde_json::Value,
        _ctx: &'a CallCtx,
    ) -> Pin<Box<dyn Future<Output = Result<TargetOutput, Failure>> + Send + 'a>> {
        // Boxing the answer is the one allocation, in the bare call too.
        Box::pin(std::future::ready(Ok(TargetOutput {
            value: serde_json::Value::Null,
            confidence: None,
        })))
    }
}

fn policy(consecutive_failures: u32) -> BreakerPolicy {
    BreakerPolicy {
        consecutive_failures,
        failure_rate: 0.5,
        window: Duration::from_secs(60),
        min_calls: 20,
        open_for: Duration::from_secs(3600),
        half_open_probes: 1,
        probe_timeout: Duration::from_secs(30),
        close_after: 1,
    }
}

pub struct Figures {
    pub bare: Spread,
    pub bare_allocs: f64,
    pub future_bytes: usize,
    pub outcome_bytes: usize,
    pub guarded: Spread,
    pub guarded_allocs: f64,
    pub rejected: Spread,
    pub rejected_allocs: f64,
    pub breaker_closed: Spread,
    pub breaker_open: Spread,
}

pub fn measure(samples: usize, n: u64) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let retry = RetryPolicy {
        attempts: 5,
        backoff: Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Jitter::Full,
        )
        .unwrap(),
        max_retry_after: Duration::from_secs(60),
    };
    let rng = Mutex::new(StdRng::seed_from_u64(1));
    let chain: Arc<str> = "noop".into();
    let key: Arc<str> = "key".into();
    let input = serde_json::Value::Null;
    let target: Arc<dyn CallTarget> = Arc::new(Noop);

    let closed = Breakers::new([("noop".to_string(), policy(5))]);
    let open = Breakers::new([("noop".to_string(), policy(1))]);
    {
        let now = tokio::time::Instant::now();
        let p = open.acquire("noop", now).unwrap();
        open.record("noop", p, true, now);
    }
    // With the target's and the host's bulkheads, as every chain target
    // of a loaded config has them.
    let bulkheads = || {
        (
            Some(std::sync::Arc::new(backstop::guard::Bulkhead::new(
                "noop",
                backstop::guard::BulkheadPolicy::DEFAULT_TARGET,
            ))),
            Some(std::sync::Arc::new(backstop::guard::Bulkhead::new(
                "host",
                backstop::config::DEFAULT_HOST_BULKHEAD,
            ))),
        )
    };
    let (bt, bh) = bulkheads();
    let closed_targets = [ChainTarget::new(target.clone(), retry, &closed).with_bulkheads(bt, bh)];
    let (bt, bh) = bulkheads();
    let open_targets = [ChainTarget::new(target.clone(), retry, &open).with_bulkheads(bt, bh)];
    let ctx = CallCtx {
        call_left: std::time::Duration::from_secs(3600),
        key: key.clone(),
        attempt: 1,
        timeout: Duration::from_secs(1),
    };

    let a0 = allocations();
    let bare = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                std::hint::black_box(target.call(&input, &ctx).await.unwrap());
            }
        })
    });
    let bare_allocs = (allocations() - a0) as f64 / ((samples as u64 + 1) * n) as f64;
    let calls = |targets: &[ChainTarget], ok: bool| {
        let r = ChainRunner {
            max_message: backstop::outcome::DEFAULT_MAX_MESSAGE,
            chain: &chain,
            targets,
            deadline: Duration::from_secs(10),
            rng: &rng,
        };
        let a0 = allocations();
        let spread = per_op(samples, n, || {
            rt.block_on(async {
                for _ in 0..n {
                    let o = r.run(&input, key.clone()).await;
                    assert_eq!(o.ok, ok);
                    std::hint::black_box(o);
                }
            })
        });
        let allocs = (allocations() - a0) as f64 / ((samples as u64 + 1) * n) as f64;
        (spread, allocs)
    };
    let (guarded, guarded_allocs) = calls(&closed_targets, true);
    let (rejected, rejected_allocs) = calls(&open_targets, false);

    let mut breaker = Breaker::new(policy(5));
    let breaker_closed = per_op(samples, n, || {
        for _ in 0..n {
            let now = tokio::time::Instant::now();
            let p = breaker.acquire(now).unwrap();
            breaker.record(p, false, now);
        }
    });
    let mut tripped = Breaker::new(policy(1));
    let now = tokio::time::Instant::now();
    let p = tripped.acquire(now).unwrap();
    tripped.record(p, true, now);
    let breaker_open = per_op(samples, n, || {
        for _ in 0..n {
            let now = tokio::time::Instant::now();
            assert!(std::hint::black_box(tripped.acquire(now)).is_err());
        }
    });
    let future_bytes = {
        let r = ChainRunner {
            max_message: backstop::outcome::DEFAULT_MAX_MESSAGE,
            chain: &chain,
            targets: &closed_targets,
            deadline: Duration::from_secs(10),
            rng: &rng,
        };
        let future = r.run(&input, key.clone());
        std::mem::size_of_val(&future)
    };
    Figures {
        bare,
        bare_allocs,
        future_bytes,
        outcome_bytes: std::mem::size_of::<backstop::Outcome>(),
        guarded,
        guarded_allocs,
        rejected,
        rejected_allocs,
        breaker_closed,
        breaker_open,
    }
}
