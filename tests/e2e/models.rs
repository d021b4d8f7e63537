//! Model calls through the guards, against the fault-injecting model
//! server on 127.0.0.1 over real HTTP.

use crate::common::{load, t, tempdir, trail, write_config, PRELUDE};
use backstop::testkit::model::*;
use backstop::testkit::{Reply, ScriptedServer};
use backstop::{Backstop, FailureClass};
use serde_json::json;
use std::time::Duration;

const NO_BREAKER: &str = "breaker = { consecutive_failures = 0, failure_rate = 0.0 }";

/// One model per protocol and mode, all on `origin`, breakers off so the
/// table's failures do not interact.
fn table_config(origin: &str) -> String {
    let model = |name: &str, provider: &str, stream: bool| {
        format!(
            "[models.{name}]\nprovider = \"{provider}\"\nmodel = \"m\"\nbase_url = \
                \"{origin}\"\ntimeout = \"400ms\"\nidle_timeout = \"200ms\"\nstream = \
                {stream}\nretry = {{ attempts = 2 }}\n{NO_BREAKER}\n"
        )
    };
    format!(
        "{PRELUDE}\n{}{}{}{}",
        model("a", "anthropic", false),
        model("as", "anthropic", true),
        model("o", "openai", false),
        model("os", "openai", true)
    )
}

struct Case {
    name: &'static str,
    model: &'static str,
    reply: Reply,
    class: &'static str,
    then: &'static str,
}

fn case(
    name: &'static str,
    model: &'static str,
    reply: Reply,
    class: &'static str,
    then: &'static str,
) -> Case {
    Case {
        name,
        model,
        reply,
        class,
        then,
    }
}

fn http_date_in(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(secs))
}

