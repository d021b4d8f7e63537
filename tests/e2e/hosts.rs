//! The proof for many hosts: three `backstop serve` hosts on one
//! PostgreSQL, each reaching it through a forwarder the harness controls,
//! drive queued runs that mix read-only steps, side effects with
//! `reconcile`, side effects without it and irreversible ones, while the
//! harness SIGKILLs hosts at random (and starts them again) and cuts one
//! off from the database for a while.
//!
//! It prints the figures: runs finished, runs needing attention by
//! reason, side effects executed twice for one key (must be 0), entries
//! written out of their lease's turn (must be 0), steps lost (must be 0),
//! and how long a dead host's runs waited to be resumed elsewhere.
//!
//! CI runs a short version; the full one:
//! `BACKSTOP_HOSTS_RUNS=300 BACKSTOP_HOSTS_SEED=7 cargo test --test e2e hosts:: -- --nocapture`

use crate::common::{serve_with, tempdir, write_config, Server, PRELUDE};
use crate::postgres::{through_a_cut, Cut};
use crate::runs::ledger_counts;
use backstop::journal::{EntryKind, RunStatus};
use backstop::store::postgres::scratch::Scratch;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const AGENTS: [&str; 4] = ["read", "reconciled", "unreconciled", "irreversible"];

fn config(root: &std::path::Path, state: &str) -> PathBuf {
    write_config(
        root,
        &format!(
            r#"state = "{state}"
{PRELUDE}
[tools.fault]
component = "{{plugins}}/fault.wasm"

[tools.ledger]
component = "{{plugins}}/ledger.wasm"
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[tools.unsure]
component = "{{plugins}}/fault.wasm"
effect = "side-effect"

[tools.publish]
component = "{{plugins}}/ledger.wasm"
effect = "irreversible"
approval = false
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[agents.read]
steps = [
  {{ name = "a", tool = "fault",
     input = {{ mode = "sleep", ms = 300, value = "{{{{task}}}}" }} }},
  {{ name = "b", tool = "fault",
     input = {{ mode = "echo", value = "{{{{steps.a.output.echo}}}}" }} }},
]

[agents.reconciled]
steps = [
  {{ name = "a", tool = "fault", input = {{ mode = "echo", value = "{{{{task}}}}" }} }},
  {{ name = "b", tool = "ledger",
     input = {{ entry = "{{{{task}}}}", sleep_before_ms = 120, sleep_after_ms = 120 }} }},
  {{ name = "c", tool = "fault", input = {{ mode = "sleep", ms = 100, value = "c" }} }},
]

[agents.unreconciled]
steps = [
  {{ name = "a", tool = "fault", input = {{ mode = "echo", value = "{{{{task}}}}" }} }},
  {{ name = "b", tool = "unsure", input = {{ mode = "sleep", ms = 250, value = "u" }} }},
]

[agents.irreversible]
steps = [
  {{ name = "a", tool = "publish", input = {{ entry = "{{{{task}}}}", sleep_before_ms = 200 }} }},
]
"#
        ),
    )
}

struct Host {
    server: Option<Server>,
    cut: Cut,
    config: PathBuf,
}

impl Host {
    fn start(&mut self) {
        self.server = Some(serve_with(&self.config, None, &["--workers", "4"]));
    }
}

