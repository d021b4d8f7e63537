//! Backstop as an MCP server, driven by the official Rust SDK's client
//! (`rmcp`) over stdio (`backstop mcp`) and over streamable HTTP (`/mcp`
//! of `backstop serve`), in both protocol revisions: 2026-07-28 (discover,
//! stateless) and 2025-11-25 (initialize, sessions).

use crate::common::{serve, tempdir, write_config, Server, PRELUDE};
use rmcp::model::{CallToolRequestParams, CallToolResult, ProtocolVersion, Tool};
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub fn config() -> String {
    format!(
        r#"{PRELUDE}
[tools.echo_rs]
component = "{{plugins}}/echo_rs.wasm"

[tools.flaky]
component = "{{plugins}}/fault.wasm"
timeout = "2s"

[tools.backup]
component = "{{plugins}}/fault.wasm"

[tools.slow]
component = "{{plugins}}/fault.wasm"
timeout = "20s"
max_concurrent = 1
max_queue = 0

[tools.ledger]
component = "{{plugins}}/ledger.wasm"
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[tools.pay]
component = "{{plugins}}/ledger.wasm"
effect = "irreversible"
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]

[chains.main]
targets = ["flaky", "backup"]
description = "Tries flaky, falls back to backup."

[tools.shaky]
component = "{{plugins}}/fault.wasm"
breaker = {{ consecutive_failures = 50 }}

[chains.solo]
targets = ["shaky"]
retry = {{ attempts = 2 }}

[chains.wait]
targets = ["slow"]
deadline = "30s"

[tools.jot]
component = "{{plugins}}/ledger.wasm"
timeout = "400ms"
breaker = {{ consecutive_failures = 50 }}
dirs = [{{ host = "{{dir}}/ledger", guest = "/ledger", mode = "rw" }}]
"#
    )
}

pub fn setup(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("ledger")).unwrap();
    let path = write_config(dir.path(), text);
    (dir, path)
}

type Client = RunningService<RoleClient, ()>;

fn lifecycle(v: &ProtocolVersion) -> ClientLifecycleMode {
    if v.has_initialize() {
        ClientLifecycleMode::Initialize
    } else {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![v.clone()],
        }
    }
}

