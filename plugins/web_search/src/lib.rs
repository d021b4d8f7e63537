//! `web_search`: queries a search service over outbound HTTP (`wasi:http`).
//!
//! The service's base URL comes from the granted env key `SEARCH_URL`; the
//! host only lets the request out if the operator granted that origin.
//! Expects `GET {SEARCH_URL}?q=QUERY` to answer `{"results": [...]}`.
//! HTTP failures are mapped to the classes the host recovers from.

use serde_json::{json, Value};
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};

wit_bindgen::generate!({ world: "tool", path: "../../wit" });

use backstop::tool::host::{context, log, Level};
use backstop::tool::types::{Effect, RateLimit};

const MAX_BODY: usize = 4 << 20;

struct WebSearch;

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn classify_transport(e: &ErrorCode) -> ToolError {
    match e {
        ErrorCode::HttpRequestDenied => {
            ToolError::Permanent("outbound request denied by the host: origin not granted".into())
        }
        ErrorCode::ConnectionRefused
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DnsError(_) => {
            ToolError::Unavailable(format!("search service unreachable: {e:?}"))
        }
        _ => ToolError::Transient(format!("search request failed: {e:?}")),
    }
}

fn get(url: &str) -> Result<(u16, Option<u64>, Vec<u8>), ToolError> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => {
            return Err(ToolError::Permanent(format!(
                "SEARCH_URL `{url}` is not an http(s) URL"
            )))
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    let bad = |what: &str| ToolError::Permanent(format!("invalid {what} in SEARCH_URL `{url}`"));
    req.set_method(&Method::Get).map_err(|_| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|_| bad("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|_| bad("path"))?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| classify_transport(&e))?;
    pending.subscribe().block();
    let resp = match pending.get() {
        Some(Ok(Ok(resp))) => resp,
        Some(Ok(Err(e))) => return Err(classify_transport(&e)),
        _ => return Err(ToolError::Transient("search response never arrived".into())),
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
        .map(|s| s * 1000);
    let body = resp
        .consume()
        .map_err(|_| ToolError::Transient("response body unavailable".into()))?;
    let stream = body
        .stream()
        .map_err(|_| ToolError::Transient("response body unavailable".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => break,
        }
        if bytes.len() > MAX_BODY {
            return Err(ToolError::Permanent(
                "search response larger than 4 MiB".into(),
            ));
        }
    }
    drop(stream);
    Ok((status, retry_after, bytes))
}

impl Guest for WebSearch {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "web_search".into(),
            description: "Search the web; returns result titles, URLs and snippets.".into(),
            input_schema: r#"{"type":"object","properties":{"query":{"type":"string","minLength":1}},"required":["query"]}"#.into(),
            output_schema: Some(r#"{"type":"object","properties":{"results":{"type":"array"}},"required":["results"]}"#.into()),
            effect: Effect::ReadOnly,
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| ToolError::InvalidInput(format!("input is not JSON: {e}")))?;
        let query = input["query"]
            .as_str()
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| {
                ToolError::InvalidInput("`query` (non-empty string) is required".into())
            })?;
        let base = std::env::var("SEARCH_URL").map_err(|_| {
            ToolError::Permanent("SEARCH_URL is not set: grant it in the tool's env".into())
        })?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}q={}", encode(query));
        let ctx = context();
        log(
            Level::Debug,
            "search",
            &[("attempt".into(), ctx.attempt.to_string())],
        );
        let (status, retry_after_ms, body) = get(&url)?;
        match status {
            200..=299 => {
                let value: Value = serde_json::from_slice(&body).map_err(|e| {
                    ToolError::Transient(format!("search answered malformed JSON: {e}"))
                })?;
                let results = value.get("results").cloned().unwrap_or_else(|| json!([]));
                Ok(Output {
                    value: json!({ "results": results }).to_string(),
                    confidence: Some(0.9),
                })
            }
            429 => Err(ToolError::RateLimited(RateLimit {
                message: "search service rate limited".into(),
                retry_after_ms,
            })),
            400 | 422 => Err(ToolError::InvalidInput(format!(
                "search service rejected the query ({status})"
            ))),
            401 | 403 => Err(ToolError::Permanent(format!(
                "search service refused credentials ({status})"
            ))),
            503 => Err(ToolError::Unavailable(format!(
                "search service unavailable ({status})"
            ))),
            500..=599 | 408 => Err(ToolError::Transient(format!(
                "search service error ({status})"
            ))),
            _ => Err(ToolError::Permanent(format!(
                "search service answered {status}"
            ))),
        }
    }
}

export!(WebSearch);
