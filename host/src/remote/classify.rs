//! How a remote MCP tool's failures are classified (the README's table).
//!
//! | what happened | class |
//! | --- | --- |
//! | connection refused, DNS failure, TLS failure (nothing was sent) | `unavailable` |
//! | no answer within the attempt's timeout | `timeout` |
//! | the connection broke after the request went out | `timeout` (fate unknown) |
//! | HTTP 429 | `rate-limited` (with `Retry-After`) |
//! | HTTP 5xx | `unavailable` |
//! | HTTP 401, 403 (the token) | `permanent` |
//! | another HTTP status, a body that is not JSON-RPC, an expired session | `unavailable` |
//! | an answer over the size cap | `malformed-output` |
//! | JSON-RPC `-32602` (invalid params) | `invalid-input` |
//! | JSON-RPC `-32601`, `-32600`, `-32700`, an unknown tool | `permanent` |
//! | JSON-RPC `-32603` and other server errors | `trap` (the server failed while handling it) |
//! | `isError: true` from a Backstop server | its `_meta.error.class` |
//! | `isError: true` from another server | `permanent` (the tool's own refusal) |
//! | output that breaks the tool's output schema, or is too large | `malformed-output` |
//!
//! `timeout` and `trap` mean the call may have run: the guard repeats them
//! only for read-only and idempotent tools, and escalates `ambiguous-state`
//! for the others, as for a component.

use crate::outcome::{Failure, FailureClass};
use crate::target::TargetOutput;
use rmcp::model::{CallToolResult, ErrorCode, ErrorData};
use rmcp::service::{ClientInitializeError, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpError;
use serde_json::Value;

/// A message from (or about) another server: escaped and cut, as it may
/// be printed or stored.
fn clip(s: impl Into<String>) -> String {
    let s = crate::term::visible(&s.into()).into_owned();
    crate::outcome::clip(s.into(), 1024).into_owned()
}

fn jsonrpc(e: &ErrorData) -> Failure {
    let msg = clip(format!("JSON-RPC error {}: {}", e.code.0, e.message));
    let class = match e.code {
        ErrorCode::INVALID_PARAMS => FailureClass::InvalidInput,
        ErrorCode::METHOD_NOT_FOUND | ErrorCode::INVALID_REQUEST | ErrorCode::PARSE_ERROR => {
            FailureClass::Permanent
        }
        _ => FailureClass::Trap,
    };
    Failure::new(class, msg)
}

/// The HTTP transport's own error, found in an error's source chain.
fn transport_failure(e: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
            return Some(http(h));
        }
        if let Some(r) = s.downcast_ref::<reqwest::Error>() {
            return Some(reqwest_failure(r));
        }
        src = s.source();
    }
    None
}

fn reqwest_failure(r: &reqwest::Error) -> Failure {
    let mut cause = r.to_string();
    let mut src = std::error::Error::source(r);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if r.is_connect() {
        return Failure::new(
            FailureClass::Unavailable,
            clip(format!("cannot connect: {cause}")),
        );
    }
    if r.is_timeout() {
        return Failure::new(
            FailureClass::Timeout,
            clip(format!("no answer in time: {cause}")),
        );
    }
    Failure::new(
        FailureClass::Timeout,
        clip(format!(
            "the connection broke after the request went out ({cause}); whether it ran is unknown"
        )),
    )
}

