//! The operator's TOML file: parsed, validated and resolved into typed
//! settings. Every error names `FILE:LINE:COL`, the key, and what to do.
//!
//! [`Config::from_file`] reads a file; [`Config::from_str`] parses text
//! (tests need no disk, except for component paths, which must exist).

pub mod agents;
mod chains;
mod mcp;
mod models;
mod parse;
mod resolve;
mod schema;
mod tools;
pub mod units;
pub use schema::{CircuitOpenPolicy, Provider};

use crate::guard::{BreakerPolicy, BulkheadPolicy, RetryPolicy};
use crate::outcome::Effect;
pub use agents::{AgentConfig, AgentKind, Step, StepAction};
use parse::Loader;
use resolve::{merge_retry, resolve_retry};
use schema::RetrySpec;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use units::{ByteSize, Origin};

/// The config file read when none is named.
pub const DEFAULT_FILE: &str = "backstop.toml";

/// A place in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}: {key}: {message}")]
pub struct ConfigError {
    pub location: Location,
    /// The dotted key, such as `chains.search.targets[1]`.
    pub key: String,
    pub message: String,
}

/// A directory a tool may see.
#[derive(Clone, Debug, PartialEq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// One environment variable a tool may read.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvGrant {
    pub key: String,
    /// Set by the operator; `None` passes the host's value through (or
    /// nothing, when the host has none).
    pub value: Option<String>,
}

/// A tool served by another MCP server.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteMcp {
    pub url: String,
    /// Its name on the server.
    pub tool: String,
    pub token_env: Option<String>,
}

/// A tool, resolved: every limit known, every path absolute.
#[derive(Clone, Debug)]
pub struct ToolConfig {
    pub name: String,
    /// The component (empty for a remote MCP tool).
    pub component: PathBuf,
    /// Set for a tool another MCP server serves.
    pub mcp: Option<RemoteMcp>,
    /// Where `component` is written, for errors found when loading it.
    pub component_at: Location,
    /// The operator's stricter effect, if declared.
    pub effect: Option<Effect>,
    pub effect_at: Location,
    pub dirs: Vec<DirGrant>,
    pub env: Vec<EnvGrant>,
    pub http: Vec<Origin>,
    pub timeout: Duration,
    pub memory: ByteSize,
    pub max_output: ByteSize,
    pub breaker: BreakerPolicy,
    pub bulkhead: BulkheadPolicy,
    /// `Some` when the TOML says; otherwise irreversible tools need it.
    pub approval: Option<bool>,
    /// Whether a call's input is checked against the declared schema.
    pub validate_input: bool,
    retry: RetrySpec,
}

/// What goes to a person, and how they hear of it.
#[derive(Clone, Debug)]
pub struct EscalationConfig {
    pub confidence_threshold: Option<f64>,
    pub on_circuit_open: CircuitOpenPolicy,
    pub webhook: Option<String>,
}

/// How Backstop serves MCP.
#[derive(Clone, Debug)]
pub struct McpConfig {
    /// The chains and tools served as MCP tools; `None` serves every one.
    pub expose: Option<Vec<String>>,
    /// Sessions of 2025-11-25 clients kept at once over HTTP.
    pub max_sessions: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            expose: None,
            max_sessions: 1024,
        }
    }
}

/// A model, resolved.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub name: String,
    pub provider: Provider,
    pub model: String,
    pub api_key_env: Option<String>,
    pub base_url: String,
    pub timeout: Duration,
    /// A stream's longest quiet between events once output began.
    pub idle_timeout: Duration,
    pub max_response: ByteSize,
    pub max_tokens: u32,
    pub stream: bool,
    pub label: Option<String>,
    pub breaker: BreakerPolicy,
    pub bulkhead: BulkheadPolicy,
    retry: RetrySpec,
}

/// A chain, resolved: nested chains flattened into their tools or models.
#[derive(Clone, Debug)]
pub struct ChainConfig {
    pub name: String,
    pub targets: Vec<String>,
    /// The operator's description of the chain, if any.
    pub description: Option<String>,
    pub deadline: Duration,
    retry: RetrySpec,
}

