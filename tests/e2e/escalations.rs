//! The escalation queue: every reason from its real scenario, every
//! resolution observed by the resumed run, first-wins resolution across
//! processes, kills around approvals, and the webhook.

use crate::common::{load, tempdir, write_config, PRELUDE};
use crate::runs::{finish, journal, ledger_counts, spawn, start, wait_until};
use backstop::escalation::{Filter, Resolution};
use backstop::journal::{EntryKind, RunStatus};
use backstop::testkit::{Reply, ScriptedServer};
use backstop::EscalationReason;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn config(webhook: &str) -> String {
    format!(
        r#"state = "sqlite:{{dir}}/state.db"
{PRELUDE}
[escalation]
confidence_threshold = 0.5
webhook = "{webhook}"

[tools.fault]
component = "{{plugins}}/fault.wasm"

[tools.reader]
component = "{{plugins}}/fault.wasm"
dirs = [{{ host = "{{dir}}/inbox", guest = "/inbox", mode = "ro" }}]
retry = {{ attempts = 1 }}

[tools.publish]
component = "{{plugins}}/ledger.wasm"
effect = "irreversible"
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[tools.checked]
component = "{{plugins}}/fault.wasm"
approval = true

[[agents.publish.steps]]
name = "p"
tool = "publish"
input = {{ entry = "post", sleep_before_ms = 1000 }}

[[agents.publish.steps]]
name = "after"
tool = "fault"
input = {{ mode = "echo", value = "{{{{steps.p.output.entry}}}}" }}

[agents.publish_then_pause]
steps = [{{ name = "p", tool = "publish", input = {{ entry = "post", sleep_after_ms = 1500 }} }}]

[agents.checked]
steps = [{{ name = "c", tool = "checked", input = {{ mode = "echo", value = "ok" }} }}]

[[agents.lowconf.steps]]
name = "a"
tool = "fault"
input = {{ mode = "echo", value = "maybe", confidence = 0.2 }}

[[agents.lowconf.steps]]
name = "b"
tool = "fault"
input = {{ mode = "echo", value = "{{{{steps.a.output.echo}}}}" }}

[[agents.human.steps]]
name = "h"
tool = "fault"
input = {{ mode = "fail", class = "needs-human" }}

[[agents.human.steps]]
name = "b"
tool = "fault"
input = {{ mode = "echo", value = "{{{{steps.h.output.answer}}}}" }}

[[agents.inbox.steps]]
name = "r"
tool = "reader"
input = {{ mode = "read", path = "/inbox/note.txt" }}

[[agents.inbox.steps]]
name = "b"
tool = "fault"
input = {{ mode = "echo", value = "{{{{steps.r.output.text}}}}" }}
"#
    )
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn env(webhook: &str) -> Env {
    let dir = tempdir();
    let root = dir.path().to_owned();
    for d in ["ledger", "inbox"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let config = write_config(&root, &config(webhook));
    Env {
        _dir: dir,
        root,
        config,
    }
}

/// Runs `agent` to its first stop and returns the run id and its open
/// escalation.
fn stopped(e: &Env, agent: &str) -> (String, backstop::escalation::Escalation) {
    let (child, id) = start(&e.config, agent, "t");
    let (code, out) = finish(child);
    assert_eq!(code, 3, "{out}");
    let open = journal(&e.root)
        .escalations(&Filter {
            run: Some(id.clone()),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    (id, open.into_iter().next().unwrap())
}

fn resolve(e: &Env, esc: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["escalations", "resolve", esc];
    all.extend_from_slice(args);
    finish(spawn(&e.config, &all))
}

fn output(root: &Path, run: &str) -> serde_json::Value {
    journal(root).run(run).unwrap().output.unwrap_or_default()
}

const NO_HOOK: &str = "http://127.0.0.1:9/unused";

#[test]
fn every_reason_comes_from_its_real_scenario() {
    let e = env(NO_HOOK);
    let (_, esc) = stopped(&e, "publish");
    assert_eq!(esc.reason, EscalationReason::ApprovalRequired);
    assert_eq!(esc.chain, "publish");
    assert_eq!(esc.input["entry"], "post");
    let (_, esc) = stopped(&e, "checked");
    assert_eq!(
        esc.reason,
        EscalationReason::ApprovalRequired,
        "approval = true on a read-only tool"
    );
    let (_, esc) = stopped(&e, "lowconf");
    assert_eq!(esc.reason, EscalationReason::LowConfidence);
    assert!(
        esc.message
            .contains("confidence 0.20 is below the threshold 0.50"),
        "{}",
        esc.message
    );
    let (_, esc) = stopped(&e, "human");
    assert_eq!(esc.reason, EscalationReason::NeedsHuman);
    let (_, esc) = stopped(&e, "inbox");
    // A file that cannot be read is permanent: nothing was retried.
    assert_eq!(esc.reason, EscalationReason::Failed);
    assert!(
        esc.message.contains("cannot read /inbox/note.txt"),
        "{}",
        esc.message
    );
    assert_eq!(esc.attempts.len(), 1);
    // No approval was given, so nothing was published.
    assert!(ledger_counts(&e.root).is_empty());
    // `escalations` lists them; --stats counts them; filters narrow.
    let (code, out) = finish(spawn(&e.config, &["escalations"]));
    assert_eq!(code, 0);
    for reason in [
        "approval-required",
        "low-confidence",
        "needs-human",
        "failed",
    ] {
        assert!(out.contains(reason), "{out}");
    }
    let (_, out) = finish(spawn(&e.config, &["escalations", "--stats", "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["open"], 5);
    let (_, out) = finish(spawn(
        &e.config,
        &["escalations", "--reason", "needs-human", "--json"],
    ));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn ambiguous_state_and_circuit_open_escalate_and_wait_mode_waits() {
    let dir = tempdir();
    let text = format!(
        r#"state = "sqlite:{{dir}}/state.db"
{PRELUDE}
[tools.fault]
component = "{{plugins}}/fault.wasm"
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1, open_for = "300ms" }}

[tools.unsure]
component = "{{plugins}}/fault.wasm"
effect = "side-effect"
timeout = "100ms"

[agents.one]
steps = [{{ name = "a", tool = "fault", input = {{ mode = "echo", value = 1 }} }}]

[agents.stuck]
steps = [{{ name = "a", tool = "unsure", input = {{ mode = "spin" }} }}]
"#
    );
    let b = load(dir.path(), &text).await;
    // A side-effect tool that times out: its effect is unknown.
    let r = b.run_agent("stuck", "t", &mut |_| {}).await.unwrap();
    assert_eq!(
        r.attention.unwrap().reason,
        EscalationReason::AmbiguousState
    );
    // Open the breaker, then run: every target of the chain is open.
    b.call("fault", json!({"mode": "fail", "class": "unavailable"}))
        .await
        .unwrap();
    let r = b.run_agent("one", "t", &mut |_| {}).await.unwrap();
    let att = r.attention.unwrap();
    assert_eq!(att.reason, EscalationReason::CircuitOpen);
    let esc = b
        .store()
        .unwrap()
        .escalation(att.escalation.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(esc.reason, EscalationReason::CircuitOpen);

    // With on_circuit_open = "wait", the run waits for the probe instead.
    let wait_dir = tempdir();
    let b = load(
        wait_dir.path(),
        &text.replace(
            "[tools.fault]",
            "[escalation]\non_circuit_open = \"wait\"\n\n[tools.fault]",
        ),
    )
    .await;
    b.call("fault", json!({"mode": "fail", "class": "unavailable"}))
        .await
        .unwrap();
    let mut lines = Vec::new();
    let r = b
        .run_agent("one", "t", &mut |p| {
            if let backstop::agent::Progress::Step { line, .. } = p {
                lines.push(line)
            }
        })
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Finished, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("every breaker is open; waiting")),
        "{lines:?}"
    );
}

#[test]
fn every_resolution_is_observed_by_the_resumed_run() {
    let e = env(NO_HOOK);
    // approve: the pending call runs, once.
    let (id, esc) = stopped(&e, "publish");
    let (code, out) = resolve(&e, &esc.id, &["--approve", "--by", "ann", "--resume"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("approved by ann: running it"), "{out}");
    assert_eq!(output(&e.root, &id)["echo"], "post");
    assert_eq!(ledger_counts(&e.root).get(&format!("{id}:1")), Some(&1));

    // reject: the run sees a tool error with the comment.
    let (id, esc) = stopped(&e, "publish");
    let (code, out) = resolve(
        &e,
        &esc.id,
        &["--reject", "not today", "--by", "bob", "--resume"],
    );
    assert_eq!(code, 2, "{out}");
    assert_eq!(journal(&e.root).run(&id).unwrap().status, RunStatus::Failed);
    assert!(
        output(&e.root, &id)["error"]
            .as_str()
            .unwrap()
            .contains("rejected by bob: not today"),
        "{out}"
    );
    assert_eq!(
        ledger_counts(&e.root).get(&format!("{id}:1")),
        None,
        "a rejected call never runs"
    );

    // result: recorded as the step's result, supplied by a person.
    let (id, esc) = stopped(&e, "human");
    let (code, out) = resolve(
        &e,
        &esc.id,
        &["--result", r#"{"answer": "42"}"#, "--by", "cy", "--resume"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(output(&e.root, &id)["echo"], "42");
    let result = journal(&e.root)
        .find(&id, 1, EntryKind::ToolResult)
        .unwrap()
        .unwrap();
    assert_eq!(result.payload["supplied_by"], "cy");
    assert_eq!(result.payload["outcome"]["served_by"], "person:cy");
    assert_eq!(result.payload["outcome"]["degraded"], true);

    // retry: the step runs again (the missing file is there now).
    let (id, esc) = stopped(&e, "inbox");
    std::fs::write(e.root.join("inbox/note.txt"), "hello").unwrap();
    let (code, out) = resolve(&e, &esc.id, &["--retry", "--resume"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(output(&e.root, &id)["echo"], "hello");

    // abort: the run stops for good.
    let (id, esc) = stopped(&e, "lowconf");
    let (code, _) = resolve(&e, &esc.id, &["--abort", "--by", "dee", "--resume"]);
    assert_eq!(code, 2);
    assert!(output(&e.root, &id)["error"]
        .as_str()
        .unwrap()
        .contains("aborted by dee at step 1"));

    // approve a low-confidence result: the run accepts it and goes on.
    let (id, esc) = stopped(&e, "lowconf");
    let (code, out) = resolve(&e, &esc.id, &["--approve", "--resume"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("low-confidence result accepted by operator"),
        "{out}"
    );
    assert_eq!(output(&e.root, &id)["echo"], "maybe");

    // A resolution the reason does not allow is refused, naming the options.
    let (_, esc) = stopped(&e, "publish");
    let (code, out) = resolve(&e, &esc.id, &["--retry"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("does not allow `retry`; allowed: approve, reject, abort"),
        "{out}"
    );
}

#[test]
fn resolving_twice_returns_the_first_resolution() {
    let e = env(NO_HOOK);
    let (id, esc) = stopped(&e, "publish");
    assert_eq!(
        resolve(&e, &esc.id, &["--reject", "no", "--by", "ann"]).0,
        0
    );
    let (code, out) = resolve(&e, &esc.id, &["--approve", "--by", "bob"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("already resolved by ann")
            && out.contains("reject: no")
            && out.contains("nothing changed"),
        "{out}"
    );
    let (code, _) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 2, "the first answer (reject) is the one applied");
    assert!(ledger_counts(&e.root).is_empty());
}

#[test]
fn two_processes_resolving_at_once_one_wins_the_other_is_told() {
    let e = env(NO_HOOK);
    for _ in 0..5 {
        let (_, esc) = stopped(&e, "publish");
        let a = spawn(
            &e.config,
            &["escalations", "resolve", &esc.id, "--approve", "--by", "a"],
        );
        let b = spawn(
            &e.config,
            &[
                "escalations",
                "resolve",
                &esc.id,
                "--reject",
                "no",
                "--by",
                "b",
            ],
        );
        let (ca, oa) = finish(a);
        let (cb, ob) = finish(b);
        let mut codes = [ca, cb];
        codes.sort();
        assert_eq!(codes, [0, 4], "a: {oa}\nb: {ob}");
        let winner = if ca == 0 { "a" } else { "b" };
        let stored = journal(&e.root).escalation(&esc.id).unwrap();
        assert_eq!(stored.resolved_by.as_deref(), Some(winner));
        let loser = if ca == 4 { oa } else { ob };
        assert!(
            loser.contains(&format!("already resolved by {winner}")),
            "{loser}"
        );
    }
}

#[test]
fn kills_around_an_approval_never_run_the_tool_twice() {
    let e = env(NO_HOOK);
    // Killed between the resolution and the resume.
    let (id, esc) = stopped(&e, "publish");
    let j = journal(&e.root);
    let mut child = spawn(
        &e.config,
        &["escalations", "resolve", &esc.id, "--approve", "--resume"],
    );
    wait_until("the resolution", || {
        j.escalation(&esc.id).unwrap().resolution.is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(ledger_counts(&e.root).get(&format!("{id}:1")), Some(&1));

    // Killed between the approval and the tool's completion.
    let (id, esc) = stopped(&e, "publish");
    let mut child = spawn(
        &e.config,
        &["escalations", "resolve", &esc.id, "--approve", "--resume"],
    );
    wait_until("the publish intent", || {
        j.find(&id, 1, EntryKind::ToolIntent).unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reconciled: it had not happened, running it now"),
        "{out}"
    );
    assert_eq!(
        ledger_counts(&e.root).get(&format!("{id}:1")),
        Some(&1),
        "the approved tool runs exactly once"
    );
    // Once more, killed after the write and before the result is journaled.
    let (id, esc) = stopped(&e, "publish_then_pause");
    let mut child = spawn(
        &e.config,
        &["escalations", "resolve", &esc.id, "--approve", "--resume"],
    );
    wait_until("the publish write", || {
        ledger_counts(&e.root).contains_key(&format!("{id}:1"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        j.find(&id, 1, EntryKind::ToolResult).unwrap().is_none(),
        "killed before the result was journaled"
    );
    let (code, out) = finish(spawn(&e.config, &["resume", &id]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reconciled: it had already happened, not repeated"),
        "{out}"
    );
    assert_eq!(ledger_counts(&e.root).get(&format!("{id}:1")), Some(&1));
}

#[tokio::test]
async fn the_webhook_hears_of_each_escalation_and_a_failing_one_does_not_stop_the_run() {
    let hook = ScriptedServer::start(Reply::status(204)).await.unwrap();
    let e = env(&format!("{}/hook", hook.origin()));
    let config = e.config.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        finish(spawn(&config, &["run", "human", "--task", "t"]))
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{out}");
    let got = hook.arrivals();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/hook");
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["event"], "escalation-opened");
    assert_eq!(body["escalation"]["reason"], "needs-human");

    // A webhook that keeps failing: the run still stops for its person,
    // and the delivery was retried.
    let failing = ScriptedServer::start(Reply::status(503)).await.unwrap();
    let e = env(&format!("{}/hook", failing.origin()));
    let config = e.config.clone();
    let started = Instant::now();
    let (code, out) = tokio::task::spawn_blocking(move || {
        finish(spawn(&config, &["run", "human", "--task", "t"]))
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        failing.arrivals().len() >= 2,
        "the delivery should be retried"
    );
    // And an unreachable one.
    let e = env("http://127.0.0.1:9/nothing-listens");
    let config = e.config.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        finish(spawn(&config, &["run", "human", "--task", "t"]))
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{out}");
    let _ = Resolution::Retry;
}

/// Delivery goes through the guard: a 429 with Retry-After waits as long
/// as asked (never less), a 400 is not retried, and a huge refusal body is
/// read only up to its cap.
#[tokio::test]
async fn webhook_delivery_follows_the_retry_policy() {
    use backstop::guard::{Backoff, Jitter, RetryPolicy};
    let policy = RetryPolicy {
        attempts: 3,
        backoff: Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
            Jitter::Full,
        )
        .unwrap(),
        max_retry_after: Duration::from_secs(5),
    };
    let client = crate::common::http();
    let hook = ScriptedServer::start(Reply::status(204)).await.unwrap();
    hook.push([Reply::status(429).header("retry-after", "1")]);
    let url = format!("{}/hook", hook.origin());
    let body = serde_json::json!({"event": "escalation-opened"});
    let started = Instant::now();
    backstop::webhook::deliver(&client, &url, &body, policy)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was undercut"
    );
    assert_eq!(hook.arrivals().len(), 2);

    let refusing = ScriptedServer::start(Reply::raw(400, &"x".repeat(1 << 20)))
        .await
        .unwrap();
    let url = format!("{}/hook", refusing.origin());
    let e = backstop::webhook::deliver(&client, &url, &body, policy)
        .await
        .unwrap_err();
    assert_eq!(refusing.arrivals().len(), 1, "a 400 is not retried: {e}");
    assert!(
        e.starts_with("invalid-input after 1 attempt") || e.contains("after 1 attempt"),
        "{e}"
    );
    assert!(
        e.len() < 20_000,
        "the refusal's body was capped: {} bytes",
        e.len()
    );
}
