//! What every backend must do, run against each: SQLite on a temporary
//! file, PostgreSQL on a schema of the test's own (see
//! [`super::postgres::scratch`]).

use super::postgres::scratch::Scratch;
use super::*;
use crate::escalation::{Escalation, Filter, Resolution};
use crate::journal::{EntryKind, RunStatus, Snapshot};
use crate::outcome::EscalationReason;
use serde_json::json;

/// A store and what keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    at: Location,
    _dir: Option<tempfile::TempDir>,
    pg: Option<Scratch>,
}

fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let at = Location::Sqlite(dir.path().join("state.db"));
    Fixture {
        store: open(&at).unwrap(),
        at,
        _dir: Some(dir),
        pg: None,
    }
}

fn postgres(test: &str) -> Option<Fixture> {
    let pg = Scratch::new(test)?;
    let at = pg.store_location();
    Some(Fixture {
        store: open(&at).unwrap(),
        at,
        _dir: None,
        pg: Some(pg),
    })
}

/// Each case once per backend: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name(super::sqlite()).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                if let Some(f) = super::postgres(concat!("store::", stringify!($name))) {
                    super::$name(f).await
                }
            }
        }
    )*};
}

on_every_backend!(
    appends_loads_and_snapshots,
    first_resolution_wins_and_secrets_are_redacted,
    breaker_writes_are_versioned_and_forced_states_hold,
    migrating_again_is_a_no_op_and_a_newer_schema_is_refused,
    the_run_queue_claims_due_runs_and_dequeues_by_generation,
);

async fn the_run_queue_claims_due_runs_and_dequeues_by_generation(f: Fixture) {
    use crate::journal::Claimed;
    let q = &f.store;
    q.create_queued_run("r1", "a", "t").await.unwrap();
    q.create_run("r2", "a", "t").await.unwrap();
    assert!(q.run("r1").await.unwrap().queued);
    assert!(!q.run("r2").await.unwrap().queued);
    let claimed = q.claim(10).await.unwrap();
    let first = Claimed {
        run: "r1".into(),
        gen: 1,
    };
    assert_eq!(claimed, std::slice::from_ref(&first));
    assert!(
        q.claim(10).await.unwrap().is_empty(),
        "claimed: not due again yet"
    );
    // Queued again meanwhile (a person resolved it): the old claim cannot
    // take it out of the queue.
    q.enqueue("r1").await.unwrap();
    q.dequeue(&first).await.unwrap();
    assert!(q.run("r1").await.unwrap().queued);
    q.drop_lease("r1");
    let again = q.claim(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].gen, 2);
    q.dequeue(&again[0]).await.unwrap();
    assert!(!q.run("r1").await.unwrap().queued);
    q.drop_lease("r1");
    assert!(matches!(
        q.enqueue("nope").await,
        Err(StoreError::NoSuchRun(_))
    ));
}

