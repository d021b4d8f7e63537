//! Whether to retry a failed attempt, and after how long.

use super::backoff::Backoff;
use crate::outcome::{Effect, EscalationReason, Failure, FailureClass};
use rand::Rng;
use std::time::Duration;

/// Retries of one target inside a chain call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per target, the first included.
    pub attempts: u32,
    pub backoff: Backoff,
    /// The longest Retry-After honoured; a longer one fails over at once.
    pub max_retry_after: Duration,
}

/// What the guard does after a failed attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Try the same target again after this wait.
    Retry(Duration),
    /// Move to the next target of the chain; the note says why, when the
    /// reason is not the failure class itself.
    FailOver(Option<String>),
    /// Stop the chain: the failure needs a person.
    Stop(EscalationReason),
}

impl RetryPolicy {
    /// Decides after attempt number `attempt` (1-based) failed with
    /// `failure`, on a target with `effect`, with `remaining` time left
    /// before the call's deadline.
    pub fn decide(
        &self,
        failure: &Failure,
        effect: Effect,
        attempt: u32,
        previous_delay: Duration,
        remaining: Duration,
        rng: &mut impl Rng,
    ) -> Decision {
        use FailureClass::*;
        match failure.class {
            NeedsHuman => return Decision::Stop(EscalationReason::NeedsHuman),
            // The attempt may have stopped half way through a side effect:
            // repeating it, here or on a fallback, could do it twice.
            Timeout | Trap if !effect.repeatable() => {
                return Decision::Stop(EscalationReason::AmbiguousState)
            }
            Transient | RateLimited | Timeout | Trap => {}
            InvalidInput | Unavailable | Permanent | ResourceExhausted | MalformedOutput
            | CircuitOpen | DeadlineExceeded | StreamBroken | BulkheadFull => {
                return Decision::FailOver(None)
            }
        }
        if attempt >= self.attempts {
            return Decision::FailOver(Some(format!("{} attempts used", self.attempts)));
        }
        let mut delay = self.backoff.delay(attempt - 1, previous_delay, rng);
        if let Some(asked) = failure.retry_after {
            if asked > self.max_retry_after {
                return Decision::FailOver(Some(format!(
                    "retry-after {} exceeds max_retry_after {}",
                    humantime::format_duration(asked),
                    humantime::format_duration(self.max_retry_after)
                )));
            }
            // Never call sooner than the target asked, and spread the
            // callers told the same wait by the jittered backoff on top:
            // waiting exactly `asked` brings every rejected caller back in
            // the same instant (the `report` bench's rate-limit scenario).
            delay = asked.saturating_add(delay);
        }
        if delay >= remaining {
            return Decision::FailOver(Some(
                "no time left before the deadline for another attempt".into(),
            ));
        }
        Decision::Retry(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Jitter;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(1),
                Jitter::Full,
            )
            .unwrap(),
            max_retry_after: Duration::from_secs(5),
        }
    }

    fn decide(f: Failure, effect: Effect, attempt: u32) -> Decision {
        let mut rng = StdRng::seed_from_u64(1);
        policy().decide(
            &f,
            effect,
            attempt,
            Duration::ZERO,
            Duration::from_secs(60),
            &mut rng,
        )
    }

    #[test]
    fn classification_table() {
        use FailureClass::*;
        let ro = Effect::ReadOnly;
        let fx = Effect::SideEffect;
        assert!(matches!(
            decide(Failure::new(Transient, ""), ro, 1),
            Decision::Retry(_)
        ));
        assert!(matches!(
            decide(Failure::new(Transient, ""), fx, 1),
            Decision::Retry(_)
        ));
        assert!(matches!(
            decide(Failure::new(Timeout, ""), ro, 1),
            Decision::Retry(_)
        ));
        assert!(matches!(
            decide(Failure::new(Trap, ""), Effect::Idempotent, 1),
            Decision::Retry(_)
        ));
        assert_eq!(
            decide(Failure::new(Timeout, ""), fx, 1),
            Decision::Stop(EscalationReason::AmbiguousState)
        );
        assert_eq!(
            decide(Failure::new(Trap, ""), Effect::Irreversible, 1),
            Decision::Stop(EscalationReason::AmbiguousState)
        );
        assert_eq!(
            decide(Failure::new(InvalidInput, ""), ro, 1),
            Decision::FailOver(None)
        );
        assert_eq!(
            decide(Failure::new(Unavailable, ""), ro, 1),
            Decision::FailOver(None)
        );
        assert_eq!(
            decide(Failure::new(Permanent, ""), ro, 1),
            Decision::FailOver(None)
        );
        assert_eq!(
            decide(Failure::new(NeedsHuman, ""), ro, 1),
            Decision::Stop(EscalationReason::NeedsHuman)
        );
        assert!(matches!(
            decide(Failure::new(Transient, ""), ro, 3),
            Decision::FailOver(Some(_))
        ));
    }

    #[test]
    fn retry_after_is_never_undercut_and_capped() {
        let asked = Duration::from_millis(1500);
        match decide(Failure::rate_limited("", Some(asked)), Effect::ReadOnly, 1) {
            Decision::Retry(d) => assert!(d >= asked),
            other => panic!("expected a retry, got {other:?}"),
        }
        let too_long = Failure::rate_limited("", Some(Duration::from_secs(30)));
        let decision = decide(too_long, Effect::ReadOnly, 1);
        assert!(
            matches!(&decision, Decision::FailOver(Some(m)) if m.contains("max_retry_after")),
            "{decision:?}"
        );
    }

    #[test]
    fn callers_told_the_same_wait_are_spread_after_it() {
        // Waiting exactly `Retry-After` would bring them all back at once
        // (the report bench's rate-limit scenario).
        let asked = Duration::from_millis(1500);
        let f = Failure::rate_limited("", Some(asked));
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|seed| {
                let mut rng = StdRng::seed_from_u64(seed);
                match policy().decide(
                    &f,
                    Effect::ReadOnly,
                    1,
                    Duration::ZERO,
                    Duration::from_secs(60),
                    &mut rng,
                ) {
                    Decision::Retry(d) => d,
                    other => panic!("expected a retry, got {other:?}"),
                }
            })
            .collect();
        let ceiling = policy().backoff.ceiling(0);
        assert!(
            waits.iter().all(|d| *d >= asked && *d <= asked + ceiling),
            "{waits:?}"
        );
        assert!(waits.len() > 40, "only {} distinct waits", waits.len());
    }

    #[test]
    fn no_retry_past_the_deadline() {
        let mut rng = StdRng::seed_from_u64(1);
        let f = Failure::rate_limited("", Some(Duration::from_secs(2)));
        let d = policy().decide(
            &f,
            Effect::ReadOnly,
            1,
            Duration::ZERO,
            Duration::from_secs(1),
            &mut rng,
        );
        assert!(matches!(d, Decision::FailOver(Some(m)) if m.contains("deadline")));
    }
}
