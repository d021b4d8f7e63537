//! Serde types that mirror the TOML file exactly. Nothing here is trusted
//! yet: `super::validate` turns it into a [`super::Config`].

use super::units::{ByteSize, Dur, PositiveDur};
use crate::guard::Jitter;
use crate::outcome::Effect;
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_spanned::Spanned;
use std::collections::BTreeMap;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub version: Option<Spanned<i64>>,
    /// Where runs, breakers and escalations are kept: `sqlite:PATH` or a
    /// PostgreSQL URL (`postgres://...`, with `schema` and `pool_size`).
    pub state: Option<Spanned<String>>,
    /// Where compiled components are cached across starts.
    pub cache_dir: Option<String>,
    /// Seeds the jitter RNG, for reproducible runs.
    pub seed: Option<u64>,
    #[serde(default)]
    pub engine: EngineSpec,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    #[serde(default)]
    pub chains: BTreeMap<String, ChainSpec>,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentSpec>,
    #[serde(default)]
    pub escalation: EscalationSpec,
    #[serde(default)]
    pub mcp: McpSpec,
}

/// How Backstop speaks MCP as a server.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    /// The chains and tools served as MCP tools (default: every one).
    pub expose: Option<Spanned<Vec<Spanned<String>>>>,
    /// Sessions of 2025-11-25 clients kept at once (default 1,024).
    #[serde(default, deserialize_with = "sessions")]
    pub max_sessions: Option<u32>,
}

fn sessions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 1_000_000, "max_sessions")
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct EscalationSpec {
    /// Tool outputs with a confidence below this go to a person.
    #[serde(default, deserialize_with = "rate")]
    pub confidence_threshold: Option<f64>,
    /// When every target of a chain has an open breaker: `escalate` at
    /// once, or `wait` for a half-open probe.
    pub on_circuit_open: Option<CircuitOpenPolicy>,
    /// A URL that receives a JSON POST for each new escalation.
    pub webhook: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CircuitOpenPolicy {
    Escalate,
    Wait,
}

/// An agent: either a model-driven tool loop (`model`, `tools`,
/// `max_steps`) or a declared pipeline (`steps`).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The model chain that drives the loop.
    pub model: Option<Spanned<String>>,
    /// Tool chains the model may call, by chain (or tool) name.
    #[serde(default)]
    pub tools: Vec<Spanned<String>>,
    #[serde(default, deserialize_with = "steps_limit")]
    pub max_steps: Option<u32>,
    pub system: Option<String>,
    /// A pipeline: ordered steps.
    #[serde(default)]
    pub steps: Vec<Spanned<StepSpec>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// A tool chain to call with `input`.
    pub tool: Option<String>,
    /// A model chain to ask `prompt`.
    pub model: Option<String>,
    /// The tool's input; strings may hold `{{task}}`, `{{steps.NAME.output}}`,
    /// `{{steps.NAME.output.FIELD}}` or `{{steps.NAME.text}}`.
    pub input: Option<toml::Value>,
    pub prompt: Option<String>,
    pub system: Option<String>,
}

fn steps_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 100_000, "max_steps")
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub provider: Spanned<Provider>,
    pub model: Spanned<String>,
    /// The environment variable holding the API key. Required unless
    /// `base_url` points at a server that needs none.
    pub api_key_env: Option<Spanned<String>>,
    pub base_url: Option<Spanned<String>>,
    /// Per-attempt limit: for a plain answer, the whole request; for a
    /// streamed one, the time to its first output.
    pub timeout: Option<PositiveDur>,
    /// A streamed answer's longest quiet between two events, once output
    /// began; the chain's deadline bounds the whole stream.
    pub idle_timeout: Option<PositiveDur>,
    /// Largest answer read (a streamed one in total); more is malformed.
    #[serde(default, deserialize_with = "response_size")]
    pub max_response: Option<ByteSize>,
    #[serde(default, deserialize_with = "tokens")]
    pub max_tokens: Option<u32>,
    /// Stream the answer (server-sent events).
    pub stream: Option<bool>,
    /// Shown by `backstop models`, for example "scripted local model".
    pub label: Option<String>,
    pub retry: Option<RetrySpec>,
    pub breaker: Option<BreakerSpec>,
    /// Requests to this model in flight at once (its bulkhead).
    #[serde(default, deserialize_with = "concurrency")]
    pub max_concurrent: Option<u32>,
    #[serde(default, deserialize_with = "queue")]
    pub max_queue: Option<u32>,
}

fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 1_000_000, "max_tokens")
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Use the pooling instance allocator (falls back when unavailable).
    pub pooling: Option<bool>,
    /// Epoch tick: the granularity of wasm deadlines, and how often a
    /// running guest yields to other work.
    pub tick: Option<PositiveDur>,
    /// Calls running at once on the whole host, every target counted.
    #[serde(default, deserialize_with = "concurrency")]
    pub max_concurrent: Option<u32>,
    #[serde(default, deserialize_with = "queue")]
    pub max_queue: Option<u32>,
    /// Threads that run guest code (default: one per core).
    #[serde(default, deserialize_with = "threads")]
    pub guest_threads: Option<u32>,
    /// Longest failure message kept from a tool or model; longer ones are
    /// cut, with a marker saying how much.
    #[serde(default, deserialize_with = "message_size")]
    pub max_message: Option<ByteSize>,
    /// Longest tool description kept from `describe` (cut, marked).
    #[serde(default, deserialize_with = "description_size")]
    pub max_description: Option<ByteSize>,
    /// Largest schema a tool may declare; a larger one is a load error.
    #[serde(default, deserialize_with = "schema_size")]
    pub max_schema: Option<ByteSize>,
    /// How stale this host's view of a breaker changed elsewhere may be
    /// (another host, a `backstop breakers` command): it reads a target's
    /// shared row at most this often, just before calling it.
    pub breaker_sync: Option<PositiveDur>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// One deadline covering every attempt of a chain call.
    pub deadline: Option<PositiveDur>,
    /// Per-attempt time limit for a tool.
    pub timeout: Option<PositiveDur>,
    /// Per-tool linear memory cap.
    #[serde(default, deserialize_with = "memory")]
    pub memory: Option<ByteSize>,
    /// Largest output a tool may return.
    #[serde(default, deserialize_with = "output_size")]
    pub max_output: Option<ByteSize>,
    /// Per-target bulkhead: calls running at once, and waiting.
    #[serde(default, deserialize_with = "concurrency")]
    pub max_concurrent: Option<u32>,
    #[serde(default, deserialize_with = "queue")]
    pub max_queue: Option<u32>,
}

/// Every field optional: a spec overrides only what it names.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per target, the first included (1 disables retries).
    #[serde(default, deserialize_with = "attempts")]
    pub attempts: Option<u32>,
    pub base: Option<Dur>,
    pub cap: Option<PositiveDur>,
    pub jitter: Option<Jitter>,
    /// The longest Retry-After the guard will wait; a longer one fails over.
    pub max_retry_after: Option<Dur>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Open after this many failures in a row (0 disables the trigger).
    #[serde(default, deserialize_with = "count")]
    pub consecutive_failures: Option<u32>,
    /// Open when this share of calls in `window` failed (0 disables).
    #[serde(default, deserialize_with = "rate")]
    pub failure_rate: Option<f64>,
    pub window: Option<PositiveDur>,
    /// The failure rate counts only once the window holds this many calls.
    #[serde(default, deserialize_with = "count")]
    pub min_calls: Option<u32>,
    pub open_for: Option<PositiveDur>,
    /// Calls admitted at once while half-open.
    #[serde(default, deserialize_with = "probes")]
    pub half_open_probes: Option<u32>,
    /// A probe that has not answered in this time counts as failed.
    pub probe_timeout: Option<PositiveDur>,
    /// Successful probes needed to close.
    #[serde(default, deserialize_with = "probes")]
    pub close_after: Option<u32>,
    /// Open when this many failures, counted by every host sharing the
    /// state store, land within `window` (0, the default, disables).
    #[serde(default, deserialize_with = "count")]
    pub shared_failures: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Path to the `.wasm` component, relative to the config file.
    pub component: Option<Spanned<String>>,
    /// A tool served by another MCP server (instead of a component).
    pub mcp: Option<Spanned<McpToolSpec>>,
    /// Declares the tool's effect stricter than it describes itself.
    pub effect: Option<Spanned<Effect>>,
    #[serde(default)]
    pub dirs: Vec<Spanned<DirSpec>>,
    /// `"KEY"` passes the host's value through; `"KEY=value"` sets one.
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// Origins the tool may reach over `wasi:http`.
    #[serde(default)]
    pub http: Vec<Spanned<String>>,
    pub timeout: Option<PositiveDur>,
    #[serde(default, deserialize_with = "memory")]
    pub memory: Option<ByteSize>,
    #[serde(default, deserialize_with = "output_size")]
    pub max_output: Option<ByteSize>,
    pub retry: Option<RetrySpec>,
    pub breaker: Option<BreakerSpec>,
    /// Calls need a person's approval first (default: irreversible tools).
    pub approval: Option<bool>,
    /// Check each call's input against the schema the tool declares,
    /// before the tool runs (default true).
    pub validate_input: Option<bool>,
    /// Calls of this tool running at once (its bulkhead).
    #[serde(default, deserialize_with = "concurrency")]
    pub max_concurrent: Option<u32>,
    /// Calls waiting for a slot when `max_concurrent` are running.
    #[serde(default, deserialize_with = "queue")]
    pub max_queue: Option<u32>,
}

