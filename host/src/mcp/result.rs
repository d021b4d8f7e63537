//! An [`Outcome`] as an MCP tool result.

use crate::outcome::Outcome;
use rmcp::model::{CallToolResult, ContentBlock, MetaObject};
use serde_json::json;

fn meta(o: &Outcome) -> MetaObject {
    let mut m = serde_json::Map::new();
    m.insert("chain".into(), json!(o.chain));
    m.insert("key".into(), json!(o.key));
    m.insert("served_by".into(), json!(o.served_by));
    m.insert("degraded".into(), json!(o.degraded));
    m.insert("degraded_reason".into(), json!(o.degraded_reason));
    if let Some(c) = o.confidence {
        m.insert("confidence".into(), json!(c));
    }
    m.insert("attempts".into(), json!(o.attempts));
    m.insert("elapsed_ms".into(), json!(o.elapsed_ms));
    if let Some(e) = &o.error {
        m.insert("error".into(), json!(e));
    }
    MetaObject(m)
}

/// A served call: the value as structured content and as JSON text; a
/// fallback is said in words too (a model reading only the text must not
/// take a degraded answer for the first target's).
/// A failed call: an error result naming the class, the message and every
/// attempt.
pub(super) fn from_outcome(o: &Outcome) -> CallToolResult {
    let mut result = match (&o.value, &o.error) {
        (Some(v), None) if o.ok => {
            let text = serde_json::to_string(v).expect("a value serializes");
            let mut content = vec![ContentBlock::text(text)];
            if o.degraded {
                content.push(ContentBlock::text(format!(
                    "[backstop] served by {} (degraded: {})",
                    o.served_by.as_deref().unwrap_or("-"),
                    o.degraded_reason.as_deref().unwrap_or("fallback")
                )));
            }
            let mut r = CallToolResult::success(content);
            r.structured_content = Some(v.clone());
            r
        }
        _ => CallToolResult::error(vec![ContentBlock::text(failure_text(o))]),
    };
    result.meta = Some(meta(o));
    result
}

/// `FAILED: timeout: ...; tried: echo_rs #1 timeout -> retry, ...`.
fn failure_text(o: &Outcome) -> String {
    let mut s = match &o.error {
        Some(e) => format!("FAILED: {}: {}", e.class, e.message),
        None => "FAILED: no result".to_owned(),
    };
    if let Some(r) = o.error.as_ref().and_then(|e| e.escalate) {
        s.push_str(&format!(" [escalate: {r}]"));
    }
    if !o.attempts.is_empty() {
        let tried: Vec<String> = o
            .attempts
            .iter()
            .map(|a| format!("{} #{} {} -> {}", a.target, a.attempt, a.class, a.then))
            .collect();
        s.push_str("; tried: ");
        s.push_str(&tried.join(", "));
    }
    s
}

/// Arguments that cannot be the call's input: an error result, so the
/// model can correct itself.
pub(super) fn invalid_input(message: String) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
        "FAILED: invalid-input: {message}"
    ))]);
    let mut m = serde_json::Map::new();
    m.insert(
        "error".into(),
        json!({"class": "invalid-input", "message": message}),
    );
    r.meta = Some(MetaObject(m));
    r
}
