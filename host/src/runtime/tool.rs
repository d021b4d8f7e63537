//! One loaded tool: its `InstancePre`, what it said about itself, and the
//! call path that turns every way a guest can fail into a classified
//! [`Failure`].

use super::bindings::{self, ToolPre, WitEffect};
use super::guests::{Ended, GuestPool};
use super::state::{far_deadline, CallInfo, HostState, STDERR_CAPACITY};
use super::stderr::{self, TailPipe};
use super::{CompileSource, LoadError, Runtime};
use crate::config::{Origin, ToolConfig};
use crate::outcome::{Effect, Failure, FailureClass};
use crate::target::{CallCtx, CallFuture, CallTarget, TargetOutput};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::{Store, Trap};

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

/// What `reconcile` said.
#[derive(Clone, Debug, PartialEq)]
pub enum Reconciled {
    Done(TargetOutput),
    NotDone,
    Unknown,
}

pub struct WasmTool {
    description: ToolDescription,
    /// The declared input schema, compiled at load; `None` when the
    /// config turned the check off.
    input_schema: Option<jsonschema::Validator>,
    effect: Effect,
    digest: String,
    source: CompileSource,
    core: Arc<ToolCore>,
    guests: Arc<GuestPool>,
}

/// What a call of the tool needs, shared with the guest pool's task that
/// runs it.
struct ToolCore {
    config: ToolConfig,
    /// The tool's name, for every call's sandbox.
    name: Arc<str>,
    pre: ToolPre<HostState>,
    /// Set when the component also exports `reconcile`.
    reconcile_pre: Option<bindings::reconcilable::ReconcilableToolPre<HostState>>,
    engine: wasmtime::Engine,
    origins: Arc<Vec<Origin>>,
    tick: Duration,
    instantiations: AtomicU64,
    /// The declared output schema, checked and compiled at load.
    output_schema: std::sync::OnceLock<jsonschema::Validator>,
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
        let shown = path.clone();
        let started = std::time::Instant::now();
        let mut task = tokio::task::spawn_blocking(move || compiling.compile(&path));
        // A large component (Python, JavaScript) compiles for up to a
        // minute: past a second, say what is happening (target
        // `backstop::compile`, shown by the CLI by default).
        let joined = match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
            Ok(done) => done,
            Err(_) => {
                let size = std::fs::metadata(&shown).map_or(0, |m| m.len());
                tracing::info!(
                    target: "backstop::compile",
                    "tools.{}: compiling {} ({:.1} MB); this takes a while once, the result is \
                     cached in {}",
                    config.name,
                    shown.display(),
                    size as f64 / 1e6,
                    rt.cache_dir.display()
                );
                let done = task.await;
                tracing::info!(
                    target: "backstop::compile",
                    "tools.{}: compiled in {:.1} s",
                    config.name,
                    started.elapsed().as_secs_f64()
                );
                done
            }
        };
        let (component, digest, source) = joined
            .map_err(|e| fail(format!("compiler task failed: {e}")))?
            .map_err(|e| fail(e.to_string()))?;
        let instance_pre = rt.linker.instantiate_pre(&component).map_err(|e| {
            fail(format!(
                "does not implement world `backstop:tool/tool` (imports something the \
                host does not offer): {e:#}"
            ))
        })?;
        let exports_reconcile = component
            .component_type()
            .exports(rt.engine())
            .any(|(name, _)| name == "reconcile");
        let reconcile_pre = if exports_reconcile {
            Some(
                bindings::reconcilable::ReconcilableToolPre::new(instance_pre.clone()).map_err(
                    |e| {
                        fail(format!(
                            "exports `reconcile` but not as world \
                    `backstop:tool/reconcilable-tool` says: {e:#}"
                        ))
                    },
                )?,
            )
        } else {
            None
        };
        let pre = ToolPre::new(instance_pre).map_err(|e| {
            fail(format!(
                "does not implement world `backstop:tool/tool`: {e:#}"
            ))
        })?;
        let core = Arc::new(ToolCore {
            name: config.name.as_str().into(),
            config: config.clone(),
            pre,
            reconcile_pre,
            engine: rt.engine.clone(),
            origins: Arc::new(config.http.clone()),
            tick: rt.tick,
            instantiations: AtomicU64::new(0),
            output_schema: std::sync::OnceLock::new(),
        });
        let mut tool = WasmTool {
            input_schema: None,
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
            core,
            guests: rt.guests.clone(),
        };
        let info = tool.describe().await.map_err(|f| {
            fail(format!(
                "`describe` failed: {}",
                crate::outcome::clip(f.to_string().into(), rt.max_message)
            ))
        })?;
        let schema = |what: &str, text: &str| {
            if text.len() > rt.max_schema {
                return Err(fail(format!(
                    "`describe` returned an {what} of {} bytes; the limit is {} \
                        (engine.max_schema)",
                    text.len(),
                    crate::config::ByteSize(rt.max_schema as u64)
                )));
            }
            let value = serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                fail(format!(
                    "`describe` returned an {what} that {}",
                    crate::outcome::json_error("", &e).trim_start()
                ))
            })?;
            // Checked like the output schema, though the host only shows it:
            // models and MCP clients compile it too.
            let compiled = crate::schema::compile(&value).map_err(|e| {
                fail(format!(
                    "`describe` returned an {what} that cannot be used: it {e}"
                ))
            })?;
            Ok::<_, LoadError>((value, compiled))
        };
        let declared = Effect::from(info.effect);
        let (input_schema, input_check) = schema("input schema", &info.input_schema)?;
        if config.validate_input {
            tool.input_schema = Some(input_check);
        }
        let output = info
            .output_schema
            .as_deref()
            .map(|s| schema("output schema", s))
            .transpose()?;
        let output_schema = output.map(|(value, compiled)| {
            let _ = tool.core.output_schema.set(compiled);
            value
        });
        tool.description = ToolDescription {
            input_schema,
            output_schema,
            // Shown to operators and models: cut, and marked, when a
            // tool says more than anyone should read.
            name: crate::outcome::clip(info.name.into(), 256).into_owned(),
            description: crate::outcome::clip(info.description.into(), rt.max_description)
                .into_owned(),
            effect: declared,
        };
        tool.effect = match config.effect {
            Some(op) if op < declared => {
                return Err(LoadError {
                    tool: config.name.clone(),
                    location: config.effect_at.clone(),
                    key: format!("tools.{}.effect", config.name),
                    message: format!(
                        "the tool describes itself as {declared}; the config may only declare a \
                            stricter effect, not {op}"
                    ),
                })
            }
            Some(op) => op,
            None => declared,
        };
        Ok(tool)
    }

    pub fn name(&self) -> &str {
        &self.core.config.name
    }

    pub fn config(&self) -> &ToolConfig {
        &self.core.config
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
        self.core.reconcile_pre.is_some()
    }

    /// How many instances have been created (every call makes one).
    pub fn instantiations(&self) -> u64 {
        self.core.instantiations.load(Ordering::Relaxed)
    }

    /// Asks the tool whether the call with idempotency `key` happened. A
    /// tool without `reconcile` answers `Unknown`.
    pub async fn reconcile(&self, key: &str) -> Result<Reconciled, Failure> {
        if self.core.reconcile_pre.is_none() {
            return Ok(Reconciled::Unknown);
        }
        let core = self.core.clone();
        let key = key.to_owned();
        let timeout = self.core.config.timeout;
        let call = Box::pin(async move { core.reconcile(&key, timeout).await });
        self.guarded(timeout, || "reconcile did not answer in time", call)
            .await
    }

    async fn describe(&self) -> Result<bindings::ToolInfo, Failure> {
        let core = self.core.clone();
        let timeout = self.core.config.timeout;
        let call = Box::pin(async move { core.describe(timeout).await });
        self.guarded(timeout, || "describe did not return in time", call)
            .await
    }

    /// Checks `input` against the declared input schema (unless the config
    /// turned that off): a violation is `invalid-input` naming where, and
    /// the tool is not started.
    pub fn check_input(&self, input: &serde_json::Value) -> Result<(), Failure> {
        let Some(v) = &self.input_schema else {
            return Ok(());
        };
        // The validator recurses in the value's depth: input deeper than
        // any JSON text the host parses (serde_json stops at 128) is
        // refused before it reaches it.
        if depth_over(input, MAX_INPUT_DEPTH) {
            return Err(Failure::new(
                FailureClass::InvalidInput,
                format!("input is nested deeper than {MAX_INPUT_DEPTH} levels"),
            ));
        }
        match v.validate(input) {
            Ok(()) => Ok(()),
            Err(e) => {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() {
                    "the input".to_owned()
                } else {
                    format!("input at {at}")
                };
                Err(Failure::new(
                    FailureClass::InvalidInput,
                    format!(
                        "{at} does not match the tool's input schema: {}",
                        crate::outcome::clip(e.to_string().into(), 512)
                    ),
                ))
            }
        }
    }

    /// Runs one attempt in a fresh Store, which is dropped afterwards
    /// whatever happened (a trap poisons a Store).
    pub async fn invoke(&self, input: String, ctx: &CallCtx) -> Result<TargetOutput, Failure> {
        let core = self.core.clone();
        let attempt = ctx.clone();
        let timeout = ctx.timeout;
        let blocked = || {
            format!(
                "no answer within {} (blocked in a host call)",
                humantime::format_duration(timeout)
            )
        };
        let call = Box::pin(async move { core.invoke(&input, &attempt).await });
        self.guarded(timeout, blocked, call).await
    }

    /// Runs `call` on the guest pool under a host timeout: the epoch
    /// deadline stops guest code, this stops a guest blocked in a host
    /// call, which epochs cannot interrupt. The call comes boxed, so the
    /// futures around it stay small (a caller boxes this one again).
    async fn guarded<T: Send + 'static, M: Into<std::borrow::Cow<'static, str>>>(
        &self,
        timeout: Duration,
        late: impl FnOnce() -> M,
        call: std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Failure>> + Send>>,
    ) -> Result<T, Failure> {
        let limit = timeout + self.core.tick * 2;
        match self.guests.run(call, limit).await {
            Err(Ended::TimedOut) => Err(Failure::new(FailureClass::Timeout, late())),
            Err(Ended::Panicked(panic)) => Err(Failure::new(
                FailureClass::Trap,
                format!("the host failed while running the tool: {panic}"),
            )),
            Ok(r) => r,
        }
    }
}

