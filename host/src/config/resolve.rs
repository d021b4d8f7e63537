//! Turning the parsed file into a [`Config`]: defaults filled in, each
//! section validated by its own file, chains flattened.

use super::parse::{check_name, Loader};
use super::schema::{BreakerSpec, RetrySpec};
use super::{
    schema, units, CircuitOpenPolicy, Config, ConfigError, EngineConfig, EscalationConfig,
    DEFAULT_HOST_BULKHEAD,
};
use crate::guard::{Backoff, BreakerPolicy, BulkheadPolicy, Jitter, RetryPolicy};
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::time::Duration;

pub(super) const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

pub(super) fn merge_retry(into: &mut RetrySpec, over: &RetrySpec) {
    into.attempts = over.attempts.or(into.attempts);
    into.base = over.base.or(into.base);
    into.cap = over.cap.or(into.cap);
    into.jitter = over.jitter.or(into.jitter);
    into.max_retry_after = over.max_retry_after.or(into.max_retry_after);
}

/// Fills the brief's defaults: 5 attempts, full jitter from 1 s to 60 s,
/// Retry-After honoured up to 60 s.
pub(super) fn resolve_retry(spec: &RetrySpec) -> Result<RetryPolicy, String> {
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

pub(super) fn resolve_breaker(defaults: &BreakerSpec, over: Option<&BreakerSpec>) -> BreakerPolicy {
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
        shared_failures: o.shared_failures.or(d.shared_failures).unwrap_or(0),
    }
}

pub(super) fn bulkhead(
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

impl Loader<'_> {
    pub(super) fn load(self) -> Result<Config, ConfigError> {
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
        let store = match &file.state {
            Some(state) => crate::store::Location::parse(state.get_ref(), |p| self.path(p))
                .map_err(|m| self.err(state.span().start, "state", m))?,
            None => crate::store::Location::Sqlite(self.path(".backstop/state.db")),
        };
        let defaults = &file.defaults;
        let default_retry = defaults.retry.clone();
        resolve_retry(&default_retry).map_err(|m| self.err(0, "defaults.retry", m))?;

        let mut tools = BTreeMap::new();
        for (name, spec) in &file.tools {
            // Name errors point at the table's first required key.
            let at = match (&spec.component, &spec.mcp) {
                (Some(c), _) => c.span(),
                (None, Some(m)) => m.span(),
                (None, None) => 0..0,
            };
            let name = Spanned::new(at, name.clone());
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
                        "`{}` is already a tool or model; tools, models and chains share one \
                            namespace",
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
        let mcp = self.mcp(&file, &tools, &models, &chains)?;
        // Run locks are files on this machine, beside a SQLite store.
        let locks_dir = match &store {
            crate::store::Location::Sqlite(p) => {
                let mut l = p.clone().into_os_string();
                l.push(".locks");
                l.into()
            }
            crate::store::Location::Postgres(_) => self.path(".backstop/postgres.locks"),
        };
        // Where the state is kept is not what a run does: hosts sharing
        // one PostgreSQL may reach it by different URLs (a pool size, a
        // proxy), and a run started on one must resume on another. So
        // the `state` value is left out of the digest drift compares.
        let digest = {
            use sha2::Digest;
            let mut text = self.text.to_string();
            if let Some(state) = &file.state {
                let span = state.span();
                if text.is_char_boundary(span.start) && text.is_char_boundary(span.end) {
                    text.replace_range(span, "");
                }
            }
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        };
        Ok(Config {
            path: self.file.clone(),
            digest,
            state: file.state.map(|s| s.into_inner()),
            store,
            locks_dir,
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
                breaker_sync: file
                    .engine
                    .breaker_sync
                    .map_or(crate::guard::shared::SYNC_EVERY, |d| d.0),
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
            mcp,
            default_retry,
            default_deadline: file.defaults.deadline.map_or(DEFAULT_DEADLINE, |d| d.0),
        })
    }
}
