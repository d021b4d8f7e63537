//! Server-sent events, read chunk by chunk from a response body.

use super::classify;
use crate::outcome::{Failure, FailureClass};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

#[derive(Debug, Default, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Reads events from `body` (a response's chunks) until it ends, calling
/// `each` for every event; `each` returns whether output has begun (so a
/// broken stream can be classified) and may stop the stream with an error.
pub async fn read<S>(
    body: S,
    deadline: Instant,
    mut each: impl FnMut(Event) -> Result<bool, Failure>,
) -> Result<(), Failure>
where
    S: Stream<Item = reqwest::Result<Bytes>>,
{
    let mut body = std::pin::pin!(body);
    let mut buf: Vec<u8> = Vec::new();
    let mut began = false;
    loop {
        let next = tokio::time::timeout_at(deadline, body.next()).await;
        let chunk = match next.map(Option::transpose) {
            Err(_) if began => {
                return Err(Failure::new(FailureClass::StreamBroken, "stream stalled past the deadline after output began; restarting on the next target"))
            }
            Err(_) => return Err(Failure::new(FailureClass::Timeout, "stream did not finish in time")),
            Ok(Err(e)) => return Err(classify::transport(&e, began)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(c))) => c,
        };
        buf.extend_from_slice(&chunk);
        while let Some((end, skip)) = boundary(&buf) {
            let raw: Vec<u8> = buf.drain(..end + skip).collect();
            let text = String::from_utf8_lossy(&raw[..end]);
            if let Some(ev) = parse(&text) {
                began |= each(ev)?;
            }
        }
    }
}

/// Where the first event ends: `\n\n` or `\r\n\r\n`.
fn boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
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
        assert_eq!(boundary(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(boundary(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(boundary(b"data: a\n"), None);
        let ev = parse("event: message_start\ndata: {\"a\":\ndata: 1}\n: comment").unwrap();
        assert_eq!(ev.event.as_deref(), Some("message_start"));
        assert_eq!(ev.data, "{\"a\":\n1}");
        assert_eq!(parse(": keep-alive"), None);
    }
}
