//! Every row of the brief's failure table, injected through the real
//! `fault` component and asserted on the outcome.

use crate::common::{load, t, tempdir, trail, PRELUDE};
use backstop::guard::BreakerState;
use backstop::{Backstop, EscalationReason, FailureClass};
use serde_json::json;
use std::time::Duration;

fn config() -> String {
    format!(
        r#"{PRELUDE}
[tools.flaky]
component = "{{plugins}}/fault.wasm"
timeout = "300ms"

[tools.backup]
component = "{{plugins}}/fault.wasm"

[tools.writer]
component = "{{plugins}}/fault.wasm"
effect = "side-effect"
timeout = "300ms"

[tools.sender]
component = "{{plugins}}/fault.wasm"
effect = "irreversible"
timeout = "300ms"

[tools.rated]
component = "{{plugins}}/fault.wasm"
breaker = {{ consecutive_failures = 0, failure_rate = 0.5, min_calls = 4, window = "10s" }}

[chains.main]
targets = ["flaky", "backup"]

[chains.solo]
targets = ["flaky"]

[chains.fx]
targets = ["writer", "backup"]

[chains.irr]
targets = ["sender", "backup"]

[chains.impatient]
targets = ["flaky", "backup"]
retry = {{ max_retry_after = "50ms" }}

[chains.tight]
targets = ["flaky"]
deadline = "250ms"
retry = {{ attempts = 10, base = "100ms", cap = "100ms", jitter = "none" }}
"#
    )
}

async fn setup() -> (tempfile::TempDir, Backstop) {
    let dir = tempdir();
    let b = load(dir.path(), &config()).await;
    (dir, b)
}

#[tokio::test]
async fn transient_failure_is_retried_within_jitter_bounds() {
    let (_d, b) = setup().await;
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "fail", "class": "transient", "times": 2, "value": "hi"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "transient", "retry"),
            t("flaky", "transient", "retry"),
            t("flaky", "ok", "done")
        ]
    );
    assert!(o.ok && !o.degraded);
    assert_eq!(o.served_by.as_deref(), Some("flaky"));
    // Full jitter: each wait is within [0, min(cap, base * 2^n)].
    assert!(o.attempts[0].delay_ms <= 10, "{:?}", o.attempts[0]);
    assert!(o.attempts[1].delay_ms <= 20, "{:?}", o.attempts[1]);
    // The tool saw the attempt number and one key across retries.
    let v = o.value.unwrap();
    assert_eq!(v["attempt"], 3);
    assert_eq!(v["key"], &*o.key);
    assert_eq!(v["echo"], "hi");
}

#[tokio::test]
async fn seeded_jitter_is_reproducible() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (_d, b) = setup().await;
        let o = b
            .call("solo", json!({"mode": "fail", "class": "transient"}))
            .await
            .unwrap();
        runs.push(o.attempts.iter().map(|a| a.delay_ms).collect::<Vec<_>>());
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn attempts_are_bounded_then_the_chain_falls_back_marked() {
    let (_d, b) = setup().await;
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "fail", "class": "transient"}, "backup": {"mode": "echo"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "transient", "retry"),
            t("flaky", "transient", "retry"),
            t("flaky", "transient", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert!(o.ok && o.degraded);
    assert_eq!(o.served_by.as_deref(), Some("backup"));
    assert_eq!(
        o.degraded_reason.as_deref(),
        Some("fallback: flaky: transient")
    );
    assert!(
        o.attempts[2].message.contains("3 attempts used"),
        "{:?}",
        o.attempts[2]
    );
}

#[tokio::test]
async fn invalid_input_is_never_retried() {
    let (_d, b) = setup().await;
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "fail", "class": "invalid-input"}, "backup": {}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "invalid-input", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert!(o.degraded);
}

#[tokio::test]
async fn permanent_falls_back_without_retry_or_breaker() {
    let (_d, b) = setup().await;
    for _ in 0..4 {
        let o = b
            .call(
                "main",
                json!({"flaky": {"mode": "fail", "class": "permanent"}, "backup": {}}),
            )
            .await
            .unwrap();
        assert_eq!(
            trail(&o),
            [
                t("flaky", "permanent", "fail-over"),
                t("backup", "ok", "done")
            ]
        );
    }
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::Closed));
}

#[tokio::test]
async fn unavailable_falls_back_at_once_and_opens_the_breaker() {
    let (_d, b) = setup().await;
    let input = json!({"flaky": {"mode": "fail", "class": "unavailable"}, "backup": {}});
    for _ in 0..3 {
        let o = b.call("main", input.clone()).await.unwrap();
        assert_eq!(
            trail(&o),
            [
                t("flaky", "unavailable", "fail-over"),
                t("backup", "ok", "done")
            ]
        );
    }
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::Open));
    // Open: the tool is not even instantiated.
    let before = b.tool("flaky").unwrap().instantiations();
    let o = b.call("main", input).await.unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "circuit-open", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert_eq!(
        o.degraded_reason.as_deref(),
        Some("fallback: flaky: circuit open")
    );
    assert_eq!(b.tool("flaky").unwrap().instantiations(), before);
    // A chain whose every target is open escalates as circuit-open.
    let o = b.call("solo", json!({})).await.unwrap();
    assert!(!o.ok);
    let e = o.error.unwrap();
    assert_eq!(
        (e.class, e.escalate),
        (
            FailureClass::CircuitOpen,
            Some(EscalationReason::CircuitOpen)
        )
    );
}

