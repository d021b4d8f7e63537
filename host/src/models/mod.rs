//! Model providers as chain targets: the Anthropic Messages API and
//! OpenAI-compatible chat completions, over reqwest, plain or streamed.
//!
//! A model target takes a [`ChatRequest`] as its JSON input and returns a
//! [`ChatResponse`]; tool definitions and tool-use blocks are carried both
//! ways. Providers never retry: the guard is the one layer that does, so
//! the HTTP client has no retry policy of its own. API keys are read from
//! the environment variable the TOML names, at call time, and never appear
//! in logs, outcomes or errors.

mod anthropic;
pub mod classify;
mod openai;
mod sse;

use crate::config::{ModelConfig, Provider};
use crate::outcome::{Effect, Failure, FailureClass};
use crate::target::{CallCtx, CallFuture, CallTarget, TargetOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// A content block, in the Anthropic shape both providers are mapped to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// A message's content: plain text or blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

impl Content {
    pub fn blocks(&self) -> Vec<Block> {
        match self {
            Content::Text(t) => vec![Block::Text { text: t.clone() }],
            Content::Blocks(b) => b.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: Content,
}

/// A tool the model may ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
}

/// The input of a model target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

impl ChatRequest {
    /// A one-message request.
    pub fn prompt(text: impl Into<String>) -> ChatRequest {
        ChatRequest {
            system: None,
            messages: vec![Message {
                role: Role::User,
                content: Content::Text(text.into()),
            }],
            tools: Vec::new(),
            max_tokens: None,
            temperature: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The output of a model target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub model: String,
    pub content: Vec<Block>,
    /// `end_turn`, `tool_use`, `max_tokens` or the provider's own word.
    pub stop_reason: Option<String>,
    pub usage: Usage,
    /// The text blocks joined, for readers that want only text.
    pub text: String,
}

impl ChatResponse {
    fn new(
        model: String,
        content: Vec<Block>,
        stop_reason: Option<String>,
        usage: Usage,
    ) -> ChatResponse {
        let text = content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("");
        ChatResponse {
            model,
            content,
            stop_reason,
            usage,
            text,
        }
    }
}

/// A configured model, callable through chains.
pub struct ModelTarget {
    config: ModelConfig,
    client: reqwest::Client,
}

impl ModelTarget {
    pub fn new(config: ModelConfig, client: reqwest::Client) -> ModelTarget {
        ModelTarget { config, client }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn key(&self) -> Result<Option<String>, Failure> {
        let Some(var) = &self.config.api_key_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            // A value that cannot be a header (a trailing newline from
            // `echo`, a control character) fails every attempt the same
            // way: say so, once, and call nobody.
            Ok(k) if http::HeaderValue::from_str(&k).is_err() => Err(Failure::new(
                FailureClass::Permanent,
                format!(
                    "the API key in {var} cannot be sent in an HTTP header (it holds a newline or \
                        another control character); model `{}` was not called",
                    self.config.name
                ),
            )),
            Ok(k) if !k.trim().is_empty() => Ok(Some(k)),
            // Fail fast and never send the request: no key means no call.
            _ => Err(Failure::new(
                FailureClass::Permanent,
                format!(
                    "no API key: environment variable {var} is not set; model `{}` was not called",
                    self.config.name
                ),
            )),
        }
    }

    /// One attempt: never retried here. `timeout` bounds a plain answer,
    /// or a stream's first output; `call_left` a whole stream.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        timeout: Duration,
        call_left: Duration,
    ) -> Result<ChatResponse, Failure> {
        let key = self.key()?;
        let now = tokio::time::Instant::now();
        let budget = Budget {
            attempt_end: now + timeout,
            call_end: now + call_left.max(timeout),
            idle: self.config.idle_timeout,
            max_response: self.config.max_response.0 as usize,
        };
        let result = match self.config.provider {
            Provider::Anthropic => {
                anthropic::complete(&self.client, &self.config, key.as_deref(), request, &budget)
                    .await
            }
            Provider::Openai => {
                openai::complete(&self.client, &self.config, key.as_deref(), request, &budget).await
            }
        };
        // A provider may echo the key in an error body: never pass on the
        // key, or any part of it long enough to help guess it.
        result.map_err(|mut f| {
            if let Some(k) = key.as_deref() {
                if let std::borrow::Cow::Owned(m) = redact(&f.message, k) {
                    f.message = m.into();
                }
            }
            f
        })
    }
}

/// The shortest run of a key's characters that is redacted wherever it
/// appears (for keys at least twice as long; a shorter key is redacted
/// in runs of half its length, and a key under 8 bytes only whole).
const FRAGMENT: usize = 8;

/// `text` with `key`, and every fragment of it of 8 (`FRAGMENT`) bytes or
/// more, replaced by `[redacted]`. Messages are cut for size elsewhere, so
/// a key may arrive split or partly cut: its pieces are found too.
pub fn redact<'a>(text: &'a str, key: &str) -> std::borrow::Cow<'a, str> {
    let key = key.as_bytes();
    if key.is_empty() || text.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let n = if key.len() >= 2 * FRAGMENT {
        FRAGMENT
    } else {
        (key.len() / 2).max(FRAGMENT.min(key.len()))
    };
    let windows: std::collections::HashSet<&[u8]> = key.windows(n).collect();
    let bytes = text.as_bytes();
    let mut hidden = vec![false; bytes.len()];
    let mut any = false;
    for i in 0..bytes.len().saturating_sub(n - 1) {
        if windows.contains(&bytes[i..i + n]) {
            hidden[i..i + n].iter_mut().for_each(|h| *h = true);
            any = true;
        }
    }
    if !any {
        return std::borrow::Cow::Borrowed(text);
    }
    // A character any of whose bytes is hidden is hidden whole.
    let mut out = String::with_capacity(text.len());
    let mut in_run = false;
    for (i, c) in text.char_indices() {
        if hidden[i..i + c.len_utf8()].contains(&true) {
            if !in_run {
                out.push_str("[redacted]");
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The one HTTP client for model calls: no retries of its own, bounded
/// connect time, no proxy from the environment.
pub fn http_client() -> reqwest::Client {
    install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("a default reqwest client builds")
}

/// Makes ring the process's TLS crypto provider, unless one is already
/// set (an embedding app may have chosen its own): reqwest is built
/// without one, to keep aws-lc-rs's C build out.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl CallTarget for ModelTarget {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn effect(&self) -> Effect {
        Effect::ReadOnly
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn call<'a>(&'a self, input: &'a Value, ctx: &'a CallCtx) -> CallFuture<'a> {
        Box::pin(async move {
            let request: ChatRequest = serde_json::from_value(input.clone()).map_err(|e| {
                Failure::new(
                    FailureClass::InvalidInput,
                    format!("input is not a chat request ({{\"messages\": [...]}}): {e}"),
                )
            })?;
            let response = self.complete(&request, ctx.timeout, ctx.call_left).await?;
            let value = serde_json::to_value(&response).expect("a response serializes");
            Ok(TargetOutput {
                value,
                confidence: None,
            })
        })
    }
}

/// What one attempt may spend: plain answers (headers and body) and a
/// stream's first output by `attempt_end`, a stream's whole by `call_end`
/// with at most `idle` between events, and never more than `max_response`
/// bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub attempt_end: tokio::time::Instant,
    pub call_end: tokio::time::Instant,
    pub idle: Duration,
    pub max_response: usize,
}

impl Budget {
    pub fn stream_limits(&self) -> sse::Limits {
        sse::Limits {
            first: self.attempt_end,
            idle: self.idle,
            end: self.call_end,
            max_event: self.max_response.min(MAX_EVENT),
            max_total: self.max_response,
        }
    }
}

/// Largest single streamed event (a delta is a few hundred bytes).
const MAX_EVENT: usize = 4 << 20;
/// How much of an error body is read: enough for any provider's error
/// object, and a dripping or endless body costs no more.
const ERROR_PREFIX: usize = 16 << 10;

/// Sends `request` and reads the answer's headers; an error status is
/// classified from them and the first [`ERROR_PREFIX`] bytes of its body,
/// all within the attempt's time.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    budget: &Budget,
) -> Result<reqwest::Response, Failure> {
    let response = tokio::time::timeout_at(budget.attempt_end, request.send())
        .await
        .map_err(|_| Failure::new(FailureClass::Timeout, "no response headers in time"))?
        .map_err(|e| classify::transport(&e, false))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let headers = response.headers().clone();
    // Cut or late, what arrived is still worth classifying.
    let body = match read_limited(response, budget.attempt_end, ERROR_PREFIX).await {
        Ok(b) | Err(Limited::TooBig(b)) | Err(Limited::Late(b)) => b,
        Err(Limited::Failed(_)) => Vec::new(),
    };
    Err(classify::http_failure(
        status,
        &headers,
        &String::from_utf8_lossy(&body),
        std::time::SystemTime::now(),
    ))
}

