//! The README's first command: the demo shows every recovery path.

use crate::common::{plugins, tempdir};

#[test]
fn the_demo_shows_every_recovery_path() {
    let dir = tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("demo")
        .arg("--plugins")
        .arg(plugins())
        .arg("--dir")
        .arg(dir.path().join("demo"))
        .env_remove("BACKSTOP_DEMO_NO_KEY")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for expected in [
        "web_search #1: transient (search service error (500)) -> retry in",
        "web_search #2: ok",
        "web_search breaker: open",
        "web_search #1: circuit-open",
        "web_search instances started: 0, requests to the service: 0",
        "served by corpus (DEGRADED: fallback: web_search: unavailable)",
        "served by cache (DEGRADED: fallback: web_search: circuit open; corpus: permanent)",
        "step 1: llm: served by local (DEGRADED: fallback: sonnet: permanent)",
        "step 4: publish: NEEDS APPROVAL: escalation",
        "approval-required for `publish`",
        "resolved by demo-operator: approve",
        "step 4: publish: approved by demo-operator: running it",
        "KILLED while `publish` (irreversible, approved) was running",
        "step 2: search: done earlier",
        "step 4: publish: reconciled: it had not happened, running it now",
        "is finished after step 5: Published a short report on wasm sandboxing.",
        "the model was asked 1 more time(s) after the kill",
        "`publish` ran exactly once: 1 line(s) in its ledger",
        // Operating it: another process sees the breaker through the store,
        // and the run's child process falls back at once because of it.
        "Another process sees the same breaker",
        "| web_search           open",
        "step 2: search: served by corpus (DEGRADED: fallback: web_search: circuit open)",
        "backstop_breaker_state{target=\"web_search\",state=\"open\"} 1",
        "backstop_fallbacks_total{chain=\"search\",target=\"corpus\",reason=\"unavailable\"} 2",
        "backstop_escalations_open 0",
        "/v1/status: escalations open 0, resolved 1; latest run",
    ] {
        assert!(
            text.contains(expected),
            "the demo did not print {expected:?}:\n{text}"
        );
    }
}
