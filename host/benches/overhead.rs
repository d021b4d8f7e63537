//! What the guards cost. Run `plugins/build.sh` first, then
//! `cargo bench -p backstop --bench overhead`.
//!
//! - `wasm/unguarded_invoke`: one call of the `fault` component in echo
//!   mode, as the runtime makes it: fresh Store and WASI context,
//!   instantiate from `InstancePre`, call, check the output. The baseline.
//! - `wasm/guarded_call`: the same call through `Backstop::call` (chain,
//!   breaker, retry decision, deadline, marked outcome).
//! - `guard/*`: the guard layer alone around a target that returns at once,
//!   and one breaker acquire + record, to compare with other libraries.

use backstop::guard::{
    Backoff, Breaker, BreakerPolicy, Breakers, CallTarget, ChainRunner, Jitter, RetryPolicy,
};
use backstop::runtime::{CallCtx, ToolOutput};
use backstop::{Backstop, Config, Effect, Failure};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{rngs::StdRng, SeedableRng};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Instant0;

impl CallTarget for Instant0 {
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
    ) -> Pin<Box<dyn Future<Output = Result<ToolOutput, Failure>> + Send + 'a>> {
        Box::pin(async {
            Ok(ToolOutput {
                value: serde_json::Value::Null,
                confidence: None,
            })
        })
    }
}

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        consecutive_failures: 5,
        failure_rate: 0.5,
        window: Duration::from_secs(60),
        min_calls: 20,
        open_for: Duration::from_secs(60),
        half_open_probes: 1,
        probe_timeout: Duration::from_secs(30),
        close_after: 1,
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fault = root.join("plugins/dist/fault.wasm");
    assert!(fault.is_file(), "run plugins/build.sh first");
    let text = format!(
        "cache_dir = \"{}\"\n[tools.fault]\ncomponent = \"{}\"\n",
        root.join("target/bench-cache").display(),
        fault.display()
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    let b = rt.block_on(Backstop::from_config(config)).unwrap();
    let tool = b.tool("fault").unwrap();
    let input = serde_json::json!({"mode": "echo", "value": 1});
    let input_text = input.to_string();
    let ctx = CallCtx {
        key: "k".into(),
        attempt: 1,
        timeout: Duration::from_secs(5),
    };

    let mut g = c.benchmark_group("wasm");
    g.bench_function("unguarded_invoke", |bn| {
        bn.to_async(&rt)
            .iter(|| async { tool.invoke(&input_text, &ctx).await.unwrap() })
    });
    g.bench_function("guarded_call", |bn| {
        bn.to_async(&rt)
            .iter(|| async { assert!(b.call("fault", input.clone()).await.unwrap().ok) })
    });
    g.finish();

    let mut g = c.benchmark_group("guard");
    let breakers = Breakers::new([("noop".to_string(), policy())]);
    let rng = Mutex::new(StdRng::seed_from_u64(1));
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
    let target: Arc<dyn CallTarget> = Arc::new(Instant0);
    g.bench_function("chain_around_noop_target", |bn| {
        bn.to_async(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        )
        .iter(|| async {
            let runner = ChainRunner {
                chain: "noop",
                targets: vec![(target.clone(), retry)],
                deadline: Duration::from_secs(10),
                breakers: &breakers,
                rng: &rng,
            };
            runner
                .run(&serde_json::Value::Null, String::from("k"))
                .await
        })
    });
    let mut breaker = Breaker::new(policy());
    g.bench_function("breaker_acquire_record", |bn| {
        bn.iter(|| {
            let now = tokio::time::Instant::now();
            let p = breaker.acquire(now).unwrap();
            breaker.record(p, false, now);
        })
    });
    g.finish();
}

criterion_group! {
    name = overhead;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(overhead);
