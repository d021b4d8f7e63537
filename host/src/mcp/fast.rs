//! The common request answered without the SDK's per-request machinery: a
//! stateless (2026-07-28) `tools/call` with its answer in one message.
//!
//! Over HTTP the SDK serves each stateless request by starting a service
//! for it (a spawned loop, a spawned handler, channels between them and
//! the HTTP task); over stdio each request crosses its loop twice. On a
//! small machine those hops cost more than the call. Over HTTP the call
//! runs in the request's own task; over stdio on a task of its own (calls
//! overlap, and a client's `notifications/cancelled` stops it).
//! This path runs the same handler ([`McpServer`]'s `call_tool`) with the
//! request's `_meta` as its context and writes the SDK's own response
//! types. Anything it does not recognise exactly (a session, another
//! method or revision, progress, an input-required round, headers that
//! disagree with the body, a `Host` the SDK would refuse) goes to the SDK
//! untouched, so its checks and errors stay the only ones.

use super::McpServer;
use rmcp::model::{
    CallToolRequestParams, JsonRpcMessage, ProtocolVersion, RequestId, RequestMetaObject,
    ServerJsonRpcMessage, ServerResult,
};
use rmcp::service::{Peer, RequestContext, RoleServer, RunningService};
use rmcp::ServerHandler;
use serde_json::Value;

/// See the module's comment.
pub struct FastPath {
    server: McpServer,
    loopback_only: bool,
    /// A peer for the handler's context. This path never sends through it
    /// (no progress, no elicitation in 2026-07-28), so it is one idle
    /// service for the life of the server.
    idle: tokio::sync::OnceCell<(
        RunningService<RoleServer, McpServer>,
        tokio::io::DuplexStream,
    )>,
}

/// The header names this path reads.
const VERSION: &str = "mcp-protocol-version";
const METHOD: &str = "mcp-method";
const NAME: &str = "mcp-name";
const SESSION: &str = "mcp-session-id";

impl FastPath {
    pub fn new(server: McpServer, loopback_only: bool) -> Self {
        FastPath {
            server,
            loopback_only,
            idle: tokio::sync::OnceCell::new(),
        }
    }

    async fn peer(&self) -> Peer<RoleServer> {
        let (running, _) = self
            .idle
            .get_or_init(|| async {
                let (ours, theirs) = tokio::io::duplex(64);
                let running = rmcp::service::serve_directly(self.server.clone(), ours, None);
                (running, theirs)
            })
            .await;
        running.peer().clone()
    }

    /// The answer (status, JSON body), or `None` when the request is for
    /// the SDK.
    pub async fn answer(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Option<(u16, Vec<u8>)> {
        if !self.plain_headers(parts) {
            return None;
        }
        let name = parts.headers.get(NAME).and_then(|v| v.to_str().ok())?;
        let call = plain_call(body, Some(name))?;
        // As the SDK answers a stateless request: errors are HTTP 200 but
        // for the kinds this path never produces.
        Some((200, self.run(call).await))
    }

    /// Runs a recognised call through the handler: the JSON-RPC answer.
    pub(super) async fn run(&self, call: PlainCall) -> Vec<u8> {
        let PlainCall { id, params, meta } = call;
        let mut context = RequestContext::new(id.clone(), self.peer().await);
        context.meta = meta;
        let message: ServerJsonRpcMessage = match self.server.call_tool(params, context).await {
            Ok(response) => JsonRpcMessage::response(ServerResult::from(response), id),
            Err(error) => JsonRpcMessage::error(error, Some(id)),
        };
        serde_json::to_vec(&message).expect("a message serializes")
    }

    /// Whether an HTTP request's headers are those of a plain stateless
    /// call.
    fn plain_headers(&self, parts: &http::request::Parts) -> bool {
        let h = &parts.headers;
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        parts.method == http::Method::POST
            && h.get(SESSION).is_none()
            && header(VERSION) == Some(ProtocolVersion::V_2026_07_28.as_str())
            && header(METHOD) == Some("tools/call")
            && header(NAME).is_some()
            && !h.keys().any(|k| k.as_str().starts_with("mcp-param-"))
            && header("content-type").is_some_and(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            })
            && header("accept").is_some_and(|a| {
                let a = a.to_ascii_lowercase();
                a.contains("application/json") && a.contains("text/event-stream")
            })
            && (!self.loopback_only || header("host").is_some_and(loopback))
    }
}

/// A `tools/call` this path serves, read.
pub(super) struct PlainCall {
    pub id: RequestId,
    params: CallToolRequestParams,
    meta: RequestMetaObject,
}

/// `message` when it is exactly a plain stateless call: a JSON-RPC 2.0
/// `tools/call` request with a name (the one `header_name` gives, over
/// HTTP), arguments and the 2026-07-28 `_meta`, and nothing else (no
/// progress token, no input-required round).
pub(super) fn plain_call(message: &[u8], header_name: Option<&str>) -> Option<PlainCall> {
    let Value::Object(mut message) = serde_json::from_slice(message).ok()? else {
        return None;
    };
    let id = match message.get("id") {
        Some(id @ (Value::Number(_) | Value::String(_))) => id.clone(),
        _ => return None,
    };
    let shaped = message.len() == 4
        && message.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
        && message.get("method").and_then(Value::as_str) == Some("tools/call");
    let params = message.remove("params")?;
    let known = params.as_object().is_some_and(|p| {
        p.keys()
            .all(|k| matches!(k.as_str(), "name" | "arguments" | "_meta"))
            && p.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| header_name.is_none_or(|h| h == n))
    });
    if !(shaped && known) {
        return None;
    }
    let mut params: CallToolRequestParams = serde_json::from_value(params).ok()?;
    let meta: RequestMetaObject = params.meta.take().unwrap_or_default();
    let stateless = meta
        .missing_required_keys(&ProtocolVersion::V_2026_07_28)
        .is_empty()
        && meta.protocol_version() == Some(ProtocolVersion::V_2026_07_28)
        && meta.get_progress_token().is_none();
    if !stateless {
        return None;
    }
    Some(PlainCall {
        id: serde_json::from_value(id).ok()?,
        params,
        meta,
    })
}

/// Whether a `Host` header names this machine (the SDK's default list).
fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}
