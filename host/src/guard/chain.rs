//! Runs one call through an ordered chain of targets, under one deadline,
//! with a breaker and a retry policy per target, and reports every attempt.

use super::breaker::{
    Breaker, BreakerPolicy, BreakerState, Forced, Permit, Rejected, SharedBreaker, Transitions,
};
use super::bulkhead::{self, Bulkhead};
use super::retry::{Decision, RetryPolicy};
use super::shared::{Action, BreakerSync};
use crate::outcome::{
    Attempt, AttemptClass, Attempts, CallError, EscalationReason, Failure, FailureClass, Next,
    Outcome,
};
use crate::target::{CallCtx, CallTarget};
use rand::rngs::StdRng;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[inline]
fn lock(b: &SharedBreaker) -> std::sync::MutexGuard<'_, Breaker> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// The breakers of every target, shared by all calls of a process.
#[derive(Default)]
pub struct Breakers {
    map: HashMap<String, SharedBreaker>,
    sync: Option<Arc<BreakerSync>>,
}

impl Breakers {
    pub fn new(policies: impl IntoIterator<Item = (String, BreakerPolicy)>) -> Self {
        let map = policies
            .into_iter()
            .map(|(k, p)| (k, Arc::new(Mutex::new(Breaker::new(p)))))
            .collect();
        Breakers { map, sync: None }
    }

    /// Shares these breakers with other processes through `sync`'s store.
    pub fn shared(mut self, sync: BreakerSync) -> Self {
        self.sync = Some(Arc::new(sync));
        self
    }

    pub fn sync(&self) -> Option<&BreakerSync> {
        self.sync.as_deref()
    }

    /// Every target with a breaker.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Brings `target`'s breaker up to date with the shared state, when a
    /// read is due.
    fn refresh(&self, target: &str, now: Instant) {
        if let (Some(sync), Some(b)) = (&self.sync, self.map.get(target)) {
            if sync.due(&mut lock(b), now) {
                sync.pull(target, b, now);
            }
        }
    }

    /// `target`'s breaker, for a chain to hold on to: calls then reach it
    /// without a lookup by name.
    pub fn get(&self, target: &str) -> Option<SharedBreaker> {
        self.map.get(target).cloned()
    }

    fn with<R>(&self, target: &str, f: impl FnOnce(&mut Breaker) -> R) -> Option<R> {
        self.map.get(target).map(|b| f(&mut lock(b)))
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
        let now = Instant::now();
        self.refresh(target, now);
        self.with(target, |b| b.state(now))
    }

    pub fn transitions(&self, target: &str) -> Option<Transitions> {
        self.with(target, |b| b.transitions())
    }

    pub fn policy(&self, target: &str) -> Option<BreakerPolicy> {
        self.with(target, |b| *b.policy())
    }

    /// How long until `target`'s breaker admits a call.
    pub fn retry_in(&self, target: &str) -> Option<Duration> {
        let now = Instant::now();
        self.refresh(target, now);
        self.with(target, |b| b.retry_in(now))
    }

    /// How many times `target`'s breaker has opened.
    pub fn opened_times(&self, target: &str) -> u64 {
        self.with(target, |b| b.opened_times()).unwrap_or(0)
    }

    /// The state an operator holds `target`'s breaker in, if any.
    pub fn forced(&self, target: &str) -> Option<Forced> {
        let now = Instant::now();
        self.refresh(target, now);
        self.with(target, |b| b.forced()).flatten()
    }

    /// An operator's `action` on `target`'s breaker: applied here at once,
    /// and written to the shared store (when there is one) for every other
    /// process, saying `by` whom. `Ok(false)`: no such breaker.
    pub fn set(
        &self,
        target: &str,
        action: Action,
        by: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let Some(b) = self.map.get(target) else {
            return Ok(false);
        };
        {
            let mut guard = lock(b);
            match action {
                Action::Reset => guard.reset(),
                Action::ForceOpen => guard.force(Forced::Open, Instant::now()),
                Action::ForceClose => guard.force(Forced::Closed, Instant::now()),
            }
        }
        tracing::warn!(
            target_name = target,
            by,
            "breaker {} by hand",
            action.as_str()
        );
        if let Some(sync) = &self.sync {
            sync.set(target, b, action, by)?;
        }
        Ok(true)
    }
}

