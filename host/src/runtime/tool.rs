//! One loaded tool: its `InstancePre`, what it said about itself, and the
//! call path that turns every way a guest can fail into a classified
//! [`Failure`].

use super::bindings::{self, ToolPre, WitEffect};
use super::state::{far_deadline, CallInfo, HostState, STDERR_CAPACITY};
use super::{CompileSource, LoadError, Runtime};
use crate::config::{Origin, ToolConfig};
use crate::outcome::{Effect, Failure, FailureClass};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::{Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// What a tool says about itself (`describe`), with schemas parsed.
#[derive(Clone, Debug, Serialize)]
pub struct ToolDescription {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub output_schema: Option<serde_json::Value>,
    /// What the tool declared; see [`WasmTool::effect`] for what applies.
    pub effect: Effect,
}

/// The per-attempt facts a call needs.
#[derive(Clone, Debug)]
pub struct CallCtx {
    pub key: Arc<str>,
    pub attempt: u32,
    /// This attempt's time limit (already cut to the call's deadline).
    pub timeout: Duration,
}

/// What `reconcile` said.
#[derive(Clone, Debug, PartialEq)]
pub enum Reconciled {
    Done(ToolOutput),
    NotDone,
    Unknown,
}

/// A successful tool result, checked against the contract.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToolOutput {
    pub value: serde_json::Value,
    pub confidence: Option<f64>,
}

pub struct WasmTool {
    config: ToolConfig,
    description: ToolDescription,
    effect: Effect,
    digest: String,
    source: CompileSource,
    pre: ToolPre<HostState>,
    /// Set when the component also exports `reconcile`.
    reconcile_pre: Option<bindings::reconcilable::ReconcilableToolPre<HostState>>,
    engine: wasmtime::Engine,
    origins: Arc<Vec<Origin>>,
    tick: Duration,
    instantiations: AtomicU64,
    /// The declared output schema, compiled; outputs are checked against it.
    output_schema: Option<jsonschema::Validator>,
}

impl From<WitEffect> for Effect {
    fn from(e: WitEffect) -> Effect {
        match e {
            WitEffect::ReadOnly => Effect::ReadOnly,
            WitEffect::Idempotent => Effect::Idempotent,
            WitEffect::SideEffect => Effect::SideEffect,
            WitEffect::Irreversible => Effect::Irreversible,
        }
    }
}

