//! Announcing escalations to the configured webhook, through the same
//! guard as every call: the retry policy (jitter, Retry-After honoured)
//! under one deadline, each failure classified as a model call's is.

use crate::guard::{Breakers, ChainRunner, ChainTarget, RetryPolicy};
use crate::models::classify;
use crate::outcome::{Effect, FailureClass};
use crate::target::{CallCtx, CallFuture, CallTarget, TargetOutput};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long one delivery may take, every attempt and wait included.
pub const DEADLINE: Duration = Duration::from_secs(120);
/// One attempt's limit.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a refusal's body read, for its message and classification.
const ERROR_BODY: usize = 16 * 1024;

/// A webhook as a call target: POSTs its input, as JSON, to one URL.
struct Webhook {
    client: reqwest::Client,
    url: String,
}

impl CallTarget for Webhook {
    fn name(&self) -> &str {
        "webhook"
    }

    /// A receiver sees the same escalation id again on a repeat, so a
    /// delivery may be retried whatever became of the last attempt.
    fn effect(&self) -> Effect {
        Effect::Idempotent
    }

    fn timeout(&self) -> Duration {
        ATTEMPT_TIMEOUT
    }

    fn call<'a>(&'a self, input: &'a Value, ctx: &'a CallCtx) -> CallFuture<'a> {
        Box::pin(async move {
            let sent = self
                .client
                .post(&self.url)
                .json(input)
                .timeout(ctx.timeout)
                .send()
                .await;
            let mut response = match sent {
                Ok(r) if r.status().is_success() => {
                    return Ok(TargetOutput {
                        value: Value::Null,
                        confidence: None,
                    })
                }
                Ok(r) => r,
                Err(e) => return Err(classify::transport(&e, false)),
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let mut body = Vec::new();
            while body.len() < ERROR_BODY {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            body.truncate(ERROR_BODY);
            let text = String::from_utf8_lossy(&body);
            Err(classify::http_failure(
                status,
                &headers,
                &text,
                SystemTime::now(),
            ))
        })
    }
}

/// POSTs `body` to `url` under `policy`; the error says why the last
/// attempt failed.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    policy: RetryPolicy,
) -> Result<(), String> {
    let target = Arc::new(Webhook {
        client: client.clone(),
        url: url.to_owned(),
    });
    // No breaker: a delivery that fails gives up, it never holds back the
    // next one.
    let targets = [ChainTarget::new(target, policy, &Breakers::default())];
    let chain: Arc<str> = "webhook".into();
    let rng = Mutex::new(StdRng::from_os_rng());
    let runner = ChainRunner {
        chain: &chain,
        targets: &targets,
        deadline: DEADLINE,
        rng: &rng,
        max_message: crate::outcome::DEFAULT_MAX_MESSAGE,
        progress: None,
    };
    let key = format!("{:032x}", rand::random::<u128>());
    let outcome = runner.run(body, key.into()).await;
    if outcome.ok {
        return Ok(());
    }
    let (class, message) = outcome.error.map_or(
        (FailureClass::Permanent, "no attempt was made".into()),
        |e| (e.class, e.message),
    );
    let n = outcome.attempts.len();
    Err(format!(
        "{class} after {n} attempt{}: {message}",
        if n == 1 { "" } else { "s" }
    ))
}
