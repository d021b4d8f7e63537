//! `fault`: a test tool whose input chooses how it misbehaves, so every
//! recovery path of the host can be driven through a real component.
//!
//! Input: `{"mode": "...", ...}`, or `{"<tool name>": {"mode": ...}, ...}`
//! to give each fault tool in a chain its own behaviour; see `describe`.

use serde_json::{json, Value};
use std::io::Write;

wit_bindgen::generate!({ world: "tool", path: "../../wit" });

use backstop::tool::host::{context, log, Level};
use backstop::tool::types::{Effect, RateLimit};

struct Fault;

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "mode": {"enum": ["echo", "fail", "sleep", "spin", "alloc", "trap", "panic",
                      "read", "env", "context", "bad-json", "record",
                      "recurse", "connect", "big-output", "bad-utf8", "log-flood",
                      "stderr-flood", "raw"]},
    "class": {"enum": ["invalid-input", "transient", "rate-limited", "unavailable",
                       "permanent", "needs-human"]},
    "times": {"type": "integer", "minimum": 0,
              "description": "fail only the first N attempts, then echo"},
    "retry_after_ms": {"type": "integer", "minimum": 0},
    "ms": {"type": "integer", "minimum": 0},
    "path": {"type": "string"},
    "message": {"type": "string", "description": "mode fail: the error's message"},
    "repeat": {"type": "integer", "minimum": 0, "description": "mode fail: copies of message"},
    "key": {"type": "string"},
    "value": {},
    "confidence": {"type": "number"},
    "bytes": {"type": "integer", "minimum": 0, "description": "mode stderr-flood: how much"},
    "then": {"enum": ["echo", "panic"], "description": "mode stderr-flood: what after"},
    "mb": {"type": "integer", "minimum": 0, "description": "modes alloc, big-output: how many MiB"},
    "addr": {"type": "string", "description": "mode connect: where to"},
    "text": {"type": "string", "description": "mode raw: the output, as it is"}
  }
}"#;

fn invalid(msg: impl Into<String>) -> ToolError {
    ToolError::InvalidInput(msg.into())
}

fn ok(value: Value, confidence: Option<f64>) -> Result<Output, ToolError> {
    Ok(Output {
        value: value.to_string(),
        confidence,
    })
}

fn classified(class: &str, message: String, retry_after_ms: Option<u64>) -> ToolError {
    match class {
        "invalid-input" => ToolError::InvalidInput(message),
        "rate-limited" => ToolError::RateLimited(RateLimit {
            message,
            retry_after_ms,
        }),
        "unavailable" => ToolError::Unavailable(message),
        "permanent" => ToolError::Permanent(message),
        "needs-human" => ToolError::NeedsHuman(message),
        _ => ToolError::Transient(message),
    }
}

