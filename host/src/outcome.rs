//! What a call produced: the classified failure of one attempt, the record
//! of every attempt, and the marked outcome of a whole chain call.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What a call does to the world; decides what is safe to repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    ReadOnly,
    Idempotent,
    SideEffect,
    Irreversible,
}

impl Effect {
    /// Whether repeating a call whose fate is unknown (after a timeout or
    /// trap) is safe.
    pub fn repeatable(self) -> bool {
        matches!(self, Effect::ReadOnly | Effect::Idempotent)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::ReadOnly => "read-only",
            Effect::Idempotent => "idempotent",
            Effect::SideEffect => "side-effect",
            Effect::Irreversible => "irreversible",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one attempt failed. The guards decide retry, breaker, fallback and
/// escalation from this type alone, never from message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The input is wrong; repeating it cannot help.
    InvalidInput,
    /// A passing failure reported by the target.
    Transient,
    /// Asked too often; `Failure::retry_after` says how long to wait.
    RateLimited,
    /// The target's dependency is down.
    Unavailable,
    /// Will not work however often it is tried (includes auth and billing).
    Permanent,
    /// A person has to decide.
    NeedsHuman,
    /// The attempt ran out of time (epoch deadline or host timeout).
    Timeout,
    /// The guest trapped or panicked.
    Trap,
    /// The guest hit its memory cap.
    ResourceExhausted,
    /// The target answered something that breaks its contract (not JSON,
    /// a confidence outside 0..1, an output over the size limit).
    MalformedOutput,
    /// The target's breaker refused the call; the target was not run.
    CircuitOpen,
    /// The call's overall deadline passed before this target could run.
    DeadlineExceeded,
    /// A streamed answer broke after output began: restarted on the next
    /// target rather than retried in place.
    StreamBroken,
    /// The target's (or the host's) bulkhead was full: the target was not
    /// run, and the chain falls back as for an open breaker.
    BulkheadFull,
}

impl FailureClass {
    pub const ALL: [FailureClass; 14] = [
        FailureClass::InvalidInput,
        FailureClass::Transient,
        FailureClass::RateLimited,
        FailureClass::Unavailable,
        FailureClass::Permanent,
        FailureClass::NeedsHuman,
        FailureClass::Timeout,
        FailureClass::Trap,
        FailureClass::ResourceExhausted,
        FailureClass::MalformedOutput,
        FailureClass::CircuitOpen,
        FailureClass::DeadlineExceeded,
        FailureClass::StreamBroken,
        FailureClass::BulkheadFull,
    ];

    /// This class's place in [`FailureClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::InvalidInput => "invalid-input",
            FailureClass::Transient => "transient",
            FailureClass::RateLimited => "rate-limited",
            FailureClass::Unavailable => "unavailable",
            FailureClass::Permanent => "permanent",
            FailureClass::NeedsHuman => "needs-human",
            FailureClass::Timeout => "timeout",
            FailureClass::Trap => "trap",
            FailureClass::ResourceExhausted => "resource-exhausted",
            FailureClass::MalformedOutput => "malformed-output",
            FailureClass::CircuitOpen => "circuit-open",
            FailureClass::DeadlineExceeded => "deadline-exceeded",
            FailureClass::StreamBroken => "stream-broken",
            FailureClass::BulkheadFull => "bulkhead-full",
        }
    }

    /// Whether the target may have stopped half way, leaving its effect
    /// unknown (as opposed to the target saying itself what happened).
    pub fn fate_unknown(self) -> bool {
        matches!(self, FailureClass::Timeout | FailureClass::Trap)
    }

    /// Whether this failure says something about the target's health and so
    /// counts toward its breaker. Bad input, permanent refusals and
    /// requests for a person do not.
    pub fn counts_for_breaker(self) -> bool {
        matches!(
            self,
            FailureClass::Transient
                | FailureClass::RateLimited
                | FailureClass::Unavailable
                | FailureClass::Timeout
                | FailureClass::Trap
                | FailureClass::ResourceExhausted
                | FailureClass::MalformedOutput
                | FailureClass::StreamBroken
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One classified failure of one attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    /// Static where it can be, so a failure the host knows well (an open
    /// breaker, say) costs no allocation.
    pub message: Cow<'static, str>,
    /// For `RateLimited`: the wait the target asked for, if it said.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_millis",
        rename = "retry_after_ms"
    )]
    pub retry_after: Option<Duration>,
}