fn http(e: &StreamableHttpError<reqwest::Error>) -> Failure {
    use StreamableHttpError as E;
    match e {
        E::Client(r) => reqwest_failure(r),
        E::HttpStatus(s) if s.status == 429 => {
            let wait = s
                .retry_after
                .as_deref()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            Failure::rate_limited("HTTP 429 from the MCP server", wait)
        }
        E::HttpStatus(s) => Failure::new(
            FailureClass::Unavailable,
            format!("HTTP {} from the MCP server", s.status),
        ),
        E::AuthRequired(_) | E::InsufficientScope(_) => Failure::new(
            FailureClass::Permanent,
            clip(format!("{e} (check the tool's token_env)")),
        ),
        E::ResponseBodyTooLarge { .. } => {
            Failure::new(FailureClass::MalformedOutput, clip(e.to_string()))
        }
        E::UnexpectedEndOfStream | E::Io(_) | E::Sse(_) | E::SessionRecoveryTimeout => {
            Failure::new(
                FailureClass::Timeout,
                clip(format!("{e}; whether the call ran is unknown")),
            )
        }
        _ => Failure::new(FailureClass::Unavailable, clip(e.to_string())),
    }
}

/// A failed `server/discover` or `initialize`: nothing was called yet.
pub fn startup(e: &ClientInitializeError) -> Failure {
    let f = match e {
        ClientInitializeError::JsonRpcError(d) => jsonrpc(d),
        other => transport_failure(other)
            .unwrap_or_else(|| Failure::new(FailureClass::Unavailable, clip(other.to_string()))),
    };
    // Before any tools/call went out, a broken connection ran nothing.
    match f.class {
        FailureClass::Timeout | FailureClass::Trap => Failure {
            class: FailureClass::Unavailable,
            ..f
        },
        _ => f,
    }
}

/// A `tools/call` (or `tools/list`) that got no result.
pub fn service(e: &ServiceError) -> Failure {
    match e {
        ServiceError::McpError(d) => jsonrpc(d),
        ServiceError::Timeout { .. } => Failure::new(FailureClass::Timeout, clip(e.to_string())),
        ServiceError::TransportClosed | ServiceError::Cancelled { .. } => Failure::new(
            FailureClass::Timeout,
            "the connection to the MCP server closed before it answered; whether the call ran \
             is unknown",
        ),
        ServiceError::UnexpectedResponse => Failure::new(
            FailureClass::MalformedOutput,
            "the MCP server answered with something other than a tool result",
        ),
        other => transport_failure(other)
            .unwrap_or_else(|| Failure::new(FailureClass::Unavailable, clip(other.to_string()))),
    }
}

/// A tool result: its value, or the classified failure it reports.
pub fn result(
    r: CallToolResult,
    output: Option<&jsonschema::Validator>,
    max_output: usize,
) -> Result<TargetOutput, Failure> {
    let text = || {
        r.content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if r.is_error == Some(true) {
        let theirs = r
            .meta
            .as_ref()
            .and_then(|m| m.0.get("error"))
            .and_then(|e| e.get("class"))
            .and_then(|c| serde_json::from_value::<FailureClass>(c.clone()).ok());
        return Err(Failure::new(
            theirs.unwrap_or(FailureClass::Permanent),
            clip(format!("the tool reported an error: {}", text())),
        ));
    }
    let malformed = |m: String| Failure::new(FailureClass::MalformedOutput, clip(m));
    let value = match r.structured_content {
        Some(v) => v,
        None => {
            let t = text();
            serde_json::from_str::<Value>(&t).unwrap_or(Value::String(t))
        }
    };
    let size = serde_json::to_string(&value).map_or(usize::MAX, |s| s.len());
    if size > max_output {
        return Err(malformed(format!(
            "output of {size} bytes exceeds max_output {max_output}"
        )));
    }
    if let Some(v) = output {
        if let Err(e) = v.validate(&value) {
            let at = e.instance_path().to_string();
            return Err(malformed(format!(
                "output{} does not match the tool's declared output schema: {e}",
                if at.is_empty() {
                    String::new()
                } else {
                    format!(" at {at}")
                }
            )));
        }
    }
    let confidence = r
        .meta
        .as_ref()
        .and_then(|m| m.0.get("confidence"))
        .and_then(Value::as_f64)
        .filter(|c| (0.0..=1.0).contains(c));
    Ok(TargetOutput { value, confidence })
}
