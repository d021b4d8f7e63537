//! A circuit breaker per target, with two triggers (consecutive failures,
//! and a failure rate over a time window with a minimum number of calls)
//! and a half-open state that admits a bounded number of probes, each with
//! a timeout so a probe that never answers cannot keep the breaker stuck.
//!
//! Time is passed in (`tokio::time::Instant`), so tests with a paused
//! clock drive it exactly.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// Open after this many failures in a row; 0 disables the trigger.
    pub consecutive_failures: u32,
    /// Open when the failed share of calls in `window` reaches this; 0
    /// disables the trigger.
    pub failure_rate: f64,
    pub window: Duration,
    pub min_calls: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
    pub probe_timeout: Duration,
    pub close_after: u32,
    /// Open when this many failures, counted by every host sharing the
    /// state store, land within `window`; 0 disables the trigger (each
    /// host then counts only its own). Each failed call then costs a write
    /// to the store.
    pub shared_failures: u32,
}

/// The breaker's state, as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Permission to call the target; hand it back with the result.
#[derive(Debug)]
#[must_use = "report the call's result with Breaker::record"]
pub struct Permit {
    probe: Option<u64>,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

/// The breaker refused: the target is not called.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// When the breaker will next admit a probe.
    pub retry_in: Duration,
    pub state: BreakerState,
}

const BUCKETS: usize = 10;

/// One slice of the window. It holds when the slice ends rather than when
/// it began: counting into it is then a comparison, not a subtraction.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    until: Option<Instant>,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        probes: Vec<(u64, Instant)>,
        successes: u32,
    },
}

/// How many times a breaker entered each state, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Transitions {
    pub open: u64,
    pub half_open: u64,
    pub closed: u64,
}

/// A change other processes should learn of (see [`Breaker::take_change`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    Opened { until: Instant },
    Closed,
}

/// A state learnt from another process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Remote {
    /// Open for this much longer (zero: its open time is over).
    Open {
        remaining: Duration,
    },
    Closed,
    /// An operator reset it: closed, failure counts cleared, not forced.
    Reset,
    /// An operator forced it, until the next reset.
    Forced(Forced),
}

/// A state an operator holds a breaker in (`backstop breakers`, the API)
/// until they reset it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forced {
    /// Every call refused, no probes.
    Open,
    /// Every call admitted; failures do not open it.
    Closed,
}