fn cases() -> Vec<Case> {
    let slow = |r: Reply| r.delay(Duration::from_millis(1000));
    let cut = |status: u16, body: &str| {
        Reply {
            chunks: vec![(Duration::from_millis(5), body.into())],
            ..Reply::status(status)
        }
        .then_drop()
    };
    let partial_stream = |events: Vec<String>, keep: usize| {
        let mut ev = events;
        ev.truncate(keep);
        Reply::sse(ev, Duration::from_millis(1))
    };
    vec![
        case(
            "529 overloaded",
            "a",
            anthropic_error(529, "overloaded_error", "Overloaded"),
            "transient",
            "retry",
        ),
        case(
            "500 api_error",
            "a",
            anthropic_error(500, "api_error", "boom"),
            "transient",
            "retry",
        ),
        case(
            "502 from a proxy",
            "o",
            Reply::raw(502, "<html>bad gateway</html>"),
            "transient",
            "retry",
        ),
        case(
            "503",
            "o",
            openai_error(503, "server_error", "unavailable"),
            "transient",
            "retry",
        ),
        case(
            "408 request timeout",
            "a",
            Reply::status(408),
            "transient",
            "retry",
        ),
        case(
            "409 conflict",
            "a",
            Reply::status(409),
            "transient",
            "retry",
        ),
        case(
            "429 with retry-after-ms",
            "a",
            anthropic_error(429, "rate_limit_error", "slow down").header("retry-after-ms", "150"),
            "rate-limited",
            "retry",
        ),
        case(
            "429 with retry-after seconds",
            "o",
            openai_error(429, "rate_limit_exceeded", "slow down").header("retry-after", "1"),
            "rate-limited",
            "retry",
        ),
        case(
            "429 with an HTTP-date retry-after",
            "a",
            anthropic_error(429, "rate_limit_error", "x").header("retry-after", &http_date_in(2)),
            "rate-limited",
            "retry",
        ),
        case(
            "429 spend limit",
            "a",
            anthropic_error(
                429,
                "rate_limit_error",
                "enforced_spend_limit_reached: cap hit",
            ),
            "permanent",
            "stop",
        ),
        case(
            "429 insufficient_quota",
            "o",
            openai_error(429, "insufficient_quota", "You exceeded your quota"),
            "permanent",
            "stop",
        ),
        case(
            "400 invalid request",
            "a",
            anthropic_error(400, "invalid_request_error", "bad"),
            "invalid-input",
            "stop",
        ),
        case(
            "401 bad key",
            "a",
            anthropic_error(401, "authentication_error", "invalid x-api-key"),
            "permanent",
            "stop",
        ),
        case(
            "403 forbidden",
            "o",
            openai_error(403, "permission_denied", "no"),
            "permanent",
            "stop",
        ),
        case(
            "404 unknown model",
            "o",
            openai_error(404, "model_not_found", "no such model"),
            "permanent",
            "stop",
        ),
        case(
            "413 too large",
            "a",
            anthropic_error(413, "request_too_large", "too big"),
            "invalid-input",
            "stop",
        ),
        case(
            "422 unprocessable",
            "o",
            openai_error(422, "invalid_value", "bad"),
            "invalid-input",
            "stop",
        ),
        case(
            "500 with x-should-retry: false",
            "a",
            anthropic_error(500, "api_error", "x").header("x-should-retry", "false"),
            "permanent",
            "stop",
        ),
        case(
            "400 with x-should-retry: true",
            "a",
            anthropic_error(400, "invalid_request_error", "x").header("x-should-retry", "true"),
            "transient",
            "retry",
        ),
        case(
            "200 with a body that is not JSON",
            "a",
            Reply::raw(200, "<html>hello</html>"),
            "malformed-output",
            "stop",
        ),
        case(
            "200 without choices",
            "o",
            Reply::json(200, json!({"model": "m"})),
            "malformed-output",
            "stop",
        ),
        case(
            "200 with tool arguments that are not JSON",
            "o",
            Reply::json(
                200,
                json!({"choices": [{"message": {"tool_calls": [{"id": "1",
                    "function": {"name": "f", "arguments": "{oops"}}]},
                        "finish_reason": "tool_calls"}]}),
            ),
            "malformed-output",
            "stop",
        ),
        case(
            "connection dropped before an answer",
            "a",
            Reply::dropped(),
            "transient",
            "retry",
        ),
        case(
            "body cut short",
            "o",
            cut(200, "{\"choices\": ["),
            "transient",
            "retry",
        ),
        case(
            "no headers before the timeout",
            "a",
            slow(anthropic_text("late")),
            "timeout",
            "retry",
        ),
        case(
            "stream: overloaded event before output",
            "as",
            anthropic_stream_error(&[], "overloaded_error"),
            "transient",
            "retry",
        ),
        case(
            "stream: rate-limit event before output",
            "as",
            anthropic_stream_error(&[], "rate_limit_error"),
            "rate-limited",
            "retry",
        ),
        case(
            "stream: api_error event before output",
            "as",
            anthropic_stream_error(&[], "api_error"),
            "transient",
            "retry",
        ),
        case(
            "stream: invalid_request event before output",
            "as",
            anthropic_stream_error(&[], "invalid_request_error"),
            "invalid-input",
            "stop",
        ),
        case(
            "stream: overloaded event after output began",
            "as",
            anthropic_stream_error(&["Hel", "lo"], "overloaded_error"),
            "stream-broken",
            "stop",
        ),
        case(
            "stream: connection cut after output began",
            "as",
            Reply::sse(
                anthropic_stream_events(&["Hel", "lo"])[..4].to_vec(),
                Duration::from_millis(1),
            )
            .then_drop(),
            "stream-broken",
            "stop",
        ),
        case(
            "stream: ends without message_stop before output",
            "as",
            partial_stream(anthropic_stream_events(&[]), 2),
            "transient",
            "retry",
        ),
        case(
            "openai stream: error chunk before output",
            "os",
            Reply::sse(
                vec![format!(
                    "data: {}\n\n",
                    json!({"error": {"code": "server_error", "message": "x"}})
                )],
                Duration::from_millis(1),
            ),
            "transient",
            "retry",
        ),
        case(
            "openai stream: ends without [DONE] after output",
            "os",
            partial_stream(openai_stream_events(&["a", "b"]), 2),
            "stream-broken",
            "stop",
        ),
        case(
            "openai stream: stalls past the idle limit after output",
            "os",
            Reply::sse(
                openai_stream_events(&["a", "b"]),
                Duration::from_millis(300),
            ),
            "stream-broken",
            "stop",
        ),
    ]
}

