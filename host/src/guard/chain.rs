//! Runs one call through an ordered chain of targets, under one deadline,
//! with a breaker and a retry policy per target, and reports every attempt.

use super::breaker::{Breaker, BreakerPolicy, BreakerState, Permit, Rejected};
use super::retry::{Decision, RetryPolicy};
use crate::outcome::{
    Attempt, CallError, Effect, EscalationReason, Failure, FailureClass, Outcome,
};
use crate::runtime::{CallCtx, ToolOutput};
use rand::rngs::StdRng;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Something a chain can call: a tool now, a model later. Implementations
/// never retry: the chain is the one layer that does.
pub trait CallTarget: Send + Sync {
    fn name(&self) -> &str;
    fn effect(&self) -> Effect;
    /// The longest a single attempt may take.
    fn timeout(&self) -> Duration;
    fn call<'a>(
        &'a self,
        input: &'a serde_json::Value,
        ctx: &'a CallCtx,
    ) -> Pin<Box<dyn Future<Output = Result<ToolOutput, Failure>> + Send + 'a>>;
}

/// The breakers of every target, shared by all calls of a process.
#[derive(Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(policies: impl IntoIterator<Item = (String, BreakerPolicy)>) -> Self {
        let map = policies
            .into_iter()
            .map(|(k, p)| (k, Breaker::new(p)))
            .collect();
        Breakers {
            map: Mutex::new(map),
        }
    }

    fn with<R>(&self, target: &str, f: impl FnOnce(&mut Breaker) -> R) -> Option<R> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(target).map(f)
    }

    /// Asks to call `target`; a target without a breaker is always admitted.
    pub fn acquire(&self, target: &str, now: Instant) -> Result<Option<Permit>, Rejected> {
        self.with(target, |b| b.acquire(now)).transpose()
    }

    pub fn record(&self, target: &str, permit: Option<Permit>, failed: bool, now: Instant) {
        if let Some(p) = permit {
            self.with(target, |b| b.record(p, failed, now));
        }
    }

    pub fn state(&self, target: &str) -> Option<BreakerState> {
        self.with(target, |b| b.state(Instant::now()))
    }

    pub fn policy(&self, target: &str) -> Option<BreakerPolicy> {
        self.with(target, |b| *b.policy())
    }

    /// How long until `target`'s breaker admits a call.
    pub fn retry_in(&self, target: &str) -> Option<Duration> {
        self.with(target, |b| b.retry_in(Instant::now()))
    }

    /// How many times `target`'s breaker has opened.
    pub fn opened_times(&self, target: &str) -> u64 {
        self.with(target, |b| b.opened_times()).unwrap_or(0)
    }
}

