//! Backstop as an MCP server: every exposed chain and tool is an MCP tool,
//! and `tools/call` runs through the guards exactly as [`Backstop::call`].
//!
//! Both protocol revisions in use are served on the same transports,
//! decided per request by the official SDK (`rmcp`): 2026-07-28 (stateless:
//! `server/discover`, `_meta` on every request, input-required results)
//! and 2025-11-25 (the `initialize` handshake, sessions, elicitation).
//! [`serve_stdio`] is what a desktop client launches (`backstop mcp`);
//! [`http_service`] is the streamable HTTP transport `backstop serve`
//! mounts at `/mcp`.
//!
//! A classified failure is an error result (`isError`) that names its
//! class and what was tried, never a protocol error; an unknown tool is a
//! protocol error (`-32602`). The outcome's marks (`served_by`,
//! `degraded`, `degraded_reason`, the attempts, the key) ride in the
//! result's `_meta`.

mod catalog;
mod fast;
mod person;
mod result;
mod sessions;
mod stdio;

use crate::agent::Host;
use crate::outcome::{Attempt, Next};
use crate::Backstop;
use catalog::Catalog;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use std::sync::Arc;
use std::time::Duration;

pub use crate::journal::MCP_AGENT;
pub use fast::FastPath;

/// Longest a progress notification may take to send: a client that does
/// not read its notifications must not hold up its own call.
const PROGRESS_SEND: Duration = Duration::from_secs(1);

/// Largest JSON-RPC message read, over stdio or HTTP.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Longest idempotency key a client may name in `_meta`.
const MAX_KEY: usize = 128;

/// The MCP face of one [`Backstop`]: cheap to clone (the HTTP transport
/// makes one per request).
#[derive(Clone)]
pub struct McpServer {
    backstop: Arc<Backstop>,
    catalog: Arc<Catalog>,
    /// Held while a call a person decided checks and journals its intent,
    /// so two retries in this process cannot both start it.
    running: Arc<tokio::sync::Mutex<()>>,
    /// The one-step runs whose call is running in this process.
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl McpServer {
    /// Serves `backstop`'s exposed chains and tools (`[mcp] expose`, by
    /// default every chain and tool).
    pub fn new(backstop: Arc<Backstop>) -> McpServer {
        let catalog = Arc::new(Catalog::new(&backstop));
        McpServer {
            backstop,
            catalog,
            running: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    /// The MCP tools served, in the order `tools/list` gives them.
    pub fn tools(&self) -> impl Iterator<Item = &Tool> {
        self.catalog.tools()
    }
}

/// Why the stdio server stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    #[error("MCP over stdio could not start: {0}")]
    Start(String),
    #[error("MCP over stdio stopped: {0}")]
    Stopped(String),
}

/// Serves MCP on `read` and `write` (one JSON-RPC message per line) until
/// `read` ends: stdio without the process's own streams, for an embedding
/// app or a test.
pub async fn serve_lines<R, W>(
    backstop: Arc<Backstop>,
    read: R,
    write: W,
) -> Result<(), McpServeError>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let server = McpServer::new(backstop);
    let fast = Arc::new(FastPath::new(server.clone(), false));
    let running = server
        .serve(stdio::LineTransport::new(read, write, MAX_MESSAGE, fast))
        .await
        .map_err(|e| McpServeError::Start(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpServeError::Stopped(e.to_string()))?;
    Ok(())
}

/// Serves MCP on stdin and stdout until the client closes stdin. Nothing
/// else may write to stdout meanwhile (logs go to stderr).
pub async fn serve_stdio(backstop: Arc<Backstop>) -> Result<(), McpServeError> {
    // Pipes (how clients launch stdio servers) are driven by the IO
    // reactor: tokio's own stdin and stdout hop to a blocking thread on
    // every read and write.
    let (read, write) = rmcp::transport::io::stdio_pipes();
    serve_lines(backstop, read, write).await
}

/// The streamable HTTP transport of `backstop`'s MCP server, both
/// revisions on one endpoint: 2026-07-28 requests are served statelessly
/// (any host may answer any of them), 2025-11-25 clients get a session.
/// `loopback_only` keeps the SDK's check that the `Host` header names a
/// loopback address (against DNS rebinding of a local server); a server
/// on another address is behind a bearer token instead.
pub type HttpService = rmcp::transport::streamable_http_server::StreamableHttpService<
    McpServer,
    sessions::CappedSessions,
>;

/// See [`HttpService`]. `max_body` caps a request's JSON-RPC body. With it
/// comes the [`FastPath`] that answers a plain stateless `tools/call`
/// before the SDK would start a service for it; the two share one
/// [`McpServer`], so a call a person decided runs once whichever serves it.
pub fn http_service(
    backstop: Arc<Backstop>,
    loopback_only: bool,
    max_body: usize,
) -> (HttpService, FastPath) {
    use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
    let max_sessions = backstop.config().mcp.max_sessions;
    let server = McpServer::new(backstop);
    let fast = FastPath::new(server.clone(), loopback_only);
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(true)
        // A plain JSON answer when the call sent nothing before its
        // result (no progress): no SSE stream to set up and frame.
        .with_json_response(true)
        .with_max_request_body_bytes(max_body);
    if !loopback_only {
        config = config.disable_allowed_hosts();
    }
    let sessions = sessions::CappedSessions::new(max_sessions);
    let service = HttpService::new(move || Ok(server.clone()), Arc::new(sessions), config);
    (service, fast)
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("backstop", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "Each tool is a Backstop chain or tool: calls go through retries, breakers, \
             deadlines and fallbacks. A result's _meta says which target served it \
             (served_by) and whether a fallback did (degraded, degraded_reason)."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            self.catalog.tools().cloned().collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.catalog.get(name).map(|e| e.tool.clone())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.as_ref();
        let Some(entry) = self.catalog.get(name) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool `{}` (tools: {})",
                    crate::term::visible(&clip(name, 128)),
                    self.catalog.names().join(", ")
                ),
                None,
            ));
        };
        let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
        let input = match entry.input(args) {
            Ok(input) => input,
            Err(message) => return Ok(result::invalid_input(message).into()),
        };
        let named = person::named(&request, &context);
        if named.is_some() || Host::needs_approval(&*self.backstop, &entry.chain) {
            // Boxed, here and below: rmcp spawns each request's future, so
            // its size is copied on every call; the rare paths must not
            // make the common one large.
            return Box::pin(self.with_person(&entry.chain, input, named, &request, &context))
                .await;
        }
        let key = client_key(&context).unwrap_or_else(Backstop::new_key);
        let outcome = Box::pin(self.call_reporting(&entry.chain, input, key, &context)).await?;
        if let Some(reason) = person::stops_for_person(&outcome) {
            // The input again (checked once already), not a copy kept on
            // every call's way.
            let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
            if let Ok(input) = entry.input(args) {
                return Box::pin(self.stopped(&outcome, reason, input, &request, &context)).await;
            }
        }
        Ok(result::from_outcome(&outcome).into())
    }
}

