//! Many hosts on PostgreSQL (issue 18): the journal's cost per durable
//! step on PostgreSQL against SQLite, measured in the same run through
//! the async `Journal` interface a run writes with. A step is what a tool
//! step writes: its intent, durable before the tool runs, then its result.
//! PostgreSQL is the server `BACKSTOP_TEST_POSTGRES` names (this machine's
//! own on 127.0.0.1), in a schema of the bench's own, dropped after; the
//! run holds its lease, so every write is the fenced one a host makes.

use crate::stats::{fmt, Spread};
use backstop::journal::EntryKind;
use backstop::store::postgres::scratch::Scratch;
use backstop::store::{Location, Store};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub struct Stores {
    pub steps: u64,
    pub sqlite: Spread,
    /// `None` when no PostgreSQL answered.
    pub postgres: Option<Spread>,
}

async fn per_step(store: Arc<dyn Store>, steps: u64, samples: usize) -> Spread {
    let run = "rbench";
    store.create_run(run, "pipe", "bench").await.unwrap();
    store.take_lease(run).await.unwrap();
    let intent = json!({"chain": "search", "input": {"query": "a query"}, "key": "rbench:1",
        "effect": "side-effect"});
    let result = json!({"chain": "search", "key": "rbench:1", "outcome": {"ok": true,
        "value": {"results": ["a paragraph of text that answers the query"]},
        "served_by": "corpus", "attempts": [{"target": "corpus", "attempt": 1, "class": "ok"}]}});
    let mut step = 0;
    let mut batches = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        for _ in 0..steps {
            step += 1;
            store
                .append(run, EntryKind::ToolIntent, step, &intent)
                .await
                .unwrap();
            store
                .append(run, EntryKind::ToolResult, step, &result)
                .await
                .unwrap();
        }
        batches.push(t0.elapsed() / steps as u32);
    }
    store.drop_lease(run);
    Spread::of(batches)
}

pub fn measure(steps: u64, samples: usize) -> Stores {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = backstop::store::open(&Location::Sqlite(dir.path().join("s.db"))).unwrap();
    let sqlite = rt.block_on(per_step(sqlite, steps, samples));
    let postgres = Scratch::new("bench::stores").map(|pg| {
        let store = backstop::store::open(&pg.store_location()).unwrap();
        let s = rt.block_on(per_step(store, steps, samples));
        drop(pg);
        s
    });
    Stores {
        steps,
        sqlite,
        postgres,
    }
}

pub fn section(s: &Stores) -> String {
    let mut out = String::new();
    p!(
        out,
        "## Many hosts on PostgreSQL\n\nOne durable tool step (its intent, committed before \
        the tool runs, then its result) through the `Journal` a run writes with; {} steps a \
        sample, median of the samples and their range. SQLite: one file, WAL, `synchronous = \
        FULL`. PostgreSQL: the local server (15, default `synchronous_commit = on`, \
        127.0.0.1), the run's lease held, so each write is a host's fenced one: one statement \
        and one commit per entry.\n",
        s.steps
    );
    p!(
        out,
        "| store | per step | against SQLite |\n| --- | --- | --- |"
    );
    p!(out, "| SQLite (baseline) | {} | |", s.sqlite.show());
    match &s.postgres {
        Some(pg) => p!(
            out,
            "| PostgreSQL | {} | {:.2}x |",
            pg.show(),
            pg.median.as_secs_f64() / s.sqlite.median.as_secs_f64().max(1e-9)
        ),
        None => p!(out, "| PostgreSQL | not measured: no server answered | |"),
    }
    p!(
        out,
        "\nPer entry that is {} on SQLite{}. Runs per second with 1, 2 and 3 hosts, lease \
        takeover time, group commit across runs, and DBOS and Restate measured beside Backstop \
        are not in this page yet.\n",
        fmt(s.sqlite.median / 2),
        s.postgres
            .as_ref()
            .map(|p| format!(" and {} on PostgreSQL", fmt(p.median / 2)))
            .unwrap_or_default()
    );
    out
}
