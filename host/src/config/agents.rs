//! Agents, resolved: a model-driven tool loop or a pipeline of steps whose
//! inputs are templated from the task and earlier steps' outputs.

use super::parse::{closest, Loader};
use super::{schema, units, ChainConfig, ConfigError, ModelConfig, ToolConfig};
use serde_json::Value;
use std::collections::BTreeMap;

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
        ["steps", step, "text"] => Ok(Ref::Text {
            step: (*step).to_owned(),
        }),
        ["steps", step, "output", path @ ..] => Ok(Ref::Output {
            step: (*step).to_owned(),
            path: path.iter().map(|p| (*p).to_owned()).collect(),
        }),
        _ => Err(format!(
            "`{{{{{inner}}}}}` is not a reference: use {{{{task}}}}, {{{{steps.NAME.output}}}}, \
                {{{{steps.NAME.output.FIELD}}}} or {{{{steps.NAME.text}}}}"
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

/// The `[agents.NAME]` section, validated against the chains it calls.
impl Loader<'_> {
    pub(super) fn agent(
        &self,
        name: &str,
        spec: &schema::AgentSpec,
        tools: &BTreeMap<String, ToolConfig>,
        models: &BTreeMap<String, ModelConfig>,
        chains: &BTreeMap<String, ChainConfig>,
    ) -> Result<AgentConfig, ConfigError> {
        let key = format!("agents.{name}");
        let anchor = spec
            .model
            .as_ref()
            .map(|m| m.span().start)
            .or_else(|| spec.steps.first().map(|s| s.span().start))
            .unwrap_or(0);
        units::check_name(name).map_err(|m| self.err(anchor, &key, m))?;
        // Whether `target` names a tool chain (false) or a model chain (true).
        let kind_of = |target: &str| -> Option<bool> {
            if tools.contains_key(target) {
                Some(false)
            } else if models.contains_key(target) {
                Some(true)
            } else {
                chains
                    .get(target)
                    .map(|c| c.targets.first().is_some_and(|t| models.contains_key(t)))
            }
        };
        let known: Vec<&str> = tools
            .keys()
            .chain(models.keys())
            .chain(chains.keys())
            .map(String::as_str)
            .collect();
        let unknown = |what: &str, target: &str| {
            let mut m = format!("unknown {what} `{target}`");
            if let Some(s) = closest(target, known.iter().copied()) {
                m.push_str(&format!(" (did you mean `{s}`?)"));
            }
            m
        };
        match (&spec.model, spec.steps.is_empty()) {
            (Some(model), true) => {
                match kind_of(model.get_ref()) {
                    Some(true) => {}
                    Some(false) => {
                        return Err(self.err(
                            model.span().start,
                            format!("{key}.model"),
                            format!("`{}` is a tool chain, not a model chain", model.get_ref()),
                        ))
                    }
                    None => {
                        return Err(self.err(
                            model.span().start,
                            format!("{key}.model"),
                            unknown("model chain", model.get_ref()),
                        ))
                    }
                }
                let mut list = Vec::new();
                for (i, t) in spec.tools.iter().enumerate() {
                    match kind_of(t.get_ref()) {
                        Some(false) => list.push(t.get_ref().clone()),
                        Some(true) => {
                            return Err(self.err(
                                t.span().start,
                                format!("{key}.tools[{i}]"),
                                format!("`{}` is a model chain, not a tool chain", t.get_ref()),
                            ))
                        }
                        None => {
                            return Err(self.err(
                                t.span().start,
                                format!("{key}.tools[{i}]"),
                                unknown("tool chain", t.get_ref()),
                            ))
                        }
                    }
                }
                Ok(AgentConfig {
                    name: name.to_owned(),
                    kind: AgentKind::Loop {
                        model: model.get_ref().clone(),
                        tools: list,
                        max_steps: spec.max_steps.unwrap_or(20),
                        system: spec.system.clone(),
                    },
                })
            }
            (None, false) => {
                let mut steps: Vec<Step> = Vec::new();
                for (i, st) in spec.steps.iter().enumerate() {
                    let at = st.span().start;
                    let k = format!("{key}.steps[{i}]");
                    let s = st.get_ref();
                    units::check_name(&s.name).map_err(|m| self.err(at, format!("{k}.name"), m))?;
                    if steps.iter().any(|p| p.name == s.name) {
                        return Err(self.err(
                            at,
                            format!("{k}.name"),
                            format!(
                                "step name `{}` is \
                            used twice",
                                s.name
                            ),
                        ));
                    }
                    let action = match (&s.tool, &s.model) {
                        (Some(tool), None) => {
                            if kind_of(tool) != Some(false) {
                                return Err(self.err(
                                    at,
                                    format!("{k}.tool"),
                                    unknown(
                                        "tool \
                                    chain",
                                        tool,
                                    ),
                                ));
                            }
                            if s.prompt.is_some() || s.system.is_some() {
                                return Err(self.err(
                                    at,
                                    &k,
                                    "a tool step takes `input`, not \
                                    `prompt` or `system`",
                                ));
                            }
                            let input = s
                                .input
                                .clone()
                                .map(|v| serde_json::to_value(v).unwrap_or_default())
                                .unwrap_or(serde_json::json!({}));
                            StepAction::Tool {
                                chain: tool.clone(),
                                input,
                            }
                        }
                        (None, Some(model)) => {
                            if kind_of(model) != Some(true) {
                                return Err(self.err(
                                    at,
                                    format!("{k}.model"),
                                    unknown(
                                        "model \
                                    chain",
                                        model,
                                    ),
                                ));
                            }
                            let prompt = s.prompt.clone().ok_or_else(|| {
                                self.err(
                                    at,
                                    &k,
                                    "a model \
                                step needs a `prompt`",
                                )
                            })?;
                            if s.input.is_some() {
                                return Err(self.err(
                                    at,
                                    &k,
                                    "a model step takes `prompt`, not \
                                    `input`",
                                ));
                            }
                            StepAction::Model {
                                chain: model.clone(),
                                prompt,
                                system: s.system.clone(),
                            }
                        }
                        _ => {
                            return Err(self.err(
                                at,
                                &k,
                                "a step names exactly one of `tool` or \
                            `model`",
                            ))
                        }
                    };
                    let found = match &action {
                        StepAction::Tool { input, .. } => value_refs(input),
                        StepAction::Model { prompt, system, .. } => {
                            let mut r = refs(prompt);
                            if let (Ok(list), Some(sys)) = (&mut r, system) {
                                match refs(sys) {
                                    Ok(more) => list.extend(more),
                                    Err(e) => r = Err(e),
                                }
                            }
                            r
                        }
                    }
                    .map_err(|m| self.err(at, &k, m))?;
                    for r in found {
                        if let Some(step) = r.step() {
                            if !steps.iter().any(|p| p.name == step) {
                                return Err(self.err(
                                    at,
                                    &k,
                                    format!(
                                        "`{step}` is not an earlier \
                                    step of this pipeline"
                                    ),
                                ));
                            }
                        }
                    }
                    steps.push(Step {
                        name: s.name.clone(),
                        action,
                    });
                }
                Ok(AgentConfig {
                    name: name.to_owned(),
                    kind: AgentKind::Pipeline(steps.into()),
                })
            }
            (Some(model), false) => Err(self.err(
                model.span().start,
                &key,
                "an agent is either a \
                tool loop (`model`, `tools`) or a pipeline (`steps`), not both",
            )),
            (None, true) => Err(self.err(
                anchor,
                &key,
                "an agent needs `model` (a tool loop) or \
                `steps` (a pipeline)",
            )),
        }
    }
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
        let t = json!({
            "q": "about {{task}}",
            "whole": "{{steps.a.output}}",
            "n": "{{steps.a.output.n}}",
            "list": ["{{steps.b.text}}!"],
        });
        assert_eq!(
            render(&t, &mut lookup).unwrap(),
            json!({"q": "about wasm", "whole": {"n": 1}, "n": 1, "list": ["text!"]})
        );
    }
}
