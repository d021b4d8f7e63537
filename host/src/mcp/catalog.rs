//! The MCP tools a config serves: one per exposed chain, tool or model
//! chain, described once at start.

use crate::outcome::Effect;
use crate::Backstop;
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// What a call's arguments become.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A chain of tools: the arguments are the input.
    Tools,
    /// A chain of models: `{prompt, system}` becomes a chat request.
    Models,
}

pub(super) struct Entry {
    pub tool: Tool,
    /// The chain, tool or model the call goes to.
    pub chain: String,
    kind: Kind,
}

impl Entry {
    /// The call's input from the client's arguments, or why they cannot be
    /// one (a model chain's missing prompt). A tool's arguments are checked
    /// against its schema by the call itself.
    pub fn input(&self, args: Value) -> Result<Value, String> {
        match self.kind {
            Kind::Tools => Ok(args),
            Kind::Models => {
                let field = |k: &str| -> Result<Option<String>, String> {
                    match args.get(k) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(other) => Err(format!(
                            "input at /{k} does not match the tool's input schema: {other} is \
                             not of type \"string\""
                        )),
                    }
                };
                let Some(prompt) = field("prompt")? else {
                    return Err("input at /prompt is missing: a model chain needs a prompt".into());
                };
                let mut chat = crate::models::ChatRequest::prompt(prompt);
                chat.system = field("system")?;
                Ok(serde_json::to_value(chat).expect("a request serializes"))
            }
        }
    }
}

pub(super) struct Catalog {
    entries: Vec<Arc<Entry>>,
    by_name: HashMap<String, Arc<Entry>>,
}

impl Catalog {
    pub fn new(b: &Backstop) -> Catalog {
        let config = b.config();
        let names: Vec<String> = match &config.mcp.expose {
            Some(names) => names.clone(),
            None => config
                .chains
                .keys()
                .chain(config.tools.keys())
                .cloned()
                .collect(),
        };
        let entries: Vec<Arc<Entry>> = names
            .iter()
            .filter_map(|n| entry(b, n))
            .map(Arc::new)
            .collect();
        let by_name = entries
            .iter()
            .map(|e| (e.tool.name.to_string(), e.clone()))
            .collect();
        Catalog { entries, by_name }
    }

    pub fn tools(&self) -> impl Iterator<Item = &Tool> {
        self.entries.iter().map(|e| &e.tool)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.chain.as_str()).collect()
    }
}

fn object(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

/// An MCP tool's input schema must be an object schema: a tool whose
/// declared schema says nothing of its type is called with an object.
fn input_schema(declared: &Value) -> Arc<JsonObject> {
    match declared {
        Value::Object(m) if m.get("type").is_none_or(|t| t == "object") => {
            let mut m = m.clone();
            m.entry("type").or_insert_with(|| json!("object"));
            Arc::new(m)
        }
        _ => object(json!({"type": "object"})),
    }
}

fn entry(b: &Backstop, name: &str) -> Option<Entry> {
    let config = b.config();
    let chain = config.chain(name)?;
    if config.is_model_chain(&chain) {
        let description = chain.description.clone().unwrap_or_else(|| {
            format!(
                "Asks the model chain `{name}` (models: {}) with one prompt.",
                chain.targets.join(", ")
            )
        });
        let mut tool = Tool::new(
            name.to_owned(),
            description,
            object(json!({
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "the user's message"},
                    "system": {"type": "string", "description": "a system prompt"}
                },
                "required": ["prompt"],
                "additionalProperties": false
            })),
        );
        tool.annotations = Some(annotations(name, &[Effect::ReadOnly]));
        return Some(Entry {
            tool,
            chain: name.to_owned(),
            kind: Kind::Models,
        });
    }
    let described: Vec<_> = chain
        .targets
        .iter()
        .filter_map(|t| b.tool_description(t))
        .collect();
    // The first target speaks for the chain; a remote tool whose server
    // has not described it yet is served with an open schema (its call
    // checks the input once the server has).
    let first = chain.targets.first().and_then(|t| b.tool_description(t));
    let description = chain.description.clone().unwrap_or_else(|| {
        first.map_or_else(
            || format!("`{name}`: not described yet (its MCP server did not answer at start)"),
            |d| d.description.clone(),
        )
    });
    let open = json!({"type": "object"});
    let schema = first.map_or(&open, |d| &d.input_schema);
    let mut tool = Tool::new(name.to_owned(), description, input_schema(schema));
    // An output schema holds for the chain only if every target declares
    // the same one (a fallback answers in its own shape otherwise).
    if let Some(d) = first {
        let same_output = described.len() == chain.targets.len()
            && described.iter().all(|t| t.output_schema == d.output_schema);
        if let (true, Some(Value::Object(out))) = (same_output, &d.output_schema) {
            if out.get("type").is_some_and(|t| t == "object") {
                tool.output_schema = Some(Arc::new(out.clone()));
            }
        }
    }
    let effects: Vec<Effect> = chain
        .targets
        .iter()
        .map(|t| b.tool_effect(t).unwrap_or(Effect::Irreversible))
        .collect();
    tool.annotations = Some(annotations(name, &effects));
    Some(Entry {
        tool,
        chain: name.to_owned(),
        kind: Kind::Tools,
    })
}

/// MCP's hints from the effects of every target a call may reach: the
/// chain is as safe as its least safe target.
fn annotations(name: &str, effects: &[Effect]) -> ToolAnnotations {
    let worst = effects
        .iter()
        .copied()
        .max()
        .unwrap_or(Effect::Irreversible);
    let mut a = ToolAnnotations::default();
    a.title = Some(name.to_owned());
    a.read_only_hint = Some(worst == Effect::ReadOnly);
    a.idempotent_hint = Some(worst <= Effect::Idempotent);
    a.destructive_hint = Some(worst == Effect::Irreversible);
    a
}