/// One chain call's plan: targets in order, each with its retry policy.
pub struct ChainRunner<'a> {
    pub chain: &'a str,
    pub targets: Vec<(Arc<dyn CallTarget>, RetryPolicy)>,
    pub deadline: Duration,
    pub breakers: &'a Breakers,
    pub rng: &'a Mutex<StdRng>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ChainRunner<'_> {
    /// Runs the call. Never fails: every way it can end is in the outcome.
    pub async fn run(&self, input: &serde_json::Value, key: String) -> Outcome {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let mut attempts: Vec<Attempt> = Vec::new();
        // Why each target before the one that served did not.
        let mut passed_over: Vec<String> = Vec::new();
        let mut last: Option<Failure> = None;
        let mut all_open = true;

        for (target, policy) in &self.targets {
            let name = target.name().to_owned();
            let mut attempt = 1u32;
            let mut previous_delay = Duration::ZERO;
            loop {
                let now = Instant::now();
                let remaining = deadline.saturating_duration_since(now);
                if remaining.is_zero() {
                    let f = Failure::new(
                        FailureClass::DeadlineExceeded,
                        format!(
                            "call deadline of {} passed",
                            humantime::format_duration(self.deadline)
                        ),
                    );
                    attempts.push(Attempt {
                        target: name.clone(),
                        attempt,
                        class: f.class.to_string(),
                        message: f.message.clone(),
                        elapsed_ms: 0,
                        delay_ms: 0,
                        then: "stop".into(),
                    });
                    return self.failed(
                        started,
                        key,
                        attempts,
                        f,
                        Some(EscalationReason::RetriesExhausted),
                    );
                }
                let permit = match self.breakers.acquire(&name, now) {
                    Ok(p) => p,
                    Err(rejected) => {
                        let f = Failure::new(
                            FailureClass::CircuitOpen,
                            format!(
                                "breaker {}; next probe in {:.1}s",
                                if rejected.state == BreakerState::Open {
                                    "open"
                                } else {
                                    "half-open, probe in flight"
                                },
                                rejected.retry_in.as_secs_f64()
                            ),
                        );
                        attempts.push(Attempt {
                            target: name.clone(),
                            attempt,
                            class: f.class.to_string(),
                            message: f.message.clone(),
                            elapsed_ms: 0,
                            delay_ms: 0,
                            then: "fail-over".into(),
                        });
                        passed_over.push(format!("{name}: circuit open"));
                        last = Some(f);
                        break;
                    }
                };
                all_open = false;
                let mut timeout = target.timeout().min(remaining);
                if permit.as_ref().is_some_and(Permit::is_probe) {
                    if let Some(p) = self.breakers.policy(&name) {
                        timeout = timeout.min(p.probe_timeout);
                    }
                }
                let ctx = CallCtx {
                    key: key.clone(),
                    attempt,
                    timeout,
                };
                let t0 = Instant::now();
                let result = target.call(input, &ctx).await;
                let elapsed = t0.elapsed();
                let failed = result
                    .as_ref()
                    .err()
                    .is_some_and(|f| f.class.counts_for_breaker());
                self.breakers.record(&name, permit, failed, Instant::now());
                let failure = match result {
                    Ok(out) => {
                        attempts.push(Attempt {
                            target: name.clone(),
                            attempt,
                            class: "ok".into(),
                            message: String::new(),
                            elapsed_ms: millis(elapsed),
                            delay_ms: 0,
                            then: "done".into(),
                        });
                        let degraded = !passed_over.is_empty();
                        return Outcome {
                            ok: true,
                            chain: self.chain.to_owned(),
                            key,
                            value: Some(out.value),
                            confidence: out.confidence,
                            served_by: Some(name),
                            degraded,
                            degraded_reason: degraded
                                .then(|| format!("fallback: {}", passed_over.join("; "))),
                            attempts,
                            error: None,
                            elapsed_ms: millis(started.elapsed()),
                        };
                    }
                    Err(f) => f,
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                let decision = {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    policy.decide(
                        &failure,
                        target.effect(),
                        attempt,
                        previous_delay,
                        remaining,
                        &mut *rng,
                    )
                };
                let mut record = Attempt {
                    target: name.clone(),
                    attempt,
                    class: failure.class.to_string(),
                    message: failure.message.clone(),
                    elapsed_ms: millis(elapsed),
                    delay_ms: 0,
                    then: String::new(),
                };
                match decision {
                    Decision::Retry(delay) => {
                        record.delay_ms = millis(delay);
                        record.then = "retry".into();
                        attempts.push(record);
                        tokio::time::sleep(delay).await;
                        previous_delay = delay;
                        attempt += 1;
                    }
                    Decision::FailOver(note) => {
                        record.then = "fail-over".into();
                        if let Some(n) = &note {
                            record.message = format!("{}; {n}", record.message);
                        }
                        attempts.push(record);
                        passed_over.push(format!("{name}: {}", failure.class));
                        last = Some(failure);
                        break;
                    }
                    Decision::Stop(reason) => {
                        record.then = "stop".into();
                        attempts.push(record);
                        return self.failed(started, key, attempts, failure, Some(reason));
                    }
                }
            }
        }
        let last = last
            .unwrap_or_else(|| Failure::new(FailureClass::Permanent, "the chain has no targets"));
        let reason = if all_open {
            EscalationReason::CircuitOpen
        } else {
            EscalationReason::RetriesExhausted
        };
        let summary = Failure {
            message: format!(
                "every target failed ({}); last: {}",
                passed_over.join("; "),
                last.message
            ),
            ..last
        };
        self.failed(started, key, attempts, summary, Some(reason))
    }

    fn failed(
        &self,
        started: Instant,
        key: String,
        attempts: Vec<Attempt>,
        f: Failure,
        escalate: Option<EscalationReason>,
    ) -> Outcome {
        Outcome {
            ok: false,
            chain: self.chain.to_owned(),
            key,
            value: None,
            confidence: None,
            served_by: None,
            degraded: false,
            degraded_reason: None,
            attempts,
            error: Some(CallError {
                class: f.class,
                message: f.message,
                escalate,
            }),
            elapsed_ms: millis(started.elapsed()),
        }
    }
}