#[tokio::test]
async fn conformance_table() {
    let server = ScriptedServer::start(anthropic_text("fallback"))
        .await
        .unwrap();
    let dir = tempdir();
    let b = load(dir.path(), &table_config(&server.origin())).await;
    let cases = cases();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for c in cases {
        let success = if c.model.starts_with('a') {
            if c.model == "as" {
                anthropic_stream(&["ok"])
            } else {
                anthropic_text("ok")
            }
        } else if c.model == "os" {
            openai_stream(&["ok"])
        } else {
            openai_text("ok")
        };
        server.clear();
        server.push([c.reply, success]);
        let o = b.ask(c.model, "hi").await.unwrap();
        let first = &o.attempts[0];
        if first.class.as_str() != c.class || first.then.as_str() != c.then {
            failures.push(format!(
                "{}: got {} -> {} ({}), want {} -> {}",
                c.name, first.class, first.then, first.message, c.class, c.then
            ));
        }
        if c.then == "retry" && (!o.ok || o.value.as_ref().unwrap()["text"] != "ok") {
            failures.push(format!("{}: the retry did not serve: {o}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn responses_and_tool_use_are_carried_both_ways() {
    let server = ScriptedServer::start(anthropic_text("x")).await.unwrap();
    let dir = tempdir();
    let b = load(dir.path(), &table_config(&server.origin())).await;
    let request = json!({
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "find wasm"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search",
                "input": {"q": "wasm"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                "content": "found"}]}
        ],
        "tools": [{"name": "search", "description": "search", "input_schema": {"type": "object"}}]
    });
    for (model, reply) in [
        (
            "a",
            anthropic_tool_use("t2", "search", json!({"q": "more"})),
        ),
        ("o", openai_tool_call("t2", "search", json!({"q": "more"}))),
    ] {
        server.push([reply]);
        let o = b.call(model, request.clone()).await.unwrap();
        assert!(o.ok, "{o}");
        let v = o.value.unwrap();
        assert_eq!(v["stop_reason"], "tool_use", "{model}");
        assert_eq!(
            v["content"][0],
            json!({"type": "tool_use", "id": "t2", "name": "search", "input": {"q": "more"}}),
            "{model}"
        );
        let sent: serde_json::Value =
            serde_json::from_str(&server.arrivals().last().unwrap().body).unwrap();
        if model == "a" {
            assert_eq!(server.arrivals().last().unwrap().path, "/v1/messages");
            assert_eq!(sent["system"], "be brief");
            assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
            assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
        } else {
            assert_eq!(server.arrivals().last().unwrap().path, "/chat/completions");
            assert_eq!(
                sent["messages"][0],
                json!({"role": "system", "content": "be brief"})
            );
            assert_eq!(
                sent["messages"][2]["tool_calls"][0]["function"]["arguments"],
                "{\"q\":\"wasm\"}"
            );
            assert_eq!(
                sent["messages"][3],
                json!({"role": "tool", "tool_call_id": "t1", "content": "found"})
            );
            assert_eq!(sent["tools"][0]["function"]["name"], "search");
        }
    }
    for (model, reply) in [
        ("as", anthropic_stream(&["Hel", "lo"])),
        ("os", openai_stream(&["Hel", "lo"])),
    ] {
        server.push([reply]);
        let o = b.ask(model, "hi").await.unwrap();
        assert_eq!(o.value.unwrap()["text"], "Hello", "{model}");
        let sent: serde_json::Value =
            serde_json::from_str(&server.arrivals().last().unwrap().body).unwrap();
        assert_eq!(sent["stream"], true);
    }
}

fn chain_config(primary: &str, backup: &str, primary_extra: &str) -> String {
    format!(
        r#"{PRELUDE}
[models.primary]
provider = "anthropic"
model = "claude-test"
base_url = "{primary}"
timeout = "1s"
{primary_extra}

[models.backup]
provider = "openai"
model = "local-test"
base_url = "{backup}"
label = "scripted local model"

[chains.llm]
targets = ["primary", "backup"]
"#
    )
}

#[tokio::test]
async fn model_chain_falls_back_after_repeated_529() {
    let primary = ScriptedServer::start(anthropic_error(529, "overloaded_error", "Overloaded"))
        .await
        .unwrap();
    let backup = ScriptedServer::start(openai_text("from the backup"))
        .await
        .unwrap();
    let dir = tempdir();
    let b = load(
        dir.path(),
        &chain_config(&primary.origin(), &backup.origin(), ""),
    )
    .await;
    let o = b.ask("llm", "hi").await.unwrap();
    assert_eq!(
        trail(&o),
        [
            t("primary", "transient", "retry"),
            t("primary", "transient", "retry"),
            t("primary", "transient", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert!(o.ok && o.degraded);
    assert_eq!(o.served_by.as_deref(), Some("backup"));
    assert_eq!(
        o.degraded_reason.as_deref(),
        Some("fallback: primary: transient")
    );
    assert_eq!(o.value.unwrap()["text"], "from the backup");
    assert_eq!(primary.arrivals().len(), 3);
}

#[tokio::test]
async fn a_stream_broken_after_output_restarts_on_the_next_target_marked() {
    let primary = ScriptedServer::start(anthropic_text("unused"))
        .await
        .unwrap();
    let backup = ScriptedServer::start(openai_text("complete answer"))
        .await
        .unwrap();
    let dir = tempdir();
    let b = load(
        dir.path(),
        &chain_config(&primary.origin(), &backup.origin(), "stream = true"),
    )
    .await;
    primary.push([anthropic_stream_error(&["partial "], "overloaded_error")]);
    let o = b.ask("llm", "hi").await.unwrap();
    assert_eq!(
        trail(&o),
        [
            t("primary", "stream-broken", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert_eq!(
        o.degraded_reason.as_deref(),
        Some("fallback: primary: stream-broken")
    );
    assert_eq!(o.value.unwrap()["text"], "complete answer");
}

#[tokio::test]
async fn a_models_breaker_opens_then_probes_and_closes() {
    let primary = ScriptedServer::start(anthropic_error(500, "api_error", "down"))
        .await
        .unwrap();
    let backup = ScriptedServer::start(openai_text("backup")).await.unwrap();
    let dir = tempdir();
    let extra =
        "retry = { attempts = 1 }\nbreaker = { consecutive_failures = 2, open_for = \"300ms\" }";
    let b = load(
        dir.path(),
        &chain_config(&primary.origin(), &backup.origin(), extra),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            b.ask("llm", "hi").await.unwrap().served_by.as_deref(),
            Some("backup")
        );
    }
    assert_eq!(primary.arrivals().len(), 2);
    let o = b.ask("llm", "hi").await.unwrap();
    assert_eq!(
        trail(&o),
        [
            t("primary", "circuit-open", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert_eq!(primary.arrivals().len(), 2, "an open breaker sends nothing");
    tokio::time::sleep(Duration::from_millis(350)).await;
    primary.set_fallback(anthropic_text("primary is back"));
    let o = b.ask("llm", "hi").await.unwrap();
    assert_eq!(trail(&o), [t("primary", "ok", "done")]);
    assert!(!o.degraded);
    assert_eq!(
        b.breaker_state("primary"),
        Some(backstop::guard::BreakerState::Closed)
    );
}

#[tokio::test]
async fn no_request_arrives_before_its_retry_after() {
    let server = ScriptedServer::start(anthropic_text("finally"))
        .await
        .unwrap();
    server.push([
        anthropic_error(429, "rate_limit_error", "x")
            .header("retry-after-ms", "300")
            .header("retry-after", "9"),
        anthropic_error(429, "rate_limit_error", "x").header("retry-after", "1"),
        anthropic_error(529, "overloaded_error", "x").header("retry-after-ms", "200"),
    ]);
    let dir = tempdir();
    let config = format!(
        "{PRELUDE}\n[models.m]\nprovider = \"anthropic\"\nmodel = \"m\"\nbase_url = \"{}\"\nretry \
            = {{ attempts = 4 }}\n{NO_BREAKER}\n",
        server.origin()
    );
    let b = load(dir.path(), &config).await;
    let o = b.ask("m", "hi").await.unwrap();
    assert!(o.ok, "{o}");
    let at: Vec<_> = server.arrivals().iter().map(|a| a.at).collect();
    assert_eq!(at.len(), 4);
    assert!(
        at[1] - at[0] >= Duration::from_millis(300),
        "retry-after-ms 300 undercut: {:?}",
        at[1] - at[0]
    );
    assert!(
        at[1] - at[0] < Duration::from_secs(9),
        "retry-after-ms must win over retry-after"
    );
    assert!(
        at[2] - at[1] >= Duration::from_secs(1),
        "retry-after 1 s undercut: {:?}",
        at[2] - at[1]
    );
    assert!(
        at[3] - at[2] >= Duration::from_millis(200),
        "529's retry-after-ms undercut: {:?}",
        at[3] - at[2]
    );
}

#[tokio::test]
async fn a_model_without_its_key_is_never_called() {
    let server = ScriptedServer::start(anthropic_text("should not be asked"))
        .await
        .unwrap();
    let backup = ScriptedServer::start(openai_text("local answer"))
        .await
        .unwrap();
    let dir = tempdir();
    let extra = "api_key_env = \"BACKSTOP_TEST_KEY_NEVER_SET\"";
    let b: Backstop = load(
        dir.path(),
        &chain_config(&server.origin(), &backup.origin(), extra),
    )
    .await;
    let o = b.ask("llm", "hi").await.unwrap();
    assert_eq!(
        trail(&o),
        [
            t("primary", "permanent", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert!(
        o.attempts[0]
            .message
            .contains("BACKSTOP_TEST_KEY_NEVER_SET is not set"),
        "{o}"
    );
    assert_eq!(server.arrivals().len(), 0);
    let e = b.ask("primary", "hi").await.unwrap().error.unwrap();
    assert_eq!(e.class, FailureClass::Permanent);
}

#[test]
fn keys_never_appear_in_any_output() {
    let secret = "sk-test-SECRET-7f3a9c";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(ScriptedServer::start(anthropic_text("hello")))
        .unwrap();
    let dir = tempdir();
    let config = format!(
        "{PRELUDE}\n[models.m]\nprovider = \"anthropic\"\nmodel = \"m\"\napi_key_env = \
            \"BACKSTOP_TEST_KEY\"\nbase_url = \"{}\"\nretry = {{ attempts = 2 }}\n",
        server.origin()
    );
    let path = write_config(dir.path(), &config);
    // A provider that echoes the key in its error, then one that succeeds.
    server.push([anthropic_error(
        500,
        "api_error",
        &format!("upstream rejected key {secret}"),
    )]);
    let mut printed = String::new();
    for args in [
        vec!["ask", "m", "hi"],
        vec!["ask", "m", "hi", "--json"],
        vec!["check"],
        vec!["tools"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("-c")
            .arg(&path)
            .args(&args)
            .env("BACKSTOP_TEST_KEY", secret)
            .env("BACKSTOP_LOG", "trace")
            .output()
            .unwrap();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(printed.contains("hello"), "{printed}");
    assert!(
        printed.contains("[redacted]"),
        "the echoed key should be redacted: {printed}"
    );
    assert!(
        !printed.contains(secret),
        "the key leaked into output:\n{printed}"
    );
    // The key did reach the provider, as a credential.
    assert!(server
        .arrivals()
        .iter()
        .all(|a| a.credential.as_deref() == Some(secret)));
}

#[tokio::test]
async fn connection_refused_is_transient_and_retried() {
    // Port 9 (discard) has no listener here: every connect is refused.
    let dir = tempdir();
    let config = format!(
        "{PRELUDE}\n[models.m]\nprovider = \"openai\"\nmodel = \"m\"\nbase_url = \
            \"http://127.0.0.1:9/v1\"\nretry = {{ attempts = 2 }}\n{NO_BREAKER}\n"
    );
    let b = load(dir.path(), &config).await;
    let o = b.ask("m", "hi").await.unwrap();
    assert_eq!(
        trail(&o),
        [t("m", "transient", "retry"), t("m", "transient", "stop")]
    );
    assert!(o.attempts[0].message.contains("cannot connect"), "{o}");
}
