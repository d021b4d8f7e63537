//! Containment of the host as a whole (issue 14): nothing one tool
//! declares or does can abort the process, starve the runtime, use up
//! what other tools need, or keep the process alive after its timeout.

use crate::common::{load, plugins, serve, shared_cache, tempdir, write_config, PRELUDE};
use backstop::{AttemptClass, FailureClass};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn backstop(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A `fault` tool declaring `schema` as its output schema.
fn schema_config(schema: &str) -> String {
    let schema = schema.replace('\'', "");
    format!(
        "{PRELUDE}\n[tools.declares]\ncomponent = \"{{plugins}}/fault.wasm\"\nenv = \
            ['FAULT_OUTPUT_SCHEMA={schema}']\n"
    )
}

#[test]
fn a_circular_declared_schema_is_a_load_error_naming_the_tool_not_an_abort() {
    let dir = tempdir();
    for schema in [
        r##"{"$ref":"#","unevaluatedProperties":false}"##,
        r##"{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}"##,
        r##"{"allOf":[{"$ref":"#"}]}"##,
    ] {
        let config = write_config(dir.path(), &schema_config(schema));
        let out = backstop(&config, &["check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{schema}: {stderr}");
        assert!(stderr.contains("tools.declares.component"), "{stderr}");
        assert!(stderr.contains("circular"), "{stderr}");
        // And a call does not get as far as validating anything.
        let out = backstop(
            &config,
            &[
                "call",
                "declares",
                "-i",
                r#"{"mode":"echo","value":{"a":1}}"#,
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_recursive_schema_that_descends_is_loaded_and_checks_outputs() {
    let dir = tempdir();
    let tree = concat!(
        r##"{"$defs":{"n":{"type":"object","properties":{"kids":{"type":"array","##,
        r##""items":{"$ref":"#/$defs/n"}}},"unevaluatedProperties":false}},"$ref":"#/$defs/n"}"##
    );
    let b = load(dir.path(), &schema_config(tree)).await;
    let ok = b
        .call(
            "declares",
            json!({"mode": "echo", "value": {"kids": [{"kids": []}]}}),
        )
        .await
        .unwrap();
    // `echo` answers {"echo": value}: not a tree node, so the declared
    // schema refuses it as malformed.
    assert_eq!(
        ok.attempts[0].class.as_str(),
        "malformed-output",
        "{:?}",
        ok.attempts
    );
    assert!(ok.attempts[0].message.contains("declared output schema"));
}

/// Spinning guests must not starve the async runtime: with 100 of them in
/// flight through `backstop serve`, each ends near its own 1 s timeout and
/// `/healthz` is answered while they spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_flood_does_not_starve_the_server_or_delay_deadlines() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        &format!(
            "{PRELUDE}\n[tools.spinner]\ncomponent = \"{{plugins}}/fault.wasm\"\ntimeout = \
                \"1s\"\nretry = {{ attempts = 1 }}\nbreaker = {{ consecutive_failures = 0, \
                failure_rate = 0.0 }}\n"
        ),
    );
    let server = serve(&config, None);
    let http = crate::common::http();
    let base = server.base.clone();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (http, base) = (http.clone(), base.clone());
        calls.spawn(async move {
            let t = Instant::now();
            let o: Value = http
                .post(format!("{base}/v1/calls"))
                .json(&json!({"chain": "spinner", "input": {"mode": "spin"}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (t.elapsed(), o)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Before the guest pool: 53.8 s. The bound is loose on purpose (CI
    // machines drift); the figure is in BENCHMARKS.md.
    assert!(
        worst < Duration::from_secs(2),
        "/healthz took {worst:?} during the flood"
    );
    let mut ends = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (took, o) = done.unwrap();
        assert_eq!(o["error"]["class"], "timeout", "{o}");
        ends.push(took);
    }
    ends.sort();
    let last = *ends.last().unwrap();
    // Before: a median of 31 s, up to 60 s.
    assert!(
        last < Duration::from_secs(4),
        "spinning calls ended at {:?}..{last:?}",
        ends[0]
    );
}

/// One tool with many slow calls in flight must not make another tool's
/// call fail: its bulkhead refuses its own excess (which falls back), and
/// the other tool's call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_fails_fast_and_falls_back_and_spares_other_tools() {
    let dir = tempdir();
    let b = std::sync::Arc::new(
        load(
            dir.path(),
            &format!(
                "{PRELUDE}\n[tools.slow]\ncomponent = \"{{plugins}}/fault.wasm\"\nmax_concurrent = \
                    4\nmax_queue = 2\nretry = {{ attempts = 1 }}\n\
                    [tools.backup]\ncomponent = \"{{plugins}}/fault.wasm\"\n\
                    [tools.other]\ncomponent = \"{{plugins}}/fault.wasm\"\n\
                    [chains.work]\ntargets = [\"slow\", \"backup\"]\n"
            ),
        )
        .await,
    );
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let b = b.clone();
        held.spawn(async move {
            b.call("slow", json!({"mode": "sleep", "ms": 1500}))
                .await
                .unwrap()
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 4 running, 2 queued: the next is refused at once and falls back.
    let t = Instant::now();
    let o = b
        .call(
            "work",
            json!({"slow": {"mode": "sleep", "ms": 1500}, "backup": {"mode": "echo", "value": 1}}),
        )
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "refusal waited {:?}",
        t.elapsed()
    );
    assert_eq!(o.served_by.as_deref(), Some("backup"), "{:?}", o.attempts);
    assert!(o.degraded);
    assert_eq!(o.attempts[0].class.as_str(), "bulkhead-full");
    assert_eq!(o.attempts[0].then.as_str(), "fail-over");
    assert!(
        o.attempts[0].message.contains("queue is full"),
        "{}",
        o.attempts[0].message
    );
    assert!(o
        .degraded_reason
        .as_deref()
        .unwrap()
        .contains("slow: bulkhead-full"));
    // An unrelated tool is served meanwhile.
    let other = b
        .call("other", json!({"mode": "echo", "value": 2}))
        .await
        .unwrap();
    assert!(other.ok, "{:?}", other.attempts);
    // The queued calls ran once slots freed: all six served.
    let mut served = 0;
    while let Some(o) = held.join_next().await {
        assert!(o.unwrap().ok);
        served += 1;
    }
    assert_eq!(served, 6);
}

/// The host-wide bulkhead set above the instance pool: the pool running
/// out is reported as `bulkhead-full`, never as the guest's trap, and the
/// chain falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_pool_exhaustion_is_not_the_guests_trap() {
    let _alone = crate::common::memory_lock().await;
    let dir = tempdir();
    let b = std::sync::Arc::new(
        load(
            dir.path(),
            &format!(
                "{PRELUDE}\n[engine]\nmax_concurrent = 5000\n\
                 [tools.slow]\ncomponent = \"{{plugins}}/fault.wasm\"\nmax_concurrent = \
                 5000\nmemory = \"2MiB\"\nretry = {{ attempts = 1 }}\nbreaker = {{ \
                 consecutive_failures = 0, failure_rate = 0.0 }}\n\
                 [tools.backup]\ncomponent = \"{{plugins}}/fault.wasm\"\n\
                 [chains.work]\ntargets = [\"slow\", \"backup\"]\n"
            ),
        )
        .await,
    );
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..1100 {
        let b = b.clone();
        held.spawn(async move {
            let input = json!({
                "slow": {"mode": "sleep", "ms": 3000},
                "backup": {"mode": "echo", "value": 1},
            });
            b.call("work", input).await.unwrap()
        });
    }
    // Every attempt either ran, or was refused by the full pool (the
    // backup shares it, so some calls fail): none is blamed on a guest.
    let mut classes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(o) = held.join_next().await {
        let o = o.unwrap();
        for a in &o.attempts {
            *classes.entry(a.class.to_string()).or_default() += 1;
            if a.class == AttemptClass::Failed(FailureClass::BulkheadFull) {
                assert!(
                    a.message.contains("instance pool is full"),
                    "{:?}",
                    o.attempts
                );
            }
        }
    }
    assert!(!classes.contains_key("trap"), "{classes:?}");
    assert_eq!(
        classes.keys().map(String::as_str).collect::<Vec<_>>(),
        ["bulkhead-full", "ok"],
        "{classes:?}"
    );
}

/// A tool opening a named pipe in its granted directory would block a
/// host thread forever: it is refused, and `backstop call` exits.
#[test]
fn a_named_pipe_in_a_granted_directory_cannot_block_the_host() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let fifo = data.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let config = write_config(
        dir.path(),
        &format!(
            "{PRELUDE}\n[tools.reader]\ncomponent = \"{{plugins}}/fault.wasm\"\ntimeout = \
                \"1s\"\nretry = {{ attempts = 1 }}\ndirs = [{{ host = \"{}\", guest = \"/data\" \
                }}]\n",
            data.display()
        ),
    );
    let _ = (plugins(), shared_cache());
    let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(&config)
        .args([
            "call",
            "--json",
            "reader",
            "-i",
            r#"{"mode":"read","path":"/data/pipe"}"#,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("`backstop call` still running 30 s after a 1 s timeout");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let o: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(o["attempts"][0]["class"], "permanent", "{o}");
    assert!(
        o["attempts"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read /data/pipe"),
        "{o}"
    );
    assert_eq!(status.code(), Some(2), "{o}");
    // Reading a regular file in the same grant still works.
    std::fs::write(data.join("file"), "text").unwrap();
    let out = backstop(
        &config,
        &[
            "call",
            "--json",
            "reader",
            "-i",
            r#"{"mode":"read","path":"/data/file"}"#,
        ],
    );
    let o: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["value"]["text"], "text", "{o}");
}

/// The example side-effect tool keeps its own contract: a sync that fails
/// after the line was written is a trap (effect unknown), never
/// `transient`, so the host does not retry it into a second line.
#[tokio::test]
async fn the_ledger_never_reports_a_classified_error_after_its_write() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("ledger")).unwrap();
    let b = load(
        dir.path(),
        &format!(
            "{PRELUDE}\n[tools.ledger]\ncomponent = \"{{plugins}}/ledger.wasm\"\nenv = \
                [\"LEDGER_SYNC_FAILS=1\"]\ndirs = [{{ host = \"{{dir}}/ledger\", guest = \
                \"/ledger\", mode = \"rw\" }}]\n"
        ),
    )
    .await;
    let o = b.call("ledger", json!({"entry": "once"})).await.unwrap();
    assert!(!o.ok);
    assert_eq!(o.attempts.len(), 1, "{:?}", o.attempts);
    assert_eq!(o.attempts[0].class.as_str(), "trap", "{:?}", o.attempts);
    let err = o.error.unwrap();
    assert_eq!(
        err.escalate,
        Some(backstop::EscalationReason::AmbiguousState)
    );
    let text = std::fs::read_to_string(dir.path().join("ledger/ledger.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    // And `reconcile` finds the line, so a resumed run would not repeat it.
    let found = b.tool("ledger").unwrap().reconcile(&o.key).await.unwrap();
    assert!(
        matches!(found, backstop::runtime::Reconciled::Done(_)),
        "{found:?}"
    );
}

/// Sizes a guest controls are capped where they enter: a 20 MB error
/// message is cut (and says so) in the outcome and what `call` prints; a
/// 50 MB description is cut at load; an oversized schema is a load error.
#[tokio::test]
async fn guest_controlled_sizes_are_capped_where_they_enter() {
    let _alone = crate::common::memory_lock().await;
    let dir = tempdir();
    let text = format!(
        "{PRELUDE}\n[tools.loud]\ncomponent = \"{{plugins}}/fault.wasm\"\nmemory = \
            \"200MiB\"\nretry = {{ attempts = 1 }}\nenv = [\"FAULT_DESCRIPTION=d\", \
            \"FAULT_DESCRIPTION_REPEAT=50000000\"]\n"
    );
    let b = load(dir.path(), &text).await;
    let d = &b.tool("loud").unwrap().description().description;
    assert!(d.len() <= 16 << 10, "description kept at {} bytes", d.len());
    assert!(d.contains("[cut: "), "{}", &d[d.len() - 80..]);
    let input = json!({"mode": "fail", "class": "permanent", "message": "x", "repeat": 20_000_000});
    let o = b.call("loud", input.clone()).await.unwrap();
    let m = &o.attempts[0].message;
    assert!(m.len() <= 8 << 10, "message kept at {} bytes", m.len());
    assert!(
        m.ends_with("[cut: 19991872 of 20000000 bytes not shown]"),
        "{}",
        &m[m.len() - 60..]
    );
    assert!(o.error.as_ref().unwrap().message.len() <= 8 << 10);
    // What the CLI prints is as small.
    let config = write_config(dir.path(), &text);
    let out = backstop(&config, &["call", "loud", "-i", &input.to_string()]);
    assert!(
        out.stdout.len() < 64 << 10,
        "call printed {} bytes",
        out.stdout.len()
    );
    // A schema over engine.max_schema is refused, naming the tool.
    let big = format!(r#"{{"description":"{}"}}"#, "s".repeat(300 << 10));
    let huge = write_config(
        dir.path(),
        &format!(
            "{PRELUDE}\n[tools.huge]\ncomponent = \"{{plugins}}/fault.wasm\"\nenv = \
            ['FAULT_OUTPUT_SCHEMA={big}']\n"
        ),
    );
    let out = backstop(&huge, &["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tools.huge.component") && err.contains("engine.max_schema"),
        "{err}"
    );
}

/// Escape sequences in guest text are shown, never executed, in text
/// output; `--json` keeps them exact.
#[test]
fn escape_sequences_from_a_guest_are_shown_not_executed() {
    let dir = tempdir();
    let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2J\rgone\u{0}\u{85}\u{9b}31m\u{202e}exe.txt";
    let config = write_config(
        dir.path(),
        &format!(
            "{PRELUDE}\n[tools.loud]\ncomponent = \"{{plugins}}/fault.wasm\"\nretry = {{ attempts \
                = 1 }}\nenv = [\"FAULT_DESCRIPTION=desc\\u001b[2Jx\"]\n"
        ),
    );
    let input = json!({"mode": "fail", "class": "permanent", "message": hostile}).to_string();
    let acts = |s: &str| {
        s.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
    };
    for args in [vec!["call", "loud", "-i", input.as_str()], vec!["tools"]] {
        let out = backstop(&config, &args);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!acts(&text), "{args:?} printed a raw control: {text:?}");
        assert!(text.contains("\\u{1b}"), "{args:?}: {text}");
    }
    let out = backstop(&config, &["call", "--json", "loud", "-i", &input]);
    let o: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["error"]["message"], hostile);
}

/// The HTTP layer's small contracts: `bearer` in any case, a token that
/// could never match refused at start, and JSON as a media type, not a
/// prefix.
#[tokio::test]
async fn bearer_in_any_case_bad_tokens_refused_and_json_is_a_media_type() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        &format!("{PRELUDE}\n[tools.fault]\ncomponent = \"{{plugins}}/fault.wasm\"\n"),
    );
    for bad in ["tok ", "  ", "to\u{7}k"] {
        let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("-c")
            .arg(&config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env(backstop::serve::TOKEN_ENV, bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
        assert!(err.contains(backstop::serve::TOKEN_ENV), "{err}");
    }
    let server = serve(&config, Some("s3cret"));
    let http = crate::common::http();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = http
            .get(format!("{}/v1/status", server.base))
            .header("authorization", format!("{scheme} s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    let call = |ct: &'static str| {
        http.post(format!("{}/v1/calls", server.base))
            .bearer_auth("s3cret")
            .header("content-type", ct)
            .body(r#"{"chain":"fault","input":{"mode":"echo"}}"#)
            .send()
    };
    assert_eq!(call("application/jsonp").await.unwrap().status(), 415);
    assert_eq!(
        call("Application/JSON; charset=utf-8")
            .await
            .unwrap()
            .status(),
        200
    );
}

mod models {
    //! A provider is as hostile as a tool: every read of its answer is
    //! bounded in time and size, and a secret it echoes never escapes.
    use super::*;
    use backstop::testkit::model::{anthropic_text, openai_stream_events, openai_text};
    use backstop::testkit::{Reply, ScriptedServer};

    async fn setup(extra: &str) -> (ScriptedServer, tempfile::TempDir, backstop::Backstop) {
        let server = ScriptedServer::start(anthropic_text("fallback"))
            .await
            .unwrap();
        let dir = tempdir();
        let origin = server.origin();
        let text = format!(
            "{PRELUDE}\n[models.plain]\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \
                \"{origin}\"\ntimeout = \"1s\"\nmax_response = \"4KiB\"\nretry = {{ attempts = 1 \
                }}\nbreaker = {{ consecutive_failures = 0, failure_rate = 0.0 }}\n\
                [models.streamed]\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \
                \"{origin}\"\ntimeout = \"400ms\"\nstream = true\nretry = {{ attempts = 3 \
                }}\nbreaker = {{ consecutive_failures = 0, failure_rate = 0.0 }}\n\
                [chains.plain_chain]\ntargets = [\"plain\"]\ndeadline = \"1500ms\"\n{extra}"
        );
        let b = load(dir.path(), &text).await;
        (server, dir, b)
    }

    #[tokio::test]
    async fn a_stream_longer_than_the_attempt_timeout_is_served() {
        let (server, _d, b) = setup("").await;
        // Five events 300 ms apart: 1.5 s, past the 400 ms timeout, which
        // now bounds only the time to first output.
        server.push([Reply::sse(
            openai_stream_events(&["a", "b", "c", "d"]),
            Duration::from_millis(300),
        )]);
        let o = b.ask("streamed", "hi").await.unwrap();
        assert!(o.ok, "{:?}", o.attempts);
        assert_eq!(o.value.unwrap()["text"], "abcd");
    }

    #[tokio::test]
    async fn a_plain_answer_to_a_streamed_request_is_malformed_and_not_retried() {
        let (server, _d, b) = setup("").await;
        server.push([openai_text("not a stream")]);
        let o = b.ask("streamed", "hi").await.unwrap();
        assert_eq!(o.attempts.len(), 1, "{:?}", o.attempts);
        assert_eq!(o.attempts[0].class.as_str(), "malformed-output");
        assert!(
            o.attempts[0].message.contains("not an event stream"),
            "{}",
            o.attempts[0].message
        );
        server.push([Reply::raw(200, "<html>hi</html>").header("content-type", "text/html")]);
        let o = b.ask("streamed", "hi").await.unwrap();
        assert_eq!(
            (o.attempts.len(), o.attempts[0].class.as_str()),
            (1, "malformed-output")
        );
    }

    #[tokio::test]
    async fn a_choice_without_a_message_is_malformed() {
        let (server, _d, b) = setup("").await;
        server.push([Reply::json(
            200,
            json!({"model": "m", "choices": [{"finish_reason": "stop"}]}),
        )]);
        let o = b.ask("plain", "hi").await.unwrap();
        assert!(!o.ok);
        assert_eq!(o.attempts[0].class.as_str(), "malformed-output");
        assert!(o.attempts[0].message.contains("without a `message`"));
    }

    #[tokio::test]
    async fn answers_and_error_bodies_are_bounded_in_size_and_time() {
        let (server, _d, b) = setup("").await;
        // Over max_response: refused, not held.
        let big =
            json!({"model": "m", "choices": [{"message": {"content": "x".repeat(64 << 10)}}]});
        server.push([Reply::json(200, big)]);
        let o = b.ask("plain", "hi").await.unwrap();
        assert_eq!(o.attempts[0].class.as_str(), "malformed-output");
        assert!(
            o.attempts[0].message.contains("max_response"),
            "{}",
            o.attempts[0].message
        );
        // Headers at 800 ms, then a 529 body dripping for seconds: the
        // body read ends at the attempt's 1 s, inside the 1.5 s deadline
        // (before: a fresh full timeout for the body, 3.8 s in all).
        let drip: Vec<(Duration, String)> = (0..40)
            .map(|_| (Duration::from_millis(100), "x".into()))
            .collect();
        let mut r = Reply::status(529).delay(Duration::from_millis(800));
        r.chunks = drip;
        server.push([r]);
        let t = Instant::now();
        let o = b
            .call(
                "plain_chain",
                serde_json::to_value(backstop::models::ChatRequest::prompt("hi")).unwrap(),
            )
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(!o.ok);
        assert!(
            took < Duration::from_millis(1400),
            "call took {took:?}: {:?}",
            o.attempts
        );
    }

    #[tokio::test]
    async fn an_event_with_no_end_is_cut_and_reading_is_linear() {
        let (server, _d, b) = setup("").await;
        // 6 MiB of data with no event boundary, in 64 KiB chunks: refused
        // when the event passes 4 MiB (before: 4 MiB took 105 s of CPU).
        let chunk = format!("data: {}", "y".repeat(64 << 10));
        let mut r = Reply::sse(vec![], Duration::ZERO);
        r.chunks = (0..96).map(|_| (Duration::ZERO, chunk.clone())).collect();
        server.push([r]);
        let t = Instant::now();
        let o = b.ask("streamed", "hi").await.unwrap();
        assert_eq!(
            o.attempts[0].class.as_str(),
            "malformed-output",
            "{:?}",
            o.attempts
        );
        assert!(
            o.attempts[0].message.contains("event exceeds"),
            "{}",
            o.attempts[0].message
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn no_fragment_of_a_key_escapes_and_a_bad_key_is_permanent() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt
            .block_on(ScriptedServer::start(anthropic_text("hi")))
            .unwrap();
        let dir = tempdir();
        let config = write_config(
            dir.path(),
            &format!(
                "{PRELUDE}\n[models.m]\nprovider = \"anthropic\"\nmodel = \"m\"\napi_key_env = \
                    \"BACKSTOP_FRAGMENT_KEY\"\nbase_url = \"{}\"\nretry = {{ attempts = 2 }}\n",
                server.origin()
            ),
        );
        let key = format!("sk-ant-{}", "0123456789abcdefghij".repeat(5));
        // The provider echoes the key inside a long message, so a cut at
        // 200 characters lands in the middle of it.
        let message = format!("{} invalid x-api-key {key}", "padding ".repeat(20));
        server.push([backstop::testkit::model::anthropic_error(
            401,
            "authentication_error",
            &message,
        )]);
        let run = |env_key: &str, args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
                .arg("-c")
                .arg(&config)
                .args(args)
                .env("BACKSTOP_FRAGMENT_KEY", env_key)
                .env("BACKSTOP_LOG", "trace")
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let printed = run(&key, &["ask", "--json", "m", "hi"]);
        assert!(printed.contains("[redacted]"), "{printed}");
        for w in key.as_bytes().windows(12) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(
                !printed.contains(w),
                "a fragment {w:?} of the key escaped: {printed}"
            );
        }
        // A key that cannot be a header: permanent, named, nothing sent.
        let before = server.arrivals().len();
        let printed = run("sk-ant-bad\n", &["ask", "--json", "m", "hi"]);
        let o: Value = serde_json::from_str(printed.lines().next().unwrap()).unwrap();
        assert_eq!(o["attempts"].as_array().unwrap().len(), 1, "{o}");
        assert_eq!(o["attempts"][0]["class"], "permanent", "{o}");
        assert!(
            o["error"]["message"]
                .as_str()
                .unwrap()
                .contains("BACKSTOP_FRAGMENT_KEY"),
            "{o}"
        );
        assert_eq!(
            server.arrivals().len(),
            before,
            "a request was sent with a bad key"
        );
    }
}

mod runs {
    //! A run's result is never lost, and no run is stuck forever, whichever
    //! write it was killed after (`BACKSTOP_KILL_AT`).
    use super::*;
    use backstop::journal::{EntryKind, RunStatus};
    use backstop::store::SqliteStore;

    /// A 32-step pipeline of echoes: its 64 entries fill the first
    /// snapshot, written after the last step.
    fn pipeline(dir: &std::path::Path) -> std::path::PathBuf {
        let mut text = format!(
            "state = \"sqlite:{{dir}}/state.db\"\n{PRELUDE}\n[tools.echo]\ncomponent = \
                \"{{plugins}}/fault.wasm\"\n[agents.long]\n"
        );
        for i in 1..=32 {
            text.push_str(&format!(
                "[[agents.long.steps]]\nname = \"s{i}\"\ntool = \"echo\"\ninput = {{ mode = \
                    \"echo\", value = \"step {i}\" }}\n"
            ));
        }
        write_config(dir, &text)
    }

    fn run_killed_at(config: &std::path::Path, point: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("-c")
            .arg(config)
            .args(["run", "long", "--task", "t"])
            .env("BACKSTOP_KILL_AT", point)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.code().is_none() || out.status.code() == Some(134),
            "{point}: {:?} {stdout}",
            out.status
        );
        stdout
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("{point}: no run id printed: {stdout}"))
            .to_owned()
    }

    fn resume(config: &std::path::Path, id: &str) -> (i32, String) {
        let out = backstop(config, &["resume", id]);
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn finished_once(dir: &std::path::Path, id: &str) {
        let j = SqliteStore::open(dir.join("state.db")).unwrap();
        let run = j.run(id).unwrap();
        assert_eq!(run.status, RunStatus::Finished);
        let output = run.output.unwrap_or_default();
        assert_eq!(
            output["echo"], "step 32",
            "the run's result was lost: {output}"
        );
        let finished = j
            .entries(id)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EntryKind::RunFinished)
            .collect::<Vec<_>>();
        assert_eq!(
            finished.len(),
            1,
            "run-finished journaled {} times",
            finished.len()
        );
        assert_eq!(finished[0].payload["output"], output);
    }

    #[test]
    fn killed_after_the_last_snapshot_resumes_to_the_last_steps_output() {
        let dir = tempdir();
        let config = pipeline(dir.path());
        let id = run_killed_at(&config, "snapshot");
        let (code, out) = resume(&config, &id);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("step 32"), "{out}");
        finished_once(dir.path(), &id);
    }

    #[test]
    fn killed_after_run_finished_is_journaled_keeps_it_and_writes_it_once() {
        let dir = tempdir();
        let config = pipeline(dir.path());
        let id = run_killed_at(&config, "run-finished");
        let (code, out) = resume(&config, &id);
        assert_eq!(code, 0, "{out}");
        finished_once(dir.path(), &id);
        // And again: still once.
        let (code, _) = resume(&config, &id);
        assert_eq!(code, 0);
        finished_once(dir.path(), &id);
    }

    #[test]
    fn killed_before_run_started_is_named_and_resumable() {
        let dir = tempdir();
        let config = pipeline(dir.path());
        let id = run_killed_at(&config, "run-created");
        let j = SqliteStore::open(dir.path().join("state.db")).unwrap();
        assert!(j.entries(&id).unwrap().is_empty());
        let (code, out) = resume(&config, &id);
        assert_eq!(code, 0, "{out}");
        finished_once(dir.path(), &id);
    }
}

mod store {
    //! The store: damage is named and never papered over, reading never
    //! needs writing, and a run leaves no lock file behind.
    use super::*;
    use backstop::store::SqliteStore;

    fn config(dir: &std::path::Path) -> std::path::PathBuf {
        let _ = std::fs::create_dir(dir.join("ledger"));
        write_config(
            dir,
            &format!(
                "state = \"sqlite:{{dir}}/state.db\"\n{PRELUDE}\n[tools.echo]\ncomponent = \
                    \"{{plugins}}/fault.wasm\"\n\
                    [tools.ledger]\ncomponent = \"{{plugins}}/ledger.wasm\"\ndirs = [{{ host = \
                    \"{{dir}}/ledger\", guest = \"/ledger\", mode = \"rw\" }}]\n\
                    [agents.one]\nsteps = [{{ name = \"e\", tool = \"echo\", input = {{ mode = \
                    \"echo\", value = 1 }} }}]\n\
                    [agents.pay]\nsteps = [\n  {{ name = \"p\", tool = \"ledger\", input = {{ \
                    entry = \
                    \"paid\" }} }},\n  {{ name = \"wait\", tool = \"echo\", input = {{ mode = \
                    \"sleep\", ms = 20000 }} }},\n]\n"
            ),
        )
    }

    fn text(out: &std::process::Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn digest(path: &std::path::Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_default()
    }

    #[test]
    fn an_emptied_or_cut_store_is_named_and_left_as_it_is() {
        let dir = tempdir();
        let config = config(dir.path());
        let state = dir.path().join("state.db");
        for _ in 0..3 {
            let out = backstop(&config, &["run", "one", "--task", "t"]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        }
        // Cut to 0 bytes: refused by readers and writers, never re-created.
        let whole = std::fs::read(&state).unwrap();
        std::fs::write(&state, b"").unwrap();
        for args in [
            vec!["runs"],
            vec!["status"],
            vec!["run", "one", "--task", "t"],
        ] {
            let out = backstop(&config, &args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            assert!(text(&out).contains("0 bytes"), "{args:?}: {}", text(&out));
        }
        assert_eq!(
            std::fs::metadata(&state).unwrap().len(),
            0,
            "the emptied store was re-created"
        );
        // Cut in half, with its WAL and shm beside it: named, and nothing
        // (file, -wal, -shm) is changed by the refused open.
        std::fs::write(&state, &whole[..whole.len() / 2]).unwrap();
        let wal = dir.path().join("state.db-wal");
        std::fs::write(&wal, b"not really a wal").unwrap();
        let before = (digest(&state), digest(&wal));
        let out = backstop(&config, &["runs"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("it was cut") && text(&out).contains("left as it is"),
            "{}",
            text(&out)
        );
        assert_eq!(
            (digest(&state), digest(&wal)),
            before,
            "a refused store was modified"
        );
    }

    #[test]
    fn a_store_that_vanished_is_named_not_replaced() {
        let dir = tempdir();
        let config = config(dir.path());
        let out = backstop(&config, &["run", "one", "--task", "t"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        std::fs::remove_file(dir.path().join("state.db")).unwrap();
        let out = backstop(&config, &["run", "one", "--task", "t"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("the store is gone"), "{}", text(&out));
        assert!(!dir.path().join("state.db").exists());
    }

    #[test]
    fn a_finished_run_leaves_no_lock_file() {
        let dir = tempdir();
        let config = config(dir.path());
        for _ in 0..5 {
            let out = backstop(&config, &["run", "one", "--task", "t"]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("state.db.locks"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "lock files left: {left:?}");
    }

    /// Reading needs no write: the read commands answer while another
    /// process holds the write lock (before: "database is locked" after
    /// 10 s, from a migration that had nothing to do).
    #[test]
    fn reading_works_while_another_process_holds_the_write_lock() {
        let dir = tempdir();
        let config = config(dir.path());
        let out = backstop(&config, &["run", "one", "--task", "t"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; UPDATE runs SET step = step;")
            .unwrap();
        for args in [vec!["runs"], vec!["status"], vec!["escalations"]] {
            let t = Instant::now();
            let out = backstop(&config, &args);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{args:?} waited {:?}",
                t.elapsed()
            );
        }
        conn.execute_batch("ROLLBACK").unwrap();
    }

    /// Reading a store the reader cannot write (a read-only directory and
    /// file, as another user sees them).
    #[test]
    fn reading_works_on_a_store_that_cannot_be_written() {
        let base = std::path::PathBuf::from(format!("/tmp/backstop-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let state = base.join("state.db");
        let text_config = format!("version = 1\nstate = \"sqlite:{}\"\n", state.display());
        std::fs::write(base.join("backstop.toml"), text_config).unwrap();
        {
            let j = SqliteStore::open(&state).unwrap();
            j.create_run("r000000000001", "one", "t").unwrap();
        }
        let bin = base.join("backstop");
        std::fs::copy(env!("CARGO_BIN_EXE_backstop"), &bin).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [&state, &base.join("backstop.toml")] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o555)).unwrap();
        // As root permissions are not enforced: read as `nobody` instead.
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").unwrap().uid() == 0
        };
        for args in [vec!["runs"], vec!["status"], vec!["escalations"]] {
            let mut cmd = if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(&bin);
                c
            } else {
                Command::new(&bin)
            };
            let out = cmd
                .arg("-c")
                .arg(base.join("backstop.toml"))
                .args(&args)
                .current_dir("/")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
            if args == ["runs"] {
                assert!(text(&out).contains("r000000000001"), "{}", text(&out));
            }
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Reading a store on a full disk (a 4 MiB tmpfs filled up).
    #[test]
    fn reading_works_on_a_full_disk() {
        let mnt = std::path::PathBuf::from(format!("/tmp/backstop-full-{}", std::process::id()));
        std::fs::create_dir_all(&mnt).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4M", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            // Only root can make a small filesystem to fill.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run as root)"
            );
            eprintln!("reading_works_on_a_full_disk: not run (cannot mount a tmpfs here)");
            return;
        }
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _unmount = Unmount(mnt.clone());
        let state = mnt.join("state.db");
        {
            let j = SqliteStore::open(&state).unwrap();
            j.create_run("r000000000002", "one", "t").unwrap();
        }
        // Fill what is left.
        let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        let _ = filler.sync_all();
        let dir = tempdir();
        let config = dir.path().join("backstop.toml");
        std::fs::write(
            &config,
            format!("version = 1\nstate = \"sqlite:{}\"\n", state.display()),
        )
        .unwrap();
        for args in [vec!["runs"], vec!["status"], vec!["escalations"]] {
            let out = backstop(&config, &args);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        }
        let out = backstop(&config, &["runs"]);
        assert!(text(&out).contains("r000000000002"), "{}", text(&out));
    }

    /// A store that lost records (cut back after a crash): the side-effect
    /// step whose intent and result vanished is not run again, because
    /// its tool's `reconcile` says it happened.
    #[test]
    fn a_lost_record_does_not_become_a_second_effect() {
        let dir = tempdir();
        let config = config(dir.path());
        let (mut child, id) = crate::runs::start(&config, "pay", "t");
        let ledger = dir.path().join("ledger/ledger.jsonl");
        let t = Instant::now();
        while std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(t.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        child.kill().unwrap();
        child.wait().unwrap();
        // Lose everything after run-started (step 1's intent and result,
        // step 2's intent), as a WAL cut back after a crash would: the
        // newest records go.
        let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        let lost = conn
            .execute(
                "DELETE FROM entries WHERE seq >= 2 AND rid = (SELECT rid FROM runs WHERE id = ?1)",
                [&id],
            )
            .unwrap();
        assert_eq!(lost, 3, "intent and result of step 1, intent of step 2");
        drop(conn);
        // Shorten the wait so the resume finishes quickly.
        let text_config = std::fs::read_to_string(&config)
            .unwrap()
            .replace("ms = 20000", "ms = 10");
        std::fs::write(&config, text_config).unwrap();
        let out = backstop(&config, &["resume", &id, "--allow-drift"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("journal record is missing"),
            "{}",
            text(&out)
        );
        let lines = std::fs::read_to_string(&ledger).unwrap();
        assert_eq!(lines.lines().count(), 1, "the payment ran twice: {lines}");
    }
}

mod server {
    //! Slow or stalled clients cannot hold the server, and stopping is
    //! bounded.
    use super::*;
    use crate::common::serve_with;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempdir();
        let config = write_config(
            dir.path(),
            &format!("{PRELUDE}\n[tools.fault]\ncomponent = \"{{plugins}}/fault.wasm\"\n"),
        );
        (dir, config)
    }

    fn addr(server: &crate::common::Server) -> String {
        server.base.trim_start_matches("http://").to_owned()
    }

    /// Reads until the server closes the connection (or `within` passes);
    /// returns what it sent and whether it closed.
    fn until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
        s.set_read_timeout(Some(within)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (String::from_utf8_lossy(&got).into_owned(), true)
                }
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            }
        }
    }

    fn healthz(addr: &str) -> bool {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let (text, _) = until_closed(&mut s, Duration::from_secs(5));
        text.starts_with("HTTP/1.1 200")
    }

    #[test]
    fn half_a_header_is_dropped_at_the_header_timeout() {
        let (_d, config) = setup();
        let server = serve_with(&config, None, &["--header-timeout", "1s"]);
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .unwrap();
        let t = Instant::now();
        let (_, closed) = until_closed(&mut s, Duration::from_secs(8));
        assert!(closed, "a half-sent header held the connection for 8 s");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "closed after {:?}",
            t.elapsed()
        );
        // An idle keep-alive connection too.
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let (text, closed) = until_closed(&mut s, Duration::from_secs(8));
        assert!(text.starts_with("HTTP/1.1 200") && closed, "{text}");
    }

    #[test]
    fn an_oversized_header_is_refused_without_buffering_it() {
        let (_d, config) = setup();
        let server = serve_with(&config, None, &[]);
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        let mut head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 390 << 10));
        // The server stops reading (and closes) once past its limit, so the
        // write may fail part way: that is the point.
        let _ = s.write_all(&head);
        let (text, closed) = until_closed(&mut s, Duration::from_secs(5));
        assert!(closed, "an oversized header kept the connection open");
        // When the answer gets out before the close, it is the API's JSON.
        if !text.is_empty() {
            assert!(text.starts_with("HTTP/1.1 431"), "{text}");
            assert!(text.contains("\"status\":431"), "{text}");
        }
        // A request line that is not HTTP: 400, with the JSON body.
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        s.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
        let (text, _) = until_closed(&mut s, Duration::from_secs(5));
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(
            text.contains("application/json") && text.contains("\"status\":400"),
            "{text}"
        );
        assert!(healthz(&addr(&server)));
    }

    #[test]
    fn a_body_that_never_ends_is_answered_408() {
        let (_d, config) = setup();
        let server = serve_with(&config, None, &["--body-timeout", "1s"]);
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        s.write_all(
            b"POST /v1/calls HTTP/1.1\r\nHost: t\r\nContent-Type: \
            application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"cha\r\n",
        )
        .unwrap();
        let t = Instant::now();
        let (text, closed) = until_closed(&mut s, Duration::from_secs(8));
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"status\":408"), "{text}");
        assert!(closed, "{text}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }

    #[test]
    fn connections_are_capped_and_the_server_stays_reachable() {
        let (_d, config) = setup();
        let server = serve_with(
            &config,
            None,
            &["--max-connections", "20", "--header-timeout", "2s"],
        );
        let pid = server.child.id();
        let fds = || {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
        };
        let before = fds();
        let mut slow = Vec::new();
        for _ in 0..60 {
            let mut s = TcpStream::connect(addr(&server)).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ");
            slow.push(s);
        }
        std::thread::sleep(Duration::from_millis(500));
        let during = fds();
        assert!(
            during <= before + 25,
            "60 slow clients held {} descriptors (limit 20)",
            during - before
        );
        // Once their header timeout passes, the server answers again.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            healthz(&addr(&server)),
            "unreachable after the slow clients timed out"
        );
        drop(slow);
    }

    #[test]
    fn sigterm_with_a_stalled_client_stops_within_the_grace_period() {
        let (_d, config) = setup();
        let mut server = serve_with(&config, None, &["--grace", "1s", "--body-timeout", "60s"]);
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        // Headers sent, the body promised and never sent.
        s.write_all(
            b"POST /v1/calls HTTP/1.1\r\nHost: t\r\nContent-Type: \
            application/json\r\nContent-Length: 100\r\n\r\n{\"chain\"",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = loop {
            if let Some(st) = server.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stopped after {:?}",
            t.elapsed()
        );
        drop(s);
    }
}

/// After a breaker opened, four `backstop ask` processes started together
/// send one half-open probe between them (`half_open_probes = 1`), not
/// one each: probes are claimed through the store.
#[test]
fn half_open_probes_are_admitted_once_across_processes() {
    use backstop::testkit::model::anthropic_text;
    use backstop::testkit::{Reply, ScriptedServer};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(ScriptedServer::start(anthropic_text("ok")))
        .unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        &format!(
            "state = \"sqlite:{{dir}}/state.db\"\n{PRELUDE}\n[models.m]\nprovider = \
                \"anthropic\"\nmodel = \"m\"\nbase_url = \"{}\"\nretry = {{ attempts = 1 \
                }}\nbreaker = {{ consecutive_failures = 1, failure_rate = 0.0, open_for = \
                \"500ms\", probe_timeout = \"10s\" }}\n",
            server.origin()
        ),
    );
    server.push([Reply::status(503)]);
    let out = backstop(&config, &["ask", "m", "hi"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_millis(700));
    let before = server.arrivals().len();
    // Slow answers, so the four are in flight together.
    server.set_fallback(anthropic_text("ok").delay(Duration::from_millis(1500)));
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_backstop"))
                .arg("-c")
                .arg(&config)
                .args(["ask", "--json", "m", "hi"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<Value> = children
        .into_iter()
        .map(|c| serde_json::from_slice(&c.wait_with_output().unwrap().stdout).unwrap())
        .collect();
    let probes = server.arrivals().len() - before;
    assert_eq!(
        probes, 1,
        "{probes} probes reached the provider: {outcomes:?}"
    );
    let served = outcomes.iter().filter(|o| o["ok"] == true).count();
    assert_eq!(served, 1, "{outcomes:?}");
    for o in outcomes.iter().filter(|o| o["ok"] != true) {
        assert_eq!(o["attempts"][0]["class"], "circuit-open", "{o}");
    }
}

/// "Run R is active in another process (pid P)" names the process really
/// holding the run, not a dead owner the row still remembers.
#[test]
fn a_busy_run_names_its_live_owner() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        &format!(
            "state = \"sqlite:{{dir}}/state.db\"\n{PRELUDE}\n[tools.slow]\ncomponent = \
                \"{{plugins}}/fault.wasm\"\ntimeout = \"60s\"\n[agents.slow]\nsteps = [{{ name = \
                \"s\", tool = \"slow\", input = {{ mode = \"sleep\", ms = 20000 }} }}]\n"
        ),
    );
    let (mut child, id) = crate::runs::start(&config, "slow", "t");
    // The row names a dead process (as after a crash and a takeover).
    std::thread::sleep(Duration::from_millis(300));
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute("UPDATE runs SET owner_pid = 999999999 WHERE id = ?1", [&id])
        .unwrap();
    drop(conn);
    let out = backstop(&config, &["resume", &id]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("(pid {})", child.id())), "{text}");
    child.kill().unwrap();
    child.wait().unwrap();
}
