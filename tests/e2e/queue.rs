//! The durable run queue through real processes: `run --detach` and
//! `wait: false` queue a run in the store; `backstop serve` workers claim
//! and drive it; a host killed mid-run leaves it to the next worker (on
//! SQLite the next `serve` on the machine, on PostgreSQL any other host
//! once the lease ends); a person's resolution queues the run to go on.
//! Each case runs on both stores.

use crate::common::{http, serve_with, tempdir, write_config, Server, PRELUDE};
use crate::runs::{finish, ledger_counts, spawn, wait_until, Backend};
use backstop::journal::{EntryKind, RunStatus};
use backstop::store::postgres::scratch::Scratch;
use backstop::store::Store;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    store: Arc<dyn Store>,
    rt: tokio::runtime::Runtime,
    _pg: Option<Scratch>,
}

fn env(backend: Backend, test: &str) -> Option<Env> {
    let dir = tempdir();
    let root = dir.path().to_owned();
    std::fs::create_dir_all(root.join("ledger")).unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(Scratch::new(test)?),
    };
    let state = match &pg {
        Some(pg) => {
            // A short lease, so a dead host's runs move on quickly.
            let mut at = pg.location().clone();
            at.lease = std::time::Duration::from_secs(1);
            at.url()
        }
        None => "sqlite:{dir}/state.db".to_owned(),
    };
    let config = write_config(
        &root,
        &format!(
            r#"state = "{state}"
{PRELUDE}
[tools.fault]
component = "{{plugins}}/fault.wasm"

[tools.ledger]
component = "{{plugins}}/ledger.wasm"
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[tools.publish]
component = "{{plugins}}/ledger.wasm"
effect = "irreversible"
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[agents.slow]
steps = [
  {{ name = "a", tool = "fault", input = {{ mode = "sleep", ms = 600, value = "{{{{task}}}}" }} }},
  {{ name = "b", tool = "ledger",
     input = {{ entry = "{{{{steps.a.output.echo}}}}", sleep_before_ms = 300 }} }},
  {{ name = "c", tool = "fault", input = {{ mode = "echo", value = "{{{{task}}}}-done" }} }},
]

[agents.checked]
steps = [{{ name = "p", tool = "publish", input = {{ entry = "{{{{task}}}}" }} }}]
"#
        ),
    );
    let at = match &pg {
        Some(pg) => pg.store_location(),
        None => backstop::store::Location::Sqlite(root.join("state.db")),
    };
    let store = backstop::store::open(&at).unwrap();
    Some(Env {
        _dir: dir,
        root,
        config,
        store,
        rt: tokio::runtime::Runtime::new().unwrap(),
        _pg: pg,
    })
}

impl Env {
    fn run(&self, id: &str) -> backstop::journal::RunRecord {
        self.rt.block_on(self.store.run(id)).unwrap()
    }

    fn finished(&self, id: &str) {
        // A run that stopped leaves the queue (just after its last write).
        wait_until(&format!("run {id} to stop and leave the queue"), || {
            let r = self.run(id);
            r.status != RunStatus::Running && !r.queued
        });
        let r = self.run(id);
        assert_eq!(r.status, RunStatus::Finished, "{r:?}");
    }

    /// Every step's result journaled once, the ledger written once.
    fn once_each(&self, id: &str) {
        let entries = self.rt.block_on(self.store.entries(id)).unwrap();
        for step in 1..=3 {
            let n = entries
                .iter()
                .filter(|e| e.step == step && e.kind == EntryKind::ToolResult)
                .count();
            assert_eq!(n, 1, "run {id} step {step}: {entries:#?}");
        }
        assert_eq!(ledger_counts(&self.root).get(&format!("{id}:2")), Some(&1));
    }
}

