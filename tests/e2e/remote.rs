//! Tools another MCP server serves, as chain targets. The server is a
//! small rmcp one started here on 127.0.0.1, with its faults on tap: slow,
//! down, error results, JSON-RPC errors, a schema it breaks, and a port
//! that answers garbage.

use crate::common::{load, tempdir, PRELUDE};
use backstop::{Backstop, Effect, EscalationReason};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig,
    Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Fixture {
    /// `count` calls that ran.
    counted: Arc<AtomicU64>,
    /// The protocol version of each call, as the server saw it.
    versions: Arc<Mutex<Vec<String>>>,
    /// Serve only revisions with a handshake (an older server).
    legacy_only: bool,
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => unreachable!(),
    }
}

fn tools() -> Vec<Tool> {
    let open = || schema(json!({"type": "object"}));
    let ro = ToolAnnotations::new().read_only(true);
    vec![
        Tool::new("echo", "Echoes its arguments.", open()).with_annotations(ro.clone()),
        Tool::new(
            "slow",
            "Sleeps `ms`, then echoes.",
            schema(json!({"type": "object", "properties": {"ms": {"type": "integer"}}})),
        )
        .with_annotations(ro.clone()),
        Tool::new("fails", "Always an error result.", open()).with_annotations(ro.clone()),
        Tool::new("broken", "Always a JSON-RPC internal error.", open())
            .with_annotations(ro.clone()),
        Tool::new("liar", "Declares {n: integer}, returns a string.", open())
            .with_raw_output_schema(schema(json!({
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "required": ["n"]
            })))
            .with_annotations(ro),
        Tool::new("count", "Counts its calls (a side effect).", open()).with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .idempotent(false),
        ),
        Tool::new("wipe", "Destroys (no annotations: MCP's defaults).", open()),
    ]
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        if self.legacy_only {
            Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
        } else {
            Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
        }
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(v) = context.protocol_version() {
            self.versions.lock().unwrap().push(v.to_string());
        }
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let r = match request.name.as_ref() {
            "echo" => CallToolResult::structured(json!({"echo": args})),
            "slow" => {
                let ms = args["ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                CallToolResult::structured(json!({"slept": ms}))
            }
            "fails" => CallToolResult::error(vec![ContentBlock::text("the upstream said no")]),
            "broken" => return Err(ErrorData::internal_error("handler blew up", None)),
            "liar" => CallToolResult::structured(json!({"n": "not a number"})),
            "count" | "wipe" => {
                let n = self.counted.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(ms) = args["sleep_ms"].as_u64() {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                CallToolResult::structured(json!({"count": n}))
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("no tool `{other}`"),
                    None,
                ))
            }
        };
        Ok(r.into())
    }
}

/// The fixture served on 127.0.0.1 on its own runtime (so a test's own
/// runtime shutting down does not stop it): its base URL.
fn start(fixture: Fixture) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use rmcp::transport::streamable_http_server::{
                session::local::LocalSessionManager, StreamableHttpServerConfig,
                StreamableHttpService,
            };
            let svc = StreamableHttpService::new(
                move || Ok(fixture.clone()),
                Arc::new(LocalSessionManager::default()),
                StreamableHttpServerConfig::default(),
            );
            let app = axum::Router::new().route_service("/mcp", svc);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// A port that answers every request with HTTP 200 and a body that is