#[tokio::test]
async fn needs_human_stops_the_chain_and_escalates() {
    let (_d, b) = setup().await;
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "fail", "class": "needs-human"}, "backup": {}}),
        )
        .await
        .unwrap();
    assert_eq!(trail(&o), [t("flaky", "needs-human", "stop")]);
    assert_eq!(
        o.error.unwrap().escalate,
        Some(EscalationReason::NeedsHuman)
    );
}

#[tokio::test]
async fn a_chain_that_failed_says_whether_retries_ran_out() {
    let (_d, b) = setup().await;
    // Nothing retryable anywhere: failed, and never "retries exhausted".
    let o = b
        .call("main", json!({"mode": "fail", "class": "permanent"}))
        .await
        .unwrap();
    assert!(!o.ok && o.served_by.is_none());
    assert_eq!(
        trail(&o),
        [
            t("flaky", "permanent", "fail-over"),
            t("backup", "permanent", "stop")
        ]
    );
    let e = o.error.unwrap();
    assert_eq!(e.class, FailureClass::Permanent);
    assert_eq!(e.escalate, Some(EscalationReason::Failed));
    assert!(
        e.message.contains("flaky: permanent; backup: permanent"),
        "{}",
        e.message
    );
    // Retried on each target until the attempts ran out.
    let o = b
        .call("main", json!({"mode": "fail", "class": "transient"}))
        .await
        .unwrap();
    assert_eq!(
        o.error.unwrap().escalate,
        Some(EscalationReason::RetriesExhausted)
    );
    assert_eq!(
        o.attempts.last().unwrap().then.as_str(),
        "stop",
        "the last target stops"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_and_never_undercut() {
    let (_d, b) = setup().await;
    let started = std::time::Instant::now();
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "fail", "class": "rate-limited",
            "retry_after_ms": 150, "times": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "rate-limited", "retry"),
            t("flaky", "ok", "done")
        ]
    );
    assert!(o.attempts[0].delay_ms >= 150, "{:?}", o.attempts[0]);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn retry_after_beyond_the_cap_fails_over() {
    let (_d, b) = setup().await;
    let o = b
        .call(
            "impatient",
            json!({"flaky": {"mode": "fail", "class": "rate-limited",
            "retry_after_ms": 1000}, "backup": {}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "rate-limited", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
    assert!(
        o.attempts[0].message.contains("exceeds max_retry_after"),
        "{:?}",
        o.attempts[0]
    );
}

#[tokio::test]
async fn timeout_of_a_read_only_tool_is_retried() {
    let (_d, b) = setup().await;
    // `sleep` blocks in a host call: the host timeout stops it.
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "sleep", "ms": 5000}, "backup": {}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "timeout", "retry"),
            t("flaky", "timeout", "retry"),
            t("flaky", "timeout", "fail-over"),
            t("backup", "ok", "done")
        ]
    );
}

#[tokio::test]
async fn timeout_or_trap_of_a_side_effect_tool_is_ambiguous() {
    let (_d, b) = setup().await;
    let o = b
        .call("fx", json!({"writer": {"mode": "spin"}, "backup": {}}))
        .await
        .unwrap();
    assert_eq!(trail(&o), [t("writer", "timeout", "stop")]);
    assert_eq!(
        o.error.unwrap().escalate,
        Some(EscalationReason::AmbiguousState)
    );
    let o = b
        .call("irr", json!({"sender": {"mode": "trap"}, "backup": {}}))
        .await
        .unwrap();
    assert_eq!(trail(&o), [t("sender", "trap", "stop")]);
    assert_eq!(
        o.error.unwrap().escalate,
        Some(EscalationReason::AmbiguousState)
    );
}

#[tokio::test]
async fn classified_error_of_a_side_effect_tool_is_retried() {
    let (_d, b) = setup().await;
    // The tool said what happened (nothing), so a retry is safe.
    let o = b
        .call(
            "fx",
            json!({"writer": {"mode": "fail", "class": "transient", "times": 1}}),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [t("writer", "transient", "retry"), t("writer", "ok", "done")]
    );
}

