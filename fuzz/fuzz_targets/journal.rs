//! Journal decoding: a store written by Backstop and then damaged in one
//! place, any place, is read back either intact or with an error; reading
//! never panics. The damage is what a disk, an editor or another program
//! could leave: any value (text, integer, NULL, blob) in any column of any
//! row of `runs`, `entries`, `snapshots` or `escalations`, or a deleted row.
#![no_main]

use arbitrary::Arbitrary;
use backstop::escalation::{Escalation, Filter, ResolutionKind};
use backstop::EscalationReason;
use backstop::journal::{EntryKind, Snapshot};
use backstop::store::{BreakerStore, SqliteStore};
use libfuzzer_sys::fuzz_target;
use rusqlite::types::Value as Sql;

#[derive(Arbitrary, Debug)]
struct Input {
    entries: Vec<(u8, u8, String)>,
    snapshot: Option<(u8, String)>,
    damage: Vec<Damage>,
}

#[derive(Arbitrary, Debug)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Set { table: u8, column: u8, row: u8, value: Value },
    Delete { table: u8, row: u8 },
}

const KINDS: [EntryKind; 8] = [
    EntryKind::RunStarted,
    EntryKind::ModelCall,
    EntryKind::ToolIntent,
    EntryKind::ToolResult,
    EntryKind::Attention,
    EntryKind::Resolution,
    EntryKind::Resumed,
    EntryKind::RunFinished,
];

const TABLES: [(&str, &[&str]); 5] = [
    (
        "runs",
        &["rid", "id", "agent", "task", "status", "step", "started_at", "updated_at", "output", "owner_pid"],
    ),
    ("entries", &["rid", "seq", "kind", "step", "payload", "checksum", "at"]),
    ("snapshots", &["rid", "seq", "state", "checksum"]),
    (
        "escalations",
        &["id", "run", "step", "reason", "record", "created_at", "resolved_at", "resolved_by", "resolution"],
    ),
    ("breakers", &["target", "state", "open_until", "opened", "version", "writer", "updated_at"]),
];

/// Text as JSON when it parses, else as a JSON string.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

fn read_everything(j: &SqliteStore) {
    if let Ok(runs) = j.runs() {
        for r in runs {
            let _ = j.run(&r.id);
            let _ = j.load(&r.id);
            let _ = j.entries(&r.id);
            for kind in KINDS {
                let _ = j.find(&r.id, 1, kind);
            }
        }
    }
    let _ = j.load("r1");
    let _ = j.entries("r1");
    if let Ok(list) = j.escalations(&Filter { all: true, ..Filter::default() }) {
        for e in list {
            let _ = j.escalation(&e.id);
        }
    }
    let _ = j.escalation_stats();
    let _ = j.recent_runs(3);
    if let Ok(store) = backstop::store::sqlite::SqliteBreakers::beside(j) {
        let _ = store.read("t");
        if let Ok(rows) = store.all() {
            for row in rows {
                let _ = backstop::guard::shared::remote(&row, backstop_now());
            }
        }
    }
}

fn backstop_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fuzz_target!(|input: Input| {
    // On tmpfs where there is one: the journal fsyncs every write, which
    // on disk would hold the fuzzer to ~90 runs a second.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let path = dir.path().join("state.db");
    {
        let j = SqliteStore::open(&path).unwrap();
        j.create_run("r1", "agent", "task").unwrap();
        for (kind, step, payload) in input.entries.iter().take(32) {
            let kind = KINDS[*kind as usize % KINDS.len()];
            j.append("r1", kind, u64::from(*step), &json(payload)).unwrap();
        }
        let reason = EscalationReason::NeedsHuman;
        j.escalate(Escalation {
            id: "e1".into(),
            run: "r1".into(),
            step: 1,
            reason,
            chain: "chain".into(),
            input: serde_json::json!({"q": 1}),
            key: "key".into(),
            message: "why".into(),
            attempts: Vec::new(),
            allowed: ResolutionKind::allowed(reason),
            created_at: 0,
            resolved_at: None,
            resolved_by: None,
            resolution: None,
        })
        .unwrap();
        let breakers = backstop::store::sqlite::SqliteBreakers::beside(&j).unwrap();
        breakers.write("t", Some(5_000), 1).unwrap();
        breakers.write("u", None, 2).unwrap();
        if let Some((seq, state)) = &input.snapshot {
            let _ = j.write_snapshot("r1", &Snapshot { seq: u64::from(*seq), state: json(state) });
        }
        read_everything(&j);
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for d in input.damage.iter().take(4) {
            let (table, row) = match d {
                Damage::Set { table, row, .. } | Damage::Delete { table, row } => (*table, *row),
            };
            let (name, columns) = TABLES[table as usize % TABLES.len()];
            let target = format!("(SELECT rowid FROM {name} LIMIT 1 OFFSET {row})");
            // `entries` is WITHOUT ROWID: address its rows by key instead.
            let target = if name == "entries" {
                format!("(rid, seq) IN (SELECT rid, seq FROM entries LIMIT 1 OFFSET {row})")
            } else {
                format!("rowid = {target}")
            };
            let _ = match d {
                Damage::Set { column, value, .. } => {
                    let column = columns[*column as usize % columns.len()];
                    let value = match value {
                        Value::Null => Sql::Null,
                        Value::Int(i) => Sql::Integer(*i),
                        Value::Real(f) => Sql::Real(*f),
                        Value::Text(t) => Sql::Text(t.clone()),
                        Value::Blob(b) => Sql::Blob(b.clone()),
                    };
                    conn.execute(&format!("UPDATE {name} SET {column} = ?1 WHERE {target}"), [value])
                }
                Damage::Delete { .. } => conn.execute(&format!("DELETE FROM {name} WHERE {target}"), []),
            };
        }
    }
    // Opening may refuse a damaged store; that is an answer too.
    if let Ok(j) = SqliteStore::open(&path) {
        read_everything(&j);
    }
});