/// not JSON-RPC.
fn garbage() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 65536];
                let _ = conn.read(&mut buf);
                let body = "}{ this is not json-rpc \u{1b}[31m";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: \
                     {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

/// A port nothing listens on.
fn down() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn remote(name: &str, base: &str, tool: &str, extra: &str) -> String {
    format!(
        "[tools.{name}]\nmcp = {{ url = \"{base}/mcp\", tool = \"{tool}\" }}\nhttp = \
         [\"{base}\"]\ntimeout = \"500ms\"\n{extra}\n"
    )
}

async fn host(parts: &[String]) -> (tempfile::TempDir, Backstop) {
    let dir = tempdir();
    let text = format!(
        "{PRELUDE}\n[tools.flaky]\ncomponent = \"{{plugins}}/fault.wasm\"\n[tools.echo_rs]\n\
         component = \"{{plugins}}/echo_rs.wasm\"\n{}",
        parts.concat()
    );
    let b = load(dir.path(), &text).await;
    (dir, b)
}

#[tokio::test]
async fn a_chain_falls_back_between_components_and_remote_tools() {
    let server = start(Fixture::default());
    let gone = down();
    let (_dir, b) = host(&[
        remote("r_echo", &server, "echo", ""),
        remote("r_fails", &server, "fails", ""),
        remote("r_broken", &server, "broken", ""),
        remote("r_down", &gone, "echo", ""),
        remote("r_slow", &server, "slow", "retry = { attempts = 2 }"),
        "[chains.to_remote]\ntargets = [\"flaky\", \"r_echo\"]\n".into(),
        "[chains.refused]\ntargets = [\"r_fails\", \"echo_rs\"]\n".into(),
        "[chains.server_error]\ntargets = [\"r_broken\", \"echo_rs\"]\n".into(),
        "[chains.unreachable]\ntargets = [\"r_down\", \"echo_rs\"]\n".into(),
        "[chains.too_slow]\ntargets = [\"r_slow\", \"echo_rs\"]\n".into(),
    ])
    .await;

    // Component first, remote MCP tool as the fallback.
    let o = b
        .call(
            "to_remote",
            json!({"flaky": {"mode": "fail", "class": "unavailable"}, "say": "x"}),
        )
        .await
        .unwrap();
    assert!(o.ok, "{o:?}");
    assert_eq!(o.served_by.as_deref(), Some("r_echo"));
    assert!(o.degraded);
    assert_eq!(o.value.as_ref().unwrap()["echo"]["say"], "x");

    // And the other way round, one row of the classification table each.
    let cases = [
        ("refused", "permanent", 1),
        ("server_error", "trap", 3),
        ("unreachable", "unavailable", 1),
    ];
    for (chain, class, attempts) in cases {
        let o = b.call(chain, json!({"say": "y"})).await.unwrap();
        assert!(o.ok, "{chain}: {o:?}");
        assert_eq!(o.served_by.as_deref(), Some("echo_rs"), "{chain}");
        let remote: Vec<_> = o
            .attempts
            .iter()
            .filter(|a| a.target.as_ref() != "echo_rs")
            .collect();
        assert_eq!(remote.len(), attempts, "{chain}: {:?}", o.attempts);
        assert!(
            remote.iter().all(|a| a.class.to_string() == class),
            "{chain}: {:?}",
            o.attempts
        );
    }
    let o = b.call("refused", json!({})).await.unwrap();
    assert!(
        o.attempts[0].message.contains("the upstream said no"),
        "{:?}",
        o.attempts
    );

    // Slower than the tool's 500 ms: a timeout, retried (read-only), then
    // the fallback.
    let o = b
        .call("too_slow", json!({"ms": 2000, "say": "z"}))
        .await
        .unwrap();
    assert!(o.ok, "{o:?}");
    assert_eq!(o.served_by.as_deref(), Some("echo_rs"));
    let classes: Vec<String> = o.attempts.iter().map(|a| a.class.to_string()).collect();
    assert_eq!(classes, ["timeout", "timeout", "ok"]);
    // The same connection serves on after the timeouts.
    let o = b.call("r_slow", json!({"ms": 5})).await.unwrap();
    assert!(o.ok, "{o:?}");
}

/// A remote tool's effect is its annotations', made stricter by the TOML,
/// never looser; no annotations is MCP's default (destructive).
#[tokio::test]
async fn effects_come_from_annotations_and_toml_only_tightens() {
    let server = start(Fixture::default());
    let (_dir, b) = host(&[
        remote("as_said", &server, "count", ""),
        remote("stricter", &server, "count", "effect = \"irreversible\""),
        remote("looser", &server, "wipe", "effect = \"read-only\""),
        remote("reader", &server, "echo", ""),
    ])
    .await;
    assert_eq!(b.tool_effect("as_said"), Some(Effect::SideEffect));
    assert_eq!(b.tool_effect("stricter"), Some(Effect::Irreversible));
    assert_eq!(b.tool_effect("looser"), Some(Effect::Irreversible));
    assert_eq!(b.tool_effect("reader"), Some(Effect::ReadOnly));
    let d = b.tool_description("reader").unwrap();
    assert_eq!(d.description, "Echoes its arguments.");
}

/// A side-effecting remote that times out may have run: no retry, no
/// fallback, an ambiguous-state escalation, and the side effect once.
#[tokio::test]
async fn a_side_effect_that_times_out_is_not_repeated() {
    let fixture = Fixture::default();
    let counted = fixture.counted.clone();
    let server = start(fixture);
    let (_dir, b) = host(&[
        remote("r_count", &server, "count", ""),
        "[chains.pay]\ntargets = [\"r_count\", \"echo_rs\"]\n".into(),
    ])
    .await;
    let o = b.call("pay", json!({"sleep_ms": 1500})).await.unwrap();
    assert!(!o.ok, "{o:?}");
    let e = o.error.as_ref().unwrap();
    assert_eq!(e.escalate, Some(EscalationReason::AmbiguousState), "{o:?}");
    assert_eq!(o.attempts.len(), 1, "{:?}", o.attempts);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(counted.load(Ordering::SeqCst), 1);
}

/// A server that breaks its own output schema, and a port that answers
/// garbage: each a classified failure, and the host serves on.
#[tokio::test]
async fn lies_and_garbage_are_classified_and_the_host_serves_on() {
    let server = start(Fixture::default());
    let junk = garbage();
    let (_dir, b) = host(&[
        remote("r_liar", &server, "liar", ""),
        remote("r_junk", &junk, "echo", ""),
        remote("r_echo", &server, "echo", ""),
    ])
    .await;
    let o = b.call("r_liar", json!({})).await.unwrap();
    assert!(!o.ok);
    assert_eq!(
        o.attempts[0].class.to_string(),
        "malformed-output",
        "{:?}",
        o.attempts
    );
    assert!(
        o.attempts[0].message.contains("output schema"),
        "{:?}",
        o.attempts
    );
    let o = b.call("r_junk", json!({})).await.unwrap();
    assert!(!o.ok);
    let class = o.attempts[0].class.to_string();
    assert!(
        class == "unavailable" || class == "malformed-output",
        "{:?}",
        o.attempts
    );
    assert!(
        !o.attempts[0].message.contains('\u{1b}'),
        "the garbage's escape never reaches a message: {:?}",
        o.attempts
    );
    let o = b.call("r_echo", json!({"after": "junk"})).await.unwrap();
    assert!(o.ok, "{o:?}");
    // Input that breaks the remote tool's declared schema never leaves.
    let o = b
        .call("r_echo", json!(["not", "an", "object"]))
        .await
        .unwrap();
    assert_eq!(
        o.attempts[0].class.to_string(),
        "invalid-input",
        "{:?}",
        o.attempts
    );
}

/// Spoken to in the newest revision the server announces.
#[tokio::test]
async fn the_newest_revision_the_server_speaks() {
    let modern = Fixture::default();
    let seen_modern = modern.versions.clone();
    let old = Fixture {
        legacy_only: true,
        ..Fixture::default()
    };
    let seen_old = old.versions.clone();
    let (a, b) = (start(modern), start(old));
    let (_dir, host) = host(&[
        remote("r_new", &a, "echo", ""),
        remote("r_old", &b, "echo", ""),
    ])
    .await;
    assert!(host.call("r_new", json!({})).await.unwrap().ok);
    let o = host.call("r_old", json!({})).await.unwrap();
    assert!(o.ok, "{o:?}");
    assert_eq!(*seen_modern.lock().unwrap(), ["2026-07-28"]);
    assert_eq!(*seen_old.lock().unwrap(), ["2025-11-25"]);
}

/// Config mistakes name the key; a server without the tool is a load
/// error listing what it has; one that is down loads, and says so.
#[tokio::test]
async fn bad_remote_configs_are_clear() {
    let server = start(Fixture::default());
    let dir = tempdir();
    let cases = [
        (
            format!("[tools.r]\nmcp = {{ url = \"{server}/mcp\" }}\n"),
            "is not allowed: add \"http://127.0.0.1:",
        ),
        (
            format!(
                "[tools.r]\ncomponent = \"{{plugins}}/echo_rs.wasm\"\nmcp = {{ url = \
                 \"{server}/mcp\" }}\nhttp = [\"{server}\"]\n"
            ),
            "not both",
        ),
        (
            "[tools.r]\nmcp = { url = \"ftp://x/mcp\" }\n".to_owned(),
            "is not an http(s) URL",
        ),
        (
            format!(
                "{}dirs = []\nmemory = \"1MiB\"\n",
                remote("r", &server, "echo", "")
            ),
            "applies to components only",
        ),
    ];
    for (text, want) in cases {
        let path = crate::common::write_config(dir.path(), &format!("{PRELUDE}\n{text}"));
        let err = backstop::Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{text}\n=> {err}");
        assert!(err.contains("tools.r"), "{err}");
    }
    let path = crate::common::write_config(
        dir.path(),
        &format!("{PRELUDE}\n{}", remote("r", &server, "nope", "")),
    );
    let err = Backstop::load(&path).await.err().unwrap().to_string();
    assert!(
        err.contains("has no tool `nope`") && err.contains("echo, slow"),
        "{err}"
    );
}

/// Waits (at most 20 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(t.elapsed().as_secs() < 20, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An agent run whose step calls a remote MCP tool, its `backstop run`
/// SIGKILLed while the remote works: on resume, a side effect the remote
/// cannot reconcile is not repeated on its own but stops as
/// `ambiguous-state`; once a person approves, it runs exactly once more. A
/// read-only remote step cut off the same way is simply run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_killed_mid_remote_call_never_repeats_its_side_effect() {
    use backstop::journal::RunStatus;
    let fixture = Fixture::default();
    let (counted, versions) = (fixture.counted.clone(), fixture.versions.clone());
    let server = start(fixture);
    let tool = |name: &str, remote: &str| {
        format!(
            "[tools.{name}]\nmcp = {{ url = \"{server}/mcp\", tool = \"{remote}\" }}\nhttp = \
             [\"{server}\"]\ntimeout = \"30s\"\n"
        )
    };
    let agents = "[agents.pay]\nsteps = [{ name = \"p\", tool = \"r_count\", input = { sleep_ms \
                  = 3000 } }]\n[agents.look]\nsteps = [{ name = \"l\", tool = \"r_slow\", input \
                  = { ms = 3000 } }]\n";
    let (dir, b) = host(&[
        tool("r_count", "count"),
        tool("r_slow", "slow"),
        agents.into(),
    ])
    .await;
    let config = dir.path().join("backstop.toml");
    let store = b.store().unwrap();
    let killed_mid_call = |agent: &'static str, started: Box<dyn Fn() -> bool + Send>| {
        let config = config.clone();
        let store = store.clone();
        async move {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
                .arg("-c")
                .arg(&config)
                .args(["run", agent, "--task", "t"])
                .env("BACKSTOP_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            until("the remote call started", started).await;
            child.kill().unwrap();
            child.wait().unwrap();
            let runs = store.runs().await.unwrap();
            let run = runs.iter().find(|r| r.agent == agent).unwrap();
            assert_eq!(run.status, RunStatus::Running, "killed mid-run");
            run.id.clone()
        }
    };

    let c = counted.clone();
    let id = killed_mid_call("pay", Box::new(move || c.load(Ordering::SeqCst) == 1)).await;
    let (code, out, err) = crate::common::cli(Some(&config), &["resume", &id]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.contains("ambiguous-state"), "{out}{err}");
    assert_eq!(counted.load(Ordering::SeqCst), 1, "not repeated on resume");
    let filter = backstop::escalation::Filter {
        run: Some(id.clone()),
        ..Default::default()
    };
    let esc = store.escalations(&filter).await.unwrap().remove(0);
    assert_eq!(esc.reason, EscalationReason::AmbiguousState);
    let (code, out, err) = crate::common::cli(
        Some(&config),
        &["escalations", "resolve", &esc.id, "--approve", "--resume"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(counted.load(Ordering::SeqCst), 2, "approved: once more");
    assert_eq!(store.run(&id).await.unwrap().status, RunStatus::Finished);

    let v = versions.clone();
    let before = v.lock().unwrap().len();
    let id = killed_mid_call("look", Box::new(move || v.lock().unwrap().len() > before)).await;
    let (code, out, err) = crate::common::cli(Some(&config), &["resume", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("running it again with the same key"), "{out}");
    assert_eq!(counted.load(Ordering::SeqCst), 2);
}
