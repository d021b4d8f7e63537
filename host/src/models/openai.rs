//! OpenAI-compatible chat completions (`POST {base_url}/chat/completions`),
//! plain and streamed: OpenAI itself, vLLM, llama.cpp, Ollama and others.

use super::{
    expect_event_stream, json_body, malformed, send, sse, Block, Budget, ChatRequest, ChatResponse,
    Content, Role, Usage,
};
use crate::config::ModelConfig;
use crate::outcome::{Failure, FailureClass};
use serde_json::{json, Value};

/// Maps the Anthropic-shaped request to chat-completion messages: tool
/// results become `tool` messages, tool uses become `tool_calls`.
fn messages(request: &ChatRequest) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(s) = &request.system {
        out.push(json!({"role": "system", "content": s}));
    }
    for m in &request.messages {
        let blocks = match &m.content {
            Content::Text(t) => {
                let role = if m.role == Role::User {
                    "user"
                } else {
                    "assistant"
                };
                out.push(json!({"role": role, "content": t}));
                continue;
            }
            Content::Blocks(b) => b,
        };
        let text: String = blocks
            .iter()
            .filter_map(|b| {
                if let Block::Text { text } = b {
                    Some(text.as_str())
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
            .join("");
        match m.role {
            Role::User => {
                for b in blocks {
                    if let Block::ToolResult {
                        tool_use_id,
                        content,
                        ..
                    } = b
                    {
                        out.push(json!({"role": "tool", "tool_call_id": tool_use_id,
                            "content": content}));
                    }
                }
                if !text.is_empty() {
                    out.push(json!({"role": "user", "content": text}));
                }
            }
            Role::Assistant => {
                let calls: Vec<Value> = blocks
                    .iter()
                    .filter_map(|b| match b {
                        Block::ToolUse { id, name, input } => Some(json!({
                            "id": id, "type": "function",
                            "function": {"name": name, "arguments": input.to_string()}
                        })),
                        _ => None,
                    })
                    .collect();
                let mut msg = json!({"role": "assistant",
                    "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = json!(calls);
                }
                out.push(msg);
            }
        }
    }
    out
}

fn body(config: &ModelConfig, request: &ChatRequest) -> Value {
    let mut body = json!({
        "model": config.model,
        "max_tokens": request.max_tokens.unwrap_or(config.max_tokens),
        "messages": messages(request),
    });
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {"name": t.name,
                "description": t.description, "parameters": t.input_schema}})
            })
            .collect();
        body["tools"] = json!(tools);
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if config.stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
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
    let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
    let mut req = client.post(url).json(&body(config, request));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let response = send(req, budget).await?;
    if config.stream {
        expect_event_stream(&response)?;
        return stream(response.bytes_stream(), budget.stream_limits()).await;
    }
    parse(&json_body(response, budget).await?)
}

fn stop_reason(finish: Option<&str>) -> Option<String> {
    finish.map(|f| match f {
        "stop" => "end_turn".to_owned(),
        "tool_calls" | "function_call" => "tool_use".to_owned(),
        "length" => "max_tokens".to_owned(),
        other => other.to_owned(),
    })
}

fn tool_input(name: &str, arguments: &str) -> Result<Value, Failure> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(arguments).map_err(|e| {
        malformed(crate::outcome::json_error(
            &format!("arguments of tool call `{name}`"),
            &e,
        ))
    })
}

/// Parses a chat-completion response body.
pub fn parse(v: &Value) -> Result<ChatResponse, Failure> {
    if let Some(e) = v.get("error") {
        return Err(super::classify::error_object(e, false));
    }
    let choice = v["choices"]
        .get(0)
        .ok_or_else(|| malformed("no `choices`"))?;
    // An answer with nothing in it is the server breaking the protocol,
    // not an empty success.
    let msg = match choice.get("message") {
        Some(m) if m.is_object() => m,
        _ => return Err(malformed("a choice without a `message`")),
    };
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str() {
        if !t.is_empty() {
            content.push(Block::Text { text: t.to_owned() });
        }
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let name = call["function"]["name"]
            .as_str()
            .ok_or_else(|| malformed("tool call without a name"))?;
        content.push(Block::ToolUse {
            id: call["id"].as_str().unwrap_or_default().to_owned(),
            name: name.to_owned(),
            input: tool_input(name, call["function"]["arguments"].as_str().unwrap_or(""))?,
        });
    }
    Ok(ChatResponse::new(
        v["model"].as_str().unwrap_or_default().to_owned(),
        content,
        stop_reason(choice["finish_reason"].as_str()),
        Usage {
            input_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        },
    ))
}

#[derive(Default)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// Assembles a streamed answer from the body's chunks.
pub(crate) async fn stream(
    body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>,
    limits: sse::Limits,
) -> Result<ChatResponse, Failure> {
    let mut model = String::new();
    let mut text = String::new();
    let mut calls: Vec<Call> = Vec::new();
    let mut finish = None;
    let mut usage = Usage::default();
    let mut done = false;
    let mut began = false;
    sse::read(body, limits, |ev| {
        if ev.data.trim() == "[DONE]" {
            done = true;
            return Ok(began);
        }
        let data: Value = serde_json::from_str(&ev.data).map_err(|e| {
            let f = malformed(format!("stream chunk is not JSON ({e})"));
            if began {
                Failure::new(
                    FailureClass::StreamBroken,
                    format!("{}; restarting on the next target", f.message),
                )
            } else {
                f
            }
        })?;
        if let Some(e) = data.get("error") {
            return Err(super::classify::error_object(e, began));
        }
        if let Some(m) = data["model"].as_str() {
            model = m.to_owned();
        }
        if let Some(u) = data.get("usage").filter(|u| u.is_object()) {
            usage.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
        }
        if let Some(choice) = data["choices"].get(0) {
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str() {
                text.push_str(t);
                began |= !t.is_empty();
            }
            for c in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = c["index"].as_u64().unwrap_or(calls.len() as u64) as usize;
                if i > 64 {
                    return Err(malformed("tool call index out of range"));
                }
                while calls.len() <= i {
                    calls.push(Call::default());
                }
                let call = &mut calls[i];
                if let Some(id) = c["id"].as_str() {
                    call.id = id.to_owned();
                }
                if let Some(n) = c["function"]["name"].as_str() {
                    call.name.push_str(n);
                }
                if let Some(a) = c["function"]["arguments"].as_str() {
                    call.arguments.push_str(a);
                }
                began = true;
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
        Ok(began)
    })
    .await?;
    if !done {
        let class = if began {
            FailureClass::StreamBroken
        } else {
            FailureClass::Transient
        };
        return Err(Failure::new(class, "stream ended before `[DONE]`"));
    }
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(Block::Text { text });
    }
    for c in calls {
        let input = tool_input(&c.name, &c.arguments)?;
        content.push(Block::ToolUse {
            id: c.id,
            name: c.name,
            input,
        });
    }
    Ok(ChatResponse::new(
        model,
        content,
        stop_reason(finish.as_deref()),
        usage,
    ))
}