/// One target of a chain, resolved once when the config loads: the
/// target, its name, its retry policy and its breaker.
#[derive(Clone)]
pub struct ChainTarget {
    pub target: Arc<dyn CallTarget>,
    pub name: Arc<str>,
    pub retry: RetryPolicy,
    pub breaker: Option<SharedBreaker>,
    pub sync: Option<Arc<BreakerSync>>,
    /// The target's own bulkhead, and the host's, taken in that order.
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub host_bulkhead: Option<Arc<Bulkhead>>,
}

impl ChainTarget {
    pub fn new(target: Arc<dyn CallTarget>, retry: RetryPolicy, breakers: &Breakers) -> Self {
        let name: Arc<str> = target.name().into();
        ChainTarget {
            breaker: breakers.get(&name),
            sync: breakers.sync.clone(),
            target,
            name,
            retry,
            bulkhead: None,
            host_bulkhead: None,
        }
    }

    /// Caps the calls of this target running at once (`target`) and,
    /// with every other target sharing it, of the host (`host`).
    pub fn with_bulkheads(
        mut self,
        target: Option<Arc<Bulkhead>>,
        host: Option<Arc<Bulkhead>>,
    ) -> Self {
        self.bulkhead = target;
        self.host_bulkhead = host;
        self
    }

    /// Asks the breaker for a permit, first taking on what other processes
    /// wrote when a read is due.
    #[inline]
    fn admit(&self, b: &SharedBreaker, now: Instant) -> Result<Permit, Rejected> {
        let mut guard = lock(b);
        if let Some(sync) = &self.sync {
            if sync.due(&mut guard, now) {
                drop(guard);
                sync.pull(&self.name, b, now);
                guard = lock(b);
            }
        }
        let admitted = guard.acquire(now);
        if let (Ok(permit), Some(sync)) = (&admitted, &self.sync) {
            if permit.is_probe() {
                let policy = *guard.policy();
                drop(guard);
                // Probes are claimed in the store, so the configured number
                // holds across processes, not per process.
                if !sync.claim_probe(&self.name, policy.half_open_probes, policy.probe_timeout) {
                    let mut guard = lock(b);
                    let permit = admitted.expect("matched Ok");
                    guard.probe_elsewhere(permit, now + policy.probe_timeout);
                    return Err(Rejected {
                        retry_in: policy.probe_timeout,
                        state: BreakerState::HalfOpen,
                    });
                }
                guard = lock(b);
            }
        }
        self.share(b, guard);
        admitted
    }

    /// Writes an open or close for other processes, with the lock released.
    #[inline]
    fn share(&self, b: &SharedBreaker, mut guard: std::sync::MutexGuard<'_, Breaker>) {
        let change = guard.take_change();
        drop(guard);
        if let (Some(change), Some(sync)) = (change, &self.sync) {
            sync.push(&self.name, b, change);
        }
    }

    /// Reports an attempt's result to the breaker; its state after goes
    /// in the attempt's span (read only when the span is on).
    #[inline]
    fn record(
        &self,
        b: &SharedBreaker,
        permit: Permit,
        failed: bool,
        now: Instant,
        span: &tracing::Span,
    ) {
        let mut guard = lock(b);
        guard.record(permit, failed, now);
        // Read only on a failure: a success's path stays as it was.
        let shared = if failed {
            guard.policy().shared_failures
        } else {
            0
        };
        if shared > 0 {
            if let Some(sync) = &self.sync {
                // Counted for every host, with the lock released: the
                // failure path alone pays the store's round trip.
                let window = guard.policy().window;
                drop(guard);
                let reached = sync.count_failure(&self.name, shared, window);
                guard = lock(b);
                if reached {
                    guard.trip(now);
                }
            }
        }
        if !span.is_disabled() {
            span.record("breaker", guard.state(now).as_str());
        }
        self.share(b, guard);
    }
}

