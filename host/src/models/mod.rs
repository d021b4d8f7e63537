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

use crate::config::ModelConfig;
use crate::outcome::{Effect, Failure, FailureClass};
use crate::runtime::{CallCtx, ToolOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
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

    /// One attempt: never retried here.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, Failure> {
        let key = self.key()?;
        let result = match self.config.provider {
            Provider::Anthropic => {
                anthropic::complete(&self.client, &self.config, key.as_deref(), request, timeout)
                    .await
            }
            Provider::Openai => {
                openai::complete(&self.client, &self.config, key.as_deref(), request, timeout).await
            }
        };
        // A provider may echo the key in an error body: never pass it on.
        result.map_err(|mut f| {
            if let Some(k) = key.as_deref().filter(|k| k.len() >= 4) {
                f.message = f.message.replace(k, "[redacted]").into();
            }
            f
        })
    }
}

/// Which wire protocol a model speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Anthropic,
    Openai,
}

/// The one HTTP client for model calls: no retries of its own, bounded
/// connect time, no proxy from the environment.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("a default reqwest client builds")
}

impl crate::guard::CallTarget for ModelTarget {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn effect(&self) -> Effect {
        Effect::ReadOnly
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn call<'a>(
        &'a self,
        input: &'a Value,
        ctx: &'a CallCtx,
    ) -> Pin<Box<dyn Future<Output = Result<ToolOutput, Failure>> + Send + 'a>> {
        Box::pin(async move {
            let request: ChatRequest = serde_json::from_value(input.clone()).map_err(|e| {
                Failure::new(
                    FailureClass::InvalidInput,
                    format!("input is not a chat request ({{\"messages\": [...]}}): {e}"),
                )
            })?;
            let response = self.complete(&request, ctx.timeout).await?;
            let value = serde_json::to_value(&response).expect("a response serializes");
            Ok(ToolOutput {
                value,
                confidence: None,
            })
        })
    }
}

/// Sends `request` and reads the answer, classifying every way it fails.
/// `on_event` handles each streamed event and says whether output began.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, Failure> {
    let response = tokio::time::timeout(timeout, request.send())
        .await
        .map_err(|_| {
            Failure::new(
                FailureClass::Timeout,
                format!(
                    "no response headers within {}",
                    humantime::format_duration(timeout)
                ),
            )
        })?
        .map_err(|e| classify::transport(&e, false))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = match tokio::time::timeout(timeout, response.text()).await {
        Ok(Ok(b)) => b,
        _ => String::new(),
    };
    Err(classify::http_failure(
        status,
        &headers,
        &body,
        std::time::SystemTime::now(),
    ))
}

/// Reads a whole (non-streamed) body as JSON.
pub(crate) async fn json_body(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
) -> Result<Value, Failure> {
    let text = tokio::time::timeout_at(deadline, response.text())
        .await
        .map_err(|_| {
            Failure::new(
                FailureClass::Timeout,
                "response body did not arrive in time",
            )
        })?
        .map_err(|e| classify::transport(&e, false))?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            FailureClass::MalformedOutput,
            format!(
                "200 response is not JSON ({e}): {}",
                text.chars().take(80).collect::<String>()
            ),
        )
    })
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
    use std::time::{Duration, SystemTime};

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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        match provider {
            Provider::Anthropic => anthropic::stream(body, deadline).await,
            Provider::Openai => openai::stream(body, deadline).await,
        }
    }

    /// An error status with its headers and body, classified.
    pub fn http_failure(status: u16, headers: &http::HeaderMap, body: &str) -> Failure {
        super::classify::http_failure(status, headers, body, SystemTime::now())
    }
}