/// The longest failure message kept when the config sets none.
pub const DEFAULT_MAX_MESSAGE: usize = 8 << 10;

/// What is wrong with JSON text that did not parse, for a message about
/// `what` ("output", "--input"): a number too large for a 64-bit float
/// (`1e400`) is valid JSON that no JSON reader here can hold, and is said
/// so instead of "not JSON".
pub fn json_error(what: &str, e: &serde_json::Error) -> String {
    if e.to_string().starts_with("number out of range") {
        format!(
            "{what} holds a number out of range (beyond a 64-bit float's +-1.8e308) at line {} \
             column {}",
            e.line(),
            e.column()
        )
    } else {
        format!("{what} is not JSON ({e})")
    }
}

/// `text` cut to at most `limit` bytes (at a character boundary) with a
/// marker saying how much was cut; whole when it fits. Guests and providers
/// choose their messages' sizes: a 20 MB one was kept whole in the
/// outcome, the journal and the queue.
pub fn clip(text: Cow<'static, str>, limit: usize) -> Cow<'static, str> {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit.saturating_sub(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [cut: {} of {} bytes not shown]",
        &text[..end],
        text.len() - end,
        text.len()
    )
    .into()
}

impl Failure {
    pub fn new(class: FailureClass, message: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn rate_limited(
        message: impl Into<Cow<'static, str>>,
        retry_after: Option<Duration>,
    ) -> Self {
        Failure {
            class: FailureClass::RateLimited,
            message: message.into(),
            retry_after,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)?;
        if let Some(wait) = self.retry_after {
            write!(f, " (retry after {} ms)", wait.as_millis())?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Why a call needs a person (or a supervisor agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EscalationReason {
    RetriesExhausted,
    /// Every target failed in a way retrying cannot fix (invalid input, a
    /// permanent error, an unavailable target...), none retried to its end.
    Failed,
    AmbiguousState,
    LowConfidence,
    NeedsHuman,
    ApprovalRequired,
    CircuitOpen,
}

impl EscalationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationReason::RetriesExhausted => "retries-exhausted",
            EscalationReason::Failed => "failed",
            EscalationReason::AmbiguousState => "ambiguous-state",
            EscalationReason::LowConfidence => "low-confidence",
            EscalationReason::NeedsHuman => "needs-human",
            EscalationReason::ApprovalRequired => "approval-required",
            EscalationReason::CircuitOpen => "circuit-open",
        }
    }
}

impl fmt::Display for EscalationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one attempt came to. Serialized as one string: `ok`, `supplied`,
/// `rejected`, `reconciled`, or the failure class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptClass {
    /// The target served the call.
    Ok,
    /// A person supplied the result.
    Supplied,
    /// A person rejected the call.
    Rejected,
    /// The tool's `reconcile` said the call had already happened.
    Reconciled,
    Failed(FailureClass),
}

impl AttemptClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptClass::Ok => "ok",
            AttemptClass::Supplied => "supplied",
            AttemptClass::Rejected => "rejected",
            AttemptClass::Reconciled => "reconciled",
            AttemptClass::Failed(c) => c.as_str(),
        }
    }

    /// The failure, when the attempt failed.
    pub fn failure(self) -> Option<FailureClass> {
        match self {
            AttemptClass::Failed(c) => Some(c),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<AttemptClass> {
        Some(match s {
            "ok" => AttemptClass::Ok,
            "supplied" => AttemptClass::Supplied,
            "rejected" => AttemptClass::Rejected,
            "reconciled" => AttemptClass::Reconciled,
            _ => AttemptClass::Failed(*FailureClass::ALL.iter().find(|c| c.as_str() == s)?),
        })
    }
}

impl fmt::Display for AttemptClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttemptClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        AttemptClass::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown attempt class `{s}`: expected ok, supplied, rejected, reconciled \
                 or a failure class"
            ))
        })
    }
}