impl McpServer {
    /// Runs the call, sending a progress notification for each attempt
    /// that did not end it (a retry, a fallback) when the client asked for
    /// progress, and stopping it when the client cancels: the call's
    /// future, and with it the guest's store, is dropped.
    async fn call_reporting(
        &self,
        chain: &str,
        input: serde_json::Value,
        key: Arc<str>,
        context: &RequestContext<RoleServer>,
    ) -> Result<crate::Outcome, McpError> {
        let token = context.meta.get_progress_token();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let report = move |a: &Attempt| {
            if a.then != Next::Done {
                let _ = tx.send(describe(a));
            }
        };
        let call = self.backstop.call_with_progress(chain, input, key, &report);
        tokio::pin!(call);
        let mut sent = 0u32;
        let notify = |message: String, sent: u32| {
            let token = token.clone();
            async move {
                let Some(token) = token else { return };
                let note =
                    ProgressNotificationParam::new(token, f64::from(sent)).with_message(message);
                let _ =
                    tokio::time::timeout(PROGRESS_SEND, context.peer.notify_progress(note)).await;
            }
        };
        let outcome = loop {
            tokio::select! {
                outcome = &mut call => break outcome,
                Some(message) = rx.recv() => {
                    sent += 1;
                    notify(message, sent).await;
                }
                () = context.ct.cancelled() => {
                    return Err(McpError::internal_error("the client cancelled the call", None));
                }
            }
        };
        // Attempts that ended in the call's last poll (a fallback that
        // answered at once) are told before the result.
        while let Ok(message) = rx.try_recv() {
            sent += 1;
            notify(message, sent).await;
        }
        outcome.map_err(|e| McpError::internal_error(e.to_string(), None))
    }
}

/// An idempotency key the client chose (`_meta.idempotencyKey`), so a
/// client retrying a call keeps its key: printable ASCII, at most 128.
fn client_key(context: &RequestContext<RoleServer>) -> Option<Arc<str>> {
    let key = context.meta.get("idempotencyKey")?.as_str()?;
    let fine = !key.is_empty() && key.len() <= MAX_KEY && key.bytes().all(|b| b.is_ascii_graphic());
    fine.then(|| key.into())
}

/// One attempt, as a progress message: `echo_rs #1: timeout (...) -> retry
/// in 120 ms`.
fn describe(a: &Attempt) -> String {
    let mut s = format!("{} #{}: {}", a.target, a.attempt, a.class);
    if !a.message.is_empty() {
        s.push_str(&format!(" ({})", clip(&a.message, 300)));
    }
    match a.then {
        Next::Retry => s.push_str(&format!(" -> retry in {} ms", a.delay_ms)),
        Next::FailOver => s.push_str(" -> fall back"),
        Next::Stop => s.push_str(" -> stop"),
        Next::Done => {}
    }
    s
}

/// `s` cut to `limit` bytes at a character boundary, marked when cut.
fn clip(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
