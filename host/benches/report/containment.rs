//! The host as a whole under hostile load (issue 14): `/healthz` while 100
//! guests spin, `/healthz` while 16 runs journal at once, and `backstop run`
//! against stores holding 1k, 10k and 100k runs. Each beside a baseline
//! measured in the same run.

use crate::stats::fmt;
use backstop::{Backstop, Config};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn show(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        format!(
            "p50 {}, p99 {}, max {} ({} probes)",
            fmt(percentile(&v, 0.5)),
            fmt(percentile(&v, 0.99)),
            fmt(*v.last().unwrap_or(&Duration::ZERO)),
            v.len()
        )
    }

    fn p99(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        percentile(&v, 0.99)
    }
}

/// A server over `text` on 127.0.0.1, on a runtime like `backstop serve`'s.
struct Served {
    rt: tokio::runtime::Runtime,
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

fn serve(root: &Path, tools_and_agents: &str) -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version = 1\ncache_dir = \"{}\"\nstate = \"sqlite:{}\"\n{}",
        root.join("target/bench-cache").display(),
        dir.path().join("state.db").display(),
        tools_and_agents.replace("{dist}", &root.join("plugins/dist").display().to_string())
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    let b = Arc::new(rt.block_on(Backstop::from_config(config)).unwrap());
    let listener = rt
        .block_on(backstop::serve::bind(([127, 0, 0, 1], 0).into(), None))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(backstop::serve::serve(b, listener, None, async {
        let _ = stopped.await;
    }));
    Served {
        rt,
        base,
        stop: Some(stop),
        _dir: dir,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// `/healthz` latencies from a client on its own runtime (as an outside
/// prober would be), every 10 ms until `until` says stop.
fn probe(base: &str, n: usize) -> Latencies {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = backstop::models::http_client();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = client.get(format!("{base}/healthz")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            out.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Latencies(out)
    })
}

pub fn run(root: &Path, quick: bool) -> String {
    let mut page = String::new();
    spin_flood(root, &mut page);
    runs_under_load(root, quick, &mut page);
    store_sizes(root, quick, &mut page);
    page
}

fn spin_flood(root: &Path, page: &mut String) {
    let s = serve(
        root,
        "[tools.spinner]\ncomponent = \"{dist}/fault.wasm\"\ntimeout = \"1s\"\nretry = { attempts \
            = 1 }\nbreaker = { consecutive_failures = 0, failure_rate = 0.0 }\n",
    );
    let idle = probe(&s.base, 100);
    let base = s.base.clone();
    let calls = s.rt.spawn(async move {
        let client = backstop::models::http_client();
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (client, base) = (client.clone(), base.clone());
            set.spawn(async move {
                let o: serde_json::Value = client
                    .post(format!("{base}/v1/calls"))
                    .json(&serde_json::json!({"chain": "spinner", "input": {"mode": "spin"}}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(o["error"]["class"], "timeout", "{o}");
            });
        }
        let mut ends = Vec::new();
        while set.join_next().await.is_some() {
            ends.push(started.elapsed());
        }
        ends
    });
    std::thread::sleep(Duration::from_millis(100));
    let flood = probe(&s.base, 60);
    let ends = s.rt.block_on(calls).unwrap();
    p!(page, "### A spin flood\n");
    p!(
        page,
        "`backstop serve`'s server in this process; 100 concurrent `POST /v1/calls` of the \
        `fault` tool in `spin` mode (an endless loop), each with a 1 s timeout; `/healthz` probed \
        every 10 ms by a client on its own thread, idle first (the baseline) and then during \
        the flood. Before guests ran on their own pool and yielded at each epoch tick, \
        `/healthz` took 53.8 s during such a flood and the calls a median of 31 s (up \
        to 60 s).\n"
    );
    p!(page, "| | `/healthz` latency | \n| --- | --- |");
    p!(page, "| idle (baseline) | {} |", idle.show());
    p!(page, "| during the flood | {} |", flood.show());
    p!(
        page,
        "| ratio of p99s | {:.1}x |\n",
        flood.p99().as_secs_f64() / idle.p99().as_secs_f64().max(1e-9)
    );
    p!(
        page,
        "The 100 spinning calls ended (as `timeout`) between {} and {} after they were sent \
            (median {}): a spread of {} around their own 1 s deadline.\n",
        fmt(ends[0]),
        fmt(*ends.last().unwrap()),
        fmt(ends[ends.len() / 2]),
        fmt(*ends.last().unwrap() - ends[0])
    );
}

fn runs_under_load(root: &Path, quick: bool, page: &mut String) {
    let mut agents =
        String::from("[tools.fault]\ncomponent = \"{dist}/fault.wasm\"\n[agents.four]\n");
    for i in 0..4 {
        agents.push_str(&format!(
            "[[agents.four.steps]]\nname = \"s{i}\"\ntool = \"fault\"\ninput = {{ mode = \"echo\", \
                value = {i} }}\n"
        ));
    }
    let s = serve(root, &agents);
    let idle = probe(&s.base, 100);
    let base = s.base.clone();
    let seconds = if quick { 2 } else { 5 };
    let load = s.rt.spawn(async move {
        let client = backstop::models::http_client();
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (client, base) = (client.clone(), base.clone());
            set.spawn(async move {
                let mut runs = 0u64;
                while Instant::now() < until {
                    let o: serde_json::Value = client
                        .post(format!("{base}/v1/runs"))
                        .json(&serde_json::json!({"agent": "four", "task": "t"}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(o["status"], "finished", "{o}");
                    runs += 1;
                }
                runs
            });
        }
        let mut runs = 0;
        while let Some(n) = set.join_next().await {
            runs += n.unwrap();
        }
        runs
    });
    std::thread::sleep(Duration::from_millis(100));
    let busy = probe(&s.base, (seconds as usize * 1000 - 300) / 12);
    let runs = s.rt.block_on(load).unwrap();
    p!(page, "### Runs under load\n");
    p!(
        page,
        "16 clients each starting 4-step pipeline runs (`POST /v1/runs`, waiting for each to \
        finish; every step journals an intent and a result with fsync) back to back for {seconds} \
        s: {runs} runs. `/healthz` probed every 10 ms, idle first. Before journal writes were \
        taken off the async workers: p50 54 ms, max 731 ms.\n"
    );
    p!(page, "| | `/healthz` latency |\n| --- | --- |");
    p!(page, "| idle (baseline) | {} |", idle.show());
    p!(page, "| 16 runs at once | {} |", busy.show());
    p!(
        page,
        "| ratio of p99s | {:.1}x |\n",
        busy.p99().as_secs_f64() / idle.p99().as_secs_f64().max(1e-9)
    );
}

/// A store with `n` finished runs of 4 entries each, written directly.
fn big_store(path: &Path, n: usize) {
    {
        let _ = backstop::store::SqliteStore::open(path).unwrap();
    }
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut run = tx
            .prepare(
                "INSERT INTO runs (id, agent, task, status, step, started_at, updated_at, \
                output) VALUES (?1, 'one', 'history', 'finished', 1, 0, 0, '{}')",
            )
            .unwrap();
        let mut entry = tx
            .prepare(
                "INSERT INTO entries (rid, seq, kind, step, payload, checksum, at) VALUES \
                (?1, ?2, 'tool-result', 1, ?3, 0, 0)",
            )
            .unwrap();
        let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(200));
        for i in 0..n {
            run.execute([format!("h{i:012}")]).unwrap();
            let rid = tx.last_insert_rowid();
            for seq in 1..=4 {
                entry.execute(rusqlite::params![rid, seq, payload]).unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

fn store_sizes(root: &Path, quick: bool, page: &mut String) {
    let bin = env!("CARGO_BIN_EXE_backstop");
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let reps = if quick { 3 } else { 11 };
    p!(page, "### `backstop run` as the store grows\n");
    p!(
        page,
        "The release `backstop` binary running a one-step pipeline (`fault` echo) against a \
        store already holding N finished runs (4 journal entries each, 200-byte payloads), {reps} \
        runs each, median (min-max). Before the open check was made O(1) (a full `quick_check` \
        on every open): 16.5 ms on an empty store, 36.9 ms at 6,900 runs. Lock files left \
        in `state.db.locks/` afterwards are counted.\n"
    );
    p!(
        page,
        "| runs in the store | store size | `backstop run` | lock files left |\n| --- | --- | \
        --- | --- |"
    );
    let mut medians = Vec::new();
    for &n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        big_store(&state, n);
        let config = dir.path().join("backstop.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\ncache_dir = \"{}\"\nstate = \"sqlite:{}\"\n[tools.fault]\ncomponent \
                    = \"{}\"\n[agents.one]\nsteps = [{{ name = \"e\", tool = \"fault\", input = {{ \
                    mode = \"echo\", value = 1 }} }}]\n",
                root.join("target/bench-cache").display(),
                state.display(),
                root.join("plugins/dist/fault.wasm").display()
            ),
        )
        .unwrap();
        let mut times = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let out = std::process::Command::new(bin)
                .arg("-c")
                .arg(&config)
                .args(["run", "one", "--task", "t"])
                .output()
                .unwrap();
            times.push(t.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        times.sort();
        let size = std::fs::metadata(&state).map_or(0, |m| m.len());
        let locks = std::fs::read_dir(dir.path().join("state.db.locks")).map_or(0, |d| d.count());
        p!(
            page,
            "| {n} | {:.1} MB | {} ({}-{}) | {locks} |",
            size as f64 / 1e6,
            fmt(times[times.len() / 2]),
            fmt(times[0]),
            fmt(*times.last().unwrap())
        );
        medians.push(times[times.len() / 2]);
    }
    p!(
        page,
        "\nLargest store against the smallest: {:.2}x (goal: the same cost whatever the size).\n",
        medians.last().unwrap().as_secs_f64() / medians[0].as_secs_f64()
    );
}
