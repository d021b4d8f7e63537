//! The agent wing without wasm: a fake host answers calls from a script,
//! the journal is a real store (each case runs twice: on a SQLite file in
//! a temporary directory and on a PostgreSQL schema of its own), and the
//! clock is tokio's paused one where a run waits.

use super::*;
use crate::config::Config;
use crate::escalation::{Escalation, Resolution};
use crate::outcome::{CallError, Effect, EscalationReason, Failure, FailureClass};
use crate::runtime::{Reconciled, ToolDescription};
use crate::store::postgres::scratch::Scratch;
use crate::store::Store;
use crate::target::TargetOutput;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOOLS: &str = r#"
[tools.look]
component = "t.wasm"
[tools.pay]
component = "t.wasm"
[tools.mint]
component = "t.wasm"
[tools.wire]
component = "t.wasm"

[agents.flow]
steps = [
  { name = "find", tool = "look", input = { q = "{{task}}" } },
  { name = "charge", tool = "pay", input = { amount = "{{steps.find.output.total}}" } },
]

[agents.send]
steps = [{ name = "send", tool = "wire", input = { to = "{{task}}" } }]

[agents.token]
steps = [{ name = "mint", tool = "mint", input = {} }]
"#;

/// A host whose tools are answers queued per chain.
struct Fake {
    config: Config,
    journal: Arc<dyn Store>,
    effects: HashMap<&'static str, Effect>,
    answers: Mutex<HashMap<String, VecDeque<Outcome>>>,
    reconciled: Mutex<HashMap<String, Reconciled>>,
    calls: Mutex<Vec<(String, Value, String)>>,
    notified: Mutex<Vec<String>>,
    probe_in: Option<Duration>,
    _dir: tempfile::TempDir,
    _pg: Option<Scratch>,
}

/// Which store a case runs on.
#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Fake {
    /// `None` when the backend is PostgreSQL and no server answers (off
    /// CI: a skip, said on stderr).
    fn new(backend: Backend, extra: &str) -> Option<Fake> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.wasm"), b"never loaded").unwrap();
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Scratch::new("agent::tests")?),
        };
        let state = match &pg {
            Some(pg) => format!("state = \"{}\"\n", pg.state()),
            None => String::new(),
        };
        let text = format!("{state}{extra}\n{TOOLS}");
        let config = Config::from_str(&text, "agents.toml", dir.path()).unwrap();
        let journal = crate::store::open(&config.store).unwrap();
        Some(Fake {
            config,
            journal,
            effects: HashMap::from([
                ("look", Effect::ReadOnly),
                ("pay", Effect::SideEffect),
                ("mint", Effect::Idempotent),
                ("wire", Effect::Irreversible),
            ]),
            answers: Mutex::default(),
            reconciled: Mutex::default(),
            calls: Mutex::default(),
            notified: Mutex::default(),
            probe_in: None,
            _dir: dir,
            _pg: pg,
        })
    }

    fn answer(&self, chain: &str, outcome: Outcome) {
        let mut answers = self.answers.lock().unwrap();
        answers
            .entry(chain.to_owned())
            .or_default()
            .push_back(outcome);
    }

    fn calls(&self) -> Vec<(String, Value, String)> {
        self.calls.lock().unwrap().clone()
    }

    fn called(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.0).collect()
    }
}

fn ok(value: Value) -> Outcome {
    Outcome {
        ok: true,
        chain: "".into(),
        key: "".into(),
        value: Some(value),
        confidence: None,
        served_by: Some("fake".into()),
        degraded: false,
        degraded_reason: None,
        attempts: Default::default(),
        error: None,
        elapsed_ms: 0,
    }
}

fn failed(class: FailureClass, escalate: Option<EscalationReason>) -> Outcome {
    Outcome {
        ok: false,
        value: None,
        served_by: None,
        error: Some(CallError {
            class,
            message: "scripted failure".into(),
            escalate,
        }),
        ..ok(Value::Null)
    }
}

impl Host for Fake {
    fn config(&self) -> &Config {
        &self.config
    }

    fn journal(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(self.journal.clone())
    }

