//! Load (issue 7): concurrent callers through a chain with 30% injected
//! failures for a fixed time. Checks that every call ends with an outcome,
//! that progress never stalls (a watchdog), and reports throughput,
//! latency and RSS.

use backstop::{Backstop, Config};
use rand::Rng;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::rss_kib;

pub fn run(seconds: u64, concurrency: usize) -> String {
    let mut out = String::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fault = root.join("plugins/dist/fault.wasm");
    assert!(fault.is_file(), "run plugins/build.sh first");
    let text = format!(
        r#"cache_dir = "{cache}"
[defaults.retry]
attempts = 3
base = "5ms"
cap = "50ms"
[defaults.breaker]
consecutive_failures = 20
open_for = "200ms"
[tools.flaky]
component = "{fault}"
timeout = "500ms"
[tools.backup]
component = "{fault}"
[chains.main]
targets = ["flaky", "backup"]
deadline = "5s"
"#,
        cache = root.join("target/bench-cache").display(),
        fault = fault.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config::from_str(&text, "load.toml", root).unwrap();
    let b = Arc::new(rt.block_on(Backstop::from_config(config)).unwrap());
    let done = Arc::new(AtomicU64::new(0));
    let (ok, degraded, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let rss_start = rss_kib();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let (latencies, rss_peak) = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (b, done, ok, degraded, failed) = (
                b.clone(),
                done.clone(),
                ok.clone(),
                degraded.clone(),
                failed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    // 30% of calls meet an injected failure on the primary.
                    let roll: f64 = rand::rng().random();
                    let flaky = match roll {
                        r if r < 0.10 => json!({"mode": "fail", "class": "transient", "times": 1}),
                        r if r < 0.20 => json!({"mode": "fail", "class": "unavailable"}),
                        r if r < 0.25 => json!({"mode": "trap"}),
                        r if r < 0.30 => json!({"mode": "fail", "class": "permanent"}),
                        _ => json!({"mode": "echo"}),
                    };
                    let t0 = Instant::now();
                    let o = b
                        .call("main", json!({"flaky": flaky, "backup": {"mode": "echo"}}))
                        .await
                        .unwrap();
                    lat.push(t0.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    match (o.ok, o.degraded) {
                        (true, false) => ok.fetch_add(1, Ordering::Relaxed),
                        (true, true) => degraded.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                lat
            }));
        }
        // Watchdog: progress must never stall for 5 s.
        let mut last = 0;
        let mut rss_peak = 0;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = done.load(Ordering::Relaxed);
            assert!(now > last, "no call finished in 5 s: deadlock or stall");
            last = now;
            rss_peak = rss_peak.max(rss_kib());
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(
                tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("a caller hung")
                    .unwrap(),
            );
        }
        (all, rss_peak)
    });
    let elapsed = start.elapsed();
    let mut lat = latencies;
    lat.sort();
    let n = lat.len();
    let total = done.load(Ordering::Relaxed);
    assert_eq!(total as usize, n);
    p!(
        out,
        "load: {concurrency} concurrent callers, 30% injected failures, {:.1} s",
        elapsed.as_secs_f64()
    );
    p!(
        out,
        "  {total} calls ({:.0}/s), every one ended with an outcome: {} served by the primary, {} \
            degraded (fallback), {} failed",
        total as f64 / elapsed.as_secs_f64(),
        ok.load(Ordering::Relaxed),
        degraded.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    p!(
        out,
        "  latency p50 {:?}, p99 {:?}, max {:?}",
        lat[n / 2],
        lat[n * 99 / 100],
        lat[n - 1]
    );
    p!(
        out,
        "  RSS {rss_start} KiB at start, peak {rss_peak} KiB, {} KiB at the end",
        rss_kib()
    );
    out
}
