//! Model-response parsing: whatever a provider sends, the adapters return
//! a response or a classified failure, never a panic.
//!
//! Input: byte 0 picks the provider (bit 0: OpenAI) and what to decode
//! (bits 1-2): 0 a whole body; 1 a streamed body, split into chunks at
//! each 0x01 byte (as a network might split it); 2 an error status, as
//! `STATUS\nname: value\n...\n\nbody`.
#![no_main]

use backstop::config::Provider;
use backstop::models::decode;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let provider = if head & 1 == 1 {
        Provider::Openai
    } else {
        Provider::Anthropic
    };
    match (head >> 1) & 3 {
        0 => {
            let _ = decode::body(provider, rest);
        }
        1 => {
            let chunks = rest.split(|&b| b == 1).map(<[u8]>::to_vec).collect();
            let _ = runtime().block_on(decode::stream(provider, chunks));
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
            let mut lines = head.lines();
            let status = lines.next().and_then(|s| s.trim().parse().ok()).unwrap_or(500);
            let mut headers = http::HeaderMap::new();
            for line in lines {
                if let Some((k, v)) = line.split_once(':') {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.trim().as_bytes()),
                        http::HeaderValue::from_str(v.trim()),
                    ) {
                        headers.append(k, v);
                    }
                }
            }
            let _ = decode::http_failure(status, &headers, body);
        }
    }
});