    fn call<'a>(
        &'a self,
        chain: &'a str,
        input: Value,
        key: String,
    ) -> HostFuture<'a, Option<Outcome>> {
        self.calls
            .lock()
            .unwrap()
            .push((chain.to_owned(), input, key.clone()));
        let next = self
            .answers
            .lock()
            .unwrap()
            .get_mut(chain)
            .and_then(VecDeque::pop_front);
        let outcome = next.map(|mut o| {
            o.chain = chain.into();
            o.key = key.into();
            o
        });
        Box::pin(std::future::ready(Some(
            outcome.expect("a scripted answer"),
        )))
    }

    fn tool_effect(&self, tool: &str) -> Option<Effect> {
        self.effects.get(tool).copied()
    }

    fn tool_description(&self, tool: &str) -> Option<ToolDescription> {
        self.effects.get(tool).map(|effect| ToolDescription {
            name: tool.to_owned(),
            description: format!("the {tool} tool"),
            input_schema: json!({"type": "object"}),
            output_schema: None,
            effect: *effect,
        })
    }

    fn can_reconcile(&self, tool: &str) -> bool {
        self.reconciled.lock().unwrap().contains_key(tool)
    }

    fn reconcile<'a>(
        &'a self,
        tool: &'a str,
        _key: &'a str,
    ) -> HostFuture<'a, Result<Reconciled, Failure>> {
        let answer = self.reconciled.lock().unwrap()[tool].clone();
        Box::pin(std::future::ready(Ok(answer)))
    }

    fn notify(&self, escalation: &Escalation) {
        self.notified.lock().unwrap().push(escalation.id.clone());
    }

    fn next_probe_in(&self, _chain: &str) -> Option<Duration> {
        self.probe_in
    }

    fn tool_digests(&self) -> Vec<(String, String)> {
        let mut tools: Vec<_> = self
            .effects
            .keys()
            .map(|t| (t.to_string(), "d".into()))
            .collect();
        tools.sort();
        tools
    }
}

/// The fake host on `backend`, or a return from the case when PostgreSQL
/// is not there to test (off CI).
macro_rules! fake {
    ($b:expr, $extra:expr) => {
        match Fake::new($b, $extra) {
            Some(host) => host,
            None => return,
        }
    };
}

fn quiet() -> impl FnMut(Progress) + Send + Sync {
    |_| {}
}

async fn start(host: &Fake, agent: &str, task: &str) -> RunReport {
    run(host, agent, task, &mut quiet()).await.unwrap()
}

async fn again(host: &Fake, id: &str) -> RunReport {
    resume(host, id, &ResumeOptions::default(), &mut quiet())
        .await
        .unwrap()
}

async fn resolve(host: &Fake, report: &RunReport, resolution: Resolution) {
    let id = report
        .attention
        .as_ref()
        .unwrap()
        .escalation
        .clone()
        .unwrap();
    host.journal.resolve(&id, resolution, "ann").await.unwrap();
}

/// A run journaled up to an intent with no result: what a process killed
/// while the tool ran leaves.
async fn interrupted_at_intent(host: &Fake, agent: &str, chain: &str, task: &str) -> String {
    let id = "rkilled".to_owned();
    let j = &host.journal;
    j.create_run(&id, agent, task).await.unwrap();
    let started = json!({"agent": agent, "task": task, "fingerprint": resume::fingerprint(host)});
    j.append(&id, EntryKind::RunStarted, 0, &started)
        .await
        .unwrap();
    let key = format!("{id}:1");
    let intent = json!({"chain": chain, "input": {}, "key": key, "effect": "side-effect"});
    j.append(&id, EntryKind::ToolIntent, 1, &intent)
        .await
        .unwrap();
    j.set_status(&id, RunStatus::Running, 1, None)
        .await
        .unwrap();
    id
}

async fn a_pipeline_renders_each_step_from_the_one_before(b: Backend) {
    let host = fake!(b, "");
    host.answer("look", ok(json!({"total": 12})));
    host.answer("pay", ok(json!({"paid": true})));
    let report = start(&host, "flow", "invoice 7").await;
    assert_eq!(report.status, RunStatus::Finished);
    assert_eq!(report.output, Some(json!({"paid": true})));
    let calls = host.calls();
    assert_eq!(calls[0].1, json!({"q": "invoice 7"}));
    assert_eq!(calls[1].1, json!({"amount": 12}));
    // Keys are the run's and the step's: a resumed call keeps its key.
    assert_eq!(calls[1].2, format!("{}:2", report.run));
}

async fn resume_replays_done_steps_without_calling_them(b: Backend) {
    let host = fake!(b, "");
    host.answer("look", ok(json!({"total": 3})));
    host.answer("pay", failed(FailureClass::Transient, None));
    let first = start(&host, "flow", "t").await;
    assert_eq!(first.status, RunStatus::NeedsAttention);
    let att = first.attention.as_ref().unwrap();
    assert_eq!(att.reason, EscalationReason::RetriesExhausted);
    assert_eq!(host.notified.lock().unwrap().len(), 1);
    resolve(&host, &first, Resolution::Retry).await;
    host.answer("pay", ok(json!({"paid": 3})));
    let second = again(&host, &first.run).await;
    assert_eq!(second.status, RunStatus::Finished, "{second:?}");
    // `look` ran once, in the first process; its output still fed `pay`.
    assert_eq!(host.called(), ["look", "pay", "pay"]);
    assert_eq!(host.calls()[2].1, json!({"amount": 3}));
    // A finished run resumes to its report, calling nothing.
    let third = again(&host, &first.run).await;
    assert_eq!(third.output, Some(json!({"paid": 3})));
    assert_eq!(host.called().len(), 3);
}