async fn over_stdio(config: &Path, v: &ProtocolVersion) -> Client {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
    cmd.arg("-c")
        .arg(config)
        .arg("mcp")
        .env("BACKSTOP_LOG", "warn");
    let (child, _stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ().serve_with_lifecycle(child, lifecycle(v)).await.unwrap()
}

async fn over_http(server: &Server, token: Option<&str>, v: &ProtocolVersion) -> Client {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut c = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", server.base));
    c.auth_header = token.map(str::to_owned);
    backstop::models::install_tls_provider();
    let transport = StreamableHttpClientTransport::from_config(c);
    ().serve_with_lifecycle(transport, lifecycle(v))
        .await
        .unwrap()
}

async fn call(c: &Client, name: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    c.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
        .unwrap()
}

fn meta(r: &CallToolResult) -> Value {
    Value::Object(r.meta.clone().expect("a result has _meta").0)
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

const REVISIONS: [ProtocolVersion; 2] =
    [ProtocolVersion::V_2026_07_28, ProtocolVersion::V_2025_11_25];

/// What every transport and revision must show: the catalog, a served
/// call with its marks, a fallback, a classified failure as an error
/// result, input that fails the schema, and an unknown tool.
async fn the_contract(c: &Client, v: &ProtocolVersion) {
    let tools: Vec<Tool> = c.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "main", "solo", "wait", "backup", "echo_rs", "flaky", "jot", "ledger", "pay", "shaky",
            "slow"
        ],
        "{v}: every chain, then every tool"
    );
    let by = |n: &str| tools.iter().find(|t| t.name == n).unwrap();
    assert_eq!(
        by("main").description.as_deref(),
        Some("Tries flaky, falls back to backup.")
    );
    assert!(
        by("echo_rs")
            .description
            .as_deref()
            .unwrap()
            .starts_with("Echoes `say`"),
        "{v}: a tool's own description"
    );
    let say = &by("echo_rs").input_schema["properties"]["say"];
    assert_eq!(say, &json!({"type": "string"}), "{v}: the tool's schema");
    let ledger = by("ledger").annotations.clone().unwrap();
    assert_eq!(ledger.read_only_hint, Some(false));
    assert_eq!(
        by("echo_rs").annotations.clone().unwrap().read_only_hint,
        Some(true)
    );

    let r = call(c, "echo_rs", json!({"say": "hi"})).await;
    assert_eq!(r.is_error, Some(false), "{v}: {r:?}");
    let value = r.structured_content.clone().unwrap();
    assert_eq!(value["said"], "hi");
    let m = meta(&r);
    assert_eq!(m["served_by"], "echo_rs");
    assert_eq!(m["degraded"], false);
    assert_eq!(m["attempts"][0]["class"], "ok");
    assert_eq!(
        serde_json::from_str::<Value>(&text(&r)).unwrap(),
        value,
        "{v}: the text is the value's JSON"
    );

    let r = call(
        c,
        "main",
        json!({"flaky": {"mode": "fail", "class": "unavailable"}, "backup": {"mode": "echo"}}),
    )
    .await;
    assert_eq!(r.is_error, Some(false), "{v}: {r:?}");
    let m = meta(&r);
    assert_eq!(m["served_by"], "backup");
    assert_eq!(m["degraded"], true);
    assert_eq!(m["degraded_reason"], "fallback: flaky: unavailable");
    assert_eq!(m["attempts"].as_array().unwrap().len(), 2);
    assert!(
        text(&r).contains("served by backup (degraded"),
        "{}",
        text(&r)
    );

    let r = call(c, "solo", json!({"mode": "fail", "class": "transient"})).await;
    assert_eq!(r.is_error, Some(true), "{v}: a failure is an error result");
    let t = text(&r);
    assert!(t.starts_with("FAILED: transient:"), "{t}");
    assert!(t.contains("shaky #1 transient -> retry"), "{t}");
    assert!(t.contains("shaky #2 transient -> stop"), "{t}");
    assert_eq!(meta(&r)["error"]["class"], "transient");
    assert_eq!(meta(&r)["error"]["escalate"], "retries-exhausted");

    let r = call(c, "echo_rs", json!({"say": 5})).await;
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("input at /say"), "{v}: {}", text(&r));
    assert_eq!(meta(&r)["error"]["class"], "invalid-input");

    let err = c
        .call_tool(CallToolRequestParams::new("nope"))
        .await
        .unwrap_err();
    let s = err.to_string();
    assert!(
        s.contains("unknown tool `nope`") && s.contains("-32602"),
        "{v}: {s}"
    );
}