#[test]
fn three_hosts_killed_and_cut_off_at_random_run_everything_once() {
    let Some(pg) = Scratch::new("hosts::three") else {
        return;
    };
    let runs: usize = std::env::var("BACKSTOP_HOSTS_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(90);
    let seed: u64 = std::env::var("BACKSTOP_HOSTS_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempdir();
    let root = dir.path().to_owned();
    std::fs::create_dir_all(root.join("ledger")).unwrap();
    let lease = Duration::from_secs(1);
    let mut hosts: Vec<Host> = (0..3)
        .map(|i| {
            let (cut, via) = through_a_cut(&pg, lease);
            let sub = root.join(format!("host{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let config = config(&root, &via);
            let own = sub.join("backstop.toml");
            std::fs::rename(&config, &own).unwrap();
            Host {
                server: None,
                cut,
                config: own,
            }
        })
        .collect();
    for h in &mut hosts {
        h.start();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = backstop::store::open(&pg.store_location()).unwrap();
    let api = crate::common::http();
    let mut ids = Vec::new();
    for n in 0..runs {
        let agent = AGENTS[n % AGENTS.len()];
        let h = &hosts[rng.random_range(0..3)];
        let base = h.server.as_ref().unwrap().base.clone();
        let body = json!({"agent": agent, "task": format!("t{n}"), "wait": false});
        let id = rt.block_on(async {
            let r = api.post(format!("{base}/v1/runs")).json(&body).send().await;
            let v: serde_json::Value = r.unwrap().json().await.unwrap();
            v["run"].as_str().map(str::to_owned)
        });
        ids.push((id.expect("queued"), agent));
    }
    // Chaos until every run has stopped.
    let t0 = Instant::now();
    let (mut kills, mut cuts) = (0, 0);
    let stopped = |rt: &tokio::runtime::Runtime| {
        ids.iter().all(|(id, _)| {
            let r = rt.block_on(store.run(id)).unwrap();
            r.status != RunStatus::Running && !r.queued
        })
    };
    let mut first = true;
    while !stopped(&rt) {
        if t0.elapsed() > Duration::from_secs(180) {
            let going: Vec<_> = ids
                .iter()
                .map(|(id, _)| rt.block_on(store.run(id)).unwrap())
                .filter(|r| r.status == RunStatus::Running || r.queued)
                .collect();
            panic!("runs still going after 3 minutes: {going:#?}");
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(150..400)));
        let i = rng.random_range(0..3);
        // The first blow lands for sure: a host killed with runs in hand.
        let blow = if std::mem::take(&mut first) {
            0
        } else {
            rng.random_range(0..10)
        };
        match blow {
            0..=1 => {
                // SIGKILL, and a new process in its place.
                hosts[i].server = None;
                kills += 1;
                hosts[i].start();
            }
            3 => {
                cuts += 1;
                hosts[i].cut.cut();
                std::thread::sleep(Duration::from_millis(1_500));
                hosts[i].cut.restore();
            }
            _ => {}
        }
    }
    let elapsed = t0.elapsed();
    drop(hosts);

    // The figures.
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lost = Vec::new();
    let mut waits = Vec::new();
    for (id, agent) in &ids {
        let r = rt.block_on(store.run(id)).unwrap();
        *by_status.entry(r.status.as_str()).or_default() += 1;
        let entries = rt.block_on(store.entries(id)).unwrap();
        // Every intent has its result, or the run stopped there for a person.
        for e in entries.iter().filter(|e| e.kind == EntryKind::ToolIntent) {
            let result = entries
                .iter()
                .any(|x| x.step == e.step && x.kind == EntryKind::ToolResult);
            let attention = entries
                .iter()
                .any(|x| x.step == e.step && x.kind == EntryKind::Attention);
            if !result && !attention {
                lost.push(format!("{id} ({agent}) step {}", e.step));
            }
        }
        for pair in entries.windows(2) {
            if pair[1].kind == EntryKind::Resumed {
                waits.push(pair[1].at - pair[0].at);
            }
        }
        if r.status == RunStatus::Finished {
            let steps = entries
                .iter()
                .filter(|e| e.kind == EntryKind::ToolResult)
                .count();
            let want = match *agent {
                "read" | "unreconciled" => 2,
                "reconciled" => 3,
                _ => 1,
            };
            assert_eq!(steps, want, "run {id} ({agent}): {entries:#?}");
        }
    }
    let escalations = rt
        .block_on(store.escalations(&backstop::escalation::Filter {
            all: true,
            ..Default::default()
        }))
        .unwrap();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for e in &escalations {
        *reasons.entry(e.reason.to_string()).or_default() += 1;
    }
    let twice: Vec<_> = ledger_counts(&root)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    let out_of_turn = pg.execute(
        "DO $$ BEGIN
           IF EXISTS (SELECT 1 FROM (
               SELECT token, lag(token) OVER (PARTITION BY rid ORDER BY seq) AS before
               FROM entries) t WHERE token < before)
           THEN RAISE EXCEPTION 'an entry was written out of its lease''s turn'; END IF;
         END $$",
    );
    waits.sort();
    println!(
        "hosts: {runs} runs on 3 hosts (seed {seed}) in {:.1}s with {kills} SIGKILLs and \
         {cuts} cuts from the database; by status {by_status:?}; needing attention by reason \
         {reasons:?}; side effects run twice for one key: {}; entries out of their lease's \
         turn: {}; steps lost: {}; a resumed run's wait since its last entry: median {} ms, \
         max {} ms over {} resumes",
        elapsed.as_secs_f64(),
        twice.len(),
        if out_of_turn.is_ok() { 0 } else { 1 },
        lost.len(),
        waits.get(waits.len() / 2).copied().unwrap_or(0),
        waits.last().copied().unwrap_or(0),
        waits.len(),
    );
    assert!(twice.is_empty(), "side effects run twice: {twice:?}");
    out_of_turn.unwrap();
    assert!(lost.is_empty(), "steps lost: {lost:?}");
    assert_eq!(
        by_status.get("failed"),
        None,
        "no run fails for the chaos alone: {by_status:?}"
    );
}