async fn a_side_effect_interrupted_and_reconciled_as_done_is_not_repeated(b: Backend) {
    let mut host = fake!(b, "");
    host.reconciled.lock().unwrap().insert(
        "mint".into(),
        Reconciled::Done(TargetOutput {
            value: json!({"token": "t1"}),
            confidence: None,
        }),
    );
    // `mint` is idempotent and would be re-run; make it a side effect.
    host.effects.insert("mint", Effect::SideEffect);
    let id = interrupted_at_intent(&host, "token", "mint", "x").await;
    let report = again(&host, &id).await;
    assert_eq!(report.status, RunStatus::Finished, "{report:?}");
    assert_eq!(report.output, Some(json!({"token": "t1"})));
    assert!(host.called().is_empty(), "reconciled, not called again");
    let result = host
        .journal
        .find(&id, 1, EntryKind::ToolResult)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.payload["reconciled"], true);
    assert_eq!(
        result.payload["outcome"]["attempts"][0]["class"],
        "reconciled"
    );
}

async fn a_side_effect_that_cannot_say_stops_as_ambiguous_once(b: Backend) {
    let host = fake!(b, "");
    let id = interrupted_at_intent(&host, "flow", "look", "x").await;
    // Step 1 of `flow` is read-only: re-run with the same key.
    host.answer("look", ok(json!({"total": 1})));
    host.answer("pay", ok(json!({})));
    let report = again(&host, &id).await;
    assert_eq!(report.status, RunStatus::Finished);
    assert_eq!(host.calls()[0].2, format!("{id}:1"), "the same key");

    let mut host = fake!(b, "");
    host.effects.insert("mint", Effect::SideEffect);
    let id = interrupted_at_intent(&host, "token", "mint", "x").await;
    let report = again(&host, &id).await;
    assert_eq!(report.status, RunStatus::NeedsAttention);
    let att = report.attention.unwrap();
    assert_eq!(att.reason, EscalationReason::AmbiguousState);
    assert!(host.called().is_empty(), "never re-run blind");
    // Resuming again waits on the same escalation: no second one.
    let report = again(&host, &id).await;
    assert_eq!(report.attention.unwrap().escalation, att.escalation);
    assert_eq!(host.notified.lock().unwrap().len(), 1);
}

async fn an_irreversible_step_reconciled_as_not_done_still_needs_a_person(b: Backend) {
    let host = fake!(b, "");
    host.reconciled
        .lock()
        .unwrap()
        .insert("wire".into(), Reconciled::NotDone);
    let id = interrupted_at_intent(&host, "send", "wire", "bob").await;
    let report = again(&host, &id).await;
    assert_eq!(report.status, RunStatus::NeedsAttention);
    let att = report.attention.as_ref().unwrap();
    assert_eq!(att.reason, EscalationReason::AmbiguousState);
    assert!(att.message.contains("never re-run"), "{}", att.message);
    assert!(host.called().is_empty());
}

async fn an_irreversible_tool_runs_once_after_approval(b: Backend) {
    let host = fake!(b, "");
    let first = start(&host, "send", "bob").await;
    assert_eq!(first.status, RunStatus::NeedsAttention);
    assert_eq!(
        first.attention.as_ref().unwrap().reason,
        EscalationReason::ApprovalRequired
    );
    assert!(host.called().is_empty(), "nothing runs before approval");
    // Not resolved yet: resuming keeps waiting.
    let waiting = again(&host, &first.run).await;
    assert_eq!(waiting.status, RunStatus::NeedsAttention);
    assert!(host.called().is_empty());
    resolve(&host, &first, Resolution::Approve).await;
    host.answer("wire", ok(json!({"sent": true})));
    let done = again(&host, &first.run).await;
    assert_eq!(done.status, RunStatus::Finished);
    let done = again(&host, &first.run).await;
    assert_eq!(done.status, RunStatus::Finished);
    assert_eq!(host.called(), ["wire"], "exactly once");
    // The resolution is journaled once, with who gave it.
    let res = host
        .journal
        .find(&first.run, 1, EntryKind::Resolution)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.payload["by"], "ann");
}

async fn a_rejected_step_fails_the_run_with_the_comment(b: Backend) {
    let host = fake!(b, "");
    let first = start(&host, "send", "bob").await;
    let comment = "not to bob".to_owned();
    resolve(&host, &first, Resolution::Reject { comment }).await;
    let report = again(&host, &first.run).await;
    assert_eq!(report.status, RunStatus::Failed);
    let error = report.output.unwrap()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("rejected by ann: not to bob"), "{error}");
    assert!(host.called().is_empty());
}

