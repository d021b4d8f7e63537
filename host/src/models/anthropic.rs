//! The Anthropic Messages API (`POST {base_url}/v1/messages`), plain and
//! streamed.

use super::{
    expect_event_stream, json_body, malformed, send, sse, Block, Budget, ChatRequest, ChatResponse,
    Usage,
};
use crate::config::ModelConfig;
use crate::outcome::{Failure, FailureClass};
use serde_json::{json, Value};

const VERSION: &str = "2023-06-01";

fn body(config: &ModelConfig, request: &ChatRequest) -> Value {
    let mut body = json!({
        "model": config.model,
        "max_tokens": request.max_tokens.unwrap_or(config.max_tokens),
        "messages": request.messages,
    });
    if let Some(s) = &request.system {
        body["system"] = json!(s);
    }
    if !request.tools.is_empty() {
        body["tools"] = json!(request.tools);
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if config.stream {
        body["stream"] = json!(true);
    }
    body
}

pub async fn complete(
    client: &reqwest::Client,
    config: &ModelConfig,
    key: Option<&str>,
    request: &ChatRequest,
    budget: &Budget,
) -> Result<ChatResponse, Failure> {
    let url = format!("{}/v1/messages", config.base_url.trim_end_matches('/'));
    let mut req = client
        .post(url)
        .header("anthropic-version", VERSION)
        .json(&body(config, request));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let response = send(req, budget).await?;
    if config.stream {
        expect_event_stream(&response)?;
        return stream(response.bytes_stream(), budget.stream_limits()).await;
    }
    parse(&json_body(response, budget).await?)
}

fn usage(v: &Value) -> Usage {
    Usage {
        input_tokens: v["input_tokens"].as_u64().unwrap_or(0),
        output_tokens: v["output_tokens"].as_u64().unwrap_or(0),
    }
}

/// Parses a Messages API response body.
pub fn parse(v: &Value) -> Result<ChatResponse, Failure> {
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(super::classify::error_object(&v["error"], false));
    }
    let content: Vec<Block> = serde_json::from_value(
        v.get("content")
            .cloned()
            .ok_or_else(|| malformed("no `content`"))?,
    )
    .map_err(|e| malformed(format!("`content`: {e}")))?;
    Ok(ChatResponse::new(
        v["model"].as_str().unwrap_or_default().to_owned(),
        content,
        v["stop_reason"].as_str().map(str::to_owned),
        usage(&v["usage"]),
    ))
}

/// A block being streamed: text so far, or a tool call's JSON so far.
enum Partial {
    Text(String),
    Tool {
        id: String,
        name: String,
        json: String,
    },
}

/// Assembles a streamed answer from the body's chunks.
pub(crate) async fn stream(
    body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>,
    limits: sse::Limits,
) -> Result<ChatResponse, Failure> {
    let mut model = String::new();
    let mut blocks: Vec<Partial> = Vec::new();
    let mut stop_reason = None;
    let mut use_ = Usage::default();
    let mut finished = false;
    let mut began = false;
    sse::read(body, limits, |ev| {
        let data: Value = serde_json::from_str(&ev.data).map_err(|e| {
            let f = malformed(format!("stream event is not JSON ({e})"));
            if began {
                Failure::new(
                    FailureClass::StreamBroken,
                    format!("{}; restarting on the next target", f.message),
                )
            } else {
                f
            }
        })?;
        let kind = ev.event.as_deref().or(data["type"].as_str()).unwrap_or("");
        match kind {
            "message_start" => {
                model = data["message"]["model"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                use_.input_tokens = data["message"]["usage"]["input_tokens"]
                    .as_u64()
                    .unwrap_or(0);
            }
            "content_block_start" => {
                let b = &data["content_block"];
                blocks.push(match b["type"].as_str() {
                    Some("tool_use") => Partial::Tool {
                        id: b["id"].as_str().unwrap_or_default().into(),
                        name: b["name"].as_str().unwrap_or_default().into(),
                        json: String::new(),
                    },
                    _ => Partial::Text(b["text"].as_str().unwrap_or_default().into()),
                });
            }
            "content_block_delta" => {
                let d = &data["delta"];
                match blocks.last_mut() {
                    Some(Partial::Text(t)) => t.push_str(d["text"].as_str().unwrap_or_default()),
                    Some(Partial::Tool { json, .. }) => {
                        json.push_str(d["partial_json"].as_str().unwrap_or_default())
                    }
                    None => return Err(malformed("delta before any content block")),
                }
                began = true;
            }
            "message_delta" => {
                stop_reason = data["delta"]["stop_reason"].as_str().map(str::to_owned);
                use_.output_tokens = data["usage"]["output_tokens"]
                    .as_u64()
                    .unwrap_or(use_.output_tokens);
            }
            "message_stop" => finished = true,
            "error" => return Err(super::classify::error_object(&data["error"], began)),
            _ => {} // ping, content_block_stop
        }
        Ok(began)
    })
    .await?;
    if !finished {
        let class = if began {
            FailureClass::StreamBroken
        } else {
            FailureClass::Transient
        };
        return Err(Failure::new(class, "stream ended before `message_stop`"));
    }
    let mut content = Vec::new();
    for b in blocks {
        content.push(match b {
            Partial::Text(text) => Block::Text { text },
            Partial::Tool { id, name, json } => {
                let input = if json.is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&json)
                        .map_err(|e| malformed(format!("tool input JSON: {e}")))?
                };
                Block::ToolUse { id, name, input }
            }
        });
    }
    Ok(ChatResponse::new(model, content, stop_reason, use_))
}
