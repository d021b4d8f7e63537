//! Durable runs: a crash harness that SIGKILLs real processes, resume,
//! ambiguous state, one writer per run, drift and damaged state. Each case
//! runs on both stores: `NAME::sqlite` and `NAME::postgres` (a schema of
//! its own; skipped, and said so, off CI when no server answers).

use crate::common::{tempdir, write_config, PRELUDE};
use backstop::journal::{Entry, RunRecord};
use backstop::journal::{EntryKind, RunStatus};
use backstop::store::postgres::scratch::Scratch;
use backstop::store::{SqliteStore, Store, StoreError};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pipeline alternating read-only steps and ledger writes (a side effect
/// with `reconcile`), with pauses that give kills room to land anywhere:
/// before, inside and after each effect.
fn harness_config(state: &str) -> String {
    format!(
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

# Approval is switched off here: these tests are about resume, not approval.
[tools.publish]
component = "{{plugins}}/ledger.wasm"
effect = "irreversible"
approval = false
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[[agents.pipe.steps]]
name = "s1"
tool = "fault"
input = {{ mode = "sleep", ms = 15, value = "{{{{task}}}}" }}

[[agents.pipe.steps]]
name = "s2"
tool = "ledger"
input = {{ entry = "{{{{steps.s1.output.echo}}}}-2", sleep_before_ms = 15, sleep_after_ms = 15 }}

[[agents.pipe.steps]]
name = "s3"
tool = "fault"
input = {{ mode = "sleep", ms = 15, value = "{{{{steps.s2.output.entry}}}}-3" }}

[[agents.pipe.steps]]
name = "s4"
tool = "ledger"
input = {{ entry = "{{{{steps.s3.output.echo}}}}-4", sleep_before_ms = 15, sleep_after_ms = 15 }}

[[agents.pipe.steps]]
name = "s5"
tool = "fault"
input = {{ mode = "sleep", ms = 15, value = "{{{{steps.s4.output.entry}}}}-5" }}

[[agents.pipe.steps]]
name = "s6"
tool = "ledger"
input = {{ entry = "{{{{steps.s5.output.echo}}}}-6", sleep_before_ms = 15, sleep_after_ms = 15 }}

[[agents.pipe.steps]]
name = "s7"
tool = "fault"
input = {{ mode = "echo", value = "{{{{steps.s6.output.entry}}}}-7" }}

[agents.unsure]
steps = [
  {{ name = "a", tool = "fault", input = {{ mode = "echo", value = "x" }} }},
  {{ name = "b", tool = "unsure", input = {{ mode = "sleep", ms = 3000 }} }},
]

[agents.irreversible]
steps = [
  {{ name = "p", tool = "publish", input = {{ entry = "post", sleep_before_ms = 3000 }} }},
]

[agents.slow]
steps = [
  {{ name = "a", tool = "fault", input = {{ mode = "sleep", ms = 1500 }} }},
]
"#
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    /// Dropped after the store's users: declared last.
    pg: Option<Scratch>,
}

/// `None` when PostgreSQL is wanted and not there (off CI; said on stderr).
fn env(backend: Backend) -> Option<Env> {
    let dir = tempdir();
    let root = dir.path().to_owned();
    std::fs::create_dir_all(root.join("ledger")).unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(Scratch::new("runs")?),
    };
    let state = pg
        .as_ref()
        .map_or("sqlite:{dir}/state.db".to_owned(), |pg| pg.state());
    let config = write_config(&root, &harness_config(&state));
    Some(Env {
        _dir: dir,
        root,
        config,
        pg,
    })
}

impl Env {
    /// The test's view of the store the processes under test write.
    fn store(&self) -> Arc<dyn Store> {
        match &self.pg {
            Some(pg) => backstop::store::open(&pg.store_location()).unwrap(),
            None => Arc::new(journal(&self.root)),
        }
    }

    /// [`Env::store`] for tests that own their thread.
    fn journal(&self) -> Journal {
        Journal {
            store: self.store(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }
}

/// A store's reads, blocking, for tests that own their thread.
pub struct Journal {
    pub store: Arc<dyn Store>,
    rt: tokio::runtime::Runtime,
}

impl Journal {
    pub fn run(&self, id: &str) -> Result<RunRecord, StoreError> {
        self.rt.block_on(self.store.run(id))
    }
    pub fn entries(&self, id: &str) -> Result<Vec<Entry>, StoreError> {
        self.rt.block_on(self.store.entries(id))
    }
    pub fn find(&self, id: &str, step: u64, kind: EntryKind) -> Result<Option<Entry>, StoreError> {
        self.rt.block_on(self.store.find(id, step, kind))
    }
}

/// Each case once per backend: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::Backend::Sqlite)
            }
            #[test]
            fn postgres() {
                super::$name(super::Backend::Postgres)
            }
        }
    )*};
}

