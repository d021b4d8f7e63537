//! The `[chains.NAME]` section: ordered targets, nested chains flattened.

use super::parse::{closest, Loader};
use super::resolve::DEFAULT_DEADLINE;
use super::{schema, ChainConfig, ConfigError, ModelConfig, ToolConfig};
use std::collections::{BTreeMap, BTreeSet};

impl Loader<'_> {
    /// Resolves chain targets to tools or models, following nested chains, and
    /// rejects unknown targets and cycles.
    pub(super) fn flatten(
        &self,
        file: &schema::File,
        tools: &BTreeMap<String, ToolConfig>,
        models: &BTreeMap<String, ModelConfig>,
    ) -> Result<BTreeMap<String, ChainConfig>, ConfigError> {
        let specs: BTreeMap<&str, &schema::ChainSpec> =
            file.chains.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let leaves: BTreeSet<&str> = tools
            .keys()
            .chain(models.keys())
            .map(String::as_str)
            .collect();
        let known: Vec<&str> = specs
            .keys()
            .copied()
            .chain(leaves.iter().copied())
            .collect();
        let mut out = BTreeMap::new();
        for (name, spec) in &specs {
            let mut targets = Vec::new();
            let mut stack = vec![name.to_string()];
            self.expand(
                name,
                spec,
                &specs,
                &leaves,
                &known,
                &mut stack,
                &mut targets,
            )?;
            let mut seen = BTreeSet::new();
            targets.retain(|t| seen.insert(t.clone()));
            let is_model = |t: &String| models.contains_key(t);
            if targets.iter().any(is_model) && !targets.iter().all(is_model) {
                return Err(self.err(
                    spec.targets.span().start,
                    format!("chains.{name}.targets"),
                    "a chain's targets must be all tools or all models: they take different inputs",
                ));
            }
            out.insert(
                name.to_string(),
                ChainConfig {
                    name: name.to_string(),
                    targets,
                    description: spec.description.clone(),
                    deadline: spec
                        .deadline
                        .or(file.defaults.deadline)
                        .map_or(DEFAULT_DEADLINE, |d| d.0),
                    retry: spec.retry.clone().unwrap_or_default(),
                },
            );
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn expand(
        &self,
        name: &str,
        spec: &schema::ChainSpec,
        specs: &BTreeMap<&str, &schema::ChainSpec>,
        leaves: &BTreeSet<&str>,
        known: &[&str],
        stack: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        for (i, t) in spec.targets.get_ref().iter().enumerate() {
            let target = t.get_ref().as_str();
            let key = format!("chains.{name}.targets[{i}]");
            if leaves.contains(target) {
                out.push(target.to_owned());
            } else if let Some(inner) = specs.get(target) {
                if stack.iter().any(|s| s == target) {
                    stack.push(target.to_owned());
                    return Err(self.err(
                        t.span().start,
                        key,
                        format!("chains form a cycle: {}", stack.join(" -> ")),
                    ));
                }
                stack.push(target.to_owned());
                self.expand(target, inner, specs, leaves, known, stack, out)?;
                stack.pop();
            } else {
                let mut msg =
                    format!("unknown target `{target}`: not a tool, model or chain in this file");
                if let Some(s) = closest(target, known.iter().copied()) {
                    msg.push_str(&format!(" (did you mean `{s}`?)"));
                }
                return Err(self.err(t.span().start, key, msg));
            }
        }
        Ok(())
    }
}
