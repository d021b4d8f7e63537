//! What a tool costs by the language it was written in: component size,
//! first start (compile + instantiate + `describe`, empty code cache),
//! cached start (a new engine reading the compiled-code cache), and one
//! guarded call. Each language's template tool (`echo_*`: parse the JSON
//! input, ask the host for the call context, log, answer JSON).

use backstop::{Backstop, Config};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Median, min and max.
fn summary(mut xs: Vec<Duration>) -> (Duration, Duration, Duration) {
    xs.sort();
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn triple((med, min, max): (Duration, Duration, Duration)) -> String {
    format!("{} ({}-{})", fmt(med), fmt(min), fmt(max))
}

async fn start(root: &Path, component: &Path, cache: &Path) -> (Backstop, Duration) {
    let text = format!(
        "version = 1\ncache_dir = \"{}\"\n[tools.t]\ncomponent = \"{}\"\n",
        cache.display(),
        component.display()
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    let t0 = Instant::now();
    let b = Backstop::from_config(config).await.unwrap();
    (b, t0.elapsed())
}

pub fn run(firsts: usize, cacheds: usize, calls: usize) -> String {
    let mut out = String::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dist = root.join("plugins/dist");
    let tools: [(&str, &str, serde_json::Value); 4] = [
        ("Rust", "echo_rs.wasm", json!({"say": "hi"})),
        ("Python", "echo_py.wasm", json!({"say": "hi"})),
        ("JavaScript", "echo_js.wasm", json!({"say": "hi"})),
        ("C", "echo_c.wasm", json!({"say": "hi"})),
    ];
    p!(
        out,
        "| language | component | size | first start | cached start | guarded call |\n| --- | --- \
            | --- | --- | --- | --- |"
    );
    for (language, file, input) in tools {
        let component = dist.join(file);
        assert!(component.is_file(), "run plugins/build.sh first");
        let size = std::fs::metadata(&component).unwrap().len();
        let scratch = tempfile::tempdir().unwrap();

        let mut first = Vec::new();
        for i in 0..firsts {
            let cache = scratch.path().join(format!("cold-{i}"));
            first.push(rt.block_on(start(root, &component, &cache)).1);
        }
        let warm = scratch.path().join("cold-0");
        let mut cached = Vec::new();
        let mut last = None;
        for _ in 0..cacheds {
            let (b, took) = rt.block_on(start(root, &component, &warm));
            cached.push(took);
            last = Some(b);
        }
        let b = last.unwrap();
        let mut per_call = Vec::new();
        rt.block_on(async {
            for _ in 0..calls {
                let t0 = Instant::now();
                let o = b.call("t", input.clone()).await.unwrap();
                per_call.push(t0.elapsed());
                assert!(o.ok, "{o}");
            }
        });
        p!(
            out,
            "| {language} | `{file}` | {:.2} MB | {} | {} | {} |",
            size as f64 / 1e6,
            triple(summary(first)),
            triple(summary(cached)),
            triple(summary(per_call)),
        );
    }
    out
}