/// Far enough away to be never, near enough that `Instant` arithmetic
/// cannot overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: State,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    /// The bucket counted into last: almost always the one to count into
    /// next, so a call does not scan them all.
    current: usize,
    next_probe_id: u64,
    transitions: Transitions,
    change: Option<Change>,
    /// When this process next reads the shared state, and the version of
    /// it last seen (see `guard::shared`).
    pub(crate) next_sync: Option<Instant>,
    pub(crate) seen_version: i64,
    /// Another process holds the half-open probe until then: this one
    /// admits none meanwhile.
    probing_elsewhere: Option<Instant>,
    forced: Option<Forced>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            state: State::Closed,
            consecutive: 0,
            buckets: [Bucket::default(); BUCKETS],
            current: 0,
            next_probe_id: 0,
            transitions: Transitions::default(),
            change: None,
            next_sync: None,
            seen_version: 0,
            probing_elsewhere: None,
            forced: None,
        }
    }

    /// Takes back `permit` for a call that was not made after all (its
    /// bulkhead was full): a probe is no longer in flight; nothing counts.
    pub fn cancel(&mut self, permit: Permit) {
        if let (Some(id), State::HalfOpen { probes, .. }) = (permit.probe, &mut self.state) {
            probes.retain(|p| p.0 != id);
        }
    }

    /// Takes back a probe `permit` this breaker gave because another
    /// process is probing the target (the store said so): no call is
    /// made, nothing is counted, and no probe is admitted here until
    /// `until`.
    pub fn probe_elsewhere(&mut self, permit: Permit, until: Instant) {
        if let (Some(id), State::HalfOpen { probes, .. }) = (permit.probe, &mut self.state) {
            probes.retain(|p| p.0 != id);
        }
        self.probing_elsewhere = Some(until);
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// How many times this breaker has opened.
    pub fn opened_times(&self) -> u64 {
        self.transitions.open
    }

    pub fn transitions(&self) -> Transitions {
        self.transitions
    }

    /// The last open or close since the previous call, if any: what a
    /// process shares with the others. Half-open needs no sharing: every
    /// process reaches it when the open time is over.
    pub fn take_change(&mut self) -> Option<Change> {
        self.change.take()
    }

    /// Takes on a state another process reached. Counted as a transition
    /// here too (this process's breaker did change) but not shared back.
    pub fn adopt(&mut self, remote: Remote, now: Instant) {
        match remote {
            Remote::Open { remaining } => {
                // Never longer than this breaker would open for itself: a
                // wall clock set back, or a damaged row, cannot hold a
                // target off for hours.
                let until = now + remaining.min(self.policy.open_for);
                if matches!(self.state, State::Open { until: u } if u >= until) {
                    return;
                }
                if !matches!(self.state, State::Open { .. }) {
                    self.transitions.open += 1;
                }
                self.state = State::Open { until };
                self.consecutive = 0;
                self.buckets = [Bucket::default(); BUCKETS];
                self.expire(now);
            }
            Remote::Closed => {
                if !matches!(self.state, State::Closed) {
                    self.close();
                }
            }
            Remote::Reset => self.reset(),
            Remote::Forced(f) => self.force(f, now),
        }
    }

    /// An operator's reset: closed, counts cleared, no longer forced. The
    /// operator's path writes it to the store (not [`Breaker::take_change`]).
    pub fn reset(&mut self) {
        self.forced = None;
        if matches!(self.state, State::Closed) {
            self.consecutive = 0;
            self.buckets = [Bucket::default(); BUCKETS];
        } else {
            self.close();
        }
    }

    /// Holds the breaker open or closed, as an operator asked, until
    /// [`Breaker::reset`].
    pub fn force(&mut self, f: Forced, now: Instant) {
        match f {
            Forced::Open => {
                if !matches!(self.state, State::Open { .. }) {
                    self.transitions.open += 1;
                }
                self.probing_elsewhere = None;
                self.state = State::Open { until: now + NEVER };
                self.consecutive = 0;
                self.buckets = [Bucket::default(); BUCKETS];
            }
            Forced::Closed => {
                if !matches!(self.state, State::Closed) {
                    self.close();
                }
            }
        }
        self.forced = Some(f);
    }

    /// The state an operator holds it in, if any.
    pub fn forced(&self) -> Option<Forced> {
        self.forced
    }

    fn close(&mut self) {
        self.probing_elsewhere = None;
        self.state = State::Closed;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS];
        self.transitions.closed += 1;
    }

    /// When an open breaker admits a probe again.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.expire(now);
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Moves time-driven transitions forward: open -> half-open when the
    /// open time is over; a half-open probe past its timeout fails.
    #[inline]
    fn expire(&mut self, now: Instant) {
        if !matches!(self.state, State::Closed) {
            self.expire_open(now);
        }
    }

    #[inline(never)]
    fn expire_open(&mut self, now: Instant) {
        if let State::Open { until } = self.state {
            if now >= until {
                self.state = State::HalfOpen {
                    probes: Vec::new(),
                    successes: 0,
                };
                self.transitions.half_open += 1;
            }
        }
        if let State::HalfOpen { probes, .. } = &self.state {
            if probes
                .iter()
                .any(|(_, started)| now.duration_since(*started) >= self.policy.probe_timeout)
            {
                self.open(now);
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.probing_elsewhere = None;
        let until = now + self.policy.open_for;
        self.state = State::Open { until };
        self.change = Some(Change::Opened { until });
        self.transitions.open += 1;
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS];
    }

    /// Opens a closed breaker because failures counted elsewhere (by
    /// every host) reached its shared trigger; an operator's hold, or a
    /// breaker already open or probing, is left as it is.
    pub fn trip(&mut self, now: Instant) {
        self.expire(now);
        if self.forced.is_none() && matches!(self.state, State::Closed) {
            self.open(now);
        }
    }

    /// How long until the breaker admits a call (zero when it would now).
    pub fn retry_in(&mut self, now: Instant) -> Duration {
        self.expire(now);
        match &self.state {
            State::Closed => Duration::ZERO,
            State::Open { .. } if self.forced.is_some() => self.policy.open_for,
            State::Open { until } => until.duration_since(now),
            State::HalfOpen { probes, .. }
                if (probes.len() as u32) < self.policy.half_open_probes =>
            {
                Duration::ZERO
            }
            State::HalfOpen { probes, .. } => {
                let oldest = probes.iter().map(|p| p.1).min().unwrap_or(now);
                (oldest + self.policy.probe_timeout).duration_since(now)
            }
        }
    }

    /// Asks to call the target now.
    #[inline]
    pub fn acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        self.expire(now);
        let probes_allowed = self.policy.half_open_probes as usize;
        match &mut self.state {
            State::Closed => Ok(Permit { probe: None }),
            State::Open { until } => Err(Rejected {
                // Forced open has no end to count down to: say when to look
                // again, as an open breaker would.
                retry_in: if self.forced.is_some() {
                    self.policy.open_for
                } else {
                    until.duration_since(now)
                },
                state: BreakerState::Open,
            }),
            State::HalfOpen { .. } if self.probing_elsewhere.is_some_and(|u| now < u) => {
                Err(Rejected {
                    retry_in: self
                        .probing_elsewhere
                        .map_or(Duration::ZERO, |u| u.duration_since(now)),
                    state: BreakerState::HalfOpen,
                })
            }
            State::HalfOpen { probes, .. } if probes.len() < probes_allowed => {
                let id = self.next_probe_id;
                self.next_probe_id += 1;
                probes.push((id, now));
                Ok(Permit { probe: Some(id) })
            }
            State::HalfOpen { probes, .. } => {
                let oldest = probes.iter().map(|p| p.1).min().unwrap_or(now);
                let retry_in = (oldest + self.policy.probe_timeout).duration_since(now);
                Err(Rejected {
                    retry_in,
                    state: BreakerState::HalfOpen,
                })
            }
        }
    }

    /// Reports how the permitted call went. `failed` is true only for
    /// failures that count for the breaker (see
    /// [`crate::FailureClass::counts_for_breaker`]).
    #[inline]
    pub fn record(&mut self, permit: Permit, failed: bool, now: Instant) {
        // The path nearly every call takes, inline: a success while closed
        // counts and ends the streak; the rest is out of line.
        if permit.probe.is_none() && !failed && matches!(self.state, State::Closed) {
            self.count(false, now);
            self.consecutive = 0;
            return;
        }
        self.record_rest(permit, failed, now);
    }

    #[inline(never)]
    fn record_rest(&mut self, permit: Permit, failed: bool, now: Instant) {
        if self.forced.is_some() {
            return; // held by an operator: results change nothing
        }
        self.expire(now);
        if let Some(id) = permit.probe {
            let close_after = self.policy.close_after;
            let State::HalfOpen { probes, successes } = &mut self.state else {
                return; // a stale probe: the breaker has moved on
            };
            let Some(pos) = probes.iter().position(|p| p.0 == id) else {
                return;
            };
            probes.remove(pos);
            if failed {
                self.open(now);
            } else {
                *successes += 1;
                if *successes >= close_after {
                    self.close();
                    self.change = Some(Change::Closed);
                }
            }
            return;
        }
        if !matches!(self.state, State::Closed) {
            return; // a call admitted before the breaker opened
        }
        self.count(failed, now);
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        // Only a failure can open it: a success needs no window sums.
        if !failed {
            return;
        }
        let p = self.policy;
        let by_streak = p.consecutive_failures > 0 && self.consecutive >= p.consecutive_failures;
        let by_rate = p.failure_rate > 0.0 && {
            let (ok, bad) = self.window_counts(now);
            let total = ok + bad;
            total >= p.min_calls.max(1) && f64::from(bad) / f64::from(total) >= p.failure_rate
        };
        if by_streak || by_rate {
            self.open(now);
        }
    }

    fn bucket_len(&self) -> Duration {
        (self.policy.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    #[inline]
    fn count(&mut self, failed: bool, now: Instant) {
        let fresh = |b: &Bucket| b.until.is_some_and(|u| now < u);
        let idx = if fresh(&self.buckets[self.current]) {
            self.current
        } else {
            self.bucket_for(now)
        };
        let b = &mut self.buckets[idx];
        if failed {
            b.failed += 1;
        } else {
            b.ok += 1;
        }
    }

    /// The bucket to count into when the last one used has ended: one
    /// still current, or the oldest, reused for the new slice of time.
    #[inline(never)]
    fn bucket_for(&mut self, now: Instant) -> usize {
        let fresh = |b: &Bucket| b.until.is_some_and(|u| now < u);
        let i = match self.buckets.iter().position(fresh) {
            Some(i) => i,
            None => {
                let i = (0..BUCKETS)
                    .min_by_key(|&i| self.buckets[i].until)
                    .unwrap_or(0);
                self.buckets[i] = Bucket {
                    until: Some(now + self.bucket_len()),
                    ok: 0,
                    failed: 0,
                };
                i
            }
        };
        self.current = i;
        i
    }

    fn window_counts(&self, now: Instant) -> (u32, u32) {
        // A bucket began `bucket_len` before its end; it is in the window
        // while less than `window` has passed since it began.
        let rest = self.policy.window.saturating_sub(self.bucket_len());
        self.buckets
            .iter()
            .filter(|b| b.until.is_some_and(|u| now < u + rest))
            .fold((0, 0), |(ok, bad), b| (ok + b.ok, bad + b.failed))
    }
}

/// A breaker shared by every chain that calls its target.
pub type SharedBreaker = Arc<Mutex<Breaker>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            failure_rate: 0.0,
            window: Duration::from_secs(10),
            min_calls: 10,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            probe_timeout: Duration::from_secs(2),
            close_after: 2,
            shared_failures: 0,
        }
    }

    fn call(b: &mut Breaker, failed: bool, now: Instant) {
        let p = b.acquire(now).expect("admitted");
        b.record(p, failed, now);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_streak_and_fails_fast() {
        let mut b = Breaker::new(policy());
        let t = Instant::now();
        call(&mut b, true, t);
        call(&mut b, false, t); // a success resets the streak
        call(&mut b, true, t);
        call(&mut b, true, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&mut b, true, t);
        assert_eq!(b.state(t), BreakerState::Open);
        let r = b.acquire(t + Duration::from_secs(1)).unwrap_err();
        assert_eq!(r.retry_in, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_bounded_probes_then_closes() {
        let mut b = Breaker::new(policy());
        let t = Instant::now();
        for _ in 0..3 {
            call(&mut b, true, t);
        }
        let t = t + Duration::from_secs(5);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        let probe = b.acquire(t).unwrap();
        assert!(probe.is_probe());
        assert!(b.acquire(t).is_err(), "only one probe at a time");
        b.record(probe, false, t);
        assert_eq!(b.state(t), BreakerState::HalfOpen, "close_after = 2");
        call(&mut b, false, t);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_hung_probe_expires() {
        let mut b = Breaker::new(policy());
        let t = Instant::now();
        for _ in 0..3 {
            call(&mut b, true, t);
        }
        let t = t + Duration::from_secs(5);
        call(&mut b, true, t);
        assert_eq!(b.state(t), BreakerState::Open);
        let t = t + Duration::from_secs(5);
        let hung = b.acquire(t).unwrap();
        // The probe never answers: after probe_timeout the breaker reopens
        // instead of staying half-open with no slot free.
        let t = t + Duration::from_secs(2);
        assert_eq!(b.state(t), BreakerState::Open);
        b.record(hung, false, t); // a late answer changes nothing
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(b.opened_times(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_needs_min_calls() {
        let mut b = Breaker::new(BreakerPolicy {
            consecutive_failures: 0,
            failure_rate: 0.5,
            min_calls: 6,
            ..policy()
        });
        let t = Instant::now();
        for i in 0..5 {
            call(&mut b, i % 2 == 0, t); // F S F S F: 60% but only 5 calls
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&mut b, true, t); // 4 of 6 failed
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let mut b = Breaker::new(BreakerPolicy {
            consecutive_failures: 0,
            failure_rate: 0.5,
            min_calls: 4,
            ..policy()
        });
        let t = Instant::now();
        for _ in 0..3 {
            call(&mut b, true, t);
        }
        let later = t + Duration::from_secs(11);
        for _ in 0..3 {
            call(&mut b, false, later);
        }
        call(&mut b, true, later); // 1 of 4 in the window
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn transitions_are_counted_and_changes_reported_once() {
        let mut b = Breaker::new(policy());
        let t = Instant::now();
        for _ in 0..3 {
            call(&mut b, true, t);
        }
        assert_eq!(
            b.take_change(),
            Some(Change::Opened {
                until: t + Duration::from_secs(5)
            })
        );
        assert_eq!(b.take_change(), None);
        let t = t + Duration::from_secs(5);
        call(&mut b, false, t);
        assert_eq!(b.take_change(), None, "half-open is not shared");
        call(&mut b, false, t);
        assert_eq!(b.take_change(), Some(Change::Closed));
        assert_eq!(
            b.transitions(),
            Transitions {
                open: 1,
                half_open: 1,
                closed: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn adopts_states_from_elsewhere_without_sharing_them_back() {
        let mut b = Breaker::new(policy());
        let t = Instant::now();
        b.adopt(
            Remote::Open {
                remaining: Duration::from_secs(2),
            },
            t,
        );
        let r = b.acquire(t).unwrap_err();
        assert_eq!(
            (r.state, r.retry_in),
            (BreakerState::Open, Duration::from_secs(2))
        );
        assert_eq!(b.take_change(), None);
        // An open longer than this breaker's own is cut to it.
        let mut long = Breaker::new(policy());
        long.adopt(
            Remote::Open {
                remaining: Duration::from_secs(36_000),
            },
            t,
        );
        assert_eq!(long.retry_in(t), Duration::from_secs(5));
        // An open whose time is over arrives as half-open: one probe.
        let mut late = Breaker::new(policy());
        late.adopt(
            Remote::Open {
                remaining: Duration::ZERO,
            },
            t,
        );
        assert_eq!(late.state(t), BreakerState::HalfOpen);
        assert!(late.acquire(t).unwrap().is_probe());
        // A close elsewhere closes it here, and failure counts start over.
        b.adopt(Remote::Closed, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&mut b, true, t);
        call(&mut b, true, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        assert_eq!(b.take_change(), None);
        assert_eq!(b.transitions().open, 1);
        assert_eq!(b.transitions().closed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_states_hold_until_a_reset() {
        let mut b = Breaker::new(policy());
        let t = Instant::now();
        // Forced open: refused with the open time as the hint, past any
        // open time, and no probe ever.
        b.force(Forced::Open, t);
        let later = t + Duration::from_secs(3600);
        let r = b.acquire(later).unwrap_err();
        assert_eq!(
            (r.state, r.retry_in),
            (BreakerState::Open, policy().open_for)
        );
        assert_eq!(b.state(later), BreakerState::Open);
        assert_eq!(b.retry_in(later), policy().open_for);
        assert_eq!(
            b.take_change(),
            None,
            "an operator's change is shared by its own path"
        );
        // Forced closed: failures past every trigger change nothing.
        b.force(Forced::Closed, later);
        for _ in 0..10 {
            call(&mut b, true, later);
        }
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.forced(), Some(Forced::Closed));
        // A reset: normal again, counts from zero (two failures of three).
        b.reset();
        assert_eq!(b.forced(), None);
        call(&mut b, true, later);
        call(&mut b, true, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        call(&mut b, true, later);
        assert_eq!(b.state(later), BreakerState::Open);
        // Learnt from another process the same way.
        b.adopt(Remote::Forced(Forced::Open), later);
        assert_eq!(b.forced(), Some(Forced::Open));
        b.adopt(Remote::Reset, later);
        assert_eq!((b.forced(), b.state(later)), (None, BreakerState::Closed));
    }
}
