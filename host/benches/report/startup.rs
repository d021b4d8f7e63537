//! Goal 7: start-up with many tools: first start (empty compiled-code
//! cache) and cached start (a new process's engine reading the cache).

use crate::stats::Spread;
use backstop::{Backstop, Config};
use std::path::Path;
use std::time::Instant;

/// `(tool name, component file)` for every tool of a config.
fn config(root: &Path, cache: &Path, tools: &[(&str, &str)]) -> Config {
    let mut text = format!("version = 1\ncache_dir = \"{}\"\n", cache.display());
    for (name, file) in tools {
        text.push_str(&format!(
            "[tools.{name}]\ncomponent = \"{}\"\n",
            root.join("plugins/dist").join(file).display()
        ));
    }
    Config::from_str(&text, "bench.toml", root).unwrap()
}

pub fn measure(
    root: &Path,
    tools: &[(&str, &str)],
    firsts: usize,
    cached: usize,
) -> (Spread, Spread) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let start = |cache: &Path| {
        let c = config(root, cache, tools);
        let t0 = Instant::now();
        let b = rt.block_on(Backstop::from_config(c)).unwrap();
        let took = t0.elapsed();
        drop(b);
        took
    };
    let first = (0..firsts)
        .map(|i| start(&scratch.path().join(format!("cold-{i}"))))
        .collect();
    let warm = scratch.path().join("cold-0");
    let again = (0..cached).map(|_| start(&warm)).collect();
    (Spread::of(first), Spread::of(again))
}
