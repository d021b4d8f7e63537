//! `cache`: the last-resort fallback. Answers from a JSON file of saved
//! answers (`/cache/answers.json`: `{"topic": "answer", ...}`) granted
//! read-only; the answer may be stale, so its confidence is modest.

use serde_json::{json, Map, Value};

wit_bindgen::generate!({ world: "tool", path: "../../wit" });

use backstop::tool::types::Effect;

const FILE: &str = "/cache/answers.json";

struct Cache;

impl Guest for Cache {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "cache".into(),
            description: "Saved answers for common queries; may be stale.".into(),
            input_schema: r#"{"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}"#.into(),
            output_schema: Some(r#"{"type":"object","properties":{"results":{"type":"array"},"stale":{"type":"boolean"}},"required":["results"]}"#.into()),
            effect: Effect::ReadOnly,
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::InvalidInput(format!("input is not JSON: {e}")))?;
        let query = input["query"]
            .as_str()
            .ok_or_else(|| ToolError::InvalidInput("`query` (string) is required".into()))?
            .to_lowercase();
        let text = std::fs::read_to_string(FILE).map_err(|e| {
            ToolError::Unavailable(format!("cache file {FILE} is not readable: {e}"))
        })?;
        let answers: Map<String, Value> = serde_json::from_str(&text).map_err(|e| {
            ToolError::Permanent(format!("cache file {FILE} is not a JSON object: {e}"))
        })?;
        let hit = answers.iter().find(|(topic, _)| {
            query.contains(&topic.to_lowercase()) || topic.to_lowercase().contains(&query)
        });
        match hit {
            Some((topic, answer)) => Ok(Output {
                value: json!({ "results": [{ "file": "cache", "snippet": answer, "topic": topic }], "stale": true })
                    .to_string(),
                confidence: Some(0.5),
            }),
            None => Err(ToolError::Permanent(format!("no saved answer for `{query}`"))),
        }
    }
}

export!(Cache);
