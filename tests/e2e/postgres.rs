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