/// What the guard did after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Next {
    /// The call ended with this attempt (served, or settled by a person).
    Done,
    /// The same target again, after `delay_ms`.
    Retry,
    /// On to the chain's next target.
    FailOver,
    /// The call failed here.
    Stop,
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Next {
    pub fn as_str(self) -> &'static str {
        match self {
            Next::Done => "done",
            Next::Retry => "retry",
            Next::FailOver => "fail-over",
            Next::Stop => "stop",
        }
    }
}

/// One attempt on one target, as the outcome reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub target: Arc<str>,
    /// 1-based attempt number on this target.
    pub attempt: u32,
    pub class: AttemptClass,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub message: Cow<'static, str>,
    /// How long the attempt ran.
    pub elapsed_ms: u64,
    /// The wait before the next attempt on this target (0 when the chain
    /// moved on or stopped).
    pub delay_ms: u64,
    pub then: Next,
}

impl Attempt {
    /// The record of an attempt that failed with `f`.
    pub fn failed(
        target: &Arc<str>,
        attempt: u32,
        f: &Failure,
        elapsed_ms: u64,
        then: Next,
    ) -> Attempt {
        Attempt {
            target: target.clone(),
            attempt,
            class: AttemptClass::Failed(f.class),
            message: f.message.clone(),
            elapsed_ms,
            delay_ms: 0,
            then,
        }
    }
}

/// The attempts of one call: the first inline, so a call that succeeds at
/// once allocates no list.
pub type Attempts = smallvec::SmallVec<[Attempt; 1]>;

/// Why nothing could serve a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    pub class: FailureClass,
    pub message: Cow<'static, str>,
    /// Set when the failure needs a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<EscalationReason>,
}

/// The marked result of a call through a chain: a fallback is never
/// silent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    pub chain: Arc<str>,
    /// The call's idempotency key, the same across every attempt.
    pub key: Arc<str>,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// The target that produced `value`.
    pub served_by: Option<Arc<str>>,
    /// True when a target other than the chain's first served the call.
    pub degraded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<String>,
    pub attempts: Attempts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    pub elapsed_ms: u64,
}

impl Outcome {
    /// An outcome a person gave: a result they supplied (`ok`), or their
    /// refusal, said in `note`.
    pub fn by_person(
        chain: &str,
        key: &str,
        ok: bool,
        value: Option<serde_json::Value>,
        by: &str,
        note: String,
    ) -> Outcome {
        let person: Arc<str> = format!("person:{by}").into();
        Outcome {
            ok,
            chain: chain.into(),
            key: key.into(),
            value,
            confidence: None,
            served_by: ok.then(|| person.clone()),
            degraded: ok,
            degraded_reason: ok.then(|| format!("result supplied by a person ({by})")),
            attempts: smallvec::smallvec![Attempt {
                target: person,
                attempt: 0,
                class: if ok {
                    AttemptClass::Supplied
                } else {
                    AttemptClass::Rejected
                },
                message: note.clone().into(),
                elapsed_ms: 0,
                delay_ms: 0,
                then: Next::Done,
            }],
            error: (!ok).then_some(CallError {
                class: FailureClass::Permanent,
                message: note.into(),
                escalate: None,
            }),
            elapsed_ms: 0,
        }
    }

