//! MCP's stdio transport: one JSON-RPC message per line. The SDK's own
//! drops a line it cannot read without a word; a client then waits for
//! an answer that never comes. This one answers such a line with a
//! JSON-RPC error (`-32700` for text that is not JSON, `-32600` for JSON
//! that is not a message, or a line over the size cap) and reads on.

use super::fast::{plain_call, FastPath, PlainCall};
use futures_util::StreamExt;
use rmcp::model::RequestId;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::RoleServer;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

/// What a line of input was.
enum Frame {
    Line(Vec<u8>),
    /// Longer than the cap: dropped as it came, told once it ended.
    TooLong,
}

/// Splits input into lines of at most `max` bytes without ever failing:
/// a too-long line is a frame of its own, so reading goes on after it.
struct Lines {
    max: usize,
    scanned: usize,
    skipping: bool,
}

impl Decoder for Lines {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        let newline = buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| i + self.scanned);
        match newline {
            Some(i) => {
                let mut line = buf.split_to(i + 1);
                self.scanned = 0;
                if std::mem::take(&mut self.skipping) {
                    return Ok(Some(Frame::TooLong));
                }
                line.truncate(i);
                Ok(Some(Frame::Line(line.to_vec())))
            }
            None if buf.len() > self.max => {
                buf.clear();
                self.scanned = 0;
                self.skipping = true;
                Ok(None)
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        self.scanned = 0;
        if buf.is_empty() || std::mem::take(&mut self.skipping) {
            buf.clear();
            return Ok(None);
        }
        Ok(Some(Frame::Line(buf.split().to_vec())))
    }
}

/// The plain calls running on the fast path, by request id, so a client's
/// cancellation reaches them.
type Flights = Arc<std::sync::Mutex<HashMap<RequestId, CancellationToken>>>;

pub(super) struct LineTransport<R, W> {
    lines: FramedRead<R, Lines>,
    out: Arc<Mutex<W>>,
    max_line: usize,
    /// Plain stateless calls are answered here, not by the SDK's loop.
    fast: Arc<FastPath>,
    flights: Flights,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> LineTransport<R, W> {
    pub fn new(read: R, write: W, max_line: usize, fast: Arc<FastPath>) -> Self {
        let lines = Lines {
            max: max_line,
            scanned: 0,
            skipping: false,
        };
        LineTransport {
            lines: FramedRead::new(read, lines),
            out: Arc::new(Mutex::new(write)),
            max_line,
            fast,
            flights: Flights::default(),
        }
    }
}

impl<R, W: AsyncWrite + Unpin + Send + 'static> LineTransport<R, W> {
    /// Starts a plain call on its own task; its answer is written when it
    /// ends, unless the client cancels it first.
    fn fly(&self, call: PlainCall) {
        let id = call.id.clone();
        let stop = CancellationToken::new();
        self.flights
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), stop.clone());
        let (fast, out, flights) = (self.fast.clone(), self.out.clone(), self.flights.clone());
        tokio::spawn(async move {
            let answer = tokio::select! {
                answer = fast.run(call) => Some(answer),
                () = stop.cancelled() => None,
            };
            flights.lock().expect("not poisoned").remove(&id);
            if let Some(mut answer) = answer {
                answer.push(b'\n');
                let mut out = out.lock().await;
                if out.write_all(&answer).await.is_ok() {
                    let _ = out.flush().await;
                }
            }
        });
    }

    /// Whether `line` cancels a plain call in flight (then it is stopped).
    fn cancels(&self, line: &str) -> bool {
        if !line.contains("notifications/cancelled") {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        let Ok(id) = serde_json::from_value::<RequestId>(v["params"]["requestId"].clone()) else {
            return false;
        };
        let stop = self.flights.lock().expect("not poisoned").remove(&id);
        stop.map(|s| s.cancel()).is_some()
    }
}

async fn write_line<W: AsyncWrite + Unpin>(out: &Mutex<W>, text: &str) -> std::io::Result<()> {
    let mut out = out.lock().await;
    out.write_all(text.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await
}

fn error_line(id: Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

/// The answer to a line that is not a message the server can take.
fn refusal(line: &str) -> Option<String> {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            let m = format!(
                "parse error: {}",
                crate::outcome::json_error("the line", &e)
            );
            return Some(error_line(Value::Null, -32700, &m));
        }
    };
    // A response or notification the server cannot read gets no answer
    // (there is no id to answer); a request does.
    let id = value
        .get("id")
        .cloned()
        .filter(|id| id.is_string() || id.is_number());
    let is_request = value.get("method").is_some() && id.is_some();
    let shaped = value.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    match (is_request, shaped) {
        (true, _) => Some(error_line(
            id.unwrap_or(Value::Null),
            -32600,
            "invalid request: not a JSON-RPC 2.0 request this server can read (check `jsonrpc`, \
             `method` and `params`)",
        )),
        (false, false) => Some(error_line(
            Value::Null,
            -32600,
            "invalid request: not a JSON-RPC 2.0 message",
        )),
        (false, true) => None,
    }
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.out.clone();
        async move {
            // One write for the message and its newline: each write wakes
            // the reader.
            let mut text = serde_json::to_vec(&item).map_err(std::io::Error::other)?;
            text.push(b'\n');
            let mut out = out.lock().await;
            out.write_all(&text).await?;
            out.flush().await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let line = match self.lines.next().await? {
                Ok(Frame::Line(line)) => line,
                Ok(Frame::TooLong) => {
                    let m = format!(
                        "invalid request: a message may hold at most {} bytes",
                        self.max_line
                    );
                    let _ = write_line(&self.out, &error_line(Value::Null, -32600, &m)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("MCP stdin closed: {e}");
                    return None;
                }
            };
            let Ok(line) = std::str::from_utf8(&line) else {
                let m = "parse error: the line is not UTF-8";
                let _ = write_line(&self.out, &error_line(Value::Null, -32700, m)).await;
                continue;
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(call) = plain_call(line.as_bytes(), None) {
                self.fly(call);
                continue;
            }
            if self.cancels(line) {
                continue;
            }
            match serde_json::from_str::<RxJsonRpcMessage<RoleServer>>(line) {
                Ok(message) => return Some(message),
                Err(_) => {
                    if let Some(answer) = refusal(line) {
                        let _ = write_line(&self.out, &answer).await;
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.out.lock().await.flush().await
    }
}