impl WasmTool {
    /// Compiles (or loads from cache), links and describes the tool. Fails
    /// with the config location when the file is not a component, does not
    /// implement the `tool` world, or describes itself badly.
    pub async fn load(rt: &Arc<Runtime>, config: &ToolConfig) -> Result<WasmTool, LoadError> {
        let fail = |message: String| LoadError {
            tool: config.name.clone(),
            location: config.component_at.clone(),
            key: format!("tools.{}.component", config.name),
            message,
        };
        let path = config.component.clone();
        // Compiling a large component takes seconds of CPU: keep it off
        // the async workers.
        let compiling = rt.clone();
        let (component, digest, source) =
            tokio::task::spawn_blocking(move || compiling.compile(&path))
                .await
                .map_err(|e| fail(format!("compiler task failed: {e}")))?
                .map_err(|e| fail(format!("{e:#}")))?;
        let instance_pre = rt.linker.instantiate_pre(&component).map_err(|e| {
            fail(format!("does not implement world `backstop:tool/tool` (imports something the host does not offer): {e:#}"))
        })?;
        let exports_reconcile = component
            .component_type()
            .exports(rt.engine())
            .any(|(name, _)| name == "reconcile");
        let reconcile_pre = if exports_reconcile {
            Some(bindings::reconcilable::ReconcilableToolPre::new(instance_pre.clone()).map_err(|e| {
                fail(format!("exports `reconcile` but not as world `backstop:tool/reconcilable-tool` says: {e:#}"))
            })?)
        } else {
            None
        };
        let pre = ToolPre::new(instance_pre).map_err(|e| {
            fail(format!(
                "does not implement world `backstop:tool/tool`: {e:#}"
            ))
        })?;
        let mut tool = WasmTool {
            config: config.clone(),
            description: ToolDescription {
                name: String::new(),
                description: String::new(),
                input_schema: serde_json::Value::Null,
                output_schema: None,
                effect: Effect::Irreversible,
            },
            effect: Effect::Irreversible,
            digest,
            source,
            pre,
            reconcile_pre,
            engine: rt.engine.clone(),
            origins: Arc::new(config.http.clone()),
            tick: rt.tick,
            instantiations: AtomicU64::new(0),
            output_schema: None,
        };
        let info = tool
            .describe()
            .await
            .map_err(|f| fail(format!("`describe` failed: {f}")))?;
        let schema = |what: &str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                fail(format!(
                    "`describe` returned an {what} that is not JSON: {e}"
                ))
            })
        };
        let declared = Effect::from(info.effect);
        tool.description = ToolDescription {
            input_schema: schema("input schema", &info.input_schema)?,
            output_schema: info
                .output_schema
                .as_deref()
                .map(|s| schema("output schema", s))
                .transpose()?,
            name: info.name,
            description: info.description,
            effect: declared,
        };
        if let Some(schema) = &tool.description.output_schema {
            tool.output_schema = Some(jsonschema::validator_for(schema).map_err(|e| {
                fail(format!(
                    "`describe` returned an output schema that is not a valid JSON Schema: {e}"
                ))
            })?);
        }
        tool.effect = match config.effect {
            Some(op) if op < declared => {
                return Err(LoadError {
                    tool: config.name.clone(),
                    location: config.effect_at.clone(),
                    key: format!("tools.{}.effect", config.name),
                    message: format!(
                        "the tool describes itself as {declared}; the config may only declare a stricter effect, not {op}"
                    ),
                })
            }
            Some(op) => op,
            None => declared,
        };
        Ok(tool)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ToolConfig {
        &self.config
    }

    pub fn description(&self) -> &ToolDescription {
        &self.description
    }

    /// The effect the host acts on: the declared one, or the operator's
    /// stricter one.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// SHA-256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn compile_source(&self) -> CompileSource {
        self.source
    }

    /// Whether the tool can answer "did the call with this key happen?".
    pub fn can_reconcile(&self) -> bool {
        self.reconcile_pre.is_some()
    }

    /// Asks the tool whether the call with idempotency `key` happened. A
    /// tool without `reconcile` answers `Unknown`.
    pub async fn reconcile(&self, key: &str) -> Result<Reconciled, Failure> {
        let Some(pre) = &self.reconcile_pre else {
            return Ok(Reconciled::Unknown);
        };
        let timeout = self.config.timeout;
        let call = CallInfo {
            tool: self.config.name.clone(),
            key: key.to_owned(),
            attempt: 0,
            deadline: Instant::now() + timeout,
        };
        let (mut store, stderr) = self.store(call)?;
        self.arm(&mut store, timeout);
        let run = async {
            let tool = pre.instantiate_async(&mut store).await?;
            tool.call_reconcile(&mut store, key).await
        };
        use bindings::backstop::tool::types::ReconcileStatus as S;
        match tokio::time::timeout(timeout + self.tick * 2, run).await {
            Err(_) => Err(Failure::new(
                FailureClass::Timeout,
                "reconcile did not answer in time",
            )),
            Ok(Err(e)) => Err(classify_trap(e, &store, &stderr, timeout)),
            Ok(Ok(S::Done(out))) => Ok(Reconciled::Done(self.check_output(out)?)),
            Ok(Ok(S::NotDone)) => Ok(Reconciled::NotDone),
            Ok(Ok(S::Unknown)) => Ok(Reconciled::Unknown),
        }
    }

    /// How many instances have been created (every call makes one).
    pub fn instantiations(&self) -> u64 {
        self.instantiations.load(Ordering::Relaxed)
    }

    fn store(&self, call: CallInfo) -> Result<(Store<HostState>, MemoryOutputPipe), Failure> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let state = HostState::new(&self.config, self.origins.clone(), call, stderr.clone())
            .map_err(|e| Failure::new(FailureClass::Unavailable, format!("{e:#}")))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        Ok((store, stderr))
    }

    async fn describe(&self) -> Result<bindings::ToolInfo, Failure> {
        let call = CallInfo {
            tool: self.config.name.clone(),
            key: String::new(),
            attempt: 0,
            deadline: far_deadline(),
        };
        let (mut store, stderr) = self.store(call)?;
        let timeout = self.config.timeout;
        self.arm(&mut store, timeout);
        let run = async {
            let tool = self.pre.instantiate_async(&mut store).await?;
            tool.call_describe(&mut store).await
        };
        match tokio::time::timeout(timeout + self.tick * 2, run).await {
            Err(_) => Err(Failure::new(
                FailureClass::Timeout,
                "describe did not return in time",
            )),
            Ok(Err(e)) => Err(classify_trap(e, &store, &stderr, timeout)),
            Ok(Ok(info)) => Ok(info),
        }
    }

    fn arm(&self, store: &mut Store<HostState>, timeout: Duration) {
        let ticks = timeout.as_nanos().div_ceil(self.tick.as_nanos().max(1)) as u64;
        store.set_epoch_deadline(ticks.max(1));
        store.epoch_deadline_trap();
    }

    /// Runs one attempt in a fresh Store, which is dropped afterwards
    /// whatever happened (a trap poisons a Store).
    pub async fn invoke(&self, input: &str, ctx: &CallCtx) -> Result<ToolOutput, Failure> {
        let call = CallInfo {
            tool: self.config.name.clone(),
            key: ctx.key.to_string(),
            attempt: ctx.attempt,
            deadline: Instant::now() + ctx.timeout,
        };
        let (mut store, stderr) = self.store(call)?;
        self.arm(&mut store, ctx.timeout);
        self.instantiations.fetch_add(1, Ordering::Relaxed);
        let run = async {
            let tool = self.pre.instantiate_async(&mut store).await?;
            tool.call_invoke(&mut store, input).await
        };
        // The epoch deadline stops guest code; this timeout stops a guest
        // blocked in a host call, which epochs cannot interrupt.
        let result = tokio::time::timeout(ctx.timeout + self.tick * 2, run).await;
        match result {
            Err(_) => Err(Failure::new(
                FailureClass::Timeout,
                format!(
                    "no answer within {} (blocked in a host call)",
                    humantime::format_duration(ctx.timeout)
                ),
            )),
            Ok(Err(e)) => Err(classify_trap(e, &store, &stderr, ctx.timeout)),
            Ok(Ok(Err(e))) => Err(classify_tool_error(e)),
            Ok(Ok(Ok(out))) => self.check_output(out),
        }
    }

    fn check_output(&self, out: bindings::Output) -> Result<ToolOutput, Failure> {
        let malformed = |m: String| Failure::new(FailureClass::MalformedOutput, m);
        let limit = self.config.max_output.0 as usize;
        if out.value.len() > limit {
            return Err(malformed(format!(
                "output of {} bytes exceeds max_output {}",
                out.value.len(),
                self.config.max_output
            )));
        }
        let value = serde_json::from_str(&out.value)
            .map_err(|e| malformed(format!("output is not JSON ({e}): {}", preview(&out.value))))?;
        if let Some(v) = &self.output_schema {
            if let Err(e) = v.validate(&value) {
                let at = e.instance_path.to_string();
                let at = if at.is_empty() {
                    "the output".to_owned()
                } else {
                    format!("output at {at}")
                };
                return Err(malformed(format!(
                    "{at} does not match the declared output schema: {e}"
                )));
            }
        }
        if let Some(c) = out.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(malformed(format!("confidence {c} is outside 0.0 to 1.0")));
            }
        }
        Ok(ToolOutput {
            value,
            confidence: out.confidence,
        })
    }
}