/// Settings of the shared wasm engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub pooling: bool,
    pub tick: Duration,
    /// The host-wide bulkhead, shared by every target.
    pub bulkhead: BulkheadPolicy,
    /// Threads running guest code.
    pub guest_threads: usize,
    /// Caps on what guests and providers say: failure messages and tool
    /// descriptions are cut to these (marked), larger schemas refused.
    pub max_message: usize,
    pub max_description: usize,
    pub max_schema: usize,
    /// How often a target's shared breaker row is read, at most.
    pub breaker_sync: Duration,
}

/// The host-wide bulkhead when the config sets none: below the pooling
/// allocator's 1,000 instance slots, so the pool is not what refuses.
pub const DEFAULT_HOST_BULKHEAD: BulkheadPolicy = BulkheadPolicy {
    max_concurrent: 512,
    max_queue: 4096,
};

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (or the name given to [`Config::from_str`]).
    pub path: PathBuf,
    /// SHA-256 of the file's text: a resumed run refuses a changed config.
    pub digest: String,
    pub state: Option<String>,
    /// Where runs, escalations and breaker states are kept (`state`).
    pub store: crate::store::Location,
    /// This machine's run lock files (one writer per run).
    pub locks_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub seed: Option<u64>,
    pub engine: EngineConfig,
    pub tools: BTreeMap<String, ToolConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub chains: BTreeMap<String, ChainConfig>,
    pub agents: BTreeMap<String, AgentConfig>,
    pub escalation: EscalationConfig,
    /// The `[mcp]` section.
    pub mcp: McpConfig,
    default_retry: RetrySpec,
    default_deadline: Duration,
}

impl Config {
    /// Reads and validates `path`; relative paths inside it are resolved
    /// against the file's directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: Location {
                file: path.to_owned(),
                line: 0,
                col: 0,
            },
            key: "(file)".into(),
            message: format!("cannot read config file: {e}"),
        })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::from_str(&text, path, &base)
    }

    /// Parses `text` as if read from `name`, resolving relative paths
    /// against `base`.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(
        text: &str,
        name: impl AsRef<Path>,
        base: &Path,
    ) -> Result<Config, ConfigError> {
        Loader {
            text,
            file: name.as_ref().to_owned(),
            base: base.to_owned(),
        }
        .load()
    }

    /// The retry policy for `target` when called through `chain`: the
    /// target's own settings win over the chain's, which win over the
    /// defaults.
    pub fn retry_policy(&self, chain: &str, target: &str) -> RetryPolicy {
        let mut spec = self.default_retry.clone();
        if let Some(c) = self.chains.get(chain) {
            merge_retry(&mut spec, &c.retry);
        }
        if let Some(t) = self.tools.get(target) {
            merge_retry(&mut spec, &t.retry);
        }
        if let Some(m) = self.models.get(target) {
            merge_retry(&mut spec, &m.retry);
        }
        resolve_retry(&spec).expect("validated at load")
    }

    /// A chain by name; a tool's or model's name is a chain of that one
    /// target.
    pub fn chain(&self, name: &str) -> Option<ChainConfig> {
        if let Some(c) = self.chains.get(name) {
            return Some(c.clone());
        }
        (self.tools.contains_key(name) || self.models.contains_key(name)).then(|| ChainConfig {
            name: name.to_owned(),
            targets: vec![name.to_owned()],
            description: None,
            deadline: self.default_deadline,
            retry: RetrySpec::default(),
        })
    }

    /// Whether a chain's targets are models (chains never mix the two).
    pub fn is_model_chain(&self, chain: &ChainConfig) -> bool {
        chain
            .targets
            .first()
            .is_some_and(|t| self.models.contains_key(t))
    }

    /// Every target with a breaker (each tool and model), sorted.
    pub fn breaker_targets(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .tools
            .keys()
            .chain(self.models.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }

    /// Names that can be called: chains and tools.
    pub fn callable(&self) -> Vec<String> {
        self.chains
            .keys()
            .chain(self.tools.keys())
            .chain(self.models.keys())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests;
