//! Operating Backstop: `backstop serve` driven over real HTTP on
//! 127.0.0.1 (every route, auth, bad bodies, a resolve that resumes a run),
//! metrics after a scripted run of failures, and breaker state shared by
//! processes through the store.

use crate::common::{serve, tempdir, write_config, Server, PRELUDE};
use crate::runs::{finish, spawn, wait_until};
use backstop::journal::EntryKind;
use backstop::testkit::model::anthropic_text;
use backstop::testkit::ScriptedServer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn config(model_origin: &str) -> String {
    format!(
        r#"state = "sqlite:{{dir}}/state.db"
{PRELUDE}
[tools.fault]
component = "{{plugins}}/fault.wasm"

[tools.backup]
component = "{{plugins}}/fault.wasm"

# Opens on the first call that fails twice, and stays open.
[tools.flaky]
component = "{{plugins}}/fault.wasm"
retry = {{ attempts = 2 }}
breaker = {{ consecutive_failures = 2, open_for = "1h" }}

# Opens the same way but admits a probe soon after.
[tools.probe]
component = "{{plugins}}/fault.wasm"
retry = {{ attempts = 2 }}
breaker = {{ consecutive_failures = 2, open_for = "300ms" }}

[tools.checked]
component = "{{plugins}}/fault.wasm"
approval = true

[models.m]
provider = "anthropic"
model = "m"
base_url = "{model_origin}"
retry = {{ attempts = 1 }}

[chains.search]
targets = ["fault", "backup"]

[[agents.two.steps]]
name = "a"
tool = "fault"
input = {{ mode = "echo", value = "one" }}

[[agents.two.steps]]
name = "b"
tool = "fault"
input = {{ mode = "echo", value = "{{{{steps.a.output.echo}}}}-two" }}

[agents.checked]
steps = [{{ name = "c", tool = "checked", input = {{ mode = "echo", value = "approved" }} }}]
"#
    )
}

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn env(model_origin: &str) -> Env {
    let dir = tempdir();
    let config = write_config(dir.path(), &config(model_origin));
    Env { _dir: dir, config }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(server: &Server, token: Option<&str>) -> Client {
        Client {
            http: crate::common::http(),
            base: server.base.clone(),
            token: token.map(str::to_owned),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Status and JSON body (every answer but /metrics is JSON, errors too).
    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Value) {
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = res.text().await.unwrap();
        assert!(
            ct.starts_with("application/json"),
            "{status} answered {ct:?}, not JSON: {text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        if status >= 400 {
            assert_eq!(body["error"]["status"], status, "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{body}"
            );
        }
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    /// Posts raw bytes with a content type.
    async fn post_raw(&self, path: &str, ct: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(
            self.req(reqwest::Method::POST, path)
                .header("content-type", ct)
                .body(body),
        )
        .await
    }

    async fn metrics(&self) -> BTreeMap<String, f64> {
        let res = self
            .req(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        parse_metrics(&res.text().await.unwrap())
    }
}

/// `name{labels}` -> value, from the text exposition format.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_over_http_with_auth_bad_bodies_and_a_resolve_that_resumes() {
    let model = ScriptedServer::start(anthropic_text("the answer"))
        .await
        .unwrap();
    let e = env(&model.origin());
    let token = "s3cret-token";
    let server = serve(&e.config, Some(token));
    let api = Client::new(&server, Some(token));
    let anon = Client::new(&server, None);
    let wrong = Client::new(&server, Some("guess"));

    // Liveness and the description need no token; everything else does.
    assert_eq!(anon.get("/healthz").await, (200, json!({"status": "ok"})));
    let (code, doc) = anon.get("/openapi.json").await;
    assert_eq!((code, doc["openapi"].as_str()), (200, Some("3.1.0")));
    for (client, says) in [(&anon, "Authorization: Bearer"), (&wrong, "wrong")] {
        for path in ["/v1/status", "/v1/runs", "/v1/escalations"] {
            let (code, body) = client.get(path).await;
            assert_eq!(code, 401, "{path}: {body}");
            assert!(message(&body).contains(says), "{body}");
        }
        let (code, _) = client
            .post(
                "/v1/calls",
                json!({"chain": "fault", "input": {"mode": "echo"}}),
            )
            .await;
        assert_eq!(code, 401);
        let res = client
            .req(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        // Refused unread: the connection is not reused for the next request.
        assert_eq!(res.headers()["connection"], "close");
    }

    // Calls and asks.
    let (code, o) = api
        .post(
            "/v1/calls",
            json!({"chain": "fault", "input": {"mode": "echo", "value": "hi"}, "key": "k-1"}),
        )
        .await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(
        (o["ok"].clone(), o["served_by"].clone(), o["key"].clone()),
        (json!(true), json!("fault"), json!("k-1"))
    );
    assert_eq!(o["value"]["echo"], "hi");
    let (code, o) = api
        .post(
            "/v1/calls",
            json!({"chain": "search", "input": {"fault": {"mode": "fail", "class": "permanent"},
                "backup": {"mode": "echo", "value": 1}}}),
        )
        .await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(
        (o["served_by"].clone(), o["degraded"].clone()),
        (json!("backup"), json!(true))
    );
    let (code, o) = api
        .post(
            "/v1/asks",
            json!({"chain": "m", "prompt": "why?", "system": "be brief"}),
        )
        .await;
    assert_eq!(
        (code, o["value"]["text"].as_str()),
        (200, Some("the answer")),
        "{o}"
    );
    let asked = model.arrivals();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].body.contains("why?") && asked[0].body.contains("be brief"));

    // Bad requests: each a 4xx naming what is wrong.
    let bad: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .header("content-type", "application/json")
                .body("{\"chain\": "),
            400,
            "line 1 column",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .json(&json!({"input": {}})),
            400,
            "missing field `chain`",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .header("content-type", "application/json")
                .body("{\"chain\": \"fault\", \"input\": {}} {}"),
            400,
            "trailing characters",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .json(&json!({"chain": 5, "input": {}})),
            400,
            "at `chain`",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .json(&json!({"chain": "fault", "input": {}, "kye": "x"})),
            400,
            "unknown field `kye`",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .header("content-type", "text/plain")
                .body("hi"),
            415,
            "application/json",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/calls")
                .json(&json!({"chain": "nope", "input": {}})),
            404,
            "unknown chain or tool `nope`",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/asks")
                .json(&json!({"chain": "m", "prompt": 5})),
            400,
            "at `prompt`",
        ),
        (
            api.req(reqwest::Method::GET, "/v1/calls"),
            405,
            "Method Not Allowed",
        ),
        (
            api.req(reqwest::Method::GET, "/v2/everything"),
            404,
            "no route GET /v2/everything",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/runs")
                .json(&json!({"agent": "ghost", "task": "t"})),
            404,
            "unknown agent `ghost`",
        ),
        (
            api.req(reqwest::Method::GET, "/v1/runs/r000000000000"),
            404,
            "no run `r000000000000`",
        ),
        (
            api.req(reqwest::Method::GET, "/v1/runs?limit=many"),
            400,
            "limit",
        ),
        (
            api.req(reqwest::Method::GET, "/v1/escalations?reason=bored"),
            400,
            "reason `bored`",
        ),
        (
            api.req(reqwest::Method::GET, "/v1/escalations?older_than=soon"),
            400,
            "older_than `soon`",
        ),
        (
            api.req(reqwest::Method::GET, "/v1/escalations/e-missing"),
            404,
            "no escalation `e-missing`",
        ),
        (
            api.req(reqwest::Method::POST, "/v1/escalations/e-missing/resolve")
                .json(&json!({"resolution": {"kind": "maybe"}})),
            400,
            "at `resolution.kind`: unknown variant `maybe`",
        ),
    ];
    for (req, status, says) in bad {
        let (code, body) = api.send(req).await;
        assert_eq!(code, status, "{body}");
        assert!(message(&body).contains(says), "want {says:?}: {body}");
    }
    let (code, body) = api
        .post_raw("/v1/calls", "application/json", vec![b' '; 3 << 20])
        .await;
    assert_eq!(code, 413, "{body}");

    // Runs: start and wait, list, show, resume a finished run; start
    // without waiting and watch it finish.
    let (code, report) = api
        .post("/v1/runs", json!({"agent": "two", "task": "t"}))
        .await;
    assert_eq!(
        (code, report["status"].as_str()),
        (200, Some("finished")),
        "{report}"
    );
    assert_eq!(report["output"]["echo"], "one-two");
    let run = report["run"].as_str().unwrap().to_owned();
    let (code, list) = api.get("/v1/runs?limit=5").await;
    assert_eq!(code, 200);
    assert_eq!(list[0]["id"], run.as_str());
    let (code, shown) = api.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(
        (code, shown["run"]["status"].as_str()),
        (200, Some("finished"))
    );
    assert!(shown["entries"].as_array().unwrap().len() >= 4, "{shown}");
    let (code, again) = api.post(&format!("/v1/runs/{run}/resume"), json!({})).await;
    assert_eq!((code, again["status"].as_str()), (200, Some("finished")));
    let (code, started) = api
        .post(
            "/v1/runs",
            json!({"agent": "two", "task": "t", "wait": false}),
        )
        .await;
    assert_eq!(
        (code, started["status"].as_str()),
        (202, Some("running")),
        "{started}"
    );
    let bg = started["run"].as_str().unwrap().to_owned();
    let mut finished = false;
    for _ in 0..600 {
        let (_, shown) = api.get(&format!("/v1/runs/{bg}")).await;
        if shown["run"]["status"] == "finished" {
            finished = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(finished, "the background run did not finish within 30 s");

    // An approval: the run stops, the escalation is listed and shown, a
    // wrong resolution is refused, approving through the API resumes the
    // run to its end, and a second answer changes nothing.
    let (code, report) = api
        .post("/v1/runs", json!({"agent": "checked", "task": "t"}))
        .await;
    assert_eq!(
        (code, report["status"].as_str()),
        (200, Some("needs-attention")),
        "{report}"
    );
    let run = report["run"].as_str().unwrap().to_owned();
    let esc = report["attention"]["escalation"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, list) = api
        .get(&format!(
            "/v1/escalations?run={run}&reason=approval-required"
        ))
        .await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], esc.as_str());
    let (code, shown) = api.get(&format!("/v1/escalations/{esc}")).await;
    assert_eq!(
        (code, shown["reason"].as_str()),
        (200, Some("approval-required"))
    );
    let (code, body) = api
        .post(
            &format!("/v1/escalations/{esc}/resolve"),
            json!({"resolution": {"kind": "result", "value": 1}}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(message(&body).contains("does not allow `result`"), "{body}");
    let (code, status) = api.get("/v1/status").await;
    assert_eq!(
        (code, status["escalations"]["open"].as_u64()),
        (200, Some(1)),
        "{status}"
    );
    let (code, done) = api
        .post(
            &format!("/v1/escalations/{esc}/resolve"),
            json!({"resolution": {"kind": "approve"}, "by": "alice", "resume": true}),
        )
        .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["escalation"]["resolved_by"], "alice");
    assert_eq!(done["run"]["status"], "finished", "{done}");
    assert_eq!(done["run"]["output"]["echo"], "approved");
    let (_, shown) = api.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(shown["run"]["status"], "finished");
    let (code, body) = api
        .post(
            &format!("/v1/escalations/{esc}/resolve"),
            json!({"resolution": {"kind": "abort"}}),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        message(&body).contains("already resolved by alice"),
        "{body}"
    );
    let (_, list) = api.get("/v1/escalations").await;
    assert_eq!(list, json!([]));
    let (_, list) = api.get("/v1/escalations?all=true").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Requests are counted by route pattern, never by raw path or method.
    let (code, _) = api.send(api.req(reqwest::Method::PATCH, "/v1/calls")).await;
    assert_eq!(code, 405);
    let m = api.metrics().await;
    for (series, value) in [
        (
            r#"backstop_http_requests_total{method="POST",route="/v1/calls",status="401"}"#,
            2.0,
        ),
        (
            r#"backstop_http_requests_total{method="GET",route="unmatched",status="404"}"#,
            1.0,
        ),
        (
            r#"backstop_http_requests_total{method="other",route="/v1/calls",status="405"}"#,
            1.0,
        ),
        (
            concat!(
                r#"backstop_http_requests_total{method="POST","#,
                r#"route="/v1/escalations/{id}/resolve",status="409"}"#
            ),
            1.0,
        ),
    ] {
        assert_eq!(m.get(series), Some(&value), "{series} in\n{m:#?}");
    }
    assert!(
        !m.keys()
            .any(|k| k.contains("e-missing") || k.contains("r000000000000") || k.contains("/v2/")),
        "{m:#?}"
    );

    // Every route the description names is served (none falls through to
    // "no route" or "method not allowed").
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = path.replace("{id}", "x-unknown");
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let res = api.req(m, &url).json(&json!({})).send().await.unwrap();
            let code = res.status().as_u16();
            let text = res.text().await.unwrap();
            assert_ne!(code, 405, "{method} {path}: {text}");
            assert!(!text.contains("no route"), "{method} {path}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_an_open_address_without_a_token_or_a_taken_port_and_stops_on_sigterm() {
    let e = env("http://127.0.0.1:9");
    // Refused before binding: no socket is opened anywhere.
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(&e.config)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove(backstop::serve::TOKEN_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without a token: set BACKSTOP_API_TOKEN"),
        "{err}"
    );
    // On loopback no token is needed.
    let mut server = serve(&e.config, None);
    let api = Client::new(&server, None);
    let (code, status) = api.get("/v1/status").await;
    assert_eq!(code, 200, "{status}");
    // A second server on the same port says which address is taken.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(&e.config)
        .args(["serve", "--listen", &addr])
        .env_remove(backstop::serve::TOKEN_ENV)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    // SIGTERM: the server finishes and exits 0.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut code = None;
    wait_until("the server to exit after SIGTERM", || {
        code = server.child.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_scripted_sequence_of_failures() {
    let e = env("http://127.0.0.1:9");
    let server = serve(&e.config, None);
    let api = Client::new(&server, None);
    let call = |chain: &str, input: Value| {
        let api = &api;
        let body = json!({"chain": chain, "input": input});
        async move {
            let (code, o) = api.post("/v1/calls", body).await;
            assert_eq!(code, 200, "{o}");
            o
        }
    };
    let trail = |o: &Value| -> Vec<String> {
        o["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} {} {}",
                    a["target"].as_str().unwrap(),
                    a["class"].as_str().unwrap(),
                    a["then"].as_str().unwrap()
                )
            })
            .collect()
    };
    // 1. A transient failure, retried once, then served.
    let o = call(
        "fault",
        json!({"mode": "fail", "class": "transient", "times": 1}),
    )
    .await;
    assert_eq!(trail(&o), ["fault transient retry", "fault ok done"]);
    // 2. Bad input: not retried.
    let o = call("fault", json!({"mode": "fail", "class": "invalid-input"})).await;
    assert_eq!(trail(&o), ["fault invalid-input stop"]);
    // 3. The first target down for good: the fallback serves.
    let o = call(
        "search",
        json!({"fault": {"mode": "fail", "class": "permanent"}, "backup": {"mode": "echo"}}),
    )
    .await;
    assert_eq!(trail(&o), ["fault permanent fail-over", "backup ok done"]);
    // 4. Two transient failures open flaky's breaker; 5. the next call is
    // refused without running it.
    let o = call("flaky", json!({"mode": "fail", "class": "transient"})).await;
    assert_eq!(trail(&o), ["flaky transient retry", "flaky transient stop"]);
    let o = call("flaky", json!({"mode": "echo"})).await;
    assert_eq!(trail(&o), ["flaky circuit-open stop"]);
    // 6. A run stopped for approval: one escalation waiting.
    let (code, r) = api
        .post("/v1/runs", json!({"agent": "checked", "task": "t"}))
        .await;
    assert_eq!((code, r["status"].as_str()), (200, Some("needs-attention")));

    let m = api.metrics().await;
    let want = [
        (
            r#"backstop_attempts_total{target="fault",class="transient"}"#,
            1.0,
        ),
        (r#"backstop_attempts_total{target="fault",class="ok"}"#, 1.0),
        (
            r#"backstop_attempts_total{target="fault",class="invalid-input"}"#,
            1.0,
        ),
        (
            r#"backstop_attempts_total{target="fault",class="permanent"}"#,
            1.0,
        ),
        (
            r#"backstop_attempts_total{target="backup",class="ok"}"#,
            1.0,
        ),
        (
            r#"backstop_attempts_total{target="flaky",class="transient"}"#,
            2.0,
        ),
        (
            r#"backstop_attempts_total{target="flaky",class="circuit-open"}"#,
            1.0,
        ),
        (r#"backstop_attempts_total{target="flaky",class="ok"}"#, 0.0),
        (
            r#"backstop_failures_total{target="fault",class="transient"}"#,
            1.0,
        ),
        (r#"backstop_failures_total{target="fault",class="ok"}"#, 0.0),
        (
            r#"backstop_failures_total{target="flaky",class="transient"}"#,
            2.0,
        ),
        (
            r#"backstop_failures_total{target="flaky",class="circuit-open"}"#,
            1.0,
        ),
        (
            r#"backstop_retries_total{target="fault",class="transient"}"#,
            1.0,
        ),
        (
            r#"backstop_retries_total{target="fault",class="invalid-input"}"#,
            0.0,
        ),
        (
            r#"backstop_retries_total{target="flaky",class="transient"}"#,
            1.0,
        ),
        (
            r#"backstop_retries_total{target="backup",class="transient"}"#,
            0.0,
        ),
        (r#"backstop_calls_total{chain="fault",result="ok"}"#, 1.0),
        (
            r#"backstop_calls_total{chain="fault",result="failed"}"#,
            1.0,
        ),
        (
            r#"backstop_calls_total{chain="search",result="degraded"}"#,
            1.0,
        ),
        (
            r#"backstop_calls_total{chain="flaky",result="failed"}"#,
            2.0,
        ),
        (
            r#"backstop_fallbacks_total{chain="search",target="backup",reason="permanent"}"#,
            1.0,
        ),
        (
            r#"backstop_call_duration_seconds_count{chain="fault"}"#,
            2.0,
        ),
        (
            r#"backstop_call_duration_seconds_count{chain="flaky"}"#,
            2.0,
        ),
        (
            r#"backstop_breaker_state{target="flaky",state="open"}"#,
            1.0,
        ),
        (
            r#"backstop_breaker_state{target="flaky",state="closed"}"#,
            0.0,
        ),
        (
            r#"backstop_breaker_state{target="fault",state="closed"}"#,
            1.0,
        ),
        (
            r#"backstop_breaker_transitions_total{target="flaky",state="open"}"#,
            1.0,
        ),
        (
            r#"backstop_breaker_transitions_total{target="fault",state="open"}"#,
            0.0,
        ),
        (r#"backstop_escalations_open"#, 1.0),
        (
            r#"backstop_http_requests_total{method="POST",route="/v1/calls",status="200"}"#,
            5.0,
        ),
        (
            r#"backstop_http_requests_total{method="POST",route="/v1/runs",status="200"}"#,
            1.0,
        ),
        (
            r#"backstop_http_request_duration_seconds_count{route="/v1/calls"}"#,
            5.0,
        ),
        (
            r#"backstop_escalations_open_by_reason{reason="approval-required"}"#,
            1.0,
        ),
    ];
    for (series, value) in want {
        assert_eq!(m.get(series), Some(&value), "{series} in\n{m:#?}");
    }
    let oldest = m["backstop_escalation_oldest_age_seconds"];
    assert!((0.0..60.0).contains(&oldest), "{oldest}");
    // The histogram's +Inf bucket holds every call of the chain.
    assert_eq!(
        m[r#"backstop_call_duration_seconds_bucket{le="+Inf",chain="fault"}"#],
        2.0
    );
    // The documented alert rules use only series this server exports.
    let rules = std::fs::read_to_string(crate::common::root().join("docs/alerts.yml")).unwrap();
    let mut used: Vec<&str> = rules
        .match_indices("backstop_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 7, "{used:?}");
    for name in used {
        assert!(
            m.keys()
                .any(|k| k == name || k.starts_with(&format!("{name}{{"))),
            "docs/alerts.yml uses {name}, which /metrics does not export"
        );
    }
    // Counters only grow: a second scrape after one more call.
    call("fault", json!({"mode": "echo"})).await;
    let m = api.metrics().await;
    assert_eq!(m[r#"backstop_calls_total{chain="fault",result="ok"}"#], 2.0);
    assert_eq!(
        m[r#"backstop_breaker_transitions_total{target="flaky",state="open"}"#],
        1.0
    );
}

fn cli(config: &Path, args: &[&str]) -> (i32, String) {
    finish(spawn(config, args))
}

fn breaker(config: &Path, target: &str) -> Value {
    let (code, out) = cli(config, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let s: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    s["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target"] == target)
        .unwrap_or_else(|| panic!("no breaker {target} in {s}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_state_is_shared_by_processes_and_survives_a_restart() {
    let e = env("http://127.0.0.1:9");
    // A server started before anything failed.
    let server = serve(&e.config, None);
    let api = Client::new(&server, None);
    let (_, o) = api
        .post(
            "/v1/calls",
            json!({"chain": "flaky", "input": {"mode": "echo"}}),
        )
        .await;
    assert_eq!(o["served_by"], "flaky");
    assert_eq!(breaker(&e.config, "flaky")["state"], "closed");

    // One process opens flaky's breaker and exits.
    let (code, out) = cli(
        &e.config,
        &["call", "flaky", "--json", "--input", r#"{"mode": "fail"}"#],
    );
    assert_eq!(code, 2, "{out}");
    // A new process finds it open and does not run the tool.
    let (code, out) = cli(
        &e.config,
        &["call", "flaky", "--json", "--input", r#"{"mode": "echo"}"#],
    );
    assert_eq!(code, 2, "{out}");
    let o: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(o["attempts"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(o["attempts"][0]["class"], "circuit-open", "{o}");
    assert!(
        o["attempts"][0]["delay_ms"].as_u64().unwrap() > 3_000_000,
        "{o}"
    );
    // `backstop status` (a third process) shows it, readable and as JSON.
    let b = breaker(&e.config, "flaky");
    assert_eq!(
        (b["state"].as_str(), b["opened"].as_u64()),
        (Some("open"), Some(1)),
        "{b}"
    );
    assert!(b["retry_in_ms"].as_u64().unwrap() > 3_000_000, "{b}");
    let (code, table) = cli(&e.config, &["status"]);
    assert_eq!(code, 0, "{table}");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("flaky"))
        .unwrap();
    assert!(
        row.contains(" open ") && (row.contains(" 1h ") || row.contains("59m")),
        "{table}"
    );
    assert!(table.contains("ESCALATIONS  open 0"), "{table}");

    // The running server learns of it within its sync interval.
    let mut seen = None;
    for _ in 0..200 {
        let (_, o) = api
            .post(
                "/v1/calls",
                json!({"chain": "flaky", "input": {"mode": "echo"}}),
            )
            .await;
        if o["attempts"][0]["class"] == "circuit-open" {
            seen = Some(o);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen.is_some(), "the server never saw the breaker open");
    let m = api.metrics().await;
    assert_eq!(
        m[r#"backstop_breaker_state{target="flaky",state="open"}"#],
        1.0
    );
    let (_, status) = api.get("/v1/status").await;
    let flaky = status["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target"] == "flaky")
        .unwrap();
    assert_eq!(
        (flaky["state"].as_str(), flaky["opened"].as_u64()),
        (Some("open"), Some(1)),
        "{status}"
    );

    // A close is shared too: probe opens, its open time passes, another
    // process's successful probe closes it, and status says so.
    let (code, out) = cli(
        &e.config,
        &["call", "probe", "--input", r#"{"mode": "fail"}"#],
    );
    assert_eq!(code, 2, "{out}");
    assert_eq!(breaker(&e.config, "probe")["opened"], 1);
    wait_until("probe's open time to pass", || {
        breaker(&e.config, "probe")["state"] == "half-open"
    });
    let (code, out) = cli(
        &e.config,
        &["call", "probe", "--json", "--input", r#"{"mode": "echo"}"#],
    );
    assert_eq!(code, 0, "{out}");
    let b = breaker(&e.config, "probe");
    assert_eq!(
        (b["state"].as_str(), b["opened"].as_u64()),
        (Some("closed"), Some(1)),
        "{b}"
    );
}

#[test]
fn a_span_per_call_and_attempt_in_readable_or_json_logs() {
    let e = env("http://127.0.0.1:9");
    let run = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("-c")
            .arg(&e.config)
            .args(["--log-format", format, "call", "flaky", "--input"])
            .arg(r#"{"mode": "fail", "times": 1}"#)
            .env("BACKSTOP_LOG", "info")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stderr).unwrap()
    };
    let json_lines: Vec<Value> = run("json")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}")))
        .collect();
    let closed = |name: &str| -> Vec<Value> {
        json_lines
            .iter()
            .filter(|l| l["fields"]["message"] == "close" && l["span"]["name"] == name)
            .map(|l| l["span"].clone())
            .collect()
    };
    let attempts = closed("attempt");
    assert_eq!(attempts.len(), 2, "{json_lines:#?}");
    let first = &attempts[0];
    assert_eq!(
        (
            &first["target"],
            &first["attempt"],
            &first["class"],
            &first["then"],
            &first["breaker"]
        ),
        (
            &json!("flaky"),
            &json!(1),
            &json!("transient"),
            &json!("retry"),
            &json!("closed")
        ),
        "{first}"
    );
    assert!(first["delay_ms"].as_u64().is_some(), "{first}");
    assert_eq!(
        (&attempts[1]["class"], &attempts[1]["then"]),
        (&json!("ok"), &json!("done"))
    );
    let calls = closed("call");
    assert_eq!(calls.len(), 1, "{json_lines:#?}");
    assert_eq!(
        (
            &calls[0]["chain"],
            &calls[0]["result"],
            &calls[0]["served_by"],
            &calls[0]["attempts"]
        ),
        (&json!("flaky"), &json!("ok"), &json!("flaky"), &json!(2))
    );
    // The failed attempt is logged inside its call's and attempt's spans.
    let warned = json_lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["target"] == "backstop::guard::chain")
        .expect("a warning for the failed attempt");
    assert_eq!(warned["spans"][0]["name"], "call");
    assert!(warned["fields"]["message"]
        .as_str()
        .unwrap()
        .contains("injected transient failure"));

    let text = run("text");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in piped logs: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("attempt{target=\"flaky\" attempt=1")
                && l.contains("class=\"transient\" then=\"retry\"")
                && l.contains("close")),
        "{text}"
    );
}

/// A resume the caller cannot have under this config is a 409 naming why,
/// a run that is not there a 404, and a run whose journal is damaged the
/// server's 500: never a 500 for what the caller can fix.
#[tokio::test]
async fn run_errors_over_http_say_whose_they_are() {
    let model = ScriptedServer::start(anthropic_text("x")).await.unwrap();
    let e = env(&model.origin());
    let state = e.config.parent().unwrap().join("state.db");
    {
        let j = backstop::store::SqliteStore::open(&state).unwrap();
        // Made by an older config whose agent `ghost` is gone, killed
        // before its first entry.
        j.create_run("rghost", "ghost", "t").unwrap();
        // Entries without a run-started entry: damaged.
        j.create_run("rcut", "two", "t").unwrap();
        let step = json!({"chain": "fault", "input": {}, "key": "rcut:1"});
        j.append("rcut", EntryKind::ToolIntent, 1, &step).unwrap();
    }
    let token = "tok-run-errors";
    let server = serve(&e.config, Some(token));
    let api = Client::new(&server, Some(token));
    let (code, body) = api.post("/v1/runs/rghost/resume", json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        message(&body).contains("agent `ghost` is no longer in the config"),
        "{body}"
    );
    let (code, body) = api.post("/v1/runs/rnone/resume", json!({})).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = api.post("/v1/runs/rcut/resume", json!({})).await;
    assert_eq!(code, 500, "{body}");
    assert!(message(&body).contains("no run-started entry"), "{body}");
    let (code, body) = api
        .post("/v1/runs", json!({"agent": "nobody", "task": "t"}))
        .await;
    assert_eq!(code, 404, "{body}");
}