/// One chain call's plan: targets in order, each with its retry policy.
pub struct ChainRunner<'a> {
    pub chain: &'a Arc<str>,
    pub targets: &'a [ChainTarget],
    pub deadline: Duration,
    pub rng: &'a Mutex<StdRng>,
    /// Longest failure message kept (longer ones are cut, marked).
    pub max_message: usize,
    /// Told of each attempt as it ends (a retry, a fallback), for a caller
    /// that reports progress while the call goes on.
    pub progress: Option<&'a (dyn Fn(&Attempt) + Sync)>,
}

/// `now - started`, without the subtraction when the clock was never read
/// again (a rejected or out-of-time first attempt).
#[inline]
fn since(started: Instant, now: Instant) -> Duration {
    if now == started {
        Duration::ZERO
    } else {
        now - started
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ChainRunner<'_> {
    /// Runs the call. Never fails: every way it can end is in the outcome.
    ///
    /// The happy path (first target, first attempt) allocates nothing of
    /// its own: names and the key are shared, the attempt record is inline.
    pub async fn run(&self, input: &serde_json::Value, mut key: Arc<str>) -> Outcome {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let mut attempts = Attempts::new();
        // Why each target before the one that served did not.
        let mut passed_over: smallvec::SmallVec<[(Arc<str>, FailureClass); 2]> =
            smallvec::SmallVec::new();
        let mut last: Option<Failure> = None;
        let mut all_open = true;
        let mut now = started;

        // Whether some target was retried, or stopped only because its
        // retries (or the time for them) ran out.
        let mut exhausted = false;
        for (i, t) in self.targets.iter().enumerate() {
            let name = &t.name;
            // The last target has nothing to fall back to: it stops.
            let moving_on = if i + 1 == self.targets.len() {
                Next::Stop
            } else {
                Next::FailOver
            };
            // This target's last failure before a retry: when the retry is
            // refused by the breaker that failure opened (a failed probe
            // reopens it), the failure is the cause, not the open breaker.
            let mut retried: Option<Failure> = None;
            let mut attempt = 1u32;
            let mut previous_delay = Duration::ZERO;
            loop {
                // Fields are filled in as the attempt goes; a disabled span
                // costs a branch.
                let span = tracing::info_span!(
                    "attempt",
                    target = &**name,
                    attempt,
                    class = tracing::field::Empty,
                    then = tracing::field::Empty,
                    delay_ms = tracing::field::Empty,
                    breaker = tracing::field::Empty,
                );
                // The clock has not moved before the first attempt.
                let remaining = if now == started {
                    self.deadline
                } else {
                    deadline.saturating_duration_since(now)
                };
                if remaining.is_zero() {
                    let f = Failure::new(
                        FailureClass::DeadlineExceeded,
                        format!(
                            "call deadline of {} passed",
                            humantime::format_duration(self.deadline)
                        ),
                    );
                    let record = Attempt::failed(name, attempt, &f, 0, Next::Stop);
                    return self.out_of_time(since(started, now), key, attempts, record, f, &span);
                }
                let admitted = t.breaker.as_ref().map(|b| t.admit(b, now));
                let permit = match admitted {
                    None => None,
                    Some(Ok(p)) => Some(p),
                    Some(Err(rejected)) => {
                        // Static text and the wait in `delay_ms`: failing
                        // fast should cost next to nothing.
                        let f = Failure::new(
                            FailureClass::CircuitOpen,
                            if rejected.state == BreakerState::Open {
                                "breaker open"
                            } else {
                                "breaker half-open, probe in flight"
                            },
                        );
                        let mut record = Attempt::failed(name, attempt, &f, 0, moving_on);
                        record.delay_ms = millis(rejected.retry_in);
                        span.record("breaker", rejected.state.as_str());
                        self.note(&span, &record);
                        attempts.push(record);
                        let cause = retried.take().unwrap_or(f);
                        passed_over.push((name.clone(), cause.class));
                        last = Some(cause);
                        break;
                    }
                };
                // Then a slot: free ones are taken without waiting (no
                // await, no clock read); a full bulkhead queues, boxed so
                // the wait does not grow every call's future.
                let mut waited_for_slot = false;
                let slot =
                    match bulkhead::try_enter(t.bulkhead.as_deref(), t.host_bulkhead.as_deref()) {
                        Some(slot) => Ok(slot),
                        None => {
                            waited_for_slot = true;
                            let waited = Box::pin(bulkhead::enter(
                                t.bulkhead.as_deref(),
                                t.host_bulkhead.as_deref(),
                                remaining,
                            ))
                            .await;
                            now = Instant::now();
                            waited
                        }
                    };
                let slot = match slot {
                    Ok(slot) => slot,
                    Err(f) => {
                        // Not run: a probe the breaker gave is given back.
                        if let (Some(b), Some(p)) = (&t.breaker, permit) {
                            lock(b).cancel(p);
                        }
                        let record = Attempt::failed(name, attempt, &f, 0, moving_on);
                        self.note(&span, &record);
                        attempts.push(record);
                        passed_over.push((name.clone(), FailureClass::BulkheadFull));
                        last = Some(f);
                        all_open = false;
                        break;
                    }
                };
                // The clock moved only if the slot was waited for.
                let remaining = if waited_for_slot {
                    deadline.saturating_duration_since(now)
                } else {
                    remaining
                };
                if remaining.is_zero() {
                    if let (Some(b), Some(p)) = (&t.breaker, permit) {
                        lock(b).cancel(p);
                    }
                    let f = Failure::new(
                        FailureClass::DeadlineExceeded,
                        "call deadline passed while waiting for a bulkhead slot",
                    );
                    let record = Attempt::failed(name, attempt, &f, 0, Next::Stop);
                    return self.out_of_time(since(started, now), key, attempts, record, f, &span);
                }
                all_open = false;
                let mut timeout = t.target.timeout().min(remaining);
                if permit.as_ref().is_some_and(Permit::is_probe) {
                    if let Some(b) = &t.breaker {
                        timeout = timeout.min(lock(b).policy().probe_timeout);
                    }
                }
                // The key is lent to the attempt and taken back after it,
                // not cloned: a shared count is an atomic add and subtract.
                let ctx = CallCtx {
                    key,
                    attempt,
                    timeout,
                    call_left: remaining,
                };
                let call = t.target.call(input, &ctx);
                // A disabled span is not worth its clone and wrapper.
                let result = if span.is_disabled() {
                    call.await
                } else {
                    use tracing::Instrument;
                    call.instrument(span.clone()).await
                };
                key = ctx.key;
                // Free the slot now: a retry's backoff must not hold it.
                drop(slot);
                let ended = Instant::now();
                let now_was_start = now == started;
                let elapsed = ended - now;
                now = ended;
                let failed = result
                    .as_ref()
                    .err()
                    .is_some_and(|f| f.class.counts_for_breaker());
                if let (Some(b), Some(p)) = (&t.breaker, permit) {
                    t.record(b, p, failed, ended, &span);
                }
                let failure = match result {
                    Ok(out) => {
                        let record = Attempt {
                            target: name.clone(),
                            attempt,
                            class: AttemptClass::Ok,
                            message: Cow::Borrowed(""),
                            elapsed_ms: millis(elapsed),
                            delay_ms: 0,
                            then: Next::Done,
                        };
                        let record_elapsed = record.elapsed_ms;
                        self.note(&span, &record);
                        attempts.push(record);
                        let degraded = !passed_over.is_empty();
                        return Outcome {
                            ok: true,
                            chain: self.chain.clone(),
                            key,
                            value: Some(out.value),
                            confidence: out.confidence,
                            served_by: Some(name.clone()),
                            degraded,
                            degraded_reason: degraded
                                .then(|| format!("fallback: {}", summary(&passed_over))),
                            attempts,
                            error: None,
                            // On a first attempt the call took what it did.
                            elapsed_ms: if now_was_start {
                                record_elapsed
                            } else {
                                millis(ended - started)
                            },
                        };
                    }
                    Err(mut f) => {
                        if f.message.len() > self.max_message {
                            f.message = crate::outcome::clip(f.message, self.max_message);
                        }
                        f
                    }
                };
                let remaining = deadline.saturating_duration_since(now);
                let decision = {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    t.retry.decide(
                        &failure,
                        t.target.effect(),
                        attempt,
                        previous_delay,
                        remaining,
                        &mut *rng,
                    )
                };
                let then = match decision {
                    Decision::Retry(_) => Next::Retry,
                    Decision::FailOver(_) => moving_on,
                    Decision::Stop(_) => Next::Stop,
                };
                let mut record = Attempt::failed(name, attempt, &failure, millis(elapsed), then);
                match decision {
                    Decision::Retry(delay) => {
                        record.delay_ms = millis(delay);
                        self.note(&span, &record);
                        attempts.push(record);
                        // Boxed: a retry can afford the allocation, and an
                        // inline timer would make every call's future larger.
                        Box::pin(tokio::time::sleep(delay)).await;
                        now = Instant::now();
                        previous_delay = delay;
                        attempt += 1;
                        exhausted = true;
                        retried = Some(failure);
                    }
                    Decision::FailOver(note) => {
                        if let Some(n) = &note {
                            record.message = format!("{}; {n}", record.message).into();
                            exhausted = true;
                        }
                        self.note(&span, &record);
                        attempts.push(record);
                        passed_over.push((name.clone(), failure.class));
                        last = Some(failure);
                        break;
                    }
                    Decision::Stop(reason) => {
                        self.note(&span, &record);
                        attempts.push(record);
                        return self.failed(
                            since(started, now),
                            key,
                            attempts,
                            failure,
                            Some(reason),
                        );
                    }
                }
            }
        }
        let last = last
            .unwrap_or_else(|| Failure::new(FailureClass::Permanent, "the chain has no targets"));
        let reason = if all_open {
            EscalationReason::CircuitOpen
        } else if exhausted {
            EscalationReason::RetriesExhausted
        } else {
            EscalationReason::Failed
        };
        // One target: its own failure says it all (the attempts name it).
        let summary = if passed_over.len() < 2 {
            last
        } else {
            Failure {
                message: format!(
                    "every target failed ({}); last: {}",
                    summary(&passed_over),
                    last.message
                )
                .into(),
                ..last
            }
        };
        self.failed(since(started, now), key, attempts, summary, Some(reason))
    }

    #[inline]
    fn note(&self, span: &tracing::Span, a: &Attempt) {
        trace_attempt(span, a);
        if let Some(p) = self.progress {
            p(a);
        }
    }

    /// `elapsed` comes from the last clock read of the call: reading the
    /// clock again costs more than a rejection's whole decision.
    /// The call's deadline passed before `record`'s attempt could run.
    fn out_of_time(
        &self,
        elapsed: Duration,
        key: Arc<str>,
        mut attempts: Attempts,
        record: Attempt,
        f: Failure,
        span: &tracing::Span,
    ) -> Outcome {
        self.note(span, &record);
        attempts.push(record);
        self.failed(
            elapsed,
            key,
            attempts,
            f,
            Some(EscalationReason::RetriesExhausted),
        )
    }

    fn failed(
        &self,
        elapsed: Duration,
        key: Arc<str>,
        attempts: Attempts,
        f: Failure,
        escalate: Option<EscalationReason>,
    ) -> Outcome {
        Outcome {
            ok: false,
            chain: self.chain.clone(),
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
            elapsed_ms: millis(elapsed),
        }
    }
}

/// Fills in an attempt's span and logs a failed attempt inside it.
#[inline]
fn trace_attempt(span: &tracing::Span, a: &Attempt) {
    if !span.is_disabled() {
        trace_enabled(span, a);
    }
}

#[inline(never)]
fn trace_enabled(span: &tracing::Span, a: &Attempt) {
    span.record("class", a.class.as_str());
    span.record("then", a.then.as_str());
    span.record("delay_ms", a.delay_ms);
    if a.class != AttemptClass::Ok {
        span.in_scope(|| tracing::warn!(elapsed_ms = a.elapsed_ms, "{}", a.message));
    }
}

/// `name: class; name: class` for the targets passed over.
fn summary(passed_over: &[(Arc<str>, FailureClass)]) -> String {
    let mut s = String::new();
    for (i, (name, class)) in passed_over.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(name);
        s.push_str(": ");
        s.push_str(if *class == FailureClass::CircuitOpen {
            "circuit open"
        } else {
            class.as_str()
        });
    }
    s
}
