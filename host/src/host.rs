//! [`Backstop`]: a loaded configuration, the door every caller (the CLI,
//! the HTTP server, an embedding app) goes through.

use crate::agent::{self, HostFuture, Progress, ResumeOptions, RunError, RunReport};
use crate::config::Config;
use crate::error::Error;
use crate::outcome::Outcome;
use crate::status::BreakerStatus;
use crate::store::{self, Store, StoreError};
use crate::target::CallTarget;
use crate::{escalation, guard, metrics, models, runtime, status, webhook};
use guard::{BreakerState, Breakers, ChainRunner, ChainTarget};
use rand::{rngs::StdRng, SeedableRng};
use runtime::{Runtime, WasmTool};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A chain (or a lone tool or model) resolved for calling.
struct Plan {
    name: Arc<str>,
    targets: Vec<ChainTarget>,
    deadline: std::time::Duration,
    counters: metrics::ChainCounters,
}

/// A loaded configuration: its tools compiled and described, a breaker per
/// target, ready to serve calls from many tasks at once.
pub struct Backstop {
    config: Config,
    runtime: Arc<Runtime>,
    tools: BTreeMap<String, Arc<WasmTool>>,
    remotes: BTreeMap<String, Arc<crate::remote::RemoteTool>>,
    models: BTreeMap<String, Arc<models::ModelTarget>>,
    breakers: Breakers,
    plans: std::collections::HashMap<String, Plan>,
    rng: Mutex<StdRng>,
    journal: std::sync::OnceLock<Arc<dyn Store>>,
    http: reqwest::Client,
    notifications: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    metrics: metrics::Metrics,
    /// Wakes this host's run-queue workers when it queued a run.
    queue_wake: Arc<tokio::sync::Notify>,
}

impl Backstop {
    /// Reads `path`, validates it, and loads every tool it declares.
    pub async fn load(path: impl AsRef<Path>) -> Result<Backstop, Error> {
        Self::from_config(Config::from_file(path)?).await
    }