    /// What `target`'s `reconcile` said an earlier call with `key` already
    /// produced.
    pub fn reconciled(
        chain: &str,
        key: &str,
        target: &str,
        value: serde_json::Value,
        confidence: Option<f64>,
    ) -> Outcome {
        Outcome {
            ok: true,
            chain: chain.into(),
            key: key.into(),
            value: Some(value),
            confidence,
            served_by: Some(target.into()),
            degraded: false,
            degraded_reason: None,
            attempts: smallvec::smallvec![Attempt {
                target: target.into(),
                attempt: 0,
                class: AttemptClass::Reconciled,
                message: "the tool says this call already happened".into(),
                elapsed_ms: 0,
                delay_ms: 0,
                then: Next::Done,
            }],
            error: None,
            elapsed_ms: 0,
        }
    }
}

impl fmt::Display for Outcome {
    /// The readable form `backstop call` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.attempts {
            write!(f, "  {} #{}: {}", a.target, a.attempt, a.class)?;
            if !a.message.is_empty() {
                write!(f, " ({})", a.message)?;
            }
            match a.then {
                Next::Retry => writeln!(f, " -> retry in {} ms", a.delay_ms)?,
                Next::FailOver => writeln!(f, " -> fall back")?,
                Next::Stop => writeln!(f, " -> stop")?,
                Next::Done => writeln!(f, " [{} ms]", a.elapsed_ms)?,
            }
        }
        match (&self.served_by, &self.error) {
            (Some(by), _) => {
                write!(f, "served by {by}")?;
                if self.degraded {
                    write!(
                        f,
                        " (DEGRADED: {})",
                        self.degraded_reason.as_deref().unwrap_or("fallback")
                    )?;
                }
                if let Some(c) = self.confidence {
                    write!(f, ", confidence {c:.2}")?;
                }
                writeln!(f, " in {} ms", self.elapsed_ms)?;
                if let Some(v) = &self.value {
                    write!(f, "{v}")?;
                }
                Ok(())
            }
            (None, Some(e)) => {
                write!(f, "FAILED: {}: {}", e.class, e.message)?;
                if let Some(r) = e.escalate {
                    write!(f, " [escalate: {r}]")?;
                }
                Ok(())
            }
            (None, None) => write!(f, "no result"),
        }
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_class_index_is_its_place_in_all() {
        for (i, c) in FailureClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c}");
        }
    }

    /// Journals written before the classes were typed hold these strings.
    #[test]
    fn attempt_classes_and_nexts_keep_their_strings() {
        let mut classes = vec![
            AttemptClass::Ok,
            AttemptClass::Supplied,
            AttemptClass::Rejected,
            AttemptClass::Reconciled,
        ];
        classes.extend(FailureClass::ALL.map(AttemptClass::Failed));
        for c in classes {
            let text = serde_json::to_value(c).unwrap();
            assert_eq!(text, c.as_str());
            assert_eq!(serde_json::from_value::<AttemptClass>(text).unwrap(), c);
        }
        assert_eq!(
            AttemptClass::Failed(FailureClass::BulkheadFull).as_str(),
            "bulkhead-full"
        );
        for (n, s) in [
            (Next::Done, "done"),
            (Next::Retry, "retry"),
            (Next::FailOver, "fail-over"),
            (Next::Stop, "stop"),
        ] {
            assert_eq!(serde_json::to_value(n).unwrap(), s);
            assert_eq!(n.as_str(), s);
        }
        let old = serde_json::json!({
            "target": "a", "attempt": 1, "class": "rate-limited", "message": "slow down",
            "elapsed_ms": 3, "delay_ms": 40, "then": "retry"
        });
        let a: Attempt = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(a.class, AttemptClass::Failed(FailureClass::RateLimited));
        assert_eq!(a.then, Next::Retry);
        assert_eq!(serde_json::to_value(&a).unwrap(), old);
        let e = serde_json::from_value::<AttemptClass>("nonsense".into()).unwrap_err();
        assert!(
            e.to_string().contains("unknown attempt class `nonsense`"),
            "{e}"
        );
    }
}
