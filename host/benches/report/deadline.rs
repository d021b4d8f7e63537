//! Goal 6: a runaway tool (an infinite loop) is stopped within its
//! deadline plus one epoch tick.

use crate::stats::Spread;
use backstop::target::CallCtx;
use backstop::{Backstop, Config, FailureClass};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Figures {
    pub deadline: Duration,
    pub tick: Duration,
    pub stopped_after: Spread,
    pub overshoot: Spread,
}

pub fn measure(root: &Path, runs: usize) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = format!(
        "version = 1\ncache_dir = \"{}\"\n[tools.spin]\ncomponent = \"{}\"\n",
        root.join("target/bench-cache").display(),
        root.join("plugins/dist/fault.wasm").display()
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    let tick = config.engine.tick;
    let b = rt.block_on(Backstop::from_config(config)).unwrap();
    let tool = b.tool("spin").unwrap();
    let deadline = Duration::from_millis(100);
    let input = serde_json::json!({"mode": "spin"}).to_string();
    let mut stopped = Vec::new();
    for _ in 0..runs {
        let ctx = CallCtx {
            call_left: std::time::Duration::from_secs(3600),
            key: "k".into(),
            attempt: 1,
            timeout: deadline,
        };
        let t0 = Instant::now();
        let r = rt.block_on(tool.invoke(input.clone(), &ctx));
        stopped.push(t0.elapsed());
        assert_eq!(r.err().map(|f| f.class), Some(FailureClass::Timeout));
    }
    let overshoot = stopped.iter().map(|d| d.saturating_sub(deadline)).collect();
    Figures {
        deadline,
        tick,
        stopped_after: Spread::of(stopped),
        overshoot: Spread::of(overshoot),
    }
}