fn preview(s: &str) -> String {
    let p: String = s.chars().take(80).collect();
    if p.len() < s.len() {
        format!("{p}…")
    } else {
        p
    }
}

fn classify_tool_error(e: bindings::ToolError) -> Failure {
    use bindings::ToolError as E;
    match e {
        E::InvalidInput(m) => Failure::new(FailureClass::InvalidInput, m),
        E::Transient(m) => Failure::new(FailureClass::Transient, m),
        E::RateLimited(r) => {
            Failure::rate_limited(r.message, r.retry_after_ms.map(Duration::from_millis))
        }
        E::Unavailable(m) => Failure::new(FailureClass::Unavailable, m),
        E::Permanent(m) => Failure::new(FailureClass::Permanent, m),
        E::NeedsHuman(m) => Failure::new(FailureClass::NeedsHuman, m),
    }
}

/// Classifies an error raised while instantiating or running the guest.
fn classify_trap(
    e: wasmtime::Error,
    store: &Store<HostState>,
    stderr: &MemoryOutputPipe,
    timeout: Duration,
) -> Failure {
    let said = String::from_utf8_lossy(&stderr.contents())
        .trim()
        .to_string();
    let tail: String = said
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    let with_tail = |m: String| {
        if tail.is_empty() {
            m
        } else {
            format!("{m}; stderr: {tail}")
        }
    };
    if store.data().limiter.hit_cap {
        return Failure::new(
            FailureClass::ResourceExhausted,
            format!("memory cap {} reached", store.data().config_memory()),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(
            FailureClass::Timeout,
            format!(
                "stopped at its {} deadline",
                humantime::format_duration(timeout)
            ),
        ),
        Some(Trap::StackOverflow) => {
            Failure::new(FailureClass::Trap, with_tail("stack overflow".into()))
        }
        Some(t) => Failure::new(FailureClass::Trap, with_tail(format!("guest trapped: {t}"))),
        None => Failure::new(FailureClass::Trap, with_tail(format!("{e:#}"))),
    }
}

impl crate::guard::CallTarget for WasmTool {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn effect(&self) -> Effect {
        self.effect
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn call<'a>(
        &'a self,
        input: &'a serde_json::Value,
        ctx: &'a CallCtx,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<ToolOutput, Failure>> + Send + 'a>>
    {
        Box::pin(async move { self.invoke(&input.to_string(), ctx).await })
    }
}
