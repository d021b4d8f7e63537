//! What MCP costs: a `tools/call` of `echo_rs` over stdio (the real
//! `backstop mcp` process, driven by rmcp's client) and over streamable
//! HTTP (`/mcp` of the serve router on 127.0.0.1), against
//! `Backstop::call` of the same component and `POST /v1/calls`, all in
//! the same run, one call at a time.

use crate::stats::{per_op, Spread};
use backstop::{Backstop, Config};
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use std::path::Path;
use std::sync::Arc;

/// The remote end of the remote-target rows: one read-only echo tool.
#[derive(Clone)]
struct EchoServer;

impl rmcp::ServerHandler for EchoServer {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _: Option<rmcp::model::PaginatedRequestParams>,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let schema = serde_json::json!({"type": "object"});
        let serde_json::Value::Object(schema) = schema else {
            unreachable!()
        };
        let tool = rmcp::model::Tool::new("echo", "Echoes.", Arc::new(schema))
            .with_annotations(rmcp::model::ToolAnnotations::new().read_only(true));
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![tool]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let args = serde_json::Value::Object(request.arguments.unwrap_or_default());
        Ok(rmcp::model::CallToolResult::structured(serde_json::json!({"echo": args})).into())
    }
}

pub struct Figures {
    /// A direct rmcp client call to a remote MCP server's tool.
    pub remote_direct: Spread,
    /// `Backstop::call` of that tool as a chain target.
    pub remote_target: Spread,
    pub direct: Spread,
    /// In this process, over an in-memory pipe, client and server on one
    /// thread: the protocol's own cost.
    pub lines: Spread,
    /// The same pipe driven by a client that writes a prepared line and
    /// reads the answer's line: the server's cost alone.
    pub raw_lines: Spread,
    /// `Backstop::call` on that thread.
    pub direct_one: Spread,
    /// A line written to `cat` and read back: the OS's pipe round trip.
    pub pipe: Spread,
    pub stdio: Spread,
    pub http: Spread,
    /// `/mcp` posted the prepared call by the same client as `/v1/calls`:
    /// the server's cost alone.
    pub raw_http: Spread,
    pub api: Spread,
    /// Instructions per call under callgrind: `Backstop::call` on one
    /// thread, and the prepared line through the MCP server on the pipe.
    pub counted: (Option<f64>, Option<f64>),
}

fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    }
}