impl Guest for Fault {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "fault".into(),
            // Tests declare a description (its size, escape sequences in
            // it) through granted env keys.
            description: match std::env::var("FAULT_DESCRIPTION") {
                Ok(d) => d.repeat(
                    std::env::var("FAULT_DESCRIPTION_REPEAT")
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1),
                ),
                Err(_) => {
                    "Test tool: fails, stalls, loops, allocates or traps as its input asks.".into()
                }
            },
            input_schema: SCHEMA.into(),
            // Tests declare an output schema through a granted env key.
            output_schema: std::env::var("FAULT_OUTPUT_SCHEMA").ok(),
            // Tests declare other effects through the granted env key.
            effect: match std::env::var("FAULT_EFFECT").as_deref() {
                Ok("idempotent") => Effect::Idempotent,
                Ok("side-effect") => Effect::SideEffect,
                Ok("irreversible") => Effect::Irreversible,
                _ => Effect::ReadOnly,
            },
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let input: Value =
            serde_json::from_str(&input).map_err(|e| invalid(format!("input is not JSON: {e}")))?;
        let ctx = context();
        // A chain passes one input to every target: `{"<tool name>": {...}}`
        // gives each fault tool of the chain its own behaviour.
        let input = match input.get(&ctx.tool_name) {
            Some(own) => own.clone(),
            None => input,
        };
        let mode = input["mode"].as_str().unwrap_or("echo");
        let confidence = input["confidence"].as_f64();
        let echo = || {
            json!({
                "echo": input.get("value").cloned().unwrap_or(Value::Null),
                "attempt": ctx.attempt,
                "key": ctx.idempotency_key,
                "tool": ctx.tool_name,
            })
        };
        match mode {
            "echo" => ok(echo(), confidence),
            "fail" => {
                let class = input["class"].as_str().unwrap_or("transient");
                match input["times"].as_u64() {
                    Some(times) if u64::from(ctx.attempt) > times => ok(echo(), confidence),
                    _ => {
                        log(
                            Level::Warn,
                            "injecting failure",
                            &[("class".into(), class.into())],
                        );
                        // Tests choose the message (escape sequences, a
                        // secret) and its size (`repeat` copies of it).
                        let message = match input["message"].as_str() {
                            Some(m) => m.repeat(input["repeat"].as_u64().unwrap_or(1) as usize),
                            None => format!("injected {class} failure on attempt {}", ctx.attempt),
                        };
                        Err(classified(
                            class,
                            message,
                            input["retry_after_ms"].as_u64(),
                        ))
                    }
                }
            }
            "sleep" => {
                let ms = input["ms"].as_u64().unwrap_or(100);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                ok(echo(), confidence)
            }
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page so the memory is really committed.
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => core::arch::wasm32::unreachable(),
            "panic" => panic!("fault tool asked to panic"),
            "read" => {
                let path = input["path"]
                    .as_str()
                    .ok_or_else(|| invalid("`path` is required"))?;
                match std::fs::read_to_string(path) {
                    Ok(text) => ok(json!({ "path": path, "text": text }), confidence),
                    Err(e) => Err(ToolError::Permanent(format!("cannot read {path}: {e}"))),
                }
            }
            "env" => {
                let key = input["key"]
                    .as_str()
                    .ok_or_else(|| invalid("`key` is required"))?;
                ok(
                    json!({ "key": key, "value": std::env::var(key).ok() }),
                    confidence,
                )
            }
            "context" => ok(
                json!({
                    "key": ctx.idempotency_key,
                    "attempt": ctx.attempt,
                    "deadline_ms": ctx.deadline_ms,
                    "tool": ctx.tool_name,
                }),
                confidence,
            ),
            "bad-json" => Ok(Output {
                value: "this is not json".into(),
                confidence,
            }),
            "record" => {
                // A side effect the tests can count: one line per execution.
                let path = input["path"]
                    .as_str()
                    .ok_or_else(|| invalid("`path` is required"))?;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| ToolError::Unavailable(format!("cannot open {path}: {e}")))?;
                writeln!(file, "{}", ctx.idempotency_key)
                    .map_err(|e| ToolError::Transient(format!("cannot write {path}: {e}")))?;
                ok(echo(), confidence)
            }
            "recurse" => {
                #[allow(unconditional_recursion)]
                fn down(n: u64, pad: [u8; 256]) -> u64 {
                    std::hint::black_box(pad);
                    down(n + 1, pad) + 1
                }
                ok(json!(down(0, [0; 256])), confidence)
            }
            "connect" => {
                // No socket is granted: this must fail, not connect.
                let addr = input["addr"]
                    .as_str()
                    .ok_or_else(|| invalid("`addr` is required"))?;
                match std::net::TcpStream::connect(addr) {
                    Ok(_) => ok(json!({ "connected": addr }), confidence),
                    Err(e) => Err(ToolError::Permanent(format!(
                        "cannot connect to {addr}: {e}"
                    ))),
                }
            }
            "big-output" => {
                let mb = input["mb"].as_u64().unwrap_or(100) as usize;
                Ok(Output {
                    value: "x".repeat(mb << 20),
                    confidence,
                })
            }
            "bad-utf8" => {
                // SAFETY: deliberately breaks String's invariant so the
                // host sees invalid UTF-8 cross the boundary.
                let value = unsafe { String::from_utf8_unchecked(vec![b'"', 0xff, 0xfe, b'"']) };
                Ok(Output { value, confidence })
            }
            "log-flood" => {
                let big = "y".repeat(1 << 20);
                let fields: Vec<(String, String)> =
                    (0..100).map(|i| (format!("k{i}"), big.clone())).collect();
                for _ in 0..300 {
                    log(Level::Error, &big, &fields[..4]);
                }
                log(Level::Error, "many fields", &fields);
                ok(json!("flooded"), confidence)
            }
            "raw" => Ok(Output {
                // `text` as the output, unchecked: what a tool's own JSON
                // writer might produce.
                value: input["text"].as_str().unwrap_or("").to_owned(),
                confidence,
            }),
            "stderr-flood" => {
                // `bytes` of chatter on stderr, then `then`: "panic" or an echo.
                let line = "z".repeat(99);
                for _ in 0..input["bytes"].as_u64().unwrap_or(100_000) / 100 {
                    eprintln!("{line}");
                }
                if input["then"] == "panic" {
                    panic!("fault tool panicked after its chatter");
                }
                ok(echo(), confidence)
            }
            other => Err(invalid(format!("unknown mode `{other}`"))),
        }
    }
}

export!(Fault);
