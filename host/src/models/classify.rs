//! Classifies a provider's answer by status, headers and body, as the
//! Anthropic and OpenAI APIs document them:
//!
//! - retried: 408, 409, 429, 500 and above (529 = overloaded), connection
//!   errors and timeouts; `x-should-retry: true|false` overrides the status;
//! - the wait: `retry-after-ms` first, then `retry-after` (seconds or an
//!   HTTP date);
//! - fail fast: 400, 413, 422 (the request is wrong), 401, 403 (auth),
//!   404 (no such model);
//! - a 429 for a spend cap (`enforced_spend_limit_reached`) or
//!   `insufficient_quota` is billing, not load: never retried;
//! - an error event inside a 200 stream is classified by `error.type`.

use crate::outcome::{Failure, FailureClass};
use std::time::{Duration, SystemTime};

/// The wait a response asks for, if it says.
pub fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // A wait too long for `Duration` is still a wait: saturate, and let
    // `max_retry_after` fail over (found by the `models` fuzz target: a
    // 31-digit Retry-After panicked in `Duration::from_secs_f64`).
    let seconds = |s: f64| {
        (s.is_finite() && s >= 0.0).then(|| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(d) = seconds(ms / 1000.0) {
            return Some(d);
        }
    }
    let v = text("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return seconds(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `error.type` (Anthropic) or `error.code`/`error.type` (OpenAI) of an
/// error body, if it has one.
pub fn error_kind(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    for key in ["code", "type"] {
        if let Some(s) = e.get(key).and_then(|s| s.as_str()) {
            if !s.is_empty() {
                return Some(s.to_owned());
            }
        }
    }
    None
}

/// The provider's own words, kept short (never the request, never a key).
fn message_of(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_owned));
    let text = from_json.unwrap_or_else(|| body.trim().to_owned());
    let short: String = text.chars().take(200).collect();
    if short.is_empty() {
        "no body".into()
    } else {
        short
    }
}

const BILLING: [&str; 3] = [
    "enforced_spend_limit_reached",
    "insufficient_quota",
    "billing_error",
];

/// Classifies a non-success HTTP answer.
pub fn http_failure(
    status: u16,
    headers: &http::HeaderMap,
    body: &str,
    now: SystemTime,
) -> Failure {
    let kind = error_kind(body);
    let said = message_of(body);
    let wait = retry_after(headers, now);
    let billing = BILLING
        .iter()
        .any(|b| kind.as_deref() == Some(*b) || body.contains(b));
    if billing {
        return Failure::new(
            FailureClass::Permanent,
            format!("HTTP {status}: billing or spend limit: {said}"),
        );
    }
    let should_retry = headers
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().eq_ignore_ascii_case("true"));
    let msg = format!("HTTP {status}: {said}");
    match should_retry {
        Some(true) if status == 429 => return Failure::rate_limited(msg, wait),
        Some(true) => {
            return Failure {
                retry_after: wait,
                ..Failure::new(FailureClass::Transient, msg)
            }
        }
        Some(false) => {
            let class = if matches!(status, 400 | 413 | 422) {
                FailureClass::InvalidInput
            } else {
                FailureClass::Permanent
            };
            return Failure::new(class, format!("{msg} (x-should-retry: false)"));
        }
        None => {}
    }
    match status {
        429 => Failure::rate_limited(msg, wait),
        408 | 409 | 500..=599 => Failure {
            retry_after: wait,
            ..Failure::new(FailureClass::Transient, msg)
        },
        400 | 413 | 422 => Failure::new(FailureClass::InvalidInput, msg),
        401 | 403 => Failure::new(
            FailureClass::Permanent,
            format!("{msg} (check the API key)"),
        ),
        404 => Failure::new(
            FailureClass::Permanent,
            format!("{msg} (unknown model or endpoint)"),
        ),
        _ => Failure::new(FailureClass::Permanent, msg),
    }
}

/// Classifies an error event that arrived inside a 200 stream.
/// `output_began` says whether content was already streamed: a stream
/// broken half way is restarted on the next target, never retried in place
/// (the caller may already have shown part of it).
pub fn stream_error(kind: &str, message: &str, output_began: bool) -> Failure {
    let msg = format!(
        "stream error event `{kind}`: {}",
        message.chars().take(200).collect::<String>()
    );
    if output_began {
        return Failure::new(
            FailureClass::StreamBroken,
            format!("{msg} after output began; restarting on the next target"),
        );
    }
    match kind {
        "overloaded_error" | "api_error" | "server_error" | "timeout_error" => {
            Failure::new(FailureClass::Transient, msg)
        }
        "rate_limit_error" | "rate_limit_exceeded" => Failure::rate_limited(msg, None),
        "invalid_request_error" | "request_too_large" => {
            Failure::new(FailureClass::InvalidInput, msg)
        }
        k if BILLING.contains(&k) => Failure::new(
            FailureClass::Permanent,
            format!("{msg}: billing or spend limit"),
        ),
        _ => Failure::new(FailureClass::Permanent, msg),
    }
}

/// Classifies a provider's `error` object (`{"type"|"code", "message"}`),
/// found in a 200 body or a stream event.
pub fn error_object(e: &serde_json::Value, output_began: bool) -> Failure {
    let kind = e["code"]
        .as_str()
        .or(e["type"].as_str())
        .unwrap_or("unknown");
    stream_error(kind, e["message"].as_str().unwrap_or(""), output_began)
}

/// Classifies a transport error from reqwest.
pub fn transport(err: &reqwest::Error, output_began: bool) -> Failure {
    // reqwest's Display can include the URL; ours carry no secrets, but
    // keep the message to the kind of failure and its source chain.
    let mut cause = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if output_began {
        return Failure::new(
            FailureClass::StreamBroken,
            format!("stream broke after output began ({cause}); restarting on the next target"),
        );
    }
    if err.is_timeout() {
        return Failure::new(
            FailureClass::Timeout,
            format!("no answer in time ({cause})"),
        );
    }
    if err.is_connect() {
        return Failure::new(FailureClass::Transient, format!("cannot connect: {cause}"));
    }
    if err.is_body() || err.is_decode() {
        return Failure::new(
            FailureClass::Transient,
            format!("response body cut short: {cause}"),
        );
    }
    Failure::new(FailureClass::Transient, format!("request failed: {cause}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn absurd_retry_after_saturates_instead_of_panicking() {
        let now = SystemTime::now();
        for (name, value) in [
            ("retry-after", "1111111111111111111101111111113"),
            ("retry-after-ms", "1e300"),
            ("retry-after", "1e20"),
        ] {
            let h = headers(&[(name, value)]);
            assert_eq!(retry_after(&h, now), Some(Duration::MAX), "{name}: {value}");
        }
        assert_eq!(retry_after(&headers(&[("retry-after", "NaN")]), now), None);
    }

    #[test]
    fn retry_after_prefers_ms_then_seconds_then_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
    }
}