pub fn measure(root: &Path, samples: usize, n: u64) -> Figures {
    backstop::models::install_tls_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = one_tool(root, dir.path());
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, &text).unwrap();
    // The remote MCP server, on this runtime.
    let remote_base = rt.block_on(async {
        use rmcp::transport::streamable_http_server::{
            session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
        };
        let svc = StreamableHttpService::new(
            || Ok(EchoServer),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default().with_json_response(true),
        );
        let app = axum::Router::new().route_service("/mcp", svc);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    });
    std::fs::write(
        &path,
        format!(
            "{text}[tools.remote]\nmcp = {{ url = \"{remote_base}/mcp\", tool = \"echo\" }}\n\
             http = [\"{remote_base}\"]\n"
        ),
    )
    .unwrap();
    let config = Config::from_file(&path).unwrap();
    let b = Arc::new(rt.block_on(Backstop::from_config(config)).unwrap());
    let listener = rt
        .block_on(backstop::serve::bind(([127, 0, 0, 1], 0).into(), None))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(backstop::serve::serve(b.clone(), listener, None, async {
        let _ = stopped.await;
    }));
    let input = serde_json::json!({"say": "hi"});
    let serde_json::Value::Object(args) = input.clone() else {
        unreachable!()
    };
    let request = CallToolRequestParams::new("echo").with_arguments(args);

    let stdio = rt.block_on(async {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
        cmd.arg("-c")
            .arg(&path)
            .arg("mcp")
            .env("BACKSTOP_LOG", "error");
        let (child, _) = TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ().serve_with_lifecycle(child, lifecycle()).await.unwrap()
    });
    // The protocol's own cost: client and server on one thread, so no
    // thread is woken between them (on these VMs a wake-up costs tens of
    // microseconds, more than the work it hands over).
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lines = one.block_on(async {
        let (client_end, server_end) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(server_end);
        tokio::spawn(backstop::mcp::serve_lines(b.clone(), read, write));
        ().serve_with_lifecycle(client_end, lifecycle())
            .await
            .unwrap()
    });
    let (mut raw_to, mut raw_from) = one.block_on(async {
        let (client_end, server_end) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(server_end);
        tokio::spawn(backstop::mcp::serve_lines(b.clone(), read, write));
        let (from, to) = tokio::io::split(client_end);
        (to, tokio::io::BufReader::new(from))
    });
    let http = rt.block_on(async {
        let t = StreamableHttpClientTransport::from_uri(format!("{base}/mcp"));
        ().serve_with_lifecycle(t, lifecycle()).await.unwrap()
    });
    let direct_remote = rt.block_on(async {
        let t = StreamableHttpClientTransport::from_uri(format!("{remote_base}/mcp"));
        ().serve_with_lifecycle(t, lifecycle()).await.unwrap()
    });
    let remote_request = CallToolRequestParams::new("echo").with_arguments(match input.clone() {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    });
    let remote_direct = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                let r = direct_remote
                    .call_tool(remote_request.clone())
                    .await
                    .unwrap();
                assert_eq!(r.is_error, Some(false));
            }
        })
    });
    let remote_target = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                assert!(b.call("remote", input.clone()).await.unwrap().ok);
            }
        })
    });
    let client = backstop::models::http_client();
    let url = format!("{base}/v1/calls");
    let body = serde_json::json!({"chain": "echo", "input": input}).to_string();

    let direct = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                assert!(b.call("echo", input.clone()).await.unwrap().ok);
            }
        })
    });
    let over = |c: &rmcp::service::RunningService<rmcp::RoleClient, ()>| {
        per_op(samples, n, || {
            rt.block_on(async {
                for _ in 0..n {
                    let r = c.call_tool(request.clone()).await.unwrap();
                    assert_eq!(r.is_error, Some(false));
                }
            })
        })
    };
    if std::env::var_os("BENCH_MCP_LIST").is_some() {
        for (name, c) in [("stdio", &stdio), ("http", &http)] {
            let t = per_op(samples, n, || {
                rt.block_on(async {
                    for _ in 0..n {
                        c.list_tools(None).await.unwrap();
                    }
                })
            });
            eprintln!("tools/list over {name}: {}", t.show());
        }
    }
    let direct_one = per_op(samples, n, || {
        one.block_on(async {
            for _ in 0..n {
                assert!(b.call("echo", input.clone()).await.unwrap().ok);
            }
        })
    });
    let lines_t = per_op(samples, n, || {
        one.block_on(async {
            for _ in 0..n {
                let r = lines.call_tool(request.clone()).await.unwrap();
                assert_eq!(r.is_error, Some(false));
            }
        })
    });
    let raw_lines = per_op(samples, n, || {
        one.block_on(async {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let mut line = String::new();
            for _ in 0..n {
                raw_to.write_all(RAW_CALL.as_bytes()).await.unwrap();
                line.clear();
                raw_from.read_line(&mut line).await.unwrap();
                assert!(line.contains("\"isError\":false"), "{line}");
            }
        })
    });
    let stdio_t = over(&stdio);
    let pipe = rt.block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut cat = tokio::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut to = cat.stdin.take().unwrap();
        let mut from = tokio::io::BufReader::new(cat.stdout.take().unwrap());
        let mut line = String::new();
        let mut times = Vec::new();
        for _ in 0..samples {
            let t = std::time::Instant::now();
            for _ in 0..n {
                to.write_all(b"{\"jsonrpc\":\"2.0\"}\n").await.unwrap();
                line.clear();
                from.read_line(&mut line).await.unwrap();
            }
            times.push(t.elapsed() / n as u32);
        }
        let _ = cat.kill().await;
        Spread::of(times)
    });
    let http_t = over(&http);
    let api = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                let res = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let o: serde_json::Value = res.json().await.unwrap();
                assert_eq!(o["ok"], true);
            }
        })
    });
    let mcp_url = format!("{base}/mcp");
    let raw_http = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                let res = client
                    .post(&mcp_url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", "echo")
                    .body(RAW_CALL.trim_end())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let text = res.text().await.unwrap();
                assert!(text.contains("\"isError\":false"), "{text}");
            }
        })
    });
    rt.block_on(async {
        let _ = stdio.cancel().await;
        let _ = direct_remote.cancel().await;

        let _ = http.cancel().await;
    });
    one.block_on(async {
        let _ = lines.cancel().await;
    });
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
    Figures {
        remote_direct,
        remote_target,
        direct,
        lines: lines_t,
        raw_lines,
        direct_one,
        pipe,
        stdio: stdio_t,
        http: http_t,
        raw_http,
        api,
        counted: (
            crate::stats::instructions("call-one", 200, 600),
            crate::stats::instructions("mcp-raw", 200, 600),
        ),
    }
}

/// Paths `BENCH_CALLGRIND` can name here.
pub const PATHS: [&str; 2] = ["mcp-raw", "call-one"];

/// A config of one tool, `echo` (`echo_rs`), its state in `dir`.
fn one_tool(root: &Path, dir: &Path) -> String {
    format!(
        "version = 1\ncache_dir = \"{}\"\nstate = \"sqlite:{}\"\n[tools.echo]\ncomponent = \
            \"{}\"\n",
        root.join("target/bench-cache").display(),
        dir.join("state.db").display(),
        root.join("plugins/dist/echo_rs.wasm").display()
    )
}

/// Runs one path `n` times on one thread, for callgrind or perf: `mcp-raw`
/// (a prepared `tools/call` line through Backstop's MCP server on an
/// in-memory pipe, the answer's line read back) or `call-one` (the same
/// call through `Backstop::call`).
pub fn spin(root: &Path, path: &str, n: u64) {
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = one_tool(root, dir.path());
    let path_toml = dir.path().join("bench.toml");
    std::fs::write(&path_toml, &text).unwrap();
    let config = Config::from_file(&path_toml).unwrap();
    let b = Arc::new(one.block_on(Backstop::from_config(config)).unwrap());
    let input = serde_json::json!({"say": "hi"});
    one.block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let (client_end, server_end) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(server_end);
        tokio::spawn(backstop::mcp::serve_lines(b.clone(), read, write));
        let (from, mut to) = tokio::io::split(client_end);
        let mut from = tokio::io::BufReader::new(from);
        let mut line = String::new();
        for _ in 0..n {
            if path == "mcp-raw" {
                to.write_all(RAW_CALL.as_bytes()).await.unwrap();
                line.clear();
                from.read_line(&mut line).await.unwrap();
                assert!(line.contains("\"isError\":false"), "{line}");
            } else {
                assert!(b.call("echo", input.clone()).await.unwrap().ok);
            }
        }
    });
}

/// What the official Python SDK sends for a call in 2026-07-28.
const RAW_CALL: &str =
    "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\
    \"echo\",\"arguments\":{\"say\":\"hi\"},\"_meta\":{\"io.modelcontextprotocol/\
    protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientInfo\":{\"name\":\
    \"bench\",\"version\":\"1\"},\"io.modelcontextprotocol/clientCapabilities\":{}}}}\n";