enum Limited {
    /// The limit was reached: what was read up to it.
    TooBig(Vec<u8>),
    /// The deadline passed: what was read by then.
    Late(Vec<u8>),
    Failed(Failure),
}

/// Reads `response`'s body up to `limit` bytes and until `until`.
async fn read_limited(
    response: reqwest::Response,
    until: tokio::time::Instant,
    limit: usize,
) -> Result<Vec<u8>, Limited> {
    use futures_util::StreamExt;
    let mut body = std::pin::pin!(response.bytes_stream());
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(until, body.next()).await {
            Err(_) => return Err(Limited::Late(out)),
            Ok(None) => return Ok(out),
            Ok(Some(Err(e))) => return Err(Limited::Failed(classify::transport(&e, false))),
            Ok(Some(Ok(chunk))) => {
                let room = limit - out.len();
                if chunk.len() > room {
                    out.extend_from_slice(&chunk[..room]);
                    return Err(Limited::TooBig(out));
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// Reads a whole (non-streamed) body as JSON, within the attempt's time
/// and `max_response`; an answer that only arrives (or parses) after the
/// deadline is not served.
pub(crate) async fn json_body(
    response: reqwest::Response,
    budget: &Budget,
) -> Result<Value, Failure> {
    let bytes = match read_limited(response, budget.attempt_end, budget.max_response).await {
        Ok(b) => b,
        Err(Limited::Late(_)) => {
            return Err(Failure::new(
                FailureClass::Timeout,
                "response body did not arrive in time",
            ))
        }
        Err(Limited::TooBig(_)) => {
            return Err(Failure::new(
                FailureClass::MalformedOutput,
                format!(
                    "the answer exceeds max_response ({})",
                    crate::config::ByteSize(budget.max_response as u64)
                ),
            ))
        }
        Err(Limited::Failed(f)) => return Err(f),
    };
    let parsed = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::new(
            FailureClass::MalformedOutput,
            format!(
                "200 response is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
            ),
        )
    })?;
    past_deadline(budget)?;
    Ok(parsed)
}

/// A Timeout when the attempt's time is up (checked after work that is
/// bounded in size but not interruptible, such as parsing).
pub(crate) fn past_deadline(budget: &Budget) -> Result<(), Failure> {
    if tokio::time::Instant::now() >= budget.attempt_end {
        return Err(Failure::new(
            FailureClass::Timeout,
            "the answer was complete only after the attempt's deadline",
        ));
    }
    Ok(())
}

/// A streamed request must get a stream: a plain JSON or HTML 200 is the
/// server breaking the protocol, not a passing failure worth retrying.
pub(crate) fn expect_event_stream(response: &reqwest::Response) -> Result<(), Failure> {
    let ct = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("text/event-stream") {
        return Ok(());
    }
    Err(Failure::new(
        FailureClass::MalformedOutput,
        format!(
            "a streamed request was answered with `{}`, not an event stream",
            if ct.is_empty() { "no content type" } else { ct }
        ),
    ))
}

pub(crate) fn malformed(what: impl std::fmt::Display) -> Failure {
    Failure::new(
        FailureClass::MalformedOutput,
        format!("malformed response: {what}"),
    )
}

/// What the adapters do with a provider's bytes once HTTP has delivered
/// them, without the network: a whole body, a streamed body in chunks, an
/// error status. The fuzz targets (`fuzz/`) drive these; an app replaying
/// recorded exchanges can too.
pub mod decode {
    use super::{anthropic, openai, ChatResponse, Provider};
    use crate::outcome::Failure;
    use std::time::SystemTime;

    /// A whole (non-streamed) 2xx body.
    pub fn body(provider: Provider, body: &[u8]) -> Result<ChatResponse, Failure> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| super::malformed(format!("not JSON: {e}")))?;
        match provider {
            Provider::Anthropic => anthropic::parse(&v),
            Provider::Openai => openai::parse(&v),
        }
    }

    /// A streamed (SSE) 2xx body, arriving in `chunks` as split on the wire.
    pub async fn stream(provider: Provider, chunks: Vec<Vec<u8>>) -> Result<ChatResponse, Failure> {
        let body = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, reqwest::Error>(bytes::Bytes::from(c))),
        );
        let limits = super::sse::Limits::generous(usize::MAX);
        match provider {
            Provider::Anthropic => anthropic::stream(body, limits).await,
            Provider::Openai => openai::stream(body, limits).await,
        }
    }

    /// An error status with its headers and body, classified.
    pub fn http_failure(status: u16, headers: &http::HeaderMap, body: &str) -> Failure {
        super::classify::http_failure(status, headers, body, SystemTime::now())
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redact;

    #[test]
    fn the_key_and_its_fragments_are_redacted() {
        let key = "sk-live-0123456789abcdefghijklmnopqrstuvwxyz";
        assert_eq!(
            redact(&format!("bad key {key}!"), key),
            "bad key [redacted]!"
        );
        // Cut before it reached us: the part that arrived is hidden.
        let cut = &key[..30];
        assert_eq!(redact(&format!("key {cut}"), key), "key [redacted]");
        // Split by something in between.
        let split = format!("{}...{}", &key[..12], &key[20..]);
        assert_eq!(redact(&split, key), "[redacted]...[redacted]");
        // Short runs that happen to match are left: they say nothing.
        assert_eq!(redact("sk-l is fine", key), "sk-l is fine");
        assert!(matches!(
            redact("nothing here", key),
            std::borrow::Cow::Borrowed(_)
        ));
        // Multi-byte characters next to the key stay whole.
        assert_eq!(redact(&format!("é{key}ü"), key), "é[redacted]ü");
    }
}