on_every_backend!(
    crash_harness_kill_anywhere_resume_never_repeats,
    a_side_effect_without_reconcile_killed_mid_call_needs_attention,
    an_irreversible_tool_is_never_rerun_on_resume,
    two_concurrent_resumers_exactly_one_proceeds,
    resume_refuses_drift_unless_allowed,
);

pub fn spawn(config: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts `run`, returns the child once it has printed the run id.
pub fn start(config: &Path, agent: &str, task: &str) -> (Child, String) {
    let mut child = spawn(config, &["run", agent, "--task", task]);
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let Some(id) = first.split_whitespace().nth(1).map(str::to_owned) else {
        let (_, out) = finish(child);
        panic!("no run id printed: {first:?}\n{out}");
    };
    (child, id)
}

pub fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Polls until `done`, failing the test after 30 s instead of hanging.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn ledger_counts(root: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let text = std::fs::read_to_string(root.join("ledger/ledger.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("ledger line {line:?}: {e}"));
        *counts
            .entry(v["key"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

pub fn journal(root: &Path) -> SqliteStore {
    SqliteStore::open(root.join("state.db")).unwrap()
}

fn final_echo(j: &Journal, run: &str) -> serde_json::Value {
    j.run(run).unwrap().output.unwrap_or_default()["echo"].clone()
}

fn crash_harness_kill_anywhere_resume_never_repeats(backend: Backend) {
    let Some(e) = env(backend) else {
        return;
    };
    let kills: usize = std::env::var("BACKSTOP_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("BACKSTOP_CRASH_SEED")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);

    // The uninterrupted run: its output and how long it takes.
    let t0 = Instant::now();
    let (child, base_id) = start(&e.config, "pipe", "t");
    let (code, out) = finish(child);
    assert_eq!(code, 0, "{out}");
    let span = t0.elapsed();
    let j = e.journal();
    let expected = final_echo(&j, &base_id);
    assert_eq!(expected, "t-2-3-4-5-6-7");

    let mut done = 0;
    let mut runs = Vec::new();
    while done < kills {
        let (mut child, id) = start(&e.config, "pipe", "t");
        std::thread::sleep(span.mul_f64(rng.random_range(0.0..1.0)));
        child.kill().unwrap();
        child.wait().unwrap();
        done += 1;
        // Resume until it finishes; some resumes are killed too.
        loop {
            let mut child = spawn(&e.config, &["resume", &id]);
            if done < kills && rng.random_bool(0.4) {
                std::thread::sleep(span.mul_f64(rng.random_range(0.0..1.0)));
                child.kill().unwrap();
                child.wait().unwrap();
                done += 1;
                continue;
            }
            let (code, out) = finish(child);
            assert_eq!(code, 0, "resume of {id} failed:\n{out}");
            break;
        }
        runs.push(id);
    }

    let ledger = ledger_counts(&e.root);
    for id in &runs {
        assert_eq!(j.run(id).unwrap().status, RunStatus::Finished, "{id}");
        assert_eq!(
            final_echo(&j, id),
            expected,
            "run {id} ended differently from the uninterrupted run"
        );
        let entries = j.entries(id).unwrap();
        for step in 1..=7u64 {
            let results = entries
                .iter()
                .filter(|x| x.step == step && x.kind == EntryKind::ToolResult)
                .count();
            assert_eq!(
                results, 1,
                "run {id}: step {step} journaled {results} times"
            );
        }
        for step in [2, 4, 6] {
            let key = format!("{id}:{step}");
            assert_eq!(
                ledger.get(&key),
                Some(&1),
                "run {id}: the ledger ran {:?} times for step {step}",
                ledger.get(&key)
            );
        }
    }
    println!(
        "crash harness: {done} kills over {} runs, seed {seed}",
        runs.len()
    );
}

fn a_side_effect_without_reconcile_killed_mid_call_needs_attention(backend: Backend) {
    let Some(e) = env(backend) else {
        return;
    };
    let (mut child, id) = start(&e.config, "unsure", "x");
    // Wait until the intent of step 2 is durable, then kill inside the tool.
    let j = e.journal();
    wait_until("the intent of step 2", || {
        j.find(&id, 2, EntryKind::ToolIntent).unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("step 1: fault: done earlier"), "{out}");
    assert!(
        out.contains("NEEDS ATTENTION at step 2: ambiguous-state (unsure)"),
        "{out}"
    );
    let run = j.run(&id).unwrap();
    assert_eq!(run.status, RunStatus::NeedsAttention);
    let att = j.find(&id, 2, EntryKind::Attention).unwrap().unwrap();
    assert_eq!(att.payload["reason"], "ambiguous-state");
    // Resuming again changes nothing and adds no duplicate record.
    let (code, _) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 3);
    let attentions = j
        .entries(&id)
        .unwrap()
        .iter()
        .filter(|x| x.kind == EntryKind::Attention)
        .count();
    assert_eq!(attentions, 1);
}

fn an_irreversible_tool_is_never_rerun_on_resume(backend: Backend) {
    let Some(e) = env(backend) else {
        return;
    };
    let (mut child, id) = start(&e.config, "irreversible", "x");
    let j = e.journal();
    wait_until("the publish intent", || {
        j.find(&id, 1, EntryKind::ToolIntent).unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("irreversible tools are never re-run on resume"),
        "{out}"
    );
    assert_eq!(
        ledger_counts(&e.root).get(&format!("{id}:1")),
        None,
        "it must not have run"
    );
}

fn two_concurrent_resumers_exactly_one_proceeds(backend: Backend) {
    let Some(e) = env(backend) else {
        return;
    };
    let (mut child, id) = start(&e.config, "slow", "x");
    child.kill().unwrap();
    child.wait().unwrap();
    let a = spawn(&e.config, &["resume", &id]);
    let b = spawn(&e.config, &["resume", &id]);
    let (ca, oa) = finish(a);
    let (cb, ob) = finish(b);
    let mut codes = [ca, cb];
    codes.sort();
    assert_eq!(codes, [0, 1], "a: {oa}\nb: {ob}");
    let loser = if ca == 1 { oa } else { ob };
    assert!(
        loser.contains(&format!("run {id} is active in another process")),
        "{loser}"
    );
    // And a run whose owner is alive cannot be resumed from outside.
    let (mut child, id) = start(&e.config, "slow", "y");
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 1, "{out}");
    // The pid (and, on a store shared by many hosts, the host) of the owner.
    assert!(out.contains("is active in another process ("), "{out}");
    assert!(out.contains(&format!("pid {})", child.id())), "{out}");
    child.kill().unwrap();
    child.wait().unwrap();
}

fn resume_refuses_drift_unless_allowed(backend: Backend) {
    let Some(e) = env(backend) else {
        return;
    };
    let (mut child, id) = start(&e.config, "slow", "x");
    // Drift is a change since the run started: wait for it to have.
    let j = e.journal();
    wait_until("run-started", || {
        j.find(&id, 0, backstop::journal::EntryKind::RunStarted)
            .ok()
            .flatten()
            .is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&e.config).unwrap();
    std::fs::write(&e.config, format!("{text}\n# edited\n")).unwrap();
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "run {id} was started with a different configuration: the config file changed"
        )),
        "{out}"
    );
    // A changed component is named too.
    let component = e.root.join("fault-copy.wasm");
    std::fs::copy(crate::common::plugins().join("cache.wasm"), &component).unwrap();
    std::fs::write(
        &e.config,
        text.replace(
            &format!("{}/fault.wasm", crate::common::plugins().display()),
            &component.display().to_string(),
        ),
    )
    .unwrap();
    let (_, out) = finish(spawn(&e.config, &["resume", &id]));
    assert!(
        out.contains("the component of tool `fault` changed"),
        "{out}"
    );
    // Back to the same components: only the config text differs now.
    std::fs::write(&e.config, format!("{text}\n# edited\n")).unwrap();
    let (code, out) = finish(spawn(&e.config, &["resume", &id, "--allow-drift"]));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn damaged_state_is_named_and_nothing_is_overwritten() {
    let e = env(Backend::Sqlite).unwrap();
    let mut ids = Vec::new();
    for task in ["a", "b"] {
        let (child, id) = start(&e.config, "pipe", task);
        assert_eq!(finish(child).0, 0);
        ids.push(id);
    }
    // A garbage entry in one run.
    let db = e.root.join("state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE entries SET payload = 'garbage' WHERE seq = 3 AND rid = (SELECT rid FROM runs \
            WHERE id = ?1)",
        [&ids[0]],
    )
    .unwrap();
    drop(conn);
    let (code, out) = finish(spawn(&e.config, &["runs", "show", &ids[0]]));
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "run {}: journal entry 3 is damaged: checksum mismatch",
            ids[0]
        )),
        "{out}"
    );
    let (code, out) = finish(spawn(&e.config, &["runs", "show", &ids[1]]));
    assert_eq!(code, 0, "other runs stay readable: {out}");
    let (code, out) = finish(spawn(&e.config, &["runs"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&ids[0]) && out.contains(&ids[1]), "{out}");

    // A truncated database file.
    let before = std::fs::read(&db).unwrap();
    let _ = std::fs::remove_file(e.root.join("state.db-wal"));
    let _ = std::fs::remove_file(e.root.join("state.db-shm"));
    let half = &before[..before.len() / 2];
    std::fs::write(&db, half).unwrap();
    let (code, out) = finish(spawn(&e.config, &["runs"]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("state.db") && !out.contains("panicked"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        half,
        "the damaged file must be left as it is"
    );
}

mod a_tool_loop_runs_tools_for_the_model_and_survives_a_kill {
    use super::Backend;
    #[tokio::test]
    async fn sqlite() {
        super::a_tool_loop_runs_tools_for_the_model_and_survives_a_kill(Backend::Sqlite).await
    }
    #[tokio::test]
    async fn postgres() {
        super::a_tool_loop_runs_tools_for_the_model_and_survives_a_kill(Backend::Postgres).await
    }
}

async fn a_tool_loop_runs_tools_for_the_model_and_survives_a_kill(backend: Backend) {
    use backstop::testkit::model::*;
    use backstop::testkit::ScriptedServer;
    let server = ScriptedServer::start(anthropic_text("unused"))
        .await
        .unwrap();
    server.push([
        anthropic_tool_use(
            "u1",
            "ledger",
            serde_json::json!({"entry": "note", "sleep_before_ms": 2000}),
        ),
        anthropic_text("all recorded"),
    ]);
    let Some(e) = env(backend) else {
        return;
    };
    let text = std::fs::read_to_string(&e.config).unwrap()
        + &format!(
            "\n[models.scripted]\nprovider = \"anthropic\"\nmodel = \"m\"\nbase_url = \
                \"{}\"\n\n[agents.loop]\nmodel = \"scripted\"\ntools = [\"ledger\"]\nmax_steps = \
                5\n",
            server.origin()
        );
    std::fs::write(&e.config, text).unwrap();
    let config = e.config.clone();
    let (mut child, id) =
        tokio::task::spawn_blocking(move || start(&config, "loop", "record a note"))
            .await
            .unwrap();
    let j = e.store();
    let deadline = Instant::now() + Duration::from_secs(30);
    while j
        .find(&id, 2, EntryKind::ToolIntent)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the ledger intent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let config = e.config.clone();
    let id2 = id.clone();
    let (code, out) =
        tokio::task::spawn_blocking(move || finish(spawn(&config, &["resume", &id2])))
            .await
            .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("step 1: scripted: done earlier"), "{out}");
    assert!(
        out.contains("step 2: ledger: reconciled: it had not happened"),
        "{out}"
    );
    assert!(out.contains("all recorded"), "{out}");
    assert_eq!(
        server.arrivals().len(),
        2,
        "the first model call was not repeated"
    );
    assert_eq!(ledger_counts(&e.root).get(&format!("{id}:2")), Some(&1));
    // The model saw the tool's marked result.
    let last: serde_json::Value = serde_json::from_str(&server.arrivals()[1].body).unwrap();
    let result = &last["messages"][2]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("\"served_by\":\"ledger\""),
        "{result}"
    );
}
