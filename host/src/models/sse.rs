//! Server-sent events, read chunk by chunk from a response body.

use super::classify;
use crate::outcome::{Failure, FailureClass};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Default, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// How long and how much a stream may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Output must begin by then (time to first token).
    pub first: Instant,
    /// Longest quiet between two events once output began.
    pub idle: Duration,
    /// The whole stream must end by then (the call's deadline).
    pub end: Instant,
    /// Largest single event, in bytes.
    pub max_event: usize,
    /// Largest whole stream, in bytes.
    pub max_total: usize,
}

impl Limits {
    /// No time limits worth the name, the given sizes: for decoding
    /// recorded streams (`decode::stream`, the fuzzer).
    pub fn generous(max_total: usize) -> Limits {
        let far = Instant::now() + Duration::from_secs(3600);
        Limits {
            first: far,
            idle: Duration::from_secs(3600),
            end: far,
            max_event: max_total,
            max_total,
        }
    }
}

/// Reads events from `body` (a response's chunks) until it ends, calling
/// `each` for every event; `each` returns whether output has begun (so a
/// broken stream can be classified) and may stop the stream with an error.
///
/// Each byte is looked at a bounded number of times whatever the chunking
/// (the search for an event's end resumes where it stopped), and the
/// buffer never holds more than one event of at most `max_event` bytes.
pub async fn read<S>(
    body: S,
    limits: Limits,
    mut each: impl FnMut(Event) -> Result<bool, Failure>,
) -> Result<(), Failure>
where
    S: Stream<Item = reqwest::Result<Bytes>>,
{
    let mut body = std::pin::pin!(body);
    let mut buf: Vec<u8> = Vec::new();
    // Where in `buf` the search for the next boundary resumes.
    let mut scanned = 0usize;
    let mut total = 0usize;
    let mut began = false;
    let mut last_event = Instant::now();
    loop {
        let wait_until = if began {
            (last_event + limits.idle).min(limits.end)
        } else {
            limits.first.min(limits.end)
        };
        let next = tokio::time::timeout_at(wait_until, body.next()).await;
        let chunk = match next.map(Option::transpose) {
            Err(_) if began => {
                let why = if Instant::now() >= limits.end {
                    "the call's deadline passed mid-stream"
                } else {
                    "no event within the idle limit"
                };
                return Err(Failure::new(
                    FailureClass::StreamBroken,
                    format!("{why} after output began; restarting on the next target"),
                ));
            }
            Err(_) => {
                return Err(Failure::new(
                    FailureClass::Timeout,
                    "no output within the time-to-first-token limit",
                ))
            }
            Ok(Err(e)) => return Err(classify::transport(&e, began)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(c))) => c,
        };
        total += chunk.len();
        if total > limits.max_total {
            return Err(too_big(
                began,
                format!("stream exceeds max_response ({} bytes)", limits.max_total),
            ));
        }
        buf.extend_from_slice(&chunk);
        let mut start = 0usize;
        while let Some((end, skip)) = boundary(&buf[start..], scanned.saturating_sub(start)) {
            let text = String::from_utf8_lossy(&buf[start..start + end]);
            if let Some(ev) = parse(&text) {
                began |= each(ev)?;
                last_event = Instant::now();
            }
            start += end + skip;
            scanned = start;
        }
        // One move per chunk, not per event.
        buf.drain(..start);
        // Everything but the last bytes (a boundary's start) was searched.
        scanned = buf.len().saturating_sub(3);
        if buf.len() > limits.max_event {
            return Err(too_big(
                began,
                format!("a stream event exceeds {} bytes", limits.max_event),
            ));
        }
    }
}

fn too_big(began: bool, message: String) -> Failure {
    if began {
        Failure::new(
            FailureClass::StreamBroken,
            format!("{message}; restarting on the next target"),
        )
    } else {
        Failure::new(FailureClass::MalformedOutput, message)
    }
}

/// Where the first event in `buf` ends (`\n\n` or `\r\n\r\n`), searching
/// from `from` (bytes before it were searched already).
fn boundary(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from.min(buf.len());
    while i + 1 < buf.len() {
        match memchr_newline(&buf[i..]) {
            None => return None,
            Some(j) => i += j,
        }
        if buf.get(i + 1) == Some(&b'\n') {
            return Some((i, 2));
        }
        if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
            // `\n\r\n`: the end of a `\r\n\r\n` whose first `\r` is before `i`.
            if i >= 1 && buf[i - 1] == b'\r' {
                return Some((i - 1, 4));
            }
        }
        i += 1;
    }
    None
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn parse(text: &str) -> Option<Event> {
    let mut ev = Event::default();
    let mut data = Vec::new();
    for line in text.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => ev.event = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && ev.event.is_none() {
        return None;
    }
    ev.data = data.join("\n");
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_boundaries() {
        assert_eq!(boundary(b"data: a\n\ndata: b", 0), Some((7, 2)));
        assert_eq!(boundary(b"data: a\r\n\r\n", 0), Some((7, 4)));
        assert_eq!(boundary(b"data: a\n", 0), None);
        assert_eq!(boundary(b"data: a\r\n\r\n", 5), Some((7, 4)));
        let ev = parse("event: message_start\ndata: {\"a\":\ndata: 1}\n: comment").unwrap();
        assert_eq!(ev.event.as_deref(), Some("message_start"));
        assert_eq!(ev.data, "{\"a\":\n1}");
        assert_eq!(parse(": keep-alive"), None);
    }
}