impl ToolCore {
    fn store(&self, call: CallInfo) -> Result<(Store<HostState>, TailPipe), Failure> {
        let stderr = TailPipe::new(STDERR_CAPACITY);
        let state = HostState::new(&self.config, self.origins.clone(), call, stderr.clone())
            .map_err(|e| Failure::new(FailureClass::Unavailable, format!("{e:#}")))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        Ok((store, stderr))
    }

    /// Stops guest code at `timeout`, and makes it yield to the other
    /// guests of the pool at every epoch tick until then.
    fn arm(&self, store: &mut Store<HostState>, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() >= deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
    }

    async fn reconcile(&self, key: &str, timeout: Duration) -> Result<Reconciled, Failure> {
        let Some(pre) = &self.reconcile_pre else {
            return Ok(Reconciled::Unknown);
        };
        let call = CallInfo {
            tool: self.name.clone(),
            key: key.into(),
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
        match run.await {
            Err(e) => Err(classify_trap(e, &store, &stderr, timeout)),
            Ok(S::Done(out)) => Ok(Reconciled::Done(self.check_output(out)?)),
            Ok(S::NotDone) => Ok(Reconciled::NotDone),
            Ok(S::Unknown) => Ok(Reconciled::Unknown),
        }
    }

    async fn describe(&self, timeout: Duration) -> Result<bindings::ToolInfo, Failure> {
        let call = CallInfo {
            tool: self.name.clone(),
            key: "".into(),
            attempt: 0,
            deadline: far_deadline(),
        };
        let (mut store, stderr) = self.store(call)?;
        self.arm(&mut store, timeout);
        let run = async {
            let tool = self.pre.instantiate_async(&mut store).await?;
            tool.call_describe(&mut store).await
        };
        run.await
            .map_err(|e| classify_trap(e, &store, &stderr, timeout))
    }

    async fn invoke(&self, input: &str, ctx: &CallCtx) -> Result<TargetOutput, Failure> {
        let call = CallInfo {
            tool: self.name.clone(),
            key: ctx.key.clone(),
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
        let result = match run.await {
            Err(e) => Err(classify_trap(e, &store, &stderr, ctx.timeout)),
            Ok(Err(e)) => Err(classify_tool_error(e)),
            Ok(Ok(out)) => self.check_output(out),
        };
        // A failure after a refused request most likely comes from it: say
        // which grant would allow it, where the operator reads the failure.
        result.map_err(|mut f| {
            if let Some(hint) = store.data().denial_hint() {
                f.message = format!("{}; {hint}", f.message).into();
            }
            f
        })
    }

    fn check_output(&self, out: bindings::Output) -> Result<TargetOutput, Failure> {
        let malformed = |m: String| Failure::new(FailureClass::MalformedOutput, m);
        let limit = self.config.max_output.0 as usize;
        if out.value.len() > limit {
            return Err(malformed(format!(
                "output of {} bytes exceeds max_output {}",
                out.value.len(),
                self.config.max_output
            )));
        }
        let value = serde_json::from_str(&out.value).map_err(|e| {
            malformed(format!(
                "{}: {}",
                crate::outcome::json_error("output", &e),
                preview(&out.value)
            ))
        })?;
        if let Some(v) = self.output_schema.get() {
            if let Err(e) = v.validate(&value) {
                let at = e.instance_path().to_string();
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
        Ok(TargetOutput {
            value,
            confidence: out.confidence,
        })
    }
}

/// Deepest input checked against a schema (serde_json's own parse limit).
const MAX_INPUT_DEPTH: usize = 128;

/// Whether `v` nests more than `left` arrays and objects deep. The
/// recursion stops at `left`, so it is bounded whatever `v` is.
fn depth_over(v: &serde_json::Value, left: usize) -> bool {
    use serde_json::Value;
    match v {
        Value::Array(a) => left == 0 || a.iter().any(|c| depth_over(c, left - 1)),
        Value::Object(o) => left == 0 || o.values().any(|c| depth_over(c, left - 1)),
        _ => false,
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
    stderr: &TailPipe,
    timeout: Duration,
) -> Failure {
    let said = stderr::explain(&stderr.contents().0);
    let with_tail = |m: String| match &said {
        None => m,
        Some(said) => format!("{m}; the tool said: {said}"),
    };
    // The host's instance pool being full says nothing about the guest.
    if e.chain()
        .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
    {
        return Failure::new(
            FailureClass::BulkheadFull,
            format!("the host's instance pool is full: {e}"),
        );
    }
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

impl CallTarget for WasmTool {
    fn name(&self) -> &str {
        &self.core.config.name
    }

    fn effect(&self) -> Effect {
        self.effect
    }

    fn timeout(&self) -> Duration {
        self.core.config.timeout
    }

    fn call<'a>(&'a self, input: &'a serde_json::Value, ctx: &'a CallCtx) -> CallFuture<'a> {
        if let Err(f) = self.check_input(input) {
            return Box::pin(std::future::ready(Err(f)));
        }
        Box::pin(async move { self.invoke(input.to_string(), ctx).await })
    }
}
