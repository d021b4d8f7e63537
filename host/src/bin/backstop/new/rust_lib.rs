//! __NAME__: a Backstop tool (made by `backstop new`). It returns the text
//! it is given and its length; replace `invoke` with the tool's own work.

use serde_json::{json, Value};

wit_bindgen::generate!({ world: "tool", path: "../../wit" });

use backstop::tool::host::{context, log, Level};
use backstop::tool::types::Effect;

struct Tool;

impl Guest for Tool {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "__NAME__".into(),
            description: "Returns `text` and its length in characters.".into(),
            // The host checks every call's input against this schema
            // before the tool runs: declare what `invoke` really accepts.
            input_schema: json!({
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"]
            })
            .to_string(),
            output_schema: None,
            effect: Effect::ReadOnly,
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let args: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::InvalidInput(format!("input is not JSON: {e}")))?;
        let Some(text) = args.get("text").and_then(Value::as_str) else {
            return Err(ToolError::InvalidInput("`text` (a string) is required".into()));
        };
        let ctx = context();
        log(Level::Info, "called", &[("attempt".into(), ctx.attempt.to_string())]);
        let value = json!({"text": text, "length": text.chars().count()});
        Ok(Output {
            value: value.to_string(),
            confidence: None,
        })
    }
}

export!(Tool);
