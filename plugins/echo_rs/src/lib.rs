//! The minimal Rust tool, and the template in plugins/README.md: it echoes
//! its input with the call context, or returns the error it is asked for,
//! so the tests can check that every `tool-error` case and the context
//! cross the boundary intact from Rust.

use serde_json::{json, Value};

wit_bindgen::generate!({ world: "tool", path: "../../wit" });

use backstop::tool::host::{context, log, Level};
use backstop::tool::types::{Effect, RateLimit};

struct Echo;

fn invalid(message: &str) -> ToolError {
    ToolError::InvalidInput(message.into())
}

impl Guest for Echo {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "echo-rs".into(),
            description: "Echoes `say` with the call context, or fails with the tool-error case \
                          named by `fail` (before attempt `until_attempt`, when given)."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "say": {"type": "string"},
                    "fail": {"type": "string"},
                    "message": {"type": "string"},
                    "retry_after_ms": {"type": "integer", "minimum": 0},
                    "until_attempt": {"type": "integer", "minimum": 1},
                    "raise": {"type": "string"},
                }
            })
            .to_string(),
            output_schema: None,
            effect: Effect::ReadOnly,
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let args: Value =
            serde_json::from_str(&input).map_err(|e| invalid(&format!("input is not JSON: {e}")))?;
        let args = args
            .as_object()
            .ok_or_else(|| invalid("input is not a JSON object"))?;
        // `raise` panics: how a Rust tool's bug looks to the host.
        if let Some(m) = args.get("raise").and_then(Value::as_str) {
            panic!("{m}");
        }
        let ctx = context();
        // With `until_attempt`, fail only on earlier attempts: the success
        // then shows which attempt the host says this is.
        let until = args.get("until_attempt").and_then(Value::as_u64);
        if let Some(kind) = args.get("fail").and_then(Value::as_str) {
            if until.is_none_or(|n| u64::from(ctx.attempt) < n) {
                let message = args
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("failed as asked")
                    .to_string();
                return Err(match kind {
                    "invalid-input" => ToolError::InvalidInput(message),
                    "transient" => ToolError::Transient(message),
                    "rate-limited" => ToolError::RateLimited(RateLimit {
                        message,
                        retry_after_ms: args.get("retry_after_ms").and_then(Value::as_u64),
                    }),
                    "unavailable" => ToolError::Unavailable(message),
                    "permanent" => ToolError::Permanent(message),
                    "needs-human" => ToolError::NeedsHuman(message),
                    _ => invalid("`fail` names no tool-error case"),
                });
            }
        }
        log(Level::Info, "echo called", &[]);
        let value = json!({
            "said": args.get("say"),
            "key": ctx.idempotency_key,
            "attempt": ctx.attempt,
            "deadline_ms": ctx.deadline_ms,
            "tool": ctx.tool_name,
            "language": "rust",
        });
        Ok(Output {
            value: value.to_string(),
            confidence: Some(1.0),
        })
    }
}

export!(Echo);