async fn a_supplied_result_stands_in_for_the_call(b: Backend) {
    let host = fake!(b, "");
    host.answer("look", ok(json!({"total": 5})));
    host.answer(
        "pay",
        failed(FailureClass::Permanent, Some(EscalationReason::NeedsHuman)),
    );
    let first = start(&host, "flow", "t").await;
    assert_eq!(
        first.attention.as_ref().unwrap().reason,
        EscalationReason::NeedsHuman
    );
    let value = json!({"paid": "by hand"});
    resolve(
        &host,
        &first,
        Resolution::Result {
            value: value.clone(),
        },
    )
    .await;
    let report = again(&host, &first.run).await;
    assert_eq!(report.status, RunStatus::Finished);
    assert_eq!(report.output, Some(value));
    assert_eq!(host.called(), ["look", "pay"]);
}

async fn with_on_circuit_open_wait_the_run_sleeps_until_the_probe(b: Backend) {
    let mut host = fake!(b, "[escalation]\non_circuit_open = \"wait\"\n");
    host.probe_in = Some(Duration::from_secs(30));
    let open = || {
        failed(
            FailureClass::CircuitOpen,
            Some(EscalationReason::CircuitOpen),
        )
    };
    host.answer("look", open());
    host.answer("look", ok(json!({"total": 1})));
    host.answer("pay", ok(json!({})));
    let before = tokio::time::Instant::now();
    let report = start(&host, "flow", "t").await;
    assert_eq!(report.status, RunStatus::Finished);
    // The paused clock moved by the probe's wait, and nothing else slept.
    assert_eq!(before.elapsed(), Duration::from_secs(30));
    assert_eq!(host.called(), ["look", "look", "pay"]);
}

async fn without_wait_an_open_circuit_escalates_at_once(b: Backend) {
    let mut host = fake!(b, "");
    host.probe_in = Some(Duration::from_secs(30));
    host.answer(
        "look",
        failed(
            FailureClass::CircuitOpen,
            Some(EscalationReason::CircuitOpen),
        ),
    );
    let before = tokio::time::Instant::now();
    let report = start(&host, "flow", "t").await;
    assert_eq!(report.status, RunStatus::NeedsAttention);
    assert_eq!(
        report.attention.unwrap().reason,
        EscalationReason::CircuitOpen
    );
    assert_eq!(before.elapsed(), Duration::ZERO);
}

async fn a_changed_component_refuses_the_resume_unless_allowed(b: Backend) {
    let host = fake!(b, "");
    let id = "rolder";
    let mut fingerprint = resume::fingerprint(&host);
    fingerprint["components"]["pay"] = json!("older");
    host.journal.create_run(id, "flow", "t").await.unwrap();
    let started = json!({"agent": "flow", "task": "t", "fingerprint": fingerprint});
    host.journal
        .append(id, EntryKind::RunStarted, 0, &started)
        .await
        .unwrap();
    let e = resume(&host, id, &ResumeOptions::default(), &mut quiet())
        .await
        .unwrap_err();
    assert!(matches!(e, RunError::Drift { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("the component of tool `pay` changed"),
        "{e}"
    );
    assert!(host.called().is_empty());
    host.answer("look", ok(json!({"total": 1})));
    host.answer("pay", ok(json!({})));
    let options = ResumeOptions { allow_drift: true };
    let report = resume(&host, id, &options, &mut quiet()).await.unwrap();
    assert_eq!(report.status, RunStatus::Finished);
}

async fn an_unknown_agent_names_the_known_ones(b: Backend) {
    let host = fake!(b, "");
    let e = run(&host, "nope", "t", &mut quiet()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown agent `nope` (known: flow, send, token)"
    );
}

/// Each case once per backend: `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_every_backend {
    ($attr:meta: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[$attr]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[$attr]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_every_backend!(
    tokio::test:
    a_pipeline_renders_each_step_from_the_one_before,
    resume_replays_done_steps_without_calling_them,
    a_side_effect_interrupted_and_reconciled_as_done_is_not_repeated,
    a_side_effect_that_cannot_say_stops_as_ambiguous_once,
    an_irreversible_step_reconciled_as_not_done_still_needs_a_person,
    an_irreversible_tool_runs_once_after_approval,
    a_rejected_step_fails_the_run_with_the_comment,
    a_supplied_result_stands_in_for_the_call,
    a_changed_component_refuses_the_resume_unless_allowed,
    an_unknown_agent_names_the_known_ones,
);
on_every_backend!(
    tokio::test(start_paused = true):
    with_on_circuit_open_wait_the_run_sleeps_until_the_probe,
    without_wait_an_open_circuit_escalates_at_once,
);