fn detach(config: &Path, agent: &str, task: &str) -> String {
    let (code, out) = finish(spawn(config, &["run", agent, "--task", task, "--detach"]));
    assert_eq!(code, 0, "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    assert!(out.contains("queued"), "{out}");
    id
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(crate::runs::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(crate::runs::Backend::Postgres)
            }
        }
    )*};
}

on_every_backend!(
    a_detached_run_waits_for_a_worker_and_survives_its_host_being_killed,
    a_resolution_queues_the_run_for_any_worker,
);

fn a_detached_run_waits_for_a_worker_and_survives_its_host_being_killed(backend: Backend) {
    let Some(e) = env(backend, "queue::detached") else {
        return;
    };
    let id = detach(&e.config, "slow", "t");
    let r = e.run(&id);
    assert!(r.queued && r.status == RunStatus::Running, "{r:?}");
    assert!(
        e.rt.block_on(e.store.entries(&id)).unwrap().is_empty(),
        "nothing runs before a worker claims it"
    );
    // A host starts, claims it, and is killed while it runs.
    let first: Server = serve_with(&e.config, None, &["--workers", "2"]);
    wait_until("the run to start", || {
        e.rt.block_on(e.store.find(&id, 1, EntryKind::ToolIntent))
            .unwrap()
            .is_some()
    });
    drop(first);
    // The next host takes it up and finishes it, without repeating the
    // ledger's write.
    let _second = serve_with(&e.config, None, &["--workers", "2"]);
    e.finished(&id);
    e.once_each(&id);
    assert_eq!(e.run(&id).output.unwrap()["echo"], "t-done");
}

fn a_resolution_queues_the_run_for_any_worker(backend: Backend) {
    let Some(e) = env(backend, "queue::resolution") else {
        return;
    };
    let server = serve_with(&e.config, None, &[]);
    let api = http();
    let post = |path: &str, body: serde_json::Value| {
        let req = api.post(format!("{}{path}", server.base)).json(&body);
        e.rt.block_on(async {
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<serde_json::Value>().await.unwrap())
        })
    };
    let (code, started) = post(
        "/v1/runs",
        json!({"agent": "checked", "task": "post", "wait": false}),
    );
    assert_eq!(
        (code, started["queued"].as_bool()),
        (202, Some(true)),
        "{started}"
    );
    let id = started["run"].as_str().unwrap().to_owned();
    // Stopped for a person: out of the queue.
    wait_until("the run to stop for approval and leave the queue", || {
        let r = e.run(&id);
        r.status == RunStatus::NeedsAttention && !r.queued
    });
    let esc =
        e.rt.block_on(e.store.escalations(&Default::default()))
            .unwrap()
            .remove(0);
    let (code, resolved) = post(
        &format!("/v1/escalations/{}/resolve", esc.id),
        json!({"resolution": {"kind": "approve"}, "by": "ann", "resume": true, "wait": false}),
    );
    assert_eq!(code, 200, "{resolved}");
    assert_eq!(resolved["run"]["queued"], true, "{resolved}");
    e.finished(&id);
    assert_eq!(ledger_counts(&e.root).get(&format!("{id}:1")), Some(&1));
}

/// Two hosts on one PostgreSQL drive a batch of queued runs between them
/// (queued through either): every run finishes, each step once.
#[test]
fn two_hosts_share_the_queue_and_drive_each_run_once() {
    let Some(e) = env(Backend::Postgres, "queue::two_hosts") else {
        return;
    };
    let hosts = [
        serve_with(&e.config, None, &["--workers", "3"]),
        serve_with(&e.config, None, &["--workers", "3"]),
    ];
    let api = http();
    let ids: Vec<String> = (0..12)
        .map(|n| {
            let req = api
                .post(format!("{}/v1/runs", hosts[n % 2].base))
                .json(&json!({"agent": "slow", "task": format!("t{n}"), "wait": false}));
            e.rt.block_on(async {
                let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
                v["run"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    for id in &ids {
        e.finished(id);
        e.once_each(id);
    }
}
