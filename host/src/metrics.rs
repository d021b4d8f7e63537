//! Prometheus metrics: what the guards did, by target, class and chain,
//! plus breaker and escalation-queue gauges read when scraped.
//!
//! Counters a call touches are created when the config loads (one per
//! target and class), so recording an attempt is an atomic add: no label
//! hashing or allocation on the call path.

use crate::guard::{BreakerState, Breakers, ChainTarget, Transitions};
use crate::outcome::{AttemptClass, FailureClass, Next, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetClass {
    target: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetState {
    target: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChainResult {
    chain: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChainLabel {
    chain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Fallback {
    chain: String,
    /// The target that served.
    target: String,
    /// The class that made the first target pass the call on.
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequest {
    method: String,
    /// The route's pattern (`/v1/runs/{id}`), so ids do not make series.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Index of an attempt's class in a target's counters: 0 is `ok`.
fn class_index(class: AttemptClass) -> usize {
    class.failure().map_or(0, |c| c.index() + 1)
}

fn class_name(i: usize) -> &'static str {
    match i {
        0 => "ok",
        i => FailureClass::ALL[i - 1].as_str(),
    }
}

const CLASSES: usize = FailureClass::ALL.len() + 1;

/// One target's counters, resolved at load.
struct TargetCounters {
    attempts: [Counter; CLASSES],
    failures: [Counter; CLASSES],
    retries: [Counter; CLASSES],
}

/// One chain's counters, resolved at load.
pub(crate) struct ChainCounters {
    chain: String,
    targets: Vec<TargetCounters>,
    ok: Counter,
    degraded: Counter,
    failed: Counter,
    seconds: Histogram,
}

pub struct Metrics {
    registry: Registry,
    attempts: Family<TargetClass, Counter>,
    failures: Family<TargetClass, Counter>,
    retries: Family<TargetClass, Counter>,
    calls: Family<ChainResult, Counter>,
    fallbacks: Family<Fallback, Counter>,
    call_seconds: Family<ChainLabel, Histogram>,
    breaker_state: Family<TargetState, Gauge>,
    breaker_transitions: Family<TargetState, Counter>,
    escalations_open: Family<ReasonLabel, Gauge>,
    escalations_open_total: Gauge,
    escalation_oldest: Gauge<f64, AtomicU64>,
    http_requests: Family<HttpRequest, Counter>,
    http_seconds: Family<RouteLabel, Histogram>,
    store_up: Gauge,
    store_down: Counter,
    /// Breaker transitions already added to the counters, by target.
    exported: Mutex<HashMap<String, Transitions>>,
}

fn latency_buckets() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("backstop");
        let m = Metrics {
            attempts: Family::default(),
            failures: Family::default(),
            retries: Family::default(),
            calls: Family::default(),
            fallbacks: Family::default(),
            call_seconds: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            escalations_open: Family::default(),
            escalations_open_total: Gauge::default(),
            escalation_oldest: Gauge::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            store_up: Gauge::default(),
            store_down: Counter::default(),
            exported: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "attempts",
            "Attempts made on a target, by how each ended (ok or its failure class)",
            m.attempts.clone(),
        );
        registry.register(
            "failures",
            "Failed attempts on a target, by failure class",
            m.failures.clone(),
        );
        registry.register(
            "retries",
            "Attempts on a target retried after a backoff, by the class that was retried",
            m.retries.clone(),
        );
        registry.register(
            "calls",
            "Chain calls by result: ok, degraded (a fallback served) or failed",
            m.calls.clone(),
        );
        registry.register(
            "fallbacks",
            "Calls served by a fallback, by chain, serving target and why the first target passed",
            m.fallbacks.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Whole chain calls, every attempt and wait included",
            m.call_seconds.clone(),
        );
        registry.register(
            "breaker_state",
            "1 for the state a target's breaker is in, 0 for the others",
            m.breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Breaker state changes in this process, by the state entered",
            m.breaker_transitions.clone(),
        );
        registry.register(
            "escalations_open_by_reason",
            "Open escalations waiting for a person, by reason",
            m.escalations_open.clone(),
        );
        registry.register(
            "escalations_open",
            "Open escalations waiting for a person (queue depth)",
            m.escalations_open_total.clone(),
        );
        registry.register(
            "escalation_oldest_age_seconds",
            "Age of the oldest open escalation (0 when none)",
            m.escalation_oldest.clone(),
        );
        registry.register(
            "http_requests",
            "Requests to the HTTP API (backstop serve), by method, route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request to the HTTP API, by route",
            m.http_seconds.clone(),
        );
        registry.register(
            "store_up",
            "1 while the state store answers (its last check succeeded), 0 while it does not",
            m.store_up.clone(),
        );
        registry.register(
            "store_unreachable",
            "Checks of the state store (readiness, scrapes) that found it unreachable",
            m.store_down.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records a check of the state store.
    pub(crate) fn store_checked(&self, up: bool) {
        self.store_up.set(i64::from(up));
        if !up {
            self.store_down.inc();
        }
    }

    fn target(&self, target: &str) -> TargetCounters {
        let by_class = |f: &Family<TargetClass, Counter>| {
            std::array::from_fn(|i| {
                f.get_or_create(&TargetClass {
                    target: target.to_owned(),
                    class: class_name(i).to_owned(),
                })
                .clone()
            })
        };
        TargetCounters {
            attempts: by_class(&self.attempts),
            failures: by_class(&self.failures),
            retries: by_class(&self.retries),
        }
    }

    pub(crate) fn chain(&self, chain: &str, targets: &[ChainTarget]) -> ChainCounters {
        let result = |r: &str| {
            self.calls
                .get_or_create(&ChainResult {
                    chain: chain.to_owned(),
                    result: r.to_owned(),
                })
                .clone()
        };
        ChainCounters {
            chain: chain.to_owned(),
            targets: targets.iter().map(|t| self.target(&t.name)).collect(),
            ok: result("ok"),
            degraded: result("degraded"),
            failed: result("failed"),
            seconds: self
                .call_seconds
                .get_or_create(&ChainLabel {
                    chain: chain.to_owned(),
                })
                .clone(),
        }
    }

    /// Counts a finished call.
    pub(crate) fn observe(
        &self,
        counters: &ChainCounters,
        targets: &[ChainTarget],
        outcome: &Outcome,
        took: Duration,
    ) {
        counters.seconds.observe(took.as_secs_f64());
        match (outcome.ok, outcome.degraded) {
            (true, false) => counters.ok.inc(),
            (true, true) => counters.degraded.inc(),
            (false, _) => counters.failed.inc(),
        };
        for a in &outcome.attempts {
            let Some(i) = targets.iter().position(|t| Arc::ptr_eq(&t.name, &a.target)) else {
                continue;
            };
            let c = &counters.targets[i];
            let class = class_index(a.class);
            c.attempts[class].inc();
            if class != 0 {
                c.failures[class].inc();
            }
            if a.then == Next::Retry {
                c.retries[class].inc();
            }
        }
        if outcome.degraded {
            let reason = outcome
                .attempts
                .iter()
                .find(|a| a.then == Next::FailOver)
                .map_or("", |a| a.class.as_str());
            self.fallbacks
                .get_or_create(&Fallback {
                    chain: counters.chain.clone(),
                    target: outcome.served_by.as_deref().unwrap_or("").to_owned(),
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// Counts an answered HTTP request.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpRequest {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Reads breaker states and the queue into the gauges, then renders
    /// the text exposition format.
    pub(crate) fn render(
        &self,
        breakers: &Breakers,
        queue: Option<&crate::escalation::Stats>,
    ) -> String {
        {
            let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
            let mut targets: Vec<&str> = breakers.targets().collect();
            targets.sort_unstable();
            for target in targets {
                let (Some(state), Some(now)) =
                    (breakers.state(target), breakers.transitions(target))
                else {
                    continue;
                };
                for s in [
                    BreakerState::Closed,
                    BreakerState::Open,
                    BreakerState::HalfOpen,
                ] {
                    self.breaker_state
                        .get_or_create(&TargetState {
                            target: target.to_owned(),
                            state: s.as_str().to_owned(),
                        })
                        .set(i64::from(s == state));
                }
                let before = exported.entry(target.to_owned()).or_default();
                for (s, n, b) in [
                    (BreakerState::Closed, now.closed, before.closed),
                    (BreakerState::Open, now.open, before.open),
                    (BreakerState::HalfOpen, now.half_open, before.half_open),
                ] {
                    self.breaker_transitions
                        .get_or_create(&TargetState {
                            target: target.to_owned(),
                            state: s.as_str().to_owned(),
                        })
                        .inc_by(n.saturating_sub(b));
                }
                *before = now;
            }
        }
        if let Some(q) = queue {
            self.escalations_open.clear();
            for (reason, n) in &q.by_reason {
                self.escalations_open
                    .get_or_create(&ReasonLabel {
                        reason: reason.clone(),
                    })
                    .set(*n as i64);
            }
            self.escalations_open_total.set(q.open as i64);
            self.escalation_oldest
                .set(q.oldest_open_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