    /// Loads every tool of `config`. Tools compile in parallel; compiled
    /// code is cached in `config.cache_dir`.
    pub async fn from_config(config: Config) -> Result<Backstop, Error> {
        let runtime = Arc::new(Runtime::new(&config).map_err(Error::Engine)?);
        let mut loading = tokio::task::JoinSet::new();
        for tool in config.tools.values().filter(|t| t.mcp.is_none()) {
            let (rt, tool) = (runtime.clone(), tool.clone());
            loading.spawn(async move { WasmTool::load(&rt, &tool).await });
        }
        let mut tools = BTreeMap::new();
        let mut first_error: Option<runtime::LoadError> = None;
        while let Some(joined) = loading.join_next().await {
            match joined.expect("tool loading task panicked") {
                Ok(t) => {
                    tools.insert(t.name().to_owned(), Arc::new(t));
                }
                // Report the error that comes first in the file, so the
                // message does not depend on which compile finished first.
                Err(e) => {
                    if first_error
                        .as_ref()
                        .is_none_or(|f| e.location.line < f.location.line)
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        let client = models::http_client();
        // Remote MCP tools describe themselves now (a few seconds at most
        // each, all at once); one that cannot be reached loads anyway.
        let mut describing = tokio::task::JoinSet::new();
        for tool in config.tools.values().filter(|t| t.mcp.is_some()) {
            let (tool, http) = (tool.clone(), client.clone());
            describing.spawn(async move {
                let loaded = crate::remote::RemoteTool::load(&tool, http).await;
                (tool, loaded)
            });
        }
        let mut remotes = BTreeMap::new();
        while let Some(joined) = describing.join_next().await {
            let (tool, loaded) = joined.expect("a remote tool's loading task panicked");
            match loaded {
                Ok(r) => {
                    remotes.insert(tool.name.clone(), Arc::new(r));
                }
                Err(message) => {
                    return Err(runtime::LoadError {
                        tool: tool.name.clone(),
                        location: tool.component_at.clone(),
                        key: format!("tools.{}.mcp", tool.name),
                        message,
                    }
                    .into())
                }
            }
        }
        let models: BTreeMap<String, Arc<models::ModelTarget>> = config
            .models
            .values()
            .map(|m| {
                (
                    m.name.clone(),
                    Arc::new(models::ModelTarget::new(m.clone(), client.clone())),
                )
            })
            .collect();
        // The store is opened now so breakers start from the state other
        // processes (or this one before a restart) left. A store that
        // cannot be opened leaves breakers per process; runs report it.
        let journal = std::sync::OnceLock::new();
        let store = store::open(&config.store).and_then(|s| {
            let breakers = s.breakers();
            let _ = journal.set(s);
            breakers
        });
        let breakers = Breakers::new(
            config
                .tools
                .values()
                .map(|t| (t.name.clone(), t.breaker))
                .chain(config.models.values().map(|m| (m.name.clone(), m.breaker))),
        );
        let breakers = match store {
            Ok(store) => breakers.shared(guard::shared::BreakerSync::new(
                store,
                config.engine.breaker_sync,
            )),
            Err(e) => {
                tracing::warn!("breaker states stay in this process: {e}");
                breakers
            }
        };
        // One bulkhead per target, and one for the host shared by all.
        let host_bulkhead = Arc::new(guard::Bulkhead::new("host", config.engine.bulkhead));
        let bulkheads: std::collections::HashMap<&str, Arc<guard::Bulkhead>> = config
            .tools
            .values()
            .map(|t| (t.name.as_str(), t.bulkhead))
            .chain(
                config
                    .models
                    .values()
                    .map(|m| (m.name.as_str(), m.bulkhead)),
            )
            .map(|(name, policy)| (name, Arc::new(guard::Bulkhead::new(name, policy))))
            .collect();
        let metrics = metrics::Metrics::new();
        // Every callable name resolved once: a call then reaches its
        // targets, retry policies and breakers without lookups by name.
        let mut plans = std::collections::HashMap::new();
        let names = config
            .chains
            .keys()
            .chain(config.tools.keys())
            .chain(config.models.keys());
        for name in names {
            let Some(chain) = config.chain(name) else {
                continue;
            };
            let targets = chain
                .targets
                .iter()
                .map(|t| {
                    let target: Arc<dyn CallTarget> = match (tools.get(t), remotes.get(t)) {
                        (Some(tool), _) => tool.clone(),
                        (None, Some(remote)) => remote.clone(),
                        (None, None) => models[t].clone(),
                    };
                    ChainTarget::new(target, config.retry_policy(&chain.name, t), &breakers)
                        .with_bulkheads(
                            bulkheads.get(t.as_str()).cloned(),
                            Some(host_bulkhead.clone()),
                        )
                })
                .collect::<Vec<_>>();
            plans.insert(
                name.clone(),
                Plan {
                    name: chain.name.as_str().into(),
                    counters: metrics.chain(&chain.name, &targets),
                    targets,
                    deadline: chain.deadline,
                },
            );
        }
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Backstop {
            config,
            runtime,
            tools,
            remotes,
            models,
            breakers,
            plans,
            rng: Mutex::new(rng),
            journal,
            http: client,
            notifications: Mutex::new(Vec::new()),
            metrics,
            queue_wake: Arc::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loaded tools, by name.
    pub fn tools(&self) -> impl Iterator<Item = &WasmTool> {
        self.tools.values().map(|t| t.as_ref())
    }

    pub fn tool(&self, name: &str) -> Option<&WasmTool> {
        self.tools.get(name).map(|t| t.as_ref())
    }

    /// Tools another MCP server serves, by name.
    pub fn remotes(&self) -> impl Iterator<Item = &crate::remote::RemoteTool> {
        self.remotes.values().map(|t| t.as_ref())
    }

    pub fn remote(&self, name: &str) -> Option<&crate::remote::RemoteTool> {
        self.remotes.get(name).map(|t| t.as_ref())
    }

    /// The effect that applies to tool `name` (a component's or a remote
    /// MCP tool's).
    pub fn tool_effect(&self, name: &str) -> Option<crate::Effect> {
        use crate::target::CallTarget;
        match (self.tool(name), self.remote(name)) {
            (Some(t), _) => Some(t.effect()),
            (None, Some(r)) => Some(r.effect()),
            _ => None,
        }
    }

    /// What tool `name` says of itself (a remote tool: once its server
    /// has described it).
    pub fn tool_description(&self, name: &str) -> Option<&runtime::ToolDescription> {
        match (self.tool(name), self.remote(name)) {
            (Some(t), _) => Some(t.description()),
            (None, Some(r)) => r.description(),
            _ => None,
        }
    }

    /// The state store named by the config (`state`, by default
    /// `.backstop/state.db` beside the config), opened on first use.
    pub fn store(&self) -> Result<Arc<dyn Store>, StoreError> {
        if let Some(j) = self.journal.get() {
            return Ok(j.clone());
        }
        let j = store::open(&self.config.store)?;
        Ok(self.journal.get_or_init(|| j).clone())
    }

    /// The state store, if it answers now (within a second): what
    /// `/healthz` reports, and `backstop_store_up` counts.
    pub async fn ready(&self) -> Result<Arc<dyn Store>, StoreError> {
        let checked = match self.store() {
            Ok(s) => s.ping().await.map(|()| s),
            Err(e) => Err(e),
        };
        self.metrics.store_checked(checked.is_ok());
        checked
    }

    /// How long until some target of `chain` admits a call.
    pub fn next_probe_in(&self, chain: &str) -> Option<std::time::Duration> {
        let plan = self.config.chain(chain)?;
        plan.targets
            .iter()
            .filter_map(|t| self.breakers.retry_in(t))
            .min()
    }

    /// Announces a new escalation to the configured webhook, in the
    /// background: delivery is retried by the guard (default retry policy)
    /// and never holds up the run.
    pub fn notify(&self, escalation: &escalation::Escalation) {
        let Some(url) = self.config.escalation.webhook.clone() else {
            return;
        };
        let body = serde_json::json!({"event": "escalation-opened", "escalation": escalation});
        let policy = self.config.retry_policy("", "");
        let client = self.http.clone();
        let id = escalation.id.clone();
        let task = tokio::spawn(async move {
            if let Err(f) = webhook::deliver(&client, &url, &body, policy).await {
                tracing::warn!(escalation = %id, "webhook delivery failed: {f}");
            }
        });
        self.notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Waits up to `within` for webhook deliveries still in flight (a CLI
    /// calls this before it exits).
    pub async fn flush_notifications(&self, within: std::time::Duration) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.notifications.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Configured models, by name.
    pub fn models(&self) -> impl Iterator<Item = &models::ModelTarget> {
        self.models.values().map(|m| m.as_ref())
    }

    /// Asks a model chain (or one model) with a single user prompt.
    pub async fn ask(&self, chain: &str, prompt: &str) -> Result<Outcome, Error> {
        let request = serde_json::to_value(models::ChatRequest::prompt(prompt))
            .expect("a request serializes");
        self.call(chain, request).await
    }

    pub fn breaker_state(&self, target: &str) -> Option<BreakerState> {
        self.breakers.state(target)
    }

    /// How many times `target`'s breaker has opened since load.
    pub fn breaker_opened(&self, target: &str) -> u64 {
        self.breakers.opened_times(target)
    }

    /// Calls `chain` (or a single tool by name) with a new idempotency key.
    pub async fn call(&self, chain: &str, input: serde_json::Value) -> Result<Outcome, Error> {
        // 32 hex digits straight into the shared key: one allocation.
        self.call_inner(chain, input, Self::new_key(), None).await
    }

    /// Calls `chain` with a caller-chosen idempotency key (for example one
    /// stored in a journal, so a resumed call keeps its key).
    pub async fn call_with_key(
        &self,
        chain: &str,
        input: serde_json::Value,
        key: impl Into<Arc<str>>,
    ) -> Result<Outcome, Error> {
        self.call_inner(chain, input, key.into(), None).await
    }

    /// Calls `chain` like [`Backstop::call_with_key`], telling `progress`
    /// of each attempt as it ends: a front that reports progress (MCP's
    /// notifications) sees a retry or a fallback while the call goes on.
    pub async fn call_with_progress(
        &self,
        chain: &str,
        input: serde_json::Value,
        key: impl Into<Arc<str>>,
        progress: &(dyn Fn(&crate::outcome::Attempt) + Sync),
    ) -> Result<Outcome, Error> {
        self.call_inner(chain, input, key.into(), Some(progress))
            .await
    }

    /// A fresh idempotency key: 32 hex digits.
    pub fn new_key() -> Arc<str> {
        let mut hex = [0u8; 32];
        hex::encode_to_slice(rand::random::<u128>().to_be_bytes(), &mut hex)
            .expect("16 bytes are 32 hex digits");
        std::str::from_utf8(&hex).expect("hex is ASCII").into()
    }

    async fn call_inner(
        &self,
        chain: &str,
        input: serde_json::Value,
        key: Arc<str>,
        progress: Option<&(dyn Fn(&crate::outcome::Attempt) + Sync)>,
    ) -> Result<Outcome, Error> {
        let plan = self.plans.get(chain).ok_or_else(|| Error::UnknownChain {
            name: chain.to_owned(),
            hint: match self.config.callable() {
                names if names.is_empty() => " (the config declares none)".into(),
                names => format!(" (known: {})", names.join(", ")),
            },
        })?;
        let runner = ChainRunner {
            chain: &plan.name,
            targets: &plan.targets,
            deadline: plan.deadline,
            rng: &self.rng,
            max_message: self.config.engine.max_message,
            progress,
        };
        let span = tracing::info_span!(
            "call",
            chain = &*plan.name,
            key = &*key,
            result = tracing::field::Empty,
            served_by = tracing::field::Empty,
            attempts = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let outcome = {
            use tracing::Instrument;
            runner.run(&input, key).instrument(span.clone()).await
        };
        let took = started.elapsed();
        self.metrics
            .observe(&plan.counters, &plan.targets, &outcome, took);
        if !span.is_disabled() {
            span.record(
                "result",
                match (outcome.ok, outcome.degraded) {
                    (true, false) => "ok",
                    (true, true) => "degraded",
                    (false, _) => outcome
                        .error
                        .as_ref()
                        .map_or("failed", |e| e.class.as_str()),
                },
            );
            span.record("served_by", outcome.served_by.as_deref().unwrap_or("-"));
            span.record("attempts", outcome.attempts.len());
            span.record("elapsed_ms", outcome.elapsed_ms);
        }
        Ok(outcome)
    }

    /// The counters behind [`Backstop::metrics_text`], for an embedding
    /// server to add its own observations.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The metrics in Prometheus's text format: counters since load, and
    /// breaker states and the escalation queue as they are now.
    pub async fn metrics_text(&self) -> String {
        // A store that does not answer is said so, not waited for.
        let queue = match self.ready().await {
            Ok(s) => s
                .escalation_stats()
                .await
                .map_err(|e| tracing::warn!("metrics: cannot read the escalation queue: {e}"))
                .ok(),
            Err(_) => None,
        };
        self.metrics.render(&self.breakers, queue.as_ref())
    }

    /// Breakers (this process's view), the queue and the `recent_runs`
    /// newest runs.
    pub async fn status(&self, recent_runs: u32) -> Result<status::Status, StoreError> {
        let store = self.store()?;
        status::Status::with_breakers(store.as_ref(), self.breakers(), recent_runs).await
    }

    /// Starts a run of `agent` on `task`, journaled in the config's state
    /// store. `progress` sees the run id first, then each step.
    pub async fn run_agent(
        &self,
        agent: &str,
        task: &str,
        progress: &mut (dyn FnMut(Progress) + Send + Sync),
    ) -> Result<RunReport, RunError> {
        agent::run(self, agent, task, progress).await
    }

    /// Queues a run of `agent` on `task` for any host's workers (see
    /// [`Backstop::work`]) and returns its id at once.
    pub async fn enqueue_run(&self, agent: &str, task: &str) -> Result<String, RunError> {
        let id = agent::queue::enqueue(self, agent, task).await?;
        self.queue_wake.notify_one();
        Ok(id)
    }

    /// Queues run `id` to go on, for any host's workers (after a person
    /// resolved its escalation).
    pub async fn requeue_run(&self, id: &str) -> Result<(), RunError> {
        agent::queue::requeue(self, id).await?;
        self.queue_wake.notify_one();
        Ok(())
    }

    /// What wakes this host's workers when it queued a run.
    pub fn queue_wake(&self) -> Arc<tokio::sync::Notify> {
        self.queue_wake.clone()
    }

    /// Drives the run queue with `workers` until `stop` (what `serve`
    /// does beside the API; an app embedding the crate calls it itself).
    pub async fn work(
        self: Arc<Self>,
        workers: agent::queue::Workers,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let wake = self.queue_wake();
        agent::queue::work(self, workers, wake, stop).await
    }

    /// Resumes run `id` from its journal, in this process. Refused while
    /// another process holds the run, and when the config or a component
    /// changed since the run started (unless allowed).
    pub async fn resume_run(
        &self,
        id: &str,
        options: &ResumeOptions,
        progress: &mut (dyn FnMut(Progress) + Send + Sync),
    ) -> Result<RunReport, RunError> {
        agent::resume(self, id, options, progress).await
    }

    /// Every breaker: this process's view, refreshed from the shared store.
    pub fn breakers(&self) -> Vec<BreakerStatus> {
        let rows = self
            .breakers
            .sync()
            .and_then(|s| s.store().all().ok())
            .unwrap_or_default();
        let mut out = status::stored_breakers(&self.config, rows);
        for b in &mut out {
            if let (Some(state), Some(retry_in)) = (
                self.breakers.state(&b.target),
                self.breakers.retry_in(&b.target),
            ) {
                b.state = state;
                b.retry_in_ms = retry_in.as_millis() as u64;
                b.forced = self.breakers.forced(&b.target);
            }
        }
        out
    }

    /// An operator's `action` on `target`'s breaker (a tool or a model):
    /// applied in this process at once and, through the state store, in
    /// every process sharing it within [`crate::guard::shared::SYNC_EVERY`].
    /// `by` (who did it) is kept with the state, cleaned of control
    /// characters and cut to 128 characters. Returns the breaker after.
    pub fn set_breaker(
        &self,
        target: &str,
        action: crate::guard::Action,
        by: &str,
    ) -> Result<BreakerStatus, Error> {
        let by = clean_actor(by);
        if !self.breakers.set(target, action, &by)? {
            return Err(Error::UnknownBreaker {
                name: target.to_owned(),
                hint: format!(" (breakers: {})", self.config.breaker_targets().join(", ")),
            });
        }
        let mut b = self
            .breakers()
            .into_iter()
            .find(|b| b.target == target)
            .expect("a breaker of the config");
        b.set_by = Some(by);
        Ok(b)
    }
}

/// Who set a breaker, as it is kept: printable, at most 128 characters,
/// never empty (an empty one would read as the breaker's own change).
pub fn clean_actor(by: &str) -> String {
    let s: String = by.chars().filter(|c| !c.is_control()).take(128).collect();
    if s.trim().is_empty() {
        "unknown".to_owned()
    } else {
        s
    }
}

/// How a run reaches the rest of the host.
impl agent::Host for Backstop {
    fn config(&self) -> &Config {
        &self.config
    }

    fn journal(&self) -> Result<Arc<dyn Store>, StoreError> {
        self.store()
    }

    fn call<'a>(
        &'a self,
        chain: &'a str,
        input: serde_json::Value,
        key: String,
    ) -> HostFuture<'a, Option<Outcome>> {
        Box::pin(async move { self.call_with_key(chain, input, key).await.ok() })
    }

    fn tool_effect(&self, tool: &str) -> Option<crate::Effect> {
        Backstop::tool_effect(self, tool)
    }

    fn tool_description(&self, tool: &str) -> Option<runtime::ToolDescription> {
        Backstop::tool_description(self, tool).cloned()
    }

    fn can_reconcile(&self, tool: &str) -> bool {
        self.tool(tool).is_some_and(WasmTool::can_reconcile)
    }

    fn reconcile<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
    ) -> HostFuture<'a, Result<runtime::Reconciled, crate::Failure>> {
        Box::pin(async move {
            match self.tool(tool) {
                Some(t) => t.reconcile(key).await,
                None => Ok(runtime::Reconciled::Unknown),
            }
        })
    }

    fn notify(&self, escalation: &escalation::Escalation) {
        Backstop::notify(self, escalation)
    }

    fn next_probe_in(&self, chain: &str) -> Option<std::time::Duration> {
        Backstop::next_probe_in(self, chain)
    }

    fn tool_digests(&self) -> Vec<(String, String)> {
        self.tools()
            .map(|t| (t.name().to_owned(), t.digest().to_owned()))
            .collect()
    }
}
