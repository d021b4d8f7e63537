//! The operator's TOML file: parsed, validated and resolved into typed
//! settings. Every error names `FILE:LINE:COL`, the key, and what to do.
//!
//! [`Config::from_file`] reads a file; [`Config::from_str`] parses text
//! (tests need no disk, except for component paths, which must exist).

pub mod agents;
mod schema;
pub mod units;
pub use schema::{CircuitOpenPolicy, Provider};

use crate::guard::{Backoff, BreakerPolicy, BulkheadPolicy, Jitter, RetryPolicy};
use crate::outcome::Effect;
pub use agents::{AgentConfig, AgentKind, Step, StepAction};
use schema::{BreakerSpec, DirMode, RetrySpec};
use serde_spanned::Spanned;
use std::collections::{BTreeMap, BTreeSet};
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

/// A tool, resolved: every limit known, every path absolute.
#[derive(Clone, Debug)]
pub struct ToolConfig {
    pub name: String,
    pub component: PathBuf,
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
    retry: RetrySpec,
}

/// What goes to a person, and how they hear of it.
#[derive(Clone, Debug)]
pub struct EscalationConfig {
    pub confidence_threshold: Option<f64>,
    pub on_circuit_open: CircuitOpenPolicy,
    pub webhook: Option<String>,
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
}

/// The host-wide bulkhead when the config sets none: below the pooling
/// allocator's 1,000 instance slots, so the pool is not what refuses.
pub const DEFAULT_HOST_BULKHEAD: BulkheadPolicy = BulkheadPolicy {
    max_concurrent: 512,
    max_queue: 4096,
};