#[tokio::test]
async fn over_stdio_in_both_revisions() {
    let (_dir, config) = setup(&config());
    for v in &REVISIONS {
        let c = over_stdio(&config, v).await;
        assert_eq!(
            c.peer_info().unwrap().protocol_version,
            *v,
            "negotiated {v}"
        );
        the_contract(&c, v).await;
        c.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn over_http_in_both_revisions_behind_the_token() {
    let (_dir, config) = setup(&config());
    let server = serve(&config, Some("s3cret"));
    for v in &REVISIONS {
        let c = over_http(&server, Some("s3cret"), v).await;
        the_contract(&c, v).await;
        c.cancel().await.unwrap();
    }
    // Without the token: refused before MCP sees the request.
    let res = crate::common::http()
        .post(format!("{}/mcp", server.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// `[mcp] expose` narrows the catalog; an unknown name is a config error
/// naming the key.
#[tokio::test]
async fn expose_chooses_what_is_served() {
    let text = format!("{}\n[mcp]\nexpose = [\"main\", \"echo_rs\"]\n", config());
    let (_dir, config) = setup(&text);
    let c = over_stdio(&config, &ProtocolVersion::V_2026_07_28).await;
    let names: Vec<String> = c
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["main", "echo_rs"]);
    let err = c
        .call_tool(CallToolRequestParams::new("flaky"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown tool `flaky`"), "{err}");
    c.cancel().await.unwrap();

    let bad = format!(
        "{}\n[mcp]\nexpose = [\"main\", \"ecko_rs\"]\n",
        self::config()
    );
    let (dir, _) = setup(&bad);
    let (code, _, err) = crate::common::cli(Some(&dir.path().join("backstop.toml")), &["check"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("mcp.expose[1]") && err.contains("did you mean `echo_rs`"),
        "{err}"
    );
}

/// Lines that are not messages get a JSON-RPC error each, and the server
/// goes on serving the same client.
#[test]
fn bad_lines_on_stdio_are_answered_and_reading_goes_on() {
    let (_dir, config) = setup(&config());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(&config)
        .arg("mcp")
        .env("BACKSTOP_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientCapabilities":{},
        "io.modelcontextprotocol/clientInfo":{"name":"t","version":"1"}}"#
        .replace('\n', "");
    let mut input = Vec::new();
    input.extend_from_slice(
        b"this is not json\n[1,2]\n{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":5}\n",
    );
    input.extend_from_slice(b"\xff\xfe\n");
    input.extend(std::iter::repeat_n(b'a', 5 << 20));
    input.push(b'\n');
    input.extend_from_slice(
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"bogus/method\",\"params\":{{{meta}}}}}\n"
        )
        .as_bytes(),
    );
    input.extend_from_slice(
        format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\
             \"echo_rs\",\"arguments\":{{\"say\":\"still here\"}},{meta}}}}}\n"
        )
        .as_bytes(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        // Held open until the answers are read: EOF would end the server.
        std::thread::sleep(std::time::Duration::from_secs(3));
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut answers: Vec<Value> = Vec::new();
    while answers.len() < 7 {
        let line = lines.next().expect("an answer per line").unwrap();
        answers.push(serde_json::from_str(&line).unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = writer.join();
    let code = |a: &Value| a["error"]["code"].as_i64();
    let of = |id: Value| answers.iter().find(|a| a["id"] == id).unwrap().clone();
    let nulls: Vec<(Option<i64>, String)> = answers
        .iter()
        .filter(|a| a["id"].is_null())
        .map(|a| (code(a), a["error"]["message"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(nulls.len(), 4, "{answers:?}");
    assert_eq!(nulls[0].0, Some(-32700));
    assert!(nulls[0].1.contains("not JSON"), "{nulls:?}");
    assert_eq!(nulls[1].0, Some(-32600));
    assert_eq!(nulls[2].0, Some(-32700));
    assert!(nulls[2].1.contains("UTF-8"), "{nulls:?}");
    assert_eq!(nulls[3].0, Some(-32600));
    assert!(nulls[3].1.contains("at most 4194304 bytes"), "{nulls:?}");
    assert_eq!(code(&of(json!(7))), Some(-32600));
    assert_eq!(
        code(&of(json!(1))),
        Some(-32601),
        "an unknown method is answered"
    );
    let served = of(json!(2));
    assert_eq!(
        served["result"]["structuredContent"]["said"], "still here",
        "{served}"
    );
}

/// Runs the Python SDK's driver (`tests/e2e/peers/mcp_client.py`) and
/// returns the JSON it printed.
fn python_peer(kind: &str, args: [&str; 3], extra: &[&str]) -> Value {
    let how = format!("{kind} {}", args[2]);
    let out = std::process::Command::new(crate::common::python_mcp())
        .arg(crate::common::root().join("tests/e2e/peers/mcp_client.py"))
        .arg(kind)
        .args(args)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{how}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// The official MCP Python SDK as the client, over stdio and HTTP, in
/// both revisions: the catalog, a call, a fallback marked in `_meta`
/// with its progress notification, a retry's progress, a failure as an
/// error result, invalid input, an unknown tool, and a cancelled call
/// whose bulkhead slot is freed as soon as the server sees the cancel
/// (the tool would hold it 8 s).
#[test]
fn the_python_sdk_as_client() {
    let (_dir, config) = setup(&self::config());
    let server = serve(&config, Some("py-token"));
    let url = format!("{}/mcp", server.base);
    let bin = env!("CARGO_BIN_EXE_backstop");
    let runs: [(&str, [&str; 3], &str); 4] = [
        (
            "stdio",
            [bin, config.to_str().unwrap(), "auto"],
            "2026-07-28",
        ),
        (
            "stdio",
            [bin, config.to_str().unwrap(), "legacy"],
            "2025-11-25",
        ),
        ("http", [&url, "py-token", "auto"], "2026-07-28"),
        ("http", [&url, "py-token", "legacy"], "2025-11-25"),
    ];
    for (kind, args, want) in runs {
        let how = format!("{kind} {}", args[2]);
        let r = python_peer(kind, args, &[]);
        assert_eq!(r["protocol"], want, "{how}");
        assert_eq!(r["tools"][0], "main", "{how}");
        assert_eq!(
            r["schemas"]["echo_rs"]["properties"]["say"]["type"],
            "string"
        );
        assert_eq!(r["call"]["is_error"], false, "{how}: {}", r["call"]);
        assert_eq!(r["call"]["structured"]["said"], "from python");
        assert_eq!(r["call"]["meta"]["served_by"], "echo_rs");

        let f = &r["fallback"];
        assert_eq!(f["meta"]["served_by"], "backup", "{how}: {f}");
        assert_eq!(f["meta"]["degraded"], true);
        assert_eq!(f["meta"]["degraded_reason"], "fallback: flaky: unavailable");
        let said = f["progress"][0]["message"].as_str().unwrap_or_default();
        assert!(
            said.starts_with("flaky #1: unavailable") && said.ends_with("-> fall back"),
            "{how}: {f}"
        );
        let p = &r["retry"]["progress"];
        assert_eq!(r["retry"]["meta"]["served_by"], "shaky", "{how}");
        let said = p[0]["message"].as_str().unwrap_or_default();
        assert!(
            said.contains("shaky #1: transient") && said.contains("-> retry in"),
            "{how}: {p}"
        );

        assert_eq!(r["error"]["is_error"], true, "{how}");
        assert!(r["error"]["text"][0]
            .as_str()
            .unwrap()
            .starts_with("FAILED: permanent:"));
        assert_eq!(r["invalid"]["is_error"], true);
        assert!(r["invalid"]["text"][0]
            .as_str()
            .unwrap()
            .contains("input at /say"));
        assert_eq!(r["unknown"]["code"], -32602, "{how}: {}", r["unknown"]);

        let c = &r["cancel"];
        // The cancelled call would hold the only slot for 8 s; the client
        // tries for 4 s. Freed as soon as the server saw the cancel (the
        // first try can still meet it in the instant before).
        assert_eq!(
            c["second"]["meta"]["served_by"], "slow",
            "{how}: never freed: {c}"
        );
        assert!(c["freed_after_ms"].as_u64().unwrap() < 3000, "{how}: {c}");
    }
}

/// A config, a server on it, and the four Python SDK clients that ask a
/// person: stdio and HTTP, each in both revisions (2025-11-25 over HTTP
/// elicits inside its session).
struct PeopleRig {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: Server,
    token: &'static str,
}

impl PeopleRig {
    fn new(token: &'static str) -> Self {
        let (dir, config) = setup(&self::config());
        let server = serve(&config, Some(token));
        PeopleRig {
            dir,
            config,
            server,
            token,
        }
    }

    /// Runs the driver's `scenario` with each client in turn, handing
    /// `check` its number, its name and what it saw.
    fn each_client(&self, scenario: &str, check: impl Fn(usize, &str, &Value)) {
        let url = format!("{}/mcp", self.server.base);
        let bin = env!("CARGO_BIN_EXE_backstop");
        let conf = self.config.to_str().unwrap();
        let runs: [(&str, [&str; 3]); 4] = [
            ("stdio", [bin, conf, "auto"]),
            ("stdio", [bin, conf, "legacy"]),
            ("http", [&url, self.token, "auto"]),
            ("http", [&url, self.token, "legacy"]),
        ];
        for (n, (kind, args)) in runs.into_iter().enumerate() {
            let how = format!("{kind} {}", args[2]);
            let r = python_peer(kind, args, &[scenario, &self.server.base, self.token]);
            check(n, &how, &r);
        }
    }

    /// How many times the ledger ran for `entry`.
    fn lines(&self, entry: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("ledger/ledger.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).unwrap()["entry"] == entry)
            .count()
    }

    /// Escalation `id` as the API shows it.
    fn escalation(&self, id: &str) -> Value {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let res = crate::common::http()
                .get(format!("{}/v1/escalations/{id}", self.server.base))
                .bearer_auth(self.token)
                .send()
                .await
                .unwrap();
            res.json().await.unwrap()
        })
    }
}

/// Approvals through MCP, with the Python SDK as the client: an
/// irreversible tool asks the client (elicitation under 2025-11-25, an
/// input-required result under 2026-07-28); the answer is the
/// escalation's resolution, by the client; the tool runs once however
/// often the answer is sent; a refusal runs nothing; a client that
/// cannot answer gets the escalation's id, and once a person resolved
/// it over the API the call runs, once.
#[test]
fn approvals_are_asked_of_the_client_and_run_once() {
    let rig = PeopleRig::new("ap-token");
    rig.each_client("approvals", |n, how, r| {
        let ok = &r["approved"];
        assert_eq!(ok["is_error"], false, "{how}: {ok}");
        assert_eq!(ok["structured"]["entry"], "approve-1");
        assert_eq!(ok["meta"]["resolved_by"], "mcp:approval-test");
        assert!(r["asked"][0]
            .as_str()
            .unwrap()
            .contains("`pay` needs your approval"));
        assert_eq!(
            r["again"]["meta"]["key"], ok["meta"]["key"],
            "{how}: the same call"
        );
        if how.ends_with("auto") {
            assert_eq!(
                r["input_required"]["result_type"], "input_required",
                "{how}: {r}"
            );
            assert_eq!(r["input_required"]["keys"], json!(["approval"]));
            let rounds = &r["rounds"];
            assert_eq!(rounds[0]["is_error"], false, "{how}: {rounds}");
            assert_eq!(rounds[1]["meta"]["key"], rounds[0]["meta"]["key"]);
        }
        let no = &r["refused"];
        assert_eq!(no["is_error"], true, "{how}: {no}");
        assert!(no["text"][0].as_str().unwrap().contains("was not approved"));
        let later = &r["cannot_answer"];
        assert_eq!(later["is_error"], true);
        let id = later["meta"]["escalation"].as_str().unwrap();
        assert!(
            later["text"][0]
                .as_str()
                .unwrap()
                .contains(&format!("backstop escalations resolve {id} --approve")),
            "{how}: {later}"
        );
        assert_eq!(r["resolved_status"], 200);
        assert_eq!(
            r["after_resolve"]["is_error"], false,
            "{how}: {}",
            r["after_resolve"]
        );
        assert_eq!(r["after_resolve"]["meta"]["resolved_by"], "ops");
        assert_eq!(
            r["after_again"]["meta"]["key"],
            r["after_resolve"]["meta"]["key"]
        );

        // What ran, counted on disk: once per approval, never on refusal.
        let runs_so_far = n + 1;
        assert_eq!(rig.lines("approve-1"), runs_so_far, "{how}");
        assert_eq!(rig.lines("later-1"), runs_so_far, "{how}");
        assert_eq!(rig.lines("reject-1"), 0, "{how}");
        assert_eq!(
            rig.lines("mrtr-1"),
            [1, 1, 2, 2][n],
            "{how}: the answer sent twice ran once"
        );
        // The client's answer is the escalation's resolution.
        let id = ok["meta"]["escalation"].as_str().unwrap();
        let esc = rig.escalation(id);
        assert_eq!(esc["resolution"]["kind"], "approve", "{how}: {esc}");
        assert_eq!(esc["resolved_by"], "mcp:approval-test");
    });
}

/// Calls that stop for a person after they ran, with the Python SDK as
/// the client: a tool saying `needs-human` and a side effect cut off half
/// way (`ambiguous-state`) ask the client; its answer is the escalation's
/// resolution, acted on once: a result it gives is the call's value
/// (marked as a person's), a retry or an approval runs the call once more
/// with the same key (the ledger counts it), a refusal runs nothing, an
/// answer that is not a choice leaves the escalation open, and a client
/// that cannot answer is served once a person resolved it over the API.
#[test]
fn calls_that_stop_for_a_person_ask_the_client() {
    let rig = PeopleRig::new("pp-token");
    rig.each_client("people", |n, how, r| {
        let s = &r["supplied"];
        assert_eq!(s["is_error"], false, "{how}: {s}");
        assert_eq!(s["structured"]["said"], "by a person");
        assert_eq!(s["meta"]["served_by"], "person:mcp:people-test", "{how}");
        assert_eq!(s["meta"]["degraded"], true);
        let asked = r["supplied_asked"].as_array().unwrap();
        assert_eq!(
            asked.len(),
            2,
            "{how}: a retry, then asked again: {asked:?}"
        );
        assert!(
            asked
                .iter()
                .all(|q| q.as_str().unwrap().contains("`solo` needs a person")
                    && q.as_str().unwrap().contains("which account?")),
            "{how}: {asked:?}"
        );
        assert_eq!(
            r["supplied_again"]["structured"], s["structured"],
            "{how}: the recorded result"
        );
        assert_eq!(r["supplied_again"]["meta"]["key"], s["meta"]["key"]);
        let esc = rig.escalation(s["meta"]["escalation"].as_str().unwrap());
        assert_eq!(esc["reason"], "needs-human", "{how}: {esc}");
        assert_eq!(esc["resolution"]["kind"], "result");
        assert_eq!(esc["resolved_by"], "mcp:people-test");

        let no = &r["refused"];
        assert_eq!(no["is_error"], true, "{how}: {no}");
        assert!(
            no["text"][0].as_str().unwrap().contains("was refused"),
            "{no}"
        );
        assert!(
            no["text"][0].as_str().unwrap().contains("no such account"),
            "{no}"
        );

        let a = &r["ambiguous"];
        assert_eq!(a["is_error"], false, "{how}: {a}");
        assert_eq!(a["structured"]["recorded"], "by hand");
        assert!(
            r["ambiguous_asked"][0]
                .as_str()
                .unwrap()
                .contains("`jot` stopped half way"),
            "{how}: {}",
            r["ambiguous_asked"]
        );
        assert_eq!(r["ambiguous_again"]["structured"], a["structured"], "{how}");
        let esc = rig.escalation(a["meta"]["escalation"].as_str().unwrap());
        assert_eq!(esc["reason"], "ambiguous-state", "{how}: {esc}");
        assert_eq!(esc["key"], a["meta"]["key"], "{how}: the call's own key");

        let rerun = &r["rerun"];
        assert_eq!(rerun["is_error"], true, "{how}: {rerun}");
        assert_eq!(
            r["rerun_asked"].as_array().unwrap().len(),
            2,
            "{how}: {rerun}"
        );

        let bad = &r["bad_answer"];
        assert_eq!(bad["is_error"], true, "{how}: {bad}");
        assert!(
            bad["text"][0]
                .as_str()
                .unwrap()
                .contains("`action` must be one of"),
            "{how}: {bad}"
        );
        let esc = rig.escalation(bad["meta"]["escalation"].as_str().unwrap());
        assert_eq!(esc["resolution"], Value::Null, "{how}: still open: {esc}");

        let later = &r["cannot_answer"];
        assert_eq!(later["is_error"], true, "{how}: {later}");
        let id = later["meta"]["escalation"].as_str().unwrap();
        assert!(
            later["text"][0]
                .as_str()
                .unwrap()
                .contains(&format!("backstop escalations resolve {id} --result JSON")),
            "{how}: {later}"
        );
        assert_eq!(r["resolved_status"], 200, "{how}: {r}");
        assert!(r["resolved_note"]
            .as_str()
            .unwrap()
            .contains("MCP client's call"));
        assert_eq!(
            r["after_resolve"]["structured"]["said"], "ops",
            "{how}: {r}"
        );
        assert_eq!(r["after_resolve"]["meta"]["served_by"], "person:ops");

        // On disk: the cut-off call ran once and was not repeated for a
        // given result; the approved one ran once more, then was refused.
        assert_eq!(rig.lines("amb-1"), n + 1, "{how}");
        assert_eq!(rig.lines("amb-2"), 2 * (n + 1), "{how}");
    });
}

/// `backstop mcp` started as a child whose process the test can SIGKILL.
async fn killable(config: &Path) -> (tokio::process::Child, Client) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(config)
        .arg("mcp")
        .env("BACKSTOP_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let lifecycle = lifecycle(&ProtocolVersion::V_2026_07_28);
    let client = ().serve_with_lifecycle(io, lifecycle).await.unwrap();
    (child, client)
}

fn named_call(name: &str, args: Value, escalation: Option<&str>) -> CallToolRequestParams {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    let mut p = CallToolRequestParams::new(name.to_owned()).with_arguments(args);
    p.request_state = escalation.map(str::to_owned);
    p
}

/// The escalation a client without elicitation was told to resolve,
/// approved from the command line.
fn approve_from_cli(config: &Path, r: &CallToolResult) -> String {
    let id = meta(r)["escalation"].as_str().unwrap().to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("-c")
        .arg(config)
        .args(["escalations", "resolve", &id, "--approve", "--by", "ops"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("an MCP client's call"), "{said}");
    id
}

/// An approved MCP call whose host is SIGKILLed while the tool runs: the
/// intent is journaled, the result is not. The client's retry on a new
/// host asks the tool's `reconcile` and returns what already happened,
/// never a second effect; a tool that cannot say is not run again but
/// becomes an `ambiguous-state` escalation for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_call_is_reconciled_on_retry_never_repeated() {
    let toml = format!(
        r#"{}
[tools.launch]
component = "{{plugins}}/fault.wasm"
effect = "irreversible"
timeout = "30s"
"#,
        self::config()
    );
    let (dir, config) = setup(&toml);
    let ledger = dir.path().join("ledger/ledger.jsonl");
    let lines = || {
        std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("kill-1"))
            .count()
    };

    let (mut a, client) = killable(&config).await;
    let args = json!({"entry": "kill-1", "sleep_after_ms": 20000});
    let asked = client
        .call_tool(named_call("pay", args.clone(), None))
        .await
        .unwrap();
    let id = approve_from_cli(&config, &asked);
    let running = {
        let params = named_call("pay", args.clone(), Some(&id));
        let peer = client.peer().clone();
        tokio::spawn(async move { peer.call_tool(params).await })
    };
    let t = std::time::Instant::now();
    while lines() == 0 {
        assert!(t.elapsed().as_secs() < 20, "the approved call never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    a.kill().await.unwrap();
    let _ = running.await;

    let (_b, client) = killable(&config).await;
    for _ in 0..2 {
        let r = client
            .call_tool(named_call("pay", args.clone(), Some(&id)))
            .await
            .unwrap();
        let m = meta(&r);
        assert_eq!(r.is_error, Some(false), "{m}");
        assert_eq!(m["served_by"], "pay");
        assert_eq!(m["attempts"][0]["class"], "reconciled", "{m}");
        assert_eq!(r.structured_content.as_ref().unwrap()["reconciled"], true);
        assert_eq!(lines(), 1, "run once, however often retried");
    }
    drop(client);

    // A tool that cannot reconcile: the retry stops for a person.
    let (mut c, client) = killable(&config).await;
    let args = json!({"mode": "sleep", "ms": 20000});
    let asked = client
        .call_tool(named_call("launch", args.clone(), None))
        .await
        .unwrap();
    let id = approve_from_cli(&config, &asked);
    let running = {
        let params = named_call("launch", args.clone(), Some(&id));
        let peer = client.peer().clone();
        tokio::spawn(async move { peer.call_tool(params).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    c.kill().await.unwrap();
    let _ = running.await;
    let (_d, client) = killable(&config).await;
    let r = client
        .call_tool(named_call("launch", args.clone(), Some(&id)))
        .await
        .unwrap();
    let m = meta(&r);
    assert_eq!(r.is_error, Some(true), "{m}");
    assert_eq!(m["error"]["escalate"], "ambiguous-state", "{m}");
    let next = m["escalation"].as_str().unwrap();
    assert_ne!(next, id, "a new question: {m}");
    assert!(text(&r).contains("did not finish"), "{}", text(&r));
    assert!(text(&r).contains(&format!("resolve {next} --approve")));
}

/// A client opening 2025-11-25 sessions in a loop meets `[mcp]
/// max_sessions`; stateless requests are served meanwhile, and closing a
/// session makes room.
#[tokio::test]
async fn sessions_are_capped() {
    let text = format!("{}\n[mcp]\nmax_sessions = 3\n", self::config());
    let (_dir, config) = setup(&text);
    let server = serve(&config, None);
    let http = crate::common::http();
    let url = format!("{}/mcp", server.base);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "loop", "version": "1"}}});
    let post = |body: Value, session: Option<String>| {
        let mut r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        if let Some(s) = session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        r.send()
    };
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let res = post(init.clone(), None).await.unwrap();
        assert_eq!(res.status(), 200);
        let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        sessions.push(id);
    }
    let res = post(init.clone(), None).await.unwrap();
    assert!(!res.status().is_success(), "{}", res.status());
    // The stateless revision needs no session.
    let c = over_http(&server, None, &ProtocolVersion::V_2026_07_28).await;
    let r = call(&c, "echo_rs", json!({"say": "stateless"})).await;
    assert_eq!(r.is_error, Some(false));
    c.cancel().await.unwrap();
    let res = http
        .delete(&url)
        .header("mcp-session-id", &sessions[0])
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let res = post(init, None).await.unwrap();
    assert_eq!(res.status(), 200, "room after a close");
}

/// Bodies the HTTP transport must not take: over 4 MiB (413), not JSON,
/// not JSON-RPC, a body that never ends (408 at the body timeout); the
/// server answers each and serves the next client.
#[tokio::test]
async fn bad_bodies_over_http_are_refused_and_serving_goes_on() {
    let (_dir, config) = setup(&self::config());
    let server = crate::common::serve_with(&config, None, &["--body-timeout", "1s"]);
    let url = format!("{}/mcp", server.base);
    let http = crate::common::http();
    let post = |body: Vec<u8>| {
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .body(body)
            .send()
    };
    let res = post(vec![b' '; 5 << 20]).await.unwrap();
    assert_eq!(res.status(), 413);
    for bad in [
        &b"this is not json"[..],
        b"[1,2,3]",
        b"{\"jsonrpc\":\"2.0\",\"id\":1}",
    ] {
        let res = post(bad.to_vec()).await.unwrap();
        assert!(
            res.status().is_client_error(),
            "{}: {}",
            String::from_utf8_lossy(bad),
            res.status()
        );
    }
    // A body that never ends.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: \
             application/json, text/event-stream\r\ncontent-length: 1000\r\n\r\n{{\"jsonrpc\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut answer))
        .await
        .expect("answered within the body timeout")
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let c = over_http(&server, None, &ProtocolVersion::V_2026_07_28).await;
    let r = call(&c, "echo_rs", json!({"say": "still serving"})).await;
    assert_eq!(r.is_error, Some(false));
    c.cancel().await.unwrap();
}

/// The HTTP path that answers a plain stateless `tools/call` in the
/// request's own task takes exactly that request and hands everything else
/// to the SDK; what it answers is what the SDK answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_http_path_takes_only_plain_stateless_calls() {
    let (_dir, config) = setup(&self::config());
    let b = std::sync::Arc::new(backstop::Backstop::load(&config).await.unwrap());
    let (_, fast) = backstop::mcp::http_service(b.clone(), true, 1 << 20);
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let body = |name: &str, extra: Value| {
        let mut params = json!({"name": name, "arguments": {"say": "hi"}, "_meta": meta});
        for (k, v) in extra.as_object().unwrap() {
            if k == "_meta" {
                for (mk, mv) in v.as_object().unwrap() {
                    params["_meta"][mk] = mv.clone();
                }
            } else {
                params[k] = v.clone();
            }
        }
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}).to_string()
    };
    let parts = |edit: &dyn Fn(&mut http::request::Builder)| {
        let mut b = http::Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", "127.0.0.1:7878")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo_rs");
        edit(&mut b);
        b.body(()).unwrap().into_parts().0
    };
    let plain = body("echo_rs", json!({}));
    let (status, out) = fast
        .answer(&parts(&|_| {}), plain.as_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let fast_answer: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(fast_answer["result"]["structuredContent"]["said"], "hi");
    assert_eq!(fast_answer["result"]["resultType"], "complete");

    // Left to the SDK: each of these differs from the plain call in one way.
    let replace = |name: &'static str, value: &'static str| {
        move |b: &mut http::request::Builder| {
            let h = b.headers_mut().unwrap();
            h.insert(name, http::HeaderValue::from_static(value));
        }
    };
    let cases: Vec<(&str, http::request::Parts, String)> = vec![
        (
            "a session",
            parts(&replace("mcp-session-id", "s1")),
            plain.clone(),
        ),
        (
            "2025-11-25",
            parts(&replace("mcp-protocol-version", "2025-11-25")),
            plain.clone(),
        ),
        (
            "another method",
            parts(&replace("mcp-method", "tools/list")),
            plain.clone(),
        ),
        (
            "a mismatched name",
            parts(&replace("mcp-name", "other")),
            plain.clone(),
        ),
        (
            "a foreign Host",
            parts(&replace("host", "evil.example:7878")),
            plain.clone(),
        ),
        (
            "no SSE in Accept",
            parts(&replace("accept", "application/json")),
            plain.clone(),
        ),
        (
            "a param header",
            parts(&replace("mcp-param-say", "hi")),
            plain.clone(),
        ),
        (
            "progress",
            parts(&|_| {}),
            body("echo_rs", json!({"_meta": {"progressToken": 1}})),
        ),
        (
            "an input-required round",
            parts(&|_| {}),
            body(
                "echo_rs",
                json!({"requestState": "e1", "inputResponses": {}}),
            ),
        ),
        ("not JSON", parts(&|_| {}), "{nope".into()),
    ];
    for (what, p, text) in cases {
        assert!(fast.answer(&p, text.as_bytes()).await.is_none(), "{what}");
    }

    // The SDK's own answer to the same request: the same but for the key
    // and the timings.
    let server = serve(&config, None);
    let res = crate::common::http()
        .post(format!("{}/mcp", server.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo_rs")
        .header("mcp-param-x", "forces the SDK's path")
        .body(plain)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let sdk: Value = res.json().await.unwrap();
    let strip = |mut v: Value| {
        for k in ["key", "elapsed_ms", "deadline_ms"] {
            v["result"]["structuredContent"][k] = Value::Null;
            v["result"]["_meta"][k] = Value::Null;
        }
        v["result"]["_meta"]["attempts"][0]["elapsed_ms"] = Value::Null;
        v["result"]["content"] = Value::Null;
        v
    };
    assert_eq!(strip(sdk.clone()), strip(fast_answer), "{status} {sdk}");
}
