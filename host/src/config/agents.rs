//! Agents, resolved: a model-driven tool loop or a pipeline of steps whose
//! inputs are templated from the task and earlier steps' outputs.

use serde_json::Value;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub kind: AgentKind,
}

#[derive(Clone, Debug)]
pub enum AgentKind {
    /// The model asks for tools; the host runs each through its chain and
    /// feeds the marked result back, until the model answers or
    /// `max_steps` model calls were made.
    Loop {
        model: String,
        tools: Vec<String>,
        max_steps: u32,
        system: Option<String>,
    },
    /// Shared: a run clones its agent, and a pipeline may have thousands
    /// of steps (cloning them cost a 10,000-step resume most of its time).
    Pipeline(std::sync::Arc<[Step]>),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub action: StepAction,
}

#[derive(Clone, Debug)]
pub enum StepAction {
    Tool {
        chain: String,
        input: Value,
    },
    Model {
        chain: String,
        prompt: String,
        system: Option<String>,
    },
}

/// A `{{...}}` reference in a template.
#[derive(Clone, Debug, PartialEq)]
pub enum Ref {
    Task,
    /// `steps.NAME.output` and an optional field path below it.
    Output {
        step: String,
        path: Vec<String>,
    },
    /// `steps.NAME.text`: a model step's text.
    Text {
        step: String,
    },
}

impl Ref {
    pub fn step(&self) -> Option<&str> {
        match self {
            Ref::Task => None,
            Ref::Output { step, .. } | Ref::Text { step } => Some(step),
        }
    }
}

fn parse_ref(inner: &str) -> Result<Ref, String> {
    let parts: Vec<&str> = inner.trim().split('.').collect();
    match parts.as_slice() {
        ["task"] => Ok(Ref::Task),
        ["steps", step, "text"] => Ok(Ref::Text { step: (*step).to_owned() }),
        ["steps", step, "output", path @ ..] => {
            Ok(Ref::Output { step: (*step).to_owned(), path: path.iter().map(|p| (*p).to_owned()).collect() })
        }
        _ => Err(format!(
            "`{{{{{inner}}}}}` is not a reference: use {{{{task}}}}, {{{{steps.NAME.output}}}}, {{{{steps.NAME.output.FIELD}}}} or {{{{steps.NAME.text}}}}"
        )),
    }
}

/// The references in `text`, in order.
pub fn refs(text: &str) -> Result<Vec<Ref>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in `{text}`"))?;
        out.push(parse_ref(&after[..end])?);
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Every reference in a JSON template's strings.
pub fn value_refs(v: &Value) -> Result<Vec<Ref>, String> {
    let mut out = Vec::new();
    match v {
        Value::String(s) => out.extend(refs(s)?),
        Value::Array(a) => {
            for x in a {
                out.extend(value_refs(x)?);
            }
        }
        Value::Object(o) => {
            for x in o.values() {
                out.extend(value_refs(x)?);
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Fills a template string. A string that is exactly one reference takes
/// the referenced JSON value as it is; otherwise values are spliced in as
/// text (strings without quotes).
pub fn render_str(
    text: &str,
    lookup: &mut dyn FnMut(&Ref) -> Result<Value, String>,
) -> Result<Value, String> {
    let found = refs(text)?;
    let trimmed = text.trim();
    if found.len() == 1
        && trimmed.starts_with("{{")
        && trimmed.ends_with("}}")
        && trimmed.matches("{{").count() == 1
    {
        return lookup(&found[0]);
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("checked by refs");
        match lookup(&parse_ref(&after[..end])?)? {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

pub fn render(
    v: &Value,
    lookup: &mut dyn FnMut(&Ref) -> Result<Value, String>,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_str(s, lookup)?,
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render(x, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render(x, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_renders() {
        assert_eq!(
            refs("a {{ task }} b {{steps.x.output.q}}").unwrap().len(),
            2
        );
        assert!(refs("{{steps.x}}").is_err());
        assert!(refs("{{task").is_err());
        let mut lookup = |r: &Ref| -> Result<Value, String> {
            Ok(match r {
                Ref::Task => json!("wasm"),
                Ref::Output { path, .. } if path.is_empty() => json!({"n": 1}),
                Ref::Output { .. } => json!(1),
                Ref::Text { .. } => json!("text"),
            })
        };
        let t = json!({"q": "about {{task}}", "whole": "{{steps.a.output}}", "n": "{{steps.a.output.n}}", "list": ["{{steps.b.text}}!"]});
        assert_eq!(
            render(&t, &mut lookup).unwrap(),
            json!({"q": "about wasm", "whole": {"n": 1}, "n": 1, "list": ["text!"]})
        );
    }
}
