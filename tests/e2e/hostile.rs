//! Hostile tools: each misbehaviour is contained and classified, the host
//! keeps serving, and host memory stays bounded across many hostile calls.

use crate::common::{load, tempdir, PRELUDE};
use backstop::Backstop;
use serde_json::json;

async fn setup() -> (tempfile::TempDir, Backstop) {
    let dir = tempdir();
    let text = format!(
        "{PRELUDE}\n[tools.hostile]\ncomponent = \"{{plugins}}/fault.wasm\"\nmemory = \
            \"160MiB\"\ntimeout = \"5s\"\nretry = {{ attempts = 1 }}\nbreaker = {{ \
            consecutive_failures = 0, failure_rate = 0.0 }}\n"
    );
    let b = load(dir.path(), &text).await;
    (dir, b)
}

async fn first(b: &Backstop, input: serde_json::Value) -> (String, String) {
    let o = b.call("hostile", input).await.unwrap();
    (
        o.attempts[0].class.to_string(),
        o.attempts[0].message.to_string(),
    )
}

#[tokio::test]
async fn each_hostile_behaviour_is_contained_and_classified() {
    let (_d, b) = setup().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cases = [
        (json!({"mode": "recurse"}), "trap", ""),
        (json!({"mode": "trap"}), "trap", "unreachable"),
        (
            json!({"mode": "panic"}),
            "trap",
            "fault tool asked to panic",
        ),
        (
            json!({"mode": "alloc"}),
            "resource-exhausted",
            "memory cap 160MiB reached",
        ),
        (
            json!({"mode": "big-output", "mb": 100}),
            "malformed-output",
            "exceeds max_output 1MiB",
        ),
        (json!({"mode": "bad-utf8"}), "trap", "utf-8"),
        (json!({"mode": "bad-json"}), "malformed-output", "not JSON"),
        // Valid JSON no reader here can hold: said so, not "not JSON".
        (
            json!({"mode": "raw", "text": "{\"km\": 1e400}"}),
            "malformed-output",
            "output holds a number out of range",
        ),
        (
            json!({"mode": "connect", "addr": addr}),
            "permanent",
            "cannot connect",
        ),
        (
            json!({"mode": "read", "path": "/etc/passwd"}),
            "permanent",
            "cannot read /etc/passwd",
        ),
        (json!({"mode": "env", "key": "PATH"}), "ok", ""),
        (json!({"mode": "log-flood"}), "ok", ""),
    ];
    for (input, class, fragment) in cases {
        let (got, message) = first(&b, input.clone()).await;
        assert_eq!(got, class, "{input}: {message}");
        assert!(
            message.to_lowercase().contains(&fragment.to_lowercase()),
            "{input}: {message}"
        );
        // The host keeps serving after every one of them.
        let (ok, m) = first(&b, json!({"mode": "echo"})).await;
        assert_eq!(ok, "ok", "after {input}: {m}");
    }
    assert!(
        listener.accept().is_err(),
        "a tool without a socket grant reached the network"
    );
    // The env probe saw nothing the host did not grant.
    let o = b
        .call("hostile", json!({"mode": "env", "key": "PATH"}))
        .await
        .unwrap();
    assert_eq!(o.value.unwrap()["value"], serde_json::Value::Null);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Measured in a process of its own (this test binary, run again for
/// this one test): tests run in parallel in one process, and another's
/// spike would read as this one's growth.
#[test]
fn host_memory_stays_bounded_across_a_thousand_hostile_calls() {
    const ALONE: &str = "BACKSTOP_RSS_ALONE";
    if std::env::var_os(ALONE).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hostile::host_memory_stays_bounded_across_a_thousand_hostile_calls",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the measurement did not run: {text}"
        );
        if let Some(line) = text
            .lines()
            .find_map(|l| l.find("RSS across").map(|i| &l[i..]))
        {
            println!("{line}");
        }
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(measure_hostile_calls());
}

async fn measure_hostile_calls() {
    let (_d, b) = setup().await;
    let modes = [
        json!({"mode": "trap"}),
        json!({"mode": "panic"}),
        json!({"mode": "recurse"}),
        json!({"mode": "bad-json"}),
        json!({"mode": "bad-utf8"}),
        json!({"mode": "big-output", "mb": 4}),
        json!({"mode": "read", "path": "/etc/passwd"}),
    ];
    for i in 0..100 {
        b.call("hostile", modes[i % modes.len()].clone())
            .await
            .unwrap();
    }
    let before = rss_kib();
    for i in 0..1000 {
        let o = b
            .call("hostile", modes[i % modes.len()].clone())
            .await
            .unwrap();
        assert!(!o.ok);
    }
    let after = rss_kib();
    println!(
        "RSS across 1,000 hostile calls: {before} KiB -> {after} KiB ({:+} KiB)",
        after as i64 - before as i64
    );
    assert!(
        after < before + 64 * 1024,
        "host RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn output_that_violates_its_declared_schema_is_malformed() {
    let dir = tempdir();
    let text = format!(
        "{PRELUDE}\n[tools.shaped]\ncomponent = \"{{plugins}}/fault.wasm\"\nenv = \
            ['FAULT_OUTPUT_SCHEMA={{\"type\":\"object\",\"required\":[\"answer\"],\
            \"properties\":{{\"answer\":{{\"type\":\"string\"}}}}}}']\nretry = {{ attempts = 1 }}\n"
    );
    let b = load(dir.path(), &text).await;
    assert_eq!(
        b.tool("shaped")
            .unwrap()
            .description()
            .output_schema
            .as_ref()
            .unwrap()["required"][0],
        "answer"
    );
    let o = b
        .call("shaped", json!({"mode": "echo", "value": 1}))
        .await
        .unwrap();
    assert_eq!(o.attempts[0].class.as_str(), "malformed-output", "{o}");
    assert!(
        o.attempts[0]
            .message
            .contains("does not match the declared output schema"),
        "{o}"
    );
    assert!(o.attempts[0].message.contains("answer"), "{o}");

    // A schema that is not a JSON Schema is refused at load, naming the tool.
    let bad = tempdir();
    let path = crate::common::write_config(
        bad.path(),
        "[tools.broken]\ncomponent = \"{plugins}/fault.wasm\"\nenv = \
            ['FAULT_OUTPUT_SCHEMA={\"type\": 5}']\n",
    );
    let e = Backstop::load(&path).await.err().unwrap().to_string();
    assert!(
        e.contains("tools.broken.component") && e.contains("not a valid JSON Schema"),
        "{e}"
    );
}
