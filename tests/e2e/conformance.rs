//! The official MCP conformance suite against `/mcp` of `backstop serve`,
//! with a config whose tools carry the names its scenarios call. Every
//! scenario that applies to Backstop must pass; the others are listed
//! with why they do not apply, and a scenario in neither list fails the
//! test (so a new one is looked at).

use crate::common::{conformance_suite, serve, tempdir, write_config};
use serde_json::Value;
use std::collections::BTreeMap;

/// Scenarios that apply, and what in the config answers each.
const APPLY: &[&str] = &[
    "server-initialize",
    "ping",
    "tools-list",
    // test_simple_text: a component's result as text content.
    "tools-call-simple-text",
    // test_error_handling: a classified failure as an error result.
    "tools-call-error",
    // test_tool_with_progress: a chain whose three fallbacks are each a
    // progress notification.
    "tools-call-with-progress",
    // test_elicitation: a tool that needs approval asks the client.
    "tools-call-elicitation",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
];

/// Scenarios that do not apply, and why.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    (
        "logging-set-level",
        "Backstop serves no logging capability (its logs are its own)",
    ),
    (
        "completion-complete",
        "Backstop serves no prompts or resources to complete",
    ),
    (
        "tools-call-image",
        "a tool's result is a JSON value: no image content",
    ),
    (
        "tools-call-audio",
        "a tool's result is a JSON value: no audio content",
    ),
    (
        "tools-call-embedded-resource",
        "Backstop serves no resources",
    ),
    (
        "tools-call-mixed-content",
        "a tool's result is a JSON value, as text and structured",
    ),
    ("tools-call-with-logging", "no logging capability"),
    (
        "tools-call-sampling",
        "Backstop never asks the client's model (it runs its own chains)",
    ),
    (
        "elicitation-sep1034-defaults",
        "Backstop elicits only an approval, with its own form",
    ),
    (
        "elicitation-sep1330-enums",
        "Backstop elicits only an approval, with its own form",
    ),
    (
        "json-schema-2020-12",
        "needs a tool declaring that exact schema; schemas pass through",
    ),
    (
        "server-sse-polling",
        "needs a test_reconnection tool that closes its own stream",
    ),
    ("resources-list", "Backstop serves tools only"),
    ("resources-read-text", "Backstop serves tools only"),
    ("resources-read-binary", "Backstop serves tools only"),
    ("resources-templates-read", "Backstop serves tools only"),
    ("resources-subscribe", "Backstop serves tools only"),
    ("resources-unsubscribe", "Backstop serves tools only"),
    ("prompts-list", "Backstop serves tools only"),
    ("prompts-get-simple", "Backstop serves tools only"),
    ("prompts-get-with-args", "Backstop serves tools only"),
    (
        "prompts-get-embedded-resource",
        "Backstop serves tools only",
    ),
    ("prompts-get-with-image", "Backstop serves tools only"),
];

#[test]
fn the_official_conformance_suite_passes_every_scenario_that_applies() {
    let (entry, node) = conformance_suite();
    let dir = tempdir();
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let remote = |name: &str| {
        format!(
            "[tools.{name}]\nmcp = {{ url = \"http://{gone}/mcp\", tool = \"gone\" }}\nhttp = \
             [\"http://{gone}\"]\neffect = \"read-only\"\n"
        )
    };
    let text = format!(
        "version = 1\ncache_dir = \"{{cache}}\"\n\
         [tools.test_simple_text]\ncomponent = \"{{plugins}}/fault.wasm\"\n\
         [tools.test_elicitation]\ncomponent = \"{{plugins}}/fault.wasm\"\napproval = true\n\
         [tools.finally]\ncomponent = \"{{plugins}}/fault.wasm\"\n\
         {}{}{}\
         [chains.test_tool_with_progress]\n\
         targets = [\"test_error_handling\", \"gone_a\", \"gone_b\", \"finally\"]\n",
        remote("test_error_handling"),
        remote("gone_a"),
        remote("gone_b"),
    );
    let config = write_config(dir.path(), &text);
    let server = serve(&config, None);
    let out = dir.path().join("results");
    let run = std::process::Command::new(node)
        .arg(entry)
        .args(["server", "--url", &format!("{}/mcp", server.base), "-o"])
        .arg(&out)
        .env(
            "PATH",
            format!(
                "{}:{}",
                node.parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&run.stdout).into_owned();

    // scenario -> statuses of its checks
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        // `server-SCENARIO-2026-12-01T18-20-06-118Z`: the time stamp is
        // 24 characters.
        let scenario = name
            .strip_prefix("server-")
            .filter(|n| n.len() > 25)
            .map(|n| n[..n.len() - 25].to_owned())
            .unwrap_or(name);
        let checks: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(e.path().join("checks.json")).unwrap())
                .unwrap();
        let statuses = checks
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["status"].as_str().unwrap_or("?"),
                    c["errorMessage"]
                )
            })
            .collect();
        seen.insert(scenario, statuses);
    }
    for s in APPLY {
        let statuses = seen
            .get(*s)
            .unwrap_or_else(|| panic!("{s} did not run:\n{summary}"));
        assert!(
            statuses.iter().all(|st| !st.starts_with("FAILURE")),
            "{s}: {statuses:?}"
        );
    }
    for s in seen.keys() {
        assert!(
            APPLY.contains(&s.as_str()) || NOT_APPLICABLE.iter().any(|(n, _)| n == s),
            "a scenario this test does not know: {s} ({:?})",
            seen[s]
        );
    }
}
