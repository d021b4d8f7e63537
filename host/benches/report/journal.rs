//! Goal 4: journal cost as a run grows (BENCH_STEPS steps, 10,000 by default).
//!
//! 1. Per-step cost: one step = a durable tool intent + a durable tool
//!    result (what the runner writes for a tool call), with the runner's
//!    snapshot cadence. Median of the steps around step 10 against the
//!    steps around the last step.
//! 2. Bytes on disk (after a WAL checkpoint) against the raw payload bytes.
//! 3. Resume: a real `Backstop::resume_run` of a pipeline with BENCH_STEPS
//!    steps that stopped for attention at its last step (the journal is
//!    written by the runner itself, with real component calls).

use backstop::journal::{EntryKind, Snapshot, SNAPSHOT_EVERY};
use backstop::store::SqliteStore;
use backstop::{Backstop, Config};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(steps: u64) -> String {
    let mut out = String::new();
    let dir = tempfile::tempdir().unwrap();

    // 1 and 2: the journal alone.
    let j = SqliteStore::open(dir.path().join("journal.db")).unwrap();
    j.create_run("rbench", "pipe", "bench").unwrap();
    let mut costs = Vec::new();
    let mut raw = 0usize;
    let mut seq = 0;
    for step in 1..=steps {
        let key = format!("rbench:{step}");
        let intent = json!({"chain": "search", "input": {"query": format!("query number \
            {step}")}, "key": key, "effect": "read-only"});
        let result = json!({"chain": "search", "key": key, "outcome": {
            "ok": true, "chain": "search", "key": key, "value": {"results": [{"file": "notes.md",
                "snippet": "a paragraph of text that answers the query", "score": 0.5}]},
            "confidence": 0.5, "served_by": "corpus", "degraded": true,
                "degraded_reason": "fallback: web_search: circuit open",
            "attempts": [{"target": "web_search", "attempt": 1, "class": "circuit-open",
                "elapsed_ms": 0, "delay_ms": 0, "then": "fail-over"},
                         {"target": "corpus", "attempt": 1, "class": "ok", "elapsed_ms": 1,
                             "delay_ms": 0, "then": "done"}],
            "elapsed_ms": 1}});
        raw += intent.to_string().len() + result.to_string().len();
        let t0 = Instant::now();
        j.append("rbench", EntryKind::ToolIntent, step, &intent)
            .unwrap();
        seq = j
            .append("rbench", EntryKind::ToolResult, step, &result)
            .unwrap();
        if seq % SNAPSHOT_EVERY < 2 {
            j.write_snapshot(
                "rbench",
                &Snapshot {
                    seq,
                    state: json!({"next": step}),
                },
            )
            .unwrap();
        }
        costs.push(t0.elapsed());
    }
    let n = costs.len();
    let early = median(costs[0..20.min(n)].to_vec());
    let late = median(costs[n.saturating_sub(21)..n].to_vec());
    let disk = j.size_on_disk().unwrap();
    p!(out, "journal: {steps} steps, {seq} entries");
    p!(
        out,
        "  per-step cost (intent + result, fsync'd): around step 10 {early:?}, around step \
        {steps} {late:?}, ratio {:.2} (goal <= 1.2)",
        late.as_secs_f64() / early.as_secs_f64()
    );
    p!(
        out,
        "  bytes on disk {disk} against raw payload {raw}: ratio {:.2} (goal <= 2)",
        disk as f64 / raw as f64
    );
    let t0 = Instant::now();
    let loaded = j.load("rbench").unwrap();
    p!(
        out,
        "  load for resume (snapshot + tail of {} entries): {:?}",
        loaded.tail.len(),
        t0.elapsed()
    );

    // 3: a real resume of a long pipeline run.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fault = root.join("plugins/dist/fault.wasm");
    assert!(fault.is_file(), "run plugins/build.sh first");
    let mut text = format!(
        "state = \"sqlite:{}\"\ncache_dir = \"{}\"\n[defaults.retry]\nattempts = \
            1\n[tools.fault]\ncomponent = \"{}\"\n[agents.long]\nsteps = [\n",
        dir.path().join("runs.db").display(),
        root.join("target/bench-cache").display(),
        fault.display()
    );
    for i in 1..steps {
        text.push_str(&format!(
            "  {{ name = \"s{i}\", tool = \"fault\", input = {{ mode = \
            \"echo\", value = {i} }} }},\n"
        ));
    }
    // The last step fails (a permanent error) so the run stops for
    // attention there, with every earlier step journaled.
    text.push_str(
        "  { name = \"last\", tool = \"fault\", input = { mode = \"fail\", class = \
        \"permanent\", value = \"{{steps.s1.output.echo}}\" } },\n]\n",
    );
    let config = Config::from_str(&text, "bench.toml", dir.path()).unwrap();
    let b = rt.block_on(Backstop::from_config(config)).unwrap();
    let t0 = Instant::now();
    let mut marks = Vec::new();
    let report = rt
        .block_on(b.run_agent("long", "bench", &mut |_| marks.push(Instant::now())))
        .unwrap();
    let run_time = t0.elapsed();
    let per_step: Vec<Duration> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    let k = per_step.len();
    let (early, late) = (
        median(per_step[1..21.min(k)].to_vec()),
        median(per_step[k.saturating_sub(21)..k - 1].to_vec()),
    );
    p!(
        out,
        "pipeline run: {} steps in {:?}, ended {}",
        report.step,
        run_time,
        report.status
    );
    p!(out,
        "  per-step cost of the whole step (tool call + journal): around step 10 {early:?}, around \
            step {steps} {late:?}, ratio {:.2} (goal <= 1.2)",
        late.as_secs_f64() / early.as_secs_f64()
    );
    let mut resumes = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = rt
            .block_on(b.resume_run(&report.run, &Default::default(), &mut |_| {}))
            .unwrap();
        resumes.push(t0.elapsed());
        assert_eq!(r.step, steps);
    }
    p!(
        out,
        "  resume of the {steps}-step run (replays from its snapshot, re-runs the failed last \
        step): median {:?} (goal <= 100 ms)",
        median(resumes)
    );
    out
}
