//! `ledger`: a side-effecting tool that appends one line per execution to
//! `/ledger/ledger.jsonl` (a read-write grant), and implements `reconcile`
//! by looking for the call's idempotency key there.
//!
//! It deliberately does not deduplicate: every execution writes a line, so
//! tests can prove the host never runs it twice for one key.

use serde_json::{json, Value};
use std::io::Write;

wit_bindgen::generate!({ world: "reconcilable-tool", path: "../../wit" });

use backstop::tool::host::context;
use backstop::tool::types::Effect;

const FILE: &str = "/ledger/ledger.jsonl";

struct Ledger;

fn sleep_ms(v: &Value, key: &str) {
    if let Some(ms) = v.get(key).and_then(Value::as_u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

impl Guest for Ledger {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "ledger".into(),
            description: "Record an entry in the ledger (a side effect: each call adds a line).".into(),
            input_schema: r#"{"type":"object","properties":{"entry":{},"sleep_before_ms":{"type":"integer"},"sleep_after_ms":{"type":"integer"}},"required":["entry"]}"#.into(),
            output_schema: Some(r#"{"type":"object","properties":{"recorded":{"type":"string"},"entry":{}}}"#.into()),
            effect: Effect::SideEffect,
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let v: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::InvalidInput(format!("input is not JSON: {e}")))?;
        let entry = v
            .get("entry")
            .cloned()
            .ok_or_else(|| ToolError::InvalidInput("`entry` is required".into()))?;
        let key = context().idempotency_key;
        sleep_ms(&v, "sleep_before_ms");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(FILE)
            .map_err(|e| ToolError::Unavailable(format!("cannot open {FILE}: {e}")))?;
        // One write of the whole line: a process killed mid-call leaves a
        // whole line or none, never half of one.
        let line = format!("{}\n", json!({ "key": key, "entry": entry }));
        // Past this point the line may be on disk, so no classified error:
        // `transient` would tell the host nothing happened, and its retry
        // would write the line again. A trap says "effect unknown", and the
        // host asks `reconcile`, which reads the file.
        if let Err(e) = file.write_all(line.as_bytes()) {
            panic!("cannot write {FILE} (the line may be partly written): {e}");
        }
        // The operator's fault switch for tests: the sync fails after the
        // write landed, as on a disk that fills up between the two.
        let sync = if std::env::var_os("LEDGER_SYNC_FAILS").is_some() {
            Err(std::io::Error::other("injected sync failure"))
        } else {
            file.sync_all()
        };
        if let Err(e) = sync {
            panic!("cannot sync {FILE} after writing the line: {e}");
        }
        sleep_ms(&v, "sleep_after_ms");
        Ok(Output {
            value: json!({ "recorded": key, "entry": entry }).to_string(),
            confidence: None,
        })
    }

    fn reconcile(key: String) -> ReconcileStatus {
        let text = match std::fs::read_to_string(FILE) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ReconcileStatus::NotDone,
            Err(_) => return ReconcileStatus::Unknown,
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["key"] == key.as_str() {
                let out = json!({ "recorded": key, "entry": v["entry"], "reconciled": true });
                return ReconcileStatus::Done(Output {
                    value: out.to_string(),
                    confidence: None,
                });
            }
        }
        ReconcileStatus::NotDone
    }
}

export!(Ledger);