async fn appends_loads_and_snapshots(f: Fixture) {
    let j = &f.store;
    j.create_run("r1", "agent", "task").await.unwrap();
    for step in 1..=5 {
        let seq = j
            .append("r1", EntryKind::ToolIntent, step, &json!({"n": step}))
            .await
            .unwrap();
        assert_eq!(seq, step);
    }
    j.write_snapshot(
        "r1",
        &Snapshot {
            seq: 3,
            state: json!({"next": 4}),
        },
    )
    .await
    .unwrap();
    let l = j.load("r1").await.unwrap();
    assert_eq!(l.snapshot.unwrap().state["next"], 4);
    assert_eq!(l.tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(l.run.step, 5);
    let found = j.find("r1", 2, EntryKind::ToolIntent).await.unwrap();
    assert_eq!(found.unwrap().payload["n"], 2);
    assert_eq!(j.find("r1", 2, EntryKind::ToolResult).await.unwrap(), None);
    assert!(matches!(
        j.find("nope", 1, EntryKind::ToolIntent).await,
        Err(StoreError::NoSuchRun(_))
    ));
    assert!(matches!(
        j.load("nope").await,
        Err(StoreError::NoSuchRun(_))
    ));
    assert!(matches!(
        j.append("nope", EntryKind::ToolIntent, 1, &json!({})).await,
        Err(StoreError::NoSuchRun(_))
    ));
    j.set_status("r1", RunStatus::Finished, 6, Some(&json!({"done": true})))
        .await
        .unwrap();
    j.set_owner("r1", Some(42)).await.unwrap();
    let r = j.run("r1").await.unwrap();
    assert_eq!(
        (r.status, r.step, r.output, r.owner_pid),
        (
            RunStatus::Finished,
            6,
            Some(json!({"done": true})),
            Some(42)
        )
    );
    j.create_run("r2", "agent", "task 2").await.unwrap();
    let ids: Vec<String> = j
        .recent_runs(1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["r2"]);
    assert_eq!(j.runs().await.unwrap().len(), 2);
    assert_eq!(j.entries("r1").await.unwrap().len(), 5);
    assert!(!f.store.location().is_empty());
    // A second handle (another process) sees the same journal and goes on
    // from its end.
    let other = open(&f.at).unwrap();
    assert_eq!(other.load("r1").await.unwrap().tail.len(), 2);
    let seq = other
        .append("r1", EntryKind::Resumed, 6, &json!({}))
        .await
        .unwrap();
    assert_eq!(seq, 6);
}

pub(in crate::store) fn esc(id: &str, reason: EscalationReason) -> Escalation {
    Escalation {
        id: id.into(),
        run: "r1".into(),
        step: 2,
        reason,
        chain: "publish".into(),
        input: json!({"entry": "x", "api_key": "sk-1", "nested": {"auth_token": "t"}}),
        key: "r1:2".into(),
        message: "needs approval".into(),
        attempts: Vec::new(),
        allowed: Vec::new(),
        created_at: 0,
        resolved_at: None,
        resolved_by: None,
        resolution: None,
    }
}

async fn first_resolution_wins_and_secrets_are_redacted(f: Fixture) {
    let q = &f.store;
    let (e, new) = q
        .escalate(esc("e1", EscalationReason::ApprovalRequired))
        .await
        .unwrap();
    assert!(new);
    assert_eq!(e.input["api_key"], "[redacted]");
    assert_eq!(e.input["nested"]["auth_token"], "[redacted]");
    let (again, new) = q
        .escalate(esc("e2", EscalationReason::ApprovalRequired))
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(again.id, "e1");
    let bad = q.resolve("e1", Resolution::Retry, "ann").await.unwrap_err();
    assert!(
        bad.to_string()
            .contains("does not allow `retry`; allowed: approve, reject, abort"),
        "{bad}"
    );
    assert!(matches!(
        q.resolve("nope", Resolution::Approve, "ann").await,
        Err(QueueError::NoSuch(_))
    ));
    // Two resolvers at once (two hosts): exactly one wins.
    let other = open(&f.at).unwrap();
    let reject = Resolution::Reject {
        comment: "no".into(),
    };
    let (a, b) = tokio::join!(
        q.resolve("e1", Resolution::Approve, "ann"),
        other.resolve("e1", reject, "bob")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.first != b.first, "one and only one resolution wins");
    assert_eq!(a.escalation.resolution, b.escalation.resolution);
    let stats = q.escalation_stats().await.unwrap();
    assert_eq!((stats.open, stats.resolved), (0, 1));
    assert!(q.escalations(&Filter::default()).await.unwrap().is_empty());
    let all = Filter {
        all: true,
        ..Filter::default()
    };
    assert_eq!(q.escalations(&all).await.unwrap().len(), 1);
    // Once resolved, the same step can be escalated anew.
    let (e3, new) = q
        .escalate(esc("e3", EscalationReason::NeedsHuman))
        .await
        .unwrap();
    assert!(new && e3.id == "e3");
    let by_reason = Filter {
        reason: Some(EscalationReason::NeedsHuman),
        run: Some("r1".into()),
        ..Filter::default()
    };
    assert_eq!(q.escalations(&by_reason).await.unwrap().len(), 1);
    let stats = q.escalation_stats().await.unwrap();
    assert_eq!(stats.open, 1);
    assert_eq!(stats.by_reason, [("needs-human".to_owned(), 1)]);
    let old = Filter {
        older_than_ms: Some(3_600_000),
        ..Filter::default()
    };
    assert!(q.escalations(&old).await.unwrap().is_empty());
}

async fn breaker_writes_are_versioned_and_forced_states_hold(f: Fixture) {
    let s = f.store.breakers().unwrap();
    let s = s.as_ref();
    assert_eq!(s.read("t").unwrap(), None);
    assert_eq!(s.write("t", Some(5_000), 7).unwrap(), 1);
    assert_eq!(s.write("t", None, 8).unwrap(), 2);
    assert_eq!(s.write("t", Some(9_000), 7).unwrap(), 3);
    let r = s.read("t").unwrap().unwrap();
    assert_eq!(
        (r.state, r.open_until, r.opened, r.writer),
        (RowState::Open, 9_000, 2, 7)
    );
    let other = open(&f.at).unwrap().breakers().unwrap();
    assert_eq!(other.all().unwrap(), vec![r]);
    // Probes: at most `max` per claim window, across handles.
    assert!(s.claim_probe("t", 1, 60_000).unwrap());
    assert!(!other.claim_probe("t", 1, 60_000).unwrap());
    assert!(s.claim_probe("unknown", 1, 60_000).unwrap());
    assert_eq!(s.set("t", RowState::ForcedOpen, "alice", 1).unwrap(), 4);
    assert_eq!(s.write("t", None, 2).unwrap(), 4, "a forced state holds");
    assert!(!s.claim_probe("t", 1, 1_000).unwrap());
    let r = s.read("t").unwrap().unwrap();
    assert_eq!(
        (r.state, r.set_by.as_str()),
        (RowState::ForcedOpen, "alice")
    );
    assert_eq!(s.set("t", RowState::Closed, "bob", 1).unwrap(), 5);
    assert_eq!(s.write("t", Some(9_000), 2).unwrap(), 6);
    assert_eq!(s.read("t").unwrap().unwrap().set_by, "");
    // Failures counted for every handle (host), within a window.
    assert_eq!(s.count_failure("f", 60_000).unwrap(), 1);
    assert_eq!(other.count_failure("f", 60_000).unwrap(), 2);
    assert_eq!(s.count_failure("f", 60_000).unwrap(), 3);
    s.write("f", Some(9_000), 1).unwrap();
    assert_eq!(
        other.count_failure("f", 60_000).unwrap(),
        1,
        "an open starts it again"
    );
    assert_eq!(s.count_failure("g", 1).unwrap(), 1);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(s.count_failure("g", 1).unwrap(), 1, "the window ended");
    s.set("f", RowState::Closed, "ops", 1).unwrap();
    assert_eq!(
        s.count_failure("f", 60_000).unwrap(),
        1,
        "a reset starts it again"
    );
    // A row the count made is closed and unversioned: no host adopts it.
    assert_eq!(s.read("g").unwrap().unwrap().version, 0);
}

async fn migrating_again_is_a_no_op_and_a_newer_schema_is_refused(f: Fixture) {
    let known = match &f.at {
        Location::Sqlite(_) => sqlite::SqliteStore::schema_version(),
        Location::Postgres(_) => postgres::schema_version(),
    };
    assert_eq!(
        migrate(&f.at).unwrap(),
        Migrated {
            from: known,
            to: known
        }
    );
    f.store.create_run("r", "a", "t").await.unwrap();
    // A later backstop migrated it: this one refuses, and changes nothing.
    match (&f.at, &f.pg) {
        (Location::Sqlite(p), _) => {
            let c = rusqlite::Connection::open(p).unwrap();
            c.pragma_update(None, "user_version", known + 1).unwrap();
        }
        (Location::Postgres(_), Some(pg)) => pg
            .execute(&format!(
                "INSERT INTO backstop_schema (version, migrated_at) VALUES ({}, 0)",
                known + 1
            ))
            .unwrap(),
        _ => unreachable!(),
    }
    for e in [
        open(&f.at).err().unwrap(),
        open_read_only(&f.at).err().unwrap(),
        migrate(&f.at).err().unwrap(),
    ] {
        let text = e.to_string();
        assert!(
            matches!(e, StoreError::Newer { found, .. } if found == known + 1),
            "{text}"
        );
        assert!(text.contains("newer than this backstop"), "{text}");
    }
    assert_eq!(f.store.run("r").await.unwrap().agent, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_hosts_starting_at_once_migrate_once() {
    let Some(pg) = Scratch::new("store::postgres_hosts_starting_at_once_migrate_once") else {
        return;
    };
    let fresh = pg
        .location()
        .with_schema(&format!("{}_new", pg.location().schema));
    let at = Location::Postgres(fresh.unwrap());
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let at = at.clone();
            std::thread::spawn(move || migrate(&at))
        })
        .collect();
    let mut froms: Vec<i64> = opened
        .into_iter()
        .map(|t| t.join().unwrap().unwrap().from)
        .collect();
    froms.sort();
    let known = postgres::schema_version();
    assert_eq!(froms, [0, known, known, known], "exactly one migrated");
    let Location::Postgres(fresh) = &at else {
        unreachable!()
    };
    pg.execute(&format!("DROP SCHEMA \"{}\" CASCADE", fresh.schema))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_second_writer_is_refused_not_interleaved() {
    let Some(f) = postgres("store::postgres_a_second_writer_is_refused_not_interleaved") else {
        return;
    };
    let a = &f.store;
    let b = open(&f.at).unwrap();
    a.create_run("r", "agent", "t").await.unwrap();
    b.load("r").await.unwrap();
    a.append("r", EntryKind::RunStarted, 0, &json!({}))
        .await
        .unwrap();
    let e = b
        .append("r", EntryKind::RunStarted, 0, &json!({"b": 1}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("written by another writer"), "{e}");
    assert_eq!(a.entries("r").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_tampered_entry_is_named_and_left_alone() {
    let Some(f) = postgres("store::postgres_a_tampered_entry_is_named_and_left_alone") else {
        return;
    };
    let j = &f.store;
    for run in ["r1", "r2"] {
        j.create_run(run, "a", "t").await.unwrap();
        j.append(run, EntryKind::ToolResult, 1, &json!({"ok": true}))
            .await
            .unwrap();
    }
    let pg = f.pg.as_ref().unwrap();
    pg.execute(
        "UPDATE entries SET payload = '{\"ok\":false}' \
         WHERE rid = (SELECT rid FROM runs WHERE id = 'r1')",
    )
    .unwrap();
    let e = j.load("r1").await.unwrap_err().to_string();
    assert!(
        e.contains("run r1: journal entry 1 is damaged: checksum mismatch"),
        "{e}"
    );
    assert!(j.load("r2").await.is_ok(), "other runs stay readable");
    j.escalate(esc("e1", EscalationReason::NeedsHuman))
        .await
        .unwrap();
    pg.execute("UPDATE escalations SET record = 'garbage'")
        .unwrap();
    let e = j.escalation("e1").await.unwrap_err().to_string();
    assert!(e.contains("escalation record is not valid"), "{e}");
    assert!(
        j.resolve("e1", Resolution::Retry, "ann").await.is_err(),
        "a damaged escalation is never resolved"
    );
    pg.execute("DELETE FROM entries WHERE rid = (SELECT rid FROM runs WHERE id = 'r2')")
        .unwrap();
    j.append("r2", EntryKind::ToolResult, 2, &json!({}))
        .await
        .ok();
    let e = j.entries("r2").await.unwrap_err().to_string();
    assert!(
        e.contains("journal entry 1 is damaged: entry is missing"),
        "{e}"
    );
}

#[test]
fn postgres_unreachable_is_named_without_the_password() {
    let at: PgLocation = "postgres://bob:hunter2@127.0.0.1:1/x".parse().unwrap();
    let e = open(&Location::Postgres(at)).err().unwrap().to_string();
    assert!(e.contains("127.0.0.1:1") && !e.contains("hunter2"), "{e}");
}

/// Two hosts on one schema, with leases of `lease`.
fn two_hosts(test: &str, lease: std::time::Duration) -> Option<(Scratch, PgStore, PgStore)> {
    let pg = Scratch::new(test)?;
    let mut at = pg.location().clone();
    at.lease = lease;
    let a = PgStore::open(&at).unwrap();
    let b = PgStore::open(&at).unwrap();
    Some((pg, a, b))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_host_that_lost_its_lease_writes_nothing_more() {
    let test = "store::postgres_a_host_that_lost_its_lease_writes_nothing_more";
    let Some((pg, a, b)) = two_hosts(test, std::time::Duration::from_secs(30)) else {
        return;
    };
    a.create_run("r", "agent", "t").await.unwrap();
    assert!(a.take_lease("r").await.unwrap());
    a.append("r", EntryKind::RunStarted, 0, &json!({}))
        .await
        .unwrap();
    // While A holds it, B can neither take it nor write to it.
    let held = b.take_lease("r").await.unwrap_err();
    assert!(
        matches!(&held, StoreError::Held { pid: Some(p), .. } if *p == std::process::id()),
        "{held}"
    );
    let e = b
        .append("r", EntryKind::Resumed, 1, &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Held { .. }), "{e}");
    // A is paused past its lease (no renewal reached the database).
    pg.execute("UPDATE runs SET lease_until = 0").unwrap();
    assert!(
        b.take_lease("r").await.unwrap(),
        "an expired lease is taken over"
    );
    b.load("r").await.unwrap();
    b.append("r", EntryKind::Resumed, 1, &json!({"by": "b"}))
        .await
        .unwrap();
    // A wakes up mid-step: every write of the run is refused, and says why.
    for e in [
        a.append("r", EntryKind::ToolResult, 1, &json!({"by": "a"}))
            .await
            .unwrap_err(),
        a.set_status("r", RunStatus::Finished, 1, None)
            .await
            .unwrap_err(),
        a.write_snapshot("r", &Snapshot::default())
            .await
            .unwrap_err(),
    ] {
        let text = e.to_string();
        assert!(matches!(e, StoreError::LeaseLost { .. }), "{text}");
        assert!(text.contains("taken over by"), "{text}");
    }
    // Giving back a lease it no longer holds leaves B's alone.
    a.drop_lease("r");
    b.append("r", EntryKind::RunFinished, 1, &json!({}))
        .await
        .unwrap();
    let entries = b.entries("r").await.unwrap();
    assert_eq!(entries.len(), 3, "A's late writes never landed");
    assert!(entries.iter().all(|e| e.payload["by"] != "a"));
    b.drop_lease("r");
    assert!(a.take_lease("r").await.unwrap(), "given back: free again");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_lease_is_renewed_while_held_and_free_once_given_back() {
    let test = "store::postgres_a_lease_is_renewed_while_held_and_free_once_given_back";
    let Some((_pg, a, b)) = two_hosts(test, std::time::Duration::from_millis(300)) else {
        return;
    };
    a.create_run("r", "agent", "t").await.unwrap();
    assert!(a.take_lease("r").await.unwrap());
    // Several lease lengths later, still A's: it renews in the background.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert!(matches!(
        b.take_lease("r").await,
        Err(StoreError::Held { .. })
    ));
    a.drop_lease("r");
    assert!(b.take_lease("r").await.unwrap());
    // The same process cannot hold one run twice either.
    assert!(matches!(
        b.take_lease("r").await,
        Err(StoreError::Held { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_lease_whose_holder_died_on_this_machine_is_taken_at_once() {
    let test = "store::postgres_a_lease_whose_holder_died_on_this_machine_is_taken_at_once";
    let Some((pg, a, b)) = two_hosts(test, std::time::Duration::from_secs(60)) else {
        return;
    };
    a.create_run("r", "agent", "t").await.unwrap();
    assert!(a.take_lease("r").await.unwrap());
    // The row as a process of this machine that has since died left it.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    pg.execute(&format!("UPDATE runs SET owner_pid = {dead}"))
        .unwrap();
    assert!(
        b.take_lease("r").await.unwrap(),
        "taken before the lease ends"
    );
    // On another machine it would have to wait for the lease to end.
    b.drop_lease("r");
    a.drop_lease("r");
    assert!(a.take_lease("r").await.unwrap());
    pg.execute(&format!(
        "UPDATE runs SET owner_pid = {dead}, lease_node = 'elsewhere'"
    ))
    .unwrap();
    assert!(matches!(
        b.take_lease("r").await,
        Err(StoreError::Held { .. })
    ));
}