/// `mcp = { url = "...", tool = "...", token_env = "..." }`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct McpToolSpec {
    /// The server's streamable HTTP endpoint.
    pub url: String,
    /// The tool's name on that server (default: this tool's name).
    pub tool: Option<String>,
    /// An environment variable holding a bearer token for it.
    pub token_env: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirMode {
    #[serde(rename = "ro")]
    ReadOnly,
    #[serde(rename = "rw")]
    ReadWrite,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub host: String,
    pub guest: String,
    #[serde(default = "read_only")]
    pub mode: DirMode,
}

fn read_only() -> DirMode {
    DirMode::ReadOnly
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// Tools or other chains, tried in order.
    pub targets: Spanned<Vec<Spanned<String>>>,
    /// What the chain does, for an MCP client (default: its first
    /// tool's description).
    pub description: Option<String>,
    pub deadline: Option<PositiveDur>,
    pub retry: Option<RetrySpec>,
}

fn bounded<'de, D: Deserializer<'de>>(
    d: D,
    lo: i64,
    hi: i64,
    what: &str,
) -> Result<Option<u32>, D::Error> {
    let n = i64::deserialize(d)?;
    if n < lo || n > hi {
        return Err(de::Error::custom(format!(
            "{what} must be between {lo} and {hi}, not {n}"
        )));
    }
    Ok(Some(n as u32))
}

fn attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 100, "attempts")
}

fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 100_000, "max_concurrent")
}

fn queue<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 0, 1_000_000, "max_queue")
}

fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 1024, "guest_threads")
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 0, 1_000_000, "count")
}

fn probes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    bounded(d, 1, 1000, "probe count")
}

fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let r = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&r) {
        return Err(de::Error::custom(format!(
            "must be a share between 0.0 and 1.0, not {r}"
        )));
    }
    Ok(Some(r))
}

fn sized<'de, D: Deserializer<'de>>(
    d: D,
    lo: u64,
    hi: u64,
    what: &str,
) -> Result<Option<ByteSize>, D::Error> {
    let s = ByteSize::deserialize(d)?;
    if s.0 < lo || s.0 > hi {
        return Err(de::Error::custom(format!(
            "{what} {s} is outside {} to {}",
            ByteSize(lo),
            ByteSize(hi)
        )));
    }
    Ok(Some(s))
}

fn memory<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    // wasm32 linear memory cannot exceed 4 GiB.
    sized(d, ByteSize::MIB, 4 << 30, "memory")
}

fn response_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    sized(d, 1 << 10, 1 << 30, "max_response")
}

fn message_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    sized(d, 256, 1 << 20, "max_message")
}

fn description_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    sized(d, 1 << 10, 1 << 20, "max_description")
}

fn schema_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    sized(d, 1 << 10, 16 << 20, "max_schema")
}

fn output_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    sized(d, 1 << 10, 1 << 30, "max_output")
}

/// Which wire protocol a model speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Anthropic,
    Openai,
}