fn bulkhead(
    concurrent: Option<u32>,
    queue: Option<u32>,
    defaults: &schema::Defaults,
) -> BulkheadPolicy {
    BulkheadPolicy {
        max_concurrent: concurrent
            .or(defaults.max_concurrent)
            .unwrap_or(BulkheadPolicy::DEFAULT_TARGET.max_concurrent),
        max_queue: queue
            .or(defaults.max_queue)
            .unwrap_or(BulkheadPolicy::DEFAULT_TARGET.max_queue),
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (or the name given to [`Config::from_str`]).
    pub path: PathBuf,
    /// SHA-256 of the file's text: a resumed run refuses a changed config.
    pub digest: String,
    pub state: Option<String>,
    /// The SQLite file runs are journaled in.
    pub state_path: PathBuf,
    pub cache_dir: PathBuf,
    pub seed: Option<u64>,
    pub engine: EngineConfig,
    pub tools: BTreeMap<String, ToolConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub chains: BTreeMap<String, ChainConfig>,
    pub agents: BTreeMap<String, AgentConfig>,
    pub escalation: EscalationConfig,
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

const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

fn merge_retry(into: &mut RetrySpec, over: &RetrySpec) {
    into.attempts = over.attempts.or(into.attempts);
    into.base = over.base.or(into.base);
    into.cap = over.cap.or(into.cap);
    into.jitter = over.jitter.or(into.jitter);
    into.max_retry_after = over.max_retry_after.or(into.max_retry_after);
}

/// Fills the brief's defaults: 5 attempts, full jitter from 1 s to 60 s,
/// Retry-After honoured up to 60 s.
fn resolve_retry(spec: &RetrySpec) -> Result<RetryPolicy, String> {
    let base = spec.base.map_or(Duration::from_secs(1), |d| d.0);
    let cap = spec.cap.map_or(Duration::from_secs(60), |d| d.0);
    Ok(RetryPolicy {
        attempts: spec.attempts.unwrap_or(5),
        backoff: Backoff::new(base, cap, spec.jitter.unwrap_or(Jitter::Full))?,
        max_retry_after: spec
            .max_retry_after
            .map_or(Duration::from_secs(60), |d| d.0),
    })
}

fn resolve_breaker(defaults: &BreakerSpec, over: Option<&BreakerSpec>) -> BreakerPolicy {
    let o = over.cloned().unwrap_or_default();
    let d = defaults;
    let dur = |a: Option<units::PositiveDur>, b: Option<units::PositiveDur>, v: u64| {
        a.or(b).map_or(Duration::from_secs(v), |d| d.0)
    };
    BreakerPolicy {
        consecutive_failures: o
            .consecutive_failures
            .or(d.consecutive_failures)
            .unwrap_or(5),
        failure_rate: o.failure_rate.or(d.failure_rate).unwrap_or(0.5),
        window: dur(o.window, d.window, 60),
        min_calls: o.min_calls.or(d.min_calls).unwrap_or(20),
        open_for: dur(o.open_for, d.open_for, 60),
        half_open_probes: o.half_open_probes.or(d.half_open_probes).unwrap_or(1),
        probe_timeout: dur(o.probe_timeout, d.probe_timeout, 30),
        close_after: o.close_after.or(d.close_after).unwrap_or(1),
    }
}

struct Loader<'a> {
    text: &'a str,
    file: PathBuf,
    base: PathBuf,
}

impl Loader<'_> {
    fn at(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: self.file.clone(),
            line,
            col,
        }
    }

    fn err(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            location: self.at(offset),
            key: key.into(),
            message: message.into(),
        }
    }

    fn parse(&self) -> Result<schema::File, ConfigError> {
        let de = toml::Deserializer::parse(self.text).map_err(|e| {
            self.err(
                e.span().map_or(0, |s| s.start),
                "(syntax)",
                e.message().trim(),
            )
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let message = with_suggestion(inner.message().trim());
            self.err(inner.span().map_or(0, |s| s.start), key, message)
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    fn load(self) -> Result<Config, ConfigError> {
        let file = self.parse()?;
        if let Some(v) = &file.version {
            if *v.get_ref() != 1 {
                return Err(self.err(
                    v.span().start,
                    "version",
                    format!(
                        "unsupported version {}; this Backstop reads version 1",
                        v.get_ref()
                    ),
                ));
            }
        }
        if let Some(state) = &file.state {
            if !state.get_ref().starts_with("sqlite:") || state.get_ref().len() <= "sqlite:".len() {
                return Err(self.err(
                    state.span().start,
                    "state",
                    "expected `sqlite:PATH`, such as \"sqlite:.backstop/state.db\"",
                ));
            }
        }
        let defaults = &file.defaults;
        let default_retry = defaults.retry.clone();
        resolve_retry(&default_retry).map_err(|m| self.err(0, "defaults.retry", m))?;

        let mut tools = BTreeMap::new();
        for (name, spec) in &file.tools {
            // Name errors point at the table's first required key.
            let name = Spanned::new(spec.component.span(), name.clone());
            tools.insert(name.get_ref().clone(), self.tool(&name, spec, defaults)?);
        }

        let mut models = BTreeMap::new();
        for (name, spec) in &file.models {
            let name = Spanned::new(spec.model.span(), name.clone());
            if tools.contains_key(name.get_ref()) {
                return Err(self.err(
                    name.span().start,
                    format!("models.{}", name.get_ref()),
                    format!(
                        "`{}` is already a tool; tools, models and chains share one namespace",
                        name.get_ref()
                    ),
                ));
            }
            models.insert(name.get_ref().clone(), self.model(&name, spec, defaults)?);
        }

        for (name, spec) in &file.chains {
            let name = &Spanned::new(spec.targets.span(), name.clone());
            let key = format!("chains.{}", name.get_ref());
            check_name(&self, name, &key)?;
            if tools.contains_key(name.get_ref()) || models.contains_key(name.get_ref()) {
                return Err(self.err(
                    name.span().start,
                    key,
                    format!(
                        "`{}` is already a tool or model; tools, models and chains share one namespace",
                        name.get_ref()
                    ),
                ));
            }
            if spec.targets.get_ref().is_empty() {
                return Err(self.err(
                    spec.targets.span().start,
                    format!("{key}.targets"),
                    "a chain needs at least one target",
                ));
            }
            if let Some(r) = &spec.retry {
                let mut merged = default_retry.clone();
                merge_retry(&mut merged, r);
                resolve_retry(&merged)
                    .map_err(|m| self.err(name.span().start, format!("{key}.retry"), m))?;
            }
        }

        let chains = self.flatten(&file, &tools, &models)?;
        let mut agents = BTreeMap::new();
        for (name, spec) in &file.agents {
            agents.insert(
                name.clone(),
                self.agent(name, spec, &tools, &models, &chains)?,
            );
        }
        let webhook = match &file.escalation.webhook {
            Some(w)
                if !(w.get_ref().starts_with("http://") || w.get_ref().starts_with("https://")) =>
            {
                return Err(self.err(
                    w.span().start,
                    "escalation.webhook",
                    format!("`{}` is not an http(s) URL", w.get_ref()),
                ));
            }
            w => w.as_ref().map(|w| w.get_ref().clone()),
        };
        let state_path = match &file.state {
            Some(s) => self.path(&s.get_ref()["sqlite:".len()..]),
            None => self.path(".backstop/state.db"),
        };
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(self.text.as_bytes()))
        };
        Ok(Config {
            path: self.file.clone(),
            digest,
            state: file.state.map(|s| s.into_inner()),
            state_path,
            cache_dir: self.path(file.cache_dir.as_deref().unwrap_or(".backstop/cache")),
            seed: file.seed,
            engine: EngineConfig {
                pooling: file.engine.pooling.unwrap_or(true),
                tick: file.engine.tick.map_or(Duration::from_millis(10), |t| t.0),
                bulkhead: BulkheadPolicy {
                    max_concurrent: file
                        .engine
                        .max_concurrent
                        .unwrap_or(DEFAULT_HOST_BULKHEAD.max_concurrent),
                    max_queue: file
                        .engine
                        .max_queue
                        .unwrap_or(DEFAULT_HOST_BULKHEAD.max_queue),
                },
                max_message: file
                    .engine
                    .max_message
                    .map_or(crate::outcome::DEFAULT_MAX_MESSAGE, |b| b.0 as usize),
                max_description: file
                    .engine
                    .max_description
                    .map_or(16 << 10, |b| b.0 as usize),
                max_schema: file.engine.max_schema.map_or(256 << 10, |b| b.0 as usize),
                guest_threads: file.engine.guest_threads.map_or_else(
                    || std::thread::available_parallelism().map_or(2, |n| n.get()),
                    |n| n as usize,
                ),
            },
            tools,
            models,
            chains,
            agents,
            escalation: EscalationConfig {
                confidence_threshold: file.escalation.confidence_threshold,
                on_circuit_open: file
                    .escalation
                    .on_circuit_open
                    .unwrap_or(CircuitOpenPolicy::Escalate),
                webhook,
            },
            default_retry,
            default_deadline: file.defaults.deadline.map_or(DEFAULT_DEADLINE, |d| d.0),
        })
    }

    fn tool(
        &self,
        name: &Spanned<String>,
        spec: &schema::ToolSpec,
        defaults: &schema::Defaults,
    ) -> Result<ToolConfig, ConfigError> {
        let key = format!("tools.{}", name.get_ref());
        check_name(self, name, &key)?;
        let component = self.path(spec.component.get_ref());
        if !component.is_file() {
            return Err(self.err(
                spec.component.span().start,
                format!("{key}.component"),
                format!(
                    "component file {} does not exist (build the plugins first: plugins/build.sh)",
                    component.display()
                ),
            ));
        }
        let mut dirs = Vec::new();
        for (i, d) in spec.dirs.iter().enumerate() {
            let host = self.path(&d.get_ref().host);
            let k = format!("{key}.dirs[{i}]");
            if !host.is_dir() {
                return Err(self.err(
                    d.span().start,
                    k,
                    format!("directory {} does not exist", host.display()),
                ));
            }
            if !d.get_ref().guest.starts_with('/') {
                return Err(self.err(
                    d.span().start,
                    k,
                    format!(
                        "guest path `{}` must be absolute, such as \"/data\"",
                        d.get_ref().guest
                    ),
                ));
            }
            dirs.push(DirGrant {
                host,
                guest: d.get_ref().guest.clone(),
                writable: d.get_ref().mode == DirMode::ReadWrite,
            });
        }
        let mut env = Vec::new();
        for (i, e) in spec.env.iter().enumerate() {
            let (k, v) = match e.get_ref().split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (e.get_ref().clone(), None),
            };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.err(
                    e.span().start,
                    format!("{key}.env[{i}]"),
                    format!("`{k}` is not an environment variable name"),
                ));
            }
            env.push(EnvGrant { key: k, value: v });
        }
        let mut http = Vec::new();
        for (i, o) in spec.http.iter().enumerate() {
            http.push(
                Origin::parse(o.get_ref())
                    .map_err(|m| self.err(o.span().start, format!("{key}.http[{i}]"), m))?,
            );
        }
        let mut retry = defaults.retry.clone();
        if let Some(r) = &spec.retry {
            merge_retry(&mut retry, r);
            resolve_retry(&retry)
                .map_err(|m| self.err(name.span().start, format!("{key}.retry"), m))?;
        }
        Ok(ToolConfig {
            name: name.get_ref().clone(),
            component,
            component_at: self.at(spec.component.span().start),
            effect: spec.effect.as_ref().map(|e| *e.get_ref()),
            effect_at: self.at(spec
                .effect
                .as_ref()
                .map_or(name.span().start, |e| e.span().start)),
            dirs,
            env,
            http,
            timeout: spec
                .timeout
                .or(defaults.timeout)
                .map_or(Duration::from_secs(30), |d| d.0),
            memory: spec
                .memory
                .or(defaults.memory)
                .unwrap_or(ByteSize(256 << 20)),
            max_output: spec
                .max_output
                .or(defaults.max_output)
                .unwrap_or(ByteSize(1 << 20)),
            breaker: resolve_breaker(&defaults.breaker, spec.breaker.as_ref()),
            bulkhead: bulkhead(spec.max_concurrent, spec.max_queue, defaults),
            approval: spec.approval,
            retry: spec.retry.clone().unwrap_or_default(),
        })
    }

    fn model(
        &self,
        name: &Spanned<String>,
        spec: &schema::ModelSpec,
        defaults: &schema::Defaults,
    ) -> Result<ModelConfig, ConfigError> {
        use Provider;
        let key = format!("models.{}", name.get_ref());
        check_name(self, name, &key)?;
        let provider = *spec.provider.get_ref();
        let base_url = match &spec.base_url {
            Some(u) => {
                let text = u.get_ref().trim_end_matches('/');
                if !(text.starts_with("http://") || text.starts_with("https://")) {
                    return Err(self.err(
                        u.span().start,
                        format!("{key}.base_url"),
                        format!("`{text}` is not an http(s) URL"),
                    ));
                }
                text.to_owned()
            }
            None => match provider {
                Provider::Anthropic => "https://api.anthropic.com".to_owned(),
                Provider::Openai => "https://api.openai.com/v1".to_owned(),
            },
        };
        if let Some(var) = &spec.api_key_env {
            let v = var.get_ref();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.err(
                    var.span().start,
                    format!("{key}.api_key_env"),
                    format!("`{v}` is not an environment variable name"),
                ));
            }
        } else if spec.base_url.is_none() {
            return Err(self.err(
                spec.provider.span().start,
                format!("{key}.api_key_env"),
                "a hosted provider needs `api_key_env` (the variable holding the key); set `base_url` for a local server without one",
            ));
        }
        let mut retry = defaults.retry.clone();
        if let Some(r) = &spec.retry {
            merge_retry(&mut retry, r);
            resolve_retry(&retry)
                .map_err(|m| self.err(name.span().start, format!("{key}.retry"), m))?;
        }
        Ok(ModelConfig {
            name: name.get_ref().clone(),
            provider,
            model: spec.model.get_ref().clone(),
            api_key_env: spec.api_key_env.as_ref().map(|v| v.get_ref().clone()),
            base_url,
            timeout: spec.timeout.map_or(Duration::from_secs(120), |d| d.0),
            idle_timeout: spec.idle_timeout.map_or(Duration::from_secs(30), |d| d.0),
            max_response: spec.max_response.unwrap_or(ByteSize(16 << 20)),
            max_tokens: spec.max_tokens.unwrap_or(1024),
            stream: spec.stream.unwrap_or(false),
            label: spec.label.clone(),
            breaker: resolve_breaker(&defaults.breaker, spec.breaker.as_ref()),
            bulkhead: bulkhead(spec.max_concurrent, spec.max_queue, defaults),
            retry: spec.retry.clone().unwrap_or_default(),
        })
    }

    fn agent(
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
                    Some(false) => return Err(self.err(model.span().start, format!("{key}.model"), format!("`{}` is a tool chain, not a model chain", model.get_ref()))),
                    None => return Err(self.err(model.span().start, format!("{key}.model"), unknown("model chain", model.get_ref()))),
                }
                let mut list = Vec::new();
                for (i, t) in spec.tools.iter().enumerate() {
                    match kind_of(t.get_ref()) {
                        Some(false) => list.push(t.get_ref().clone()),
                        Some(true) => return Err(self.err(t.span().start, format!("{key}.tools[{i}]"), format!("`{}` is a model chain, not a tool chain", t.get_ref()))),
                        None => return Err(self.err(t.span().start, format!("{key}.tools[{i}]"), unknown("tool chain", t.get_ref()))),
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
                        return Err(self.err(at, format!("{k}.name"), format!("step name `{}` is used twice", s.name)));
                    }
                    let action = match (&s.tool, &s.model) {
                        (Some(tool), None) => {
                            if kind_of(tool) != Some(false) {
                                return Err(self.err(at, format!("{k}.tool"), unknown("tool chain", tool)));
                            }
                            if s.prompt.is_some() || s.system.is_some() {
                                return Err(self.err(at, &k, "a tool step takes `input`, not `prompt` or `system`"));
                            }
                            let input = s.input.clone().map(|v| serde_json::to_value(v).unwrap_or_default()).unwrap_or(serde_json::json!({}));
                            StepAction::Tool { chain: tool.clone(), input }
                        }
                        (None, Some(model)) => {
                            if kind_of(model) != Some(true) {
                                return Err(self.err(at, format!("{k}.model"), unknown("model chain", model)));
                            }
                            let prompt = s.prompt.clone().ok_or_else(|| self.err(at, &k, "a model step needs a `prompt`"))?;
                            if s.input.is_some() {
                                return Err(self.err(at, &k, "a model step takes `prompt`, not `input`"));
                            }
                            StepAction::Model { chain: model.clone(), prompt, system: s.system.clone() }
                        }
                        _ => return Err(self.err(at, &k, "a step names exactly one of `tool` or `model`")),
                    };
                    let found = match &action {
                        StepAction::Tool { input, .. } => agents::value_refs(input),
                        StepAction::Model { prompt, system, .. } => {
                            let mut r = agents::refs(prompt);
                            if let (Ok(list), Some(sys)) = (&mut r, system) {
                                match agents::refs(sys) {
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
                                return Err(self.err(at, &k, format!("`{step}` is not an earlier step of this pipeline")));
                            }
                        }
                    }
                    steps.push(Step { name: s.name.clone(), action });
                }
                Ok(AgentConfig { name: name.to_owned(), kind: AgentKind::Pipeline(steps.into()) })
            }
            (Some(model), false) => Err(self.err(model.span().start, &key, "an agent is either a tool loop (`model`, `tools`) or a pipeline (`steps`), not both")),
            (None, true) => Err(self.err(anchor, &key, "an agent needs `model` (a tool loop) or `steps` (a pipeline)")),
        }
    }

    /// Resolves chain targets to tools or models, following nested chains, and
    /// rejects unknown targets and cycles.
    fn flatten(
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
    fn expand(
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

fn check_name(loader: &Loader<'_>, name: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
    units::check_name(name.get_ref()).map_err(|m| loader.err(name.span().start, key, m))
}

/// The known word closest to `word`, if any is close enough to be a typo.
fn closest<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::jaro_winkler(word, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Adds "did you mean" to serde's unknown-field and unknown-variant
/// messages, which list the expected names between backticks.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_owned();
    };
    let Some((word, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(word, candidates.into_iter()) {
        Some(s) => format!("{message} (did you mean `{s}`?)"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