#[tokio::test]
async fn trap_of_a_read_only_tool_is_retried_then_falls_back() {
    let (_d, b) = setup().await;
    let o = b
        .call("main", json!({"flaky": {"mode": "panic"}, "backup": {}}))
        .await
        .unwrap();
    assert_eq!(o.attempts.len(), 4);
    assert_eq!(o.attempts[0].class.as_str(), "trap");
    assert!(
        o.attempts[0].message.contains("fault tool asked to panic"),
        "{:?}",
        o.attempts[0]
    );
    assert_eq!(o.served_by.as_deref(), Some("backup"));
}

/// A tool that writes far more to stderr than the host keeps is not failed
/// for it (a refusing stream made Rust's `eprintln!` panic at 16 KiB), and
/// when it then panics, the end of its stderr, where the panic is, is kept.
#[tokio::test]
async fn stderr_chatter_is_kept_by_its_end_and_fails_nothing() {
    let (_d, b) = setup().await;
    let o = b
        .call("flaky", json!({"mode": "stderr-flood", "bytes": 200_000}))
        .await
        .unwrap();
    assert!(o.ok, "{o}");
    let o = b
        .call(
            "main",
            json!({"flaky": {"mode": "stderr-flood", "bytes": 200_000, "then": "panic"}}),
        )
        .await
        .unwrap();
    let first = &o.attempts[0];
    assert_eq!(first.class.as_str(), "trap", "{o}");
    assert!(
        first.message.contains("panicked at fault/src/lib.rs:")
            && first
                .message
                .contains("fault tool panicked after its chatter"),
        "{:?}",
        first.message
    );
    assert!(first.message.len() < 4096, "{}", first.message.len());
}

#[tokio::test]
async fn half_open_admits_one_probe_then_closes() {
    let (_d, b) = setup().await;
    for _ in 0..3 {
        b.call("solo", json!({"mode": "fail", "class": "unavailable"}))
            .await
            .unwrap();
    }
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::Open));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::HalfOpen));
    let probe = b.call("solo", json!({"mode": "sleep", "ms": 200}));
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.call("solo", json!({"mode": "echo"})).await.unwrap()
    };
    let (probe, second) = tokio::join!(probe, second);
    let probe = probe.unwrap();
    assert!(probe.ok, "{probe}");
    assert_eq!(trail(&second), [t("flaky", "circuit-open", "stop")]);
    assert!(
        second.attempts[0].message.contains("probe in flight"),
        "{:?}",
        second.attempts[0]
    );
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::Closed));
    assert!(b.call("solo", json!({"mode": "echo"})).await.unwrap().ok);
}

#[tokio::test]
async fn failed_probe_reopens_the_breaker() {
    let (_d, b) = setup().await;
    for _ in 0..3 {
        b.call("solo", json!({"mode": "fail", "class": "transient"}))
            .await
            .unwrap();
    }
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::Open));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let o = b
        .call("solo", json!({"mode": "fail", "class": "unavailable"}))
        .await
        .unwrap();
    // The chain's only target: nothing to fall back to, so it stops.
    assert_eq!(trail(&o), [t("flaky", "unavailable", "stop")]);
    assert_eq!(b.breaker_state("flaky"), Some(BreakerState::Open));
    assert_eq!(b.breaker_opened("flaky"), 2);

    // A probe failing with a retryable error reopens the breaker, which
    // then refuses the retry: the call's failure is the probe's own, not
    // the open breaker it caused.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let o = b
        .call("solo", json!({"mode": "fail", "class": "transient"}))
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("flaky", "transient", "retry"),
            t("flaky", "circuit-open", "stop")
        ]
    );
    let e = o.error.unwrap();
    assert_eq!(e.class, FailureClass::Transient, "{}", e.message);
    assert!(
        e.message.contains("injected transient failure"),
        "{}",
        e.message
    );
    assert_eq!(e.escalate, Some(EscalationReason::RetriesExhausted));
}

#[tokio::test]
async fn failure_rate_opens_the_breaker_after_min_calls() {
    let (_d, b) = setup().await;
    let fail = json!({"mode": "fail", "class": "unavailable"});
    let ok = json!({"mode": "echo"});
    for input in [&fail, &ok, &fail, &ok] {
        b.call("rated", input.clone()).await.unwrap();
    }
    assert_eq!(
        b.breaker_state("rated"),
        Some(BreakerState::Closed),
        "2 of 4 failed, but the last call succeeded"
    );
    b.call("rated", fail).await.unwrap();
    assert_eq!(
        b.breaker_state("rated"),
        Some(BreakerState::Open),
        "3 of 5 failed"
    );
}

#[tokio::test]
async fn one_deadline_covers_every_attempt() {
    let (_d, b) = setup().await;
    let o = b
        .call("tight", json!({"mode": "fail", "class": "transient"}))
        .await
        .unwrap();
    assert!(!o.ok);
    // 10 attempts are allowed, 100 ms apart, but the 250 ms deadline
    // leaves room for only three.
    assert_eq!(o.attempts.len(), 3, "{o}");
    assert!(
        o.attempts[2].message.contains("deadline"),
        "{:?}",
        o.attempts[2]
    );
}
