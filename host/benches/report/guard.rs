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
        shared_failures: 0,
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

/// The brief's default retry policy: 5 attempts, full jitter 1 s to 60 s.
fn retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        backoff: Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Jitter::Full,
        )
        .unwrap(),
        max_retry_after: Duration::from_secs(60),
    }
}

/// `target` as a chain target with `breakers`' breaker and the target's
/// and the host's bulkheads, as every chain target of a loaded config has
/// them.
fn chain_target(target: &Arc<dyn CallTarget>, breakers: &Breakers) -> ChainTarget {
    ChainTarget::new(target.clone(), retry(), breakers).with_bulkheads(
        Some(Arc::new(backstop::guard::Bulkhead::new(
            "noop",
            backstop::guard::BulkheadPolicy::DEFAULT_TARGET,
        ))),
        Some(Arc::new(backstop::guard::Bulkhead::new(
            "host",
            backstop::config::DEFAULT_HOST_BULKHEAD,
        ))),
    )
}

fn ctx() -> CallCtx {
    CallCtx {
        call_left: Duration::from_secs(3600),
        key: "key".into(),
        attempt: 1,
        timeout: Duration::from_secs(1),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn measure(samples: usize, n: u64) -> Figures {
    let rt = current_thread();
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
    let closed_targets = [chain_target(&target, &closed)];
    let open_targets = [chain_target(&target, &open)];
    let ctx = ctx();

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
            progress: None,
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
            progress: None,
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

/// The same no-op call through the crates a Rust engineer would reach for
/// instead: tower's `timeout` around tower-resilience's circuit breaker and
/// retry (5 attempts, exponential backoff), as the guard's deadline,
/// breaker and retry are. The request is `()`: nothing to clone, which
/// favours the peer.
pub mod peer {
    use backstop::target::TargetOutput;
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_resilience::circuitbreaker::CircuitBreakerLayer;
    use tower_resilience::retry::RetryLayer;

    #[derive(Debug, Clone)]
    pub struct NoopError;

    impl std::fmt::Display for NoopError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("noop failed")
        }
    }

    impl std::error::Error for NoopError {}

    type Answer = Pin<Box<dyn Future<Output = Result<TargetOutput, NoopError>> + Send>>;

    /// What the guard bench's `Noop` target does: one boxed, ready answer.
    pub fn noop(_: ()) -> Answer {
        Box::pin(std::future::ready(Ok(TargetOutput {
            value: serde_json::Value::Null,
            confidence: None,
        })))
    }

    pub fn bare() -> impl Service<(), Response = TargetOutput, Error = NoopError> {
        tower::service_fn(noop)
    }

    pub fn stack() -> impl Service<(), Response = TargetOutput, Error = tower::BoxError> {
        let retry = RetryLayer::<(), TargetOutput, NoopError>::builder()
            .max_attempts(5)
            .exponential_backoff(Duration::from_secs(1))
            .build();
        let breaker = CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_size(20)
            .build()
            .expect("a valid breaker");
        ServiceBuilder::new()
            .timeout(Duration::from_secs(10))
            .layer(breaker)
            .layer(retry)
            .service(tower::service_fn(noop))
    }

    /// `n` calls of `svc`, each waiting for readiness as tower asks.
    pub async fn calls<S: Service<()>>(svc: &mut S, n: u64)
    where
        S::Error: std::fmt::Debug,
    {
        for _ in 0..n {
            let ready = svc.ready().await.expect("ready");
            std::hint::black_box(ready.call(()).await.expect("served"));
        }
    }
}

/// Peer figures, measured in the same run as [`measure`].
pub struct PeerFigures {
    pub bare: Spread,
    pub stack: Spread,
    pub stack_allocs: f64,
}

pub fn measure_peer(samples: usize, n: u64) -> PeerFigures {
    let rt = current_thread();
    let mut bare_svc = peer::bare();
    let bare = per_op(samples, n, || rt.block_on(peer::calls(&mut bare_svc, n)));
    let mut stack_svc = rt.block_on(async { peer::stack() });
    let a0 = allocations();
    let stack = per_op(samples, n, || rt.block_on(peer::calls(&mut stack_svc, n)));
    let stack_allocs = (allocations() - a0) as f64 / ((samples as u64 + 1) * n) as f64;
    PeerFigures {
        bare,
        stack,
        stack_allocs,
    }
}

/// The paths counted in instructions (`BENCH_CALLGRIND=PATH:N`).
pub const PATHS: [&str; 4] = ["bare", "guarded", "peer-bare", "peer"];

/// Runs `n` calls of one path and nothing else, for callgrind to count.
pub fn spin(path: &str, n: u64) {
    let rt = current_thread();
    match path {
        "peer-bare" => rt.block_on(peer::calls(&mut peer::bare(), n)),
        "peer" => rt.block_on(async { peer::calls(&mut peer::stack(), n).await }),
        "bare" | "guarded" => {
            let target: Arc<dyn CallTarget> = Arc::new(Noop);
            let ctx = ctx();
            let breakers = Breakers::new([("noop".to_string(), policy(5))]);
            let targets = [chain_target(&target, &breakers)];
            let rng = Mutex::new(StdRng::seed_from_u64(1));
            let chain: Arc<str> = "noop".into();
            let runner = ChainRunner {
                max_message: backstop::outcome::DEFAULT_MAX_MESSAGE,
                progress: None,
                chain: &chain,
                targets: &targets,
                deadline: Duration::from_secs(10),
                rng: &rng,
            };
            let input = serde_json::Value::Null;
            let key: Arc<str> = "key".into();
            rt.block_on(async {
                for _ in 0..n {
                    if path == "bare" {
                        std::hint::black_box(target.call(&input, &ctx).await.unwrap());
                    } else {
                        std::hint::black_box(runner.run(&input, key.clone()).await);
                    }
                }
            })
        }
        other => panic!("BENCH_CALLGRIND: no path `{other}` (one of {PATHS:?})"),
    }
}
