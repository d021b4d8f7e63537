//! The PostgreSQL store through the real binary: `backstop migrate`, the
//! commands that only read, damage named through the CLI, and breakers
//! shared by two processes. Each test makes a schema of its own and drops
//! it (see `backstop::store::postgres::scratch`).

use crate::common::{tempdir, write_config, PRELUDE};
use crate::runs::{finish, spawn, start};
use backstop::store::postgres::scratch::Scratch;

fn config(dir: &std::path::Path, pg: &Scratch) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"state = "{}"
{PRELUDE}
[tools.fault]
component = "{{plugins}}/fault.wasm"

[agents.pipe]
steps = [
  {{ name = "a", tool = "fault", input = {{ mode = "echo", value = "{{{{task}}}}" }} }},
  {{ name = "b", tool = "fault",
     input = {{ mode = "echo", value = "{{{{steps.a.output.echo}}}}!" }} }},
]
"#,
            pg.state()
        ),
    )
}

#[test]
fn migrate_says_what_it_did_and_a_newer_schema_is_refused_unchanged() {
    let Some(pg) = Scratch::new("postgres::migrate") else {
        return;
    };
    let dir = tempdir();
    // A schema nobody made yet: `migrate` makes it.
    let fresh = pg
        .location()
        .with_schema(&format!("{}_m", pg.location().schema))
        .unwrap();
    let text = std::fs::read_to_string(config(dir.path(), &pg))
        .unwrap()
        .replace(&pg.state(), &fresh.url());
    let path = dir.path().join("fresh.toml");
    std::fs::write(&path, text).unwrap();
    let (code, out) = finish(spawn(&path, &["runs"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no runs in postgres://"), "{out}");
    // ... and a command that only reads created nothing.
    let (code, out) = finish(spawn(&path, &["migrate"]));
    assert_eq!(code, 0, "{out}");
    let known = backstop::store::postgres::schema_version();
    assert!(
        out.contains(&format!("schema migrated from version 0 to {known}")),
        "{out}"
    );
    assert!(!out.contains("password"), "{out}");
    let (code, out) = finish(spawn(&path, &["migrate"]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("schema at version {known}, up to date")),
        "{out}"
    );
    let (code, out) = finish(spawn(&path, &["runs"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no runs in postgres://"), "{out}");
    // A later backstop migrated it.
    pg.execute(&format!(
        "INSERT INTO \"{}\".backstop_schema VALUES (99, 0)",
        fresh.schema
    ))
    .unwrap();
    for args in [&["migrate"][..], &["runs"], &["run", "pipe", "--task", "x"]] {
        let (code, out) = finish(spawn(&path, args));
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(
            out.contains(&format!(
                "its schema is at version 99, newer than this backstop knows ({known})"
            )),
            "{args:?}: {out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
    pg.execute(&format!("DROP SCHEMA \"{}\" CASCADE", fresh.schema))
        .unwrap();
}

#[test]
fn runs_are_listed_shown_and_damage_is_named_through_the_cli() {
    let Some(pg) = Scratch::new("postgres::runs") else {
        return;
    };
    let dir = tempdir();
    let path = config(dir.path(), &pg);
    let mut ids = Vec::new();
    for task in ["one", "two"] {
        let (child, id) = start(&path, "pipe", task);
        let (code, out) = finish(child);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(&format!("{task}!")), "{out}");
        ids.push(id);
    }
    let (code, out) = finish(spawn(&path, &["runs"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&ids[0]) && out.contains(&ids[1]), "{out}");
    let (code, out) = finish(spawn(&path, &["runs", "show", &ids[0], "--json"]));
    assert_eq!(code, 0, "{out}");
    let shown: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(shown["run"]["status"], "finished");
    assert_eq!(shown["entries"].as_array().unwrap().len(), 6, "{shown}");
    let (code, out) = finish(spawn(&path, &["status", "--json"]));
    assert_eq!(code, 0, "{out}");
    pg.execute(&format!(
        "UPDATE entries SET payload = 'garbage' WHERE seq = 3 \
         AND rid = (SELECT rid FROM runs WHERE id = '{}')",
        ids[0]
    ))
    .unwrap();
    let (code, out) = finish(spawn(&path, &["runs", "show", &ids[0]]));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "run {}: journal entry 3 is damaged: checksum mismatch",
            ids[0]
        )),
        "{out}"
    );
    let (code, out) = finish(spawn(&path, &["resume", &ids[0]]));
    assert_eq!(code, 1, "a damaged run is not resumed: {out}");
    let (code, out) = finish(spawn(&path, &["runs", "show", &ids[1]]));
    assert_eq!(code, 0, "other runs stay readable: {out}");
}

#[test]
fn a_breaker_forced_open_from_one_process_holds_in_another() {
    let Some(pg) = Scratch::new("postgres::breakers") else {
        return;
    };
    let dir = tempdir();
    let path = config(dir.path(), &pg);
    let (code, out) = finish(spawn(
        &path,
        &["breakers", "force-open", "fault", "--by", "ops"],
    ));
    assert_eq!(code, 0, "{out}");
    let (code, out) = finish(spawn(
        &path,
        &[
            "call",
            "fault",
            "--input",
            r#"{"mode":"echo","value":"x"}"#,
            "--json",
        ],
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("circuit-open"), "{out}");
    let (code, out) = finish(spawn(&path, &["breakers", "--json"]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#""forced": "open""#) && out.contains("ops"),
        "{out}"
    );
    let (code, out) = finish(spawn(&path, &["breakers", "reset", "fault"]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = finish(spawn(
        &path,
        &["call", "fault", "--input", r#"{"mode":"echo","value":"x"}"#],
    ));
    assert_eq!(code, 0, "{out}");
}

/// A host paused past its lease (SIGSTOP) while its tool runs: another
/// takes the run over and finishes it; the paused one, woken, writes
/// nothing more for it and says why. No entry lands out of its holder's
/// turn (the entries' fencing tokens never go down).
#[test]
fn a_zombie_owner_woken_after_a_takeover_writes_nothing() {
    let Some(pg) = Scratch::new("postgres::zombie") else {
        return;
    };
    let dir = tempdir();
    let mut at = pg.location().clone();
    at.lease = std::time::Duration::from_secs(1);
    let text = std::fs::read_to_string(config(dir.path(), &pg))
        .unwrap()
        .replace(&pg.state(), &at.url())
        + r#"
[agents.slow]
steps = [
  { name = "a", tool = "fault", input = { mode = "sleep", ms = 2500, value = "s" } },
  { name = "b", tool = "fault", input = { mode = "echo", value = "done" } },
]
"#;
    let path = dir.path().join("zombie.toml");
    std::fs::write(&path, text).unwrap();
    let store = backstop::store::open(&pg.store_location()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (zombie, id) = start(&path, "slow", "t");
    crate::runs::wait_until("the intent of step 1", || {
        rt.block_on(store.find(&id, 1, backstop::journal::EntryKind::ToolIntent))
            .unwrap()
            .is_some()
    });
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &zombie.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    // Refused while the paused owner's lease lasts; taken once it ends.
    let mut refused = 0;
    let taken = loop {
        let (code, out) = finish(spawn(&path, &["resume", &id]));
        if code == 0 {
            break out;
        }
        assert!(out.contains("is active in another process ("), "{out}");
        refused += 1;
        assert!(refused < 200, "never taken over: {out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(taken.contains("done"), "{taken}");
    signal("-CONT");
    let (code, out) = finish(zombie);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("lease on it was taken over by"), "{out}");
    let entries = rt.block_on(store.entries(&id)).unwrap();
    for step in [1, 2] {
        let results = entries
            .iter()
            .filter(|e| e.step == step && e.kind == backstop::journal::EntryKind::ToolResult)
            .count();
        assert_eq!(results, 1, "step {step}: {entries:#?}");
    }
    let run = rt.block_on(store.run(&id)).unwrap();
    assert_eq!(run.status, backstop::journal::RunStatus::Finished);
    // Each entry carries the token of the lease it was written under: a
    // lower one after a higher one would be a write out of turn.
    pg.execute(
        "DO $$ BEGIN
           IF EXISTS (SELECT 1 FROM (
               SELECT token, lag(token) OVER (PARTITION BY rid ORDER BY seq) AS before
               FROM entries) t WHERE token < before)
           THEN RAISE EXCEPTION 'an entry was written without the lease'; END IF;
         END $$",
    )
    .unwrap();
    drop(store);
    drop(rt);
}

/// A TCP forwarder between a host and PostgreSQL that the test can cut
/// (every connection dropped, new ones refused at once) and restore: a
/// host losing its database without touching the server other hosts use.
pub struct Cut {
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    _rt: tokio::runtime::Runtime,
}

impl Cut {
    pub fn start(to: std::net::SocketAddr) -> Cut {
        use std::sync::atomic::Ordering;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, c) = (down.clone(), conns.clone());
        rt.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Cut {
            port,
            down,
            conns,
            _rt: rt,
        }
    }

    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A forwarder to `pg`'s server, and the `state` URL (with `lease`) that
/// reaches the server through it.
pub fn through_a_cut(pg: &Scratch, lease: std::time::Duration) -> (Cut, String) {
    let config = pg.location().config();
    let server = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test server is not on TCP: {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let to = std::net::ToSocketAddrs::to_socket_addrs(&(server.as_str(), port))
        .unwrap()
        .next()
        .unwrap();
    let cut = Cut::start(to);
    let mut at = pg.location().clone();
    at.lease = lease;
    let via = at
        .url()
        .replacen(&format!(":{port}/"), &format!(":{}/", cut.port), 1);
    assert!(via.contains(&cut.port.to_string()), "{via}");
    (cut, via)
}

/// A host cut off from the database while its run's side effect is under
/// way: it says so in /healthz and /metrics, starts no step, and once the
/// database is back the run goes on (here or on the next claim) with the
/// side effect reconciled, not repeated.
#[test]
fn a_host_cut_off_from_the_database_stops_then_goes_on_with_nothing_twice() {
    let Some(pg) = Scratch::new("postgres::cut") else {
        return;
    };
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("ledger")).unwrap();
    let (cut, via) = through_a_cut(&pg, std::time::Duration::from_secs(1));
    let text = std::fs::read_to_string(config(dir.path(), &pg))
        .unwrap()
        .replace(&pg.state(), &via)
        + r#"
[tools.ledger]
component = "{plugins}/ledger.wasm"
dirs = [{ host = "{dir}/ledger", guest = "/ledger", mode = "rw" }]

[agents.paid]
steps = [
  { name = "a", tool = "fault", input = { mode = "echo", value = "x" } },
  { name = "b", tool = "ledger", input = { entry = "pay", sleep_before_ms = 700 } },
  { name = "c", tool = "fault", input = { mode = "echo", value = "done" } },
]
"#;
    let path = write_config(dir.path(), &text);
    let host = crate::common::serve_with(&path, None, &["--workers", "1"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = crate::common::http();
    let get = |p: &str| {
        let req = api.get(format!("{}{p}", host.base));
        rt.block_on(async {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    assert_eq!(get("/healthz").0, 200);
    // The test's own view of the store, not through the cut.
    let store = backstop::store::open(&pg.store_location()).unwrap();
    let id = rt
        .block_on(async {
            let req = api
                .post(format!("{}/v1/runs", host.base))
                .json(&serde_json::json!({"agent": "paid", "task": "t", "wait": false}));
            req.send().await.unwrap().json::<serde_json::Value>().await
        })
        .unwrap()["run"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::runs::wait_until("the ledger's intent", || {
        rt.block_on(store.find(&id, 2, backstop::journal::EntryKind::ToolIntent))
            .unwrap()
            .is_some()
    });
    cut.cut();
    let (code, body) = get("/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("not ready") && body.contains("state store"),
        "{body}"
    );
    assert!(
        !body.contains("postgres://") && !body.contains("127.0.0.1"),
        "an answer without a token names no host: {body}"
    );
    let (_, metrics) = get("/metrics");
    assert!(metrics.contains("backstop_store_up 0"), "{metrics}");
    // The ledger's write happened; its result could not be journaled.
    crate::runs::wait_until("the ledger's write", || {
        crate::runs::ledger_counts(dir.path()).get(&format!("{id}:2")) == Some(&1)
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let entries = rt.block_on(store.entries(&id)).unwrap();
    assert!(
        !entries
            .iter()
            .any(|e| e.step == 3 && e.kind == backstop::journal::EntryKind::ToolIntent),
        "no step starts while the store is unreachable: {entries:#?}"
    );
    cut.restore();
    crate::runs::wait_until("the run to finish once the store is back", || {
        let r = rt.block_on(store.run(&id)).unwrap();
        r.status == backstop::journal::RunStatus::Finished && !r.queued
    });
    assert_eq!(get("/healthz").0, 200);
    let (_, metrics) = get("/metrics");
    assert!(metrics.contains("backstop_store_up 1"), "{metrics}");
    assert_eq!(
        crate::runs::ledger_counts(dir.path()).get(&format!("{id}:2")),
        Some(&1),
        "the side effect was reconciled, not repeated"
    );
    let entries = rt.block_on(store.entries(&id)).unwrap();
    for step in 1..=3 {
        let n = entries
            .iter()
            .filter(|e| e.step == step && e.kind == backstop::journal::EntryKind::ToolResult)
            .count();
        assert_eq!(n, 1, "step {step}: {entries:#?}");
    }
    drop(host);
    drop(store);
    drop(rt);
}
