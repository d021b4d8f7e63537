//! The `[mcp]` section: which chains and tools an MCP client sees.

use super::parse::{closest, Loader};
use super::{schema, ChainConfig, ConfigError, McpConfig, ModelConfig, ToolConfig};
use std::collections::BTreeMap;

impl Loader<'_> {
    /// Checks that every exposed name is a chain, tool or model.
    pub(super) fn mcp(
        &self,
        file: &schema::File,
        tools: &BTreeMap<String, ToolConfig>,
        models: &BTreeMap<String, ModelConfig>,
        chains: &BTreeMap<String, ChainConfig>,
    ) -> Result<McpConfig, ConfigError> {
        let max_sessions = file
            .mcp
            .max_sessions
            .map_or(McpConfig::default().max_sessions, |n| n as usize);
        let Some(expose) = &file.mcp.expose else {
            return Ok(McpConfig {
                expose: None,
                max_sessions,
            });
        };
        let known = || {
            chains
                .keys()
                .chain(tools.keys())
                .chain(models.keys())
                .map(String::as_str)
        };
        let mut names: Vec<String> = Vec::new();
        for (i, name) in expose.get_ref().iter().enumerate() {
            let n = name.get_ref();
            if !known().any(|k| k == n) {
                let hint = match closest(n, known()) {
                    Some(k) => format!("; did you mean `{k}`?"),
                    None => format!(" (known: {})", known().collect::<Vec<_>>().join(", ")),
                };
                return Err(self.err(
                    name.span().start,
                    format!("mcp.expose[{i}]"),
                    format!("`{n}` is not a chain, tool or model{hint}"),
                ));
            }
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        Ok(McpConfig {
            expose: Some(names),
            max_sessions,
        })
    }
}
