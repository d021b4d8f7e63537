//! A fault-injecting HTTP server on 127.0.0.1 for tests and the offline
//! demo: it answers each request with the next scripted reply (status,
//! headers, body, delay, streamed chunks, a dropped connection), or with a
//! fallback reply once the script is used up, and records when each
//! request arrived and what it carried. [`model`] builds replies in the
//! Anthropic and OpenAI wire formats, so it doubles as a scripted model.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Streamed after `body`: each part after its delay.
    pub chunks: Vec<(Duration, String)>,
    /// Drop the connection: before answering when there are no chunks,
    /// else after the last chunk (a stream cut mid-way).
    pub drop: bool,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            ..Reply::status(status)
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            chunks: Vec::new(),
            drop: false,
        }
    }

    /// Closes the connection without answering.
    pub fn dropped() -> Reply {
        Reply {
            drop: true,
            ..Reply::status(200)
        }
    }

    /// A raw body with a status (for truncated or malformed bodies).
    pub fn raw(status: u16, body: &str) -> Reply {
        Reply {
            body: body.to_owned(),
            ..Reply::status(status)
        }
    }

    /// A `text/event-stream` answer made of `events`, each sent after `gap`.
    pub fn sse(events: Vec<String>, gap: Duration) -> Reply {
        Reply {
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: events.into_iter().map(|e| (gap, e)).collect(),
            ..Reply::status(200)
        }
    }

    /// Cuts the connection after the chunks.
    pub fn then_drop(mut self) -> Reply {
        self.drop = true;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub path: String,
    pub body: String,
    /// The credential it carried (`x-api-key` or a bearer token), if any.
    pub credential: Option<String>,
}

/// A response body fed from a channel, so chunks can be delayed and the
/// stream cut with an error.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}

/// Computes a reply from the request, when no scripted reply is queued.
pub type Handler = Arc<dyn Fn(&Arrival) -> Reply + Send + Sync>;

struct State {
    script: VecDeque<Reply>,
    fallback: Reply,
    handler: Option<Handler>,
    arrivals: Vec<Arrival>,
}

/// Stops serving when dropped.
pub struct ScriptedServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(fallback: Reply) -> std::io::Result<ScriptedServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            fallback,
            handler: None,
            arrivals: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { respond(state, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ScriptedServer { addr, state, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues replies for the next requests.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Answers requests with `handler` once the script is used up (before
    /// the fallback): a scripted model that follows the conversation.
    pub fn set_handler(&self, handler: Handler) {
        self.state.lock().unwrap().handler = Some(handler);
    }

    /// Forgets replies not yet used.
    pub fn clear(&self) {
        self.state.lock().unwrap().script.clear();
    }

    /// Replaces the reply used once the script is empty.
    pub fn set_fallback(&self, reply: Reply) {
        self.state.lock().unwrap().fallback = reply;
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.lock().unwrap().arrivals.clone()
    }
}

async fn respond(
    state: Arc<Mutex<State>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<ChannelBody>, std::io::Error> {
    let at = Instant::now();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let credential = header("x-api-key")
        .or_else(|| header("authorization").map(|a| a.trim_start_matches("Bearer ").to_owned()));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = {
        let mut s = state.lock().unwrap();
        s.arrivals.push(Arrival {
            at,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
            credential,
        });
        match (s.script.pop_front(), &s.handler) {
            (Some(r), _) => r,
            (None, Some(h)) => h(s.arrivals.last().expect("just pushed")),
            (None, None) => s.fallback.clone(),
        }
    };
    tokio::time::sleep(reply.delay).await;
    if reply.drop && reply.chunks.is_empty() {
        // An error from the service makes hyper close the connection
        // without an answer.
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "scripted drop",
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut resp = hyper::Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    tokio::spawn(async move {
        if !reply.body.is_empty()
            && tx
                .send(Ok(Frame::data(Bytes::from(reply.body))))
                .await
                .is_err()
        {
            return;
        }
        for (gap, chunk) in reply.chunks {
            tokio::time::sleep(gap).await;
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
        }
        if reply.drop {
            let _ = tx
                .send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted cut",
                )))
                .await;
        }
    });
    Ok(resp
        .body(ChannelBody(rx))
        .expect("a scripted response is valid"))
}

/// Replies in the providers' wire formats.
pub mod model {
    use super::Reply;
    use serde_json::{json, Value};
    use std::time::Duration;

    pub fn anthropic_text(text: &str) -> Reply {
        anthropic_blocks(vec![json!({"type": "text", "text": text})], "end_turn")
    }

    pub fn anthropic_tool_use(id: &str, name: &str, input: Value) -> Reply {
        anthropic_blocks(
            vec![json!({"type": "tool_use", "id": id, "name": name, "input": input})],
            "tool_use",
        )
    }

    pub fn anthropic_blocks(content: Vec<Value>, stop: &str) -> Reply {
        Reply::json(
            200,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "scripted",
                   "content": content, "stop_reason": stop,
                   "usage": {"input_tokens": 10, "output_tokens": 5}}),
        )
    }

    pub fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    }

    fn event(name: &str, data: Value) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    /// A streamed text answer, one delta per part.
    pub fn anthropic_stream_events(parts: &[&str]) -> Vec<String> {
        let mut ev = vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {"model": "scripted",
                    "usage": {"input_tokens": 10}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                    "text": ""}}),
            ),
        ];
        for p in parts {
            ev.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": p}}),
            ));
        }
        ev.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        ev.push(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": parts.len()}}),
        ));
        ev.push(event("message_stop", json!({"type": "message_stop"})));
        ev
    }

    pub fn anthropic_stream(parts: &[&str]) -> Reply {
        Reply::sse(anthropic_stream_events(parts), Duration::from_millis(1))
    }

    /// An error event inside a 200 stream; `after` text deltas first.
    pub fn anthropic_stream_error(after: &[&str], kind: &str) -> Reply {
        let mut ev = anthropic_stream_events(after);
        ev.truncate(2 + after.len());
        ev.push(event(
            "error",
            json!({"type": "error", "error": {"type": kind, "message": "scripted stream error"}}),
        ));
        Reply::sse(ev, Duration::from_millis(1))
    }

    pub fn openai_text(text: &str) -> Reply {
        Reply::json(
            200,
            json!({"id": "c1", "object": "chat.completion", "model": "scripted",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 5}}),
        )
    }

    pub fn openai_tool_call(id: &str, name: &str, input: Value) -> Reply {
        Reply::json(
            200,
            json!({"id": "c1", "object": "chat.completion", "model": "scripted",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                     "tool_calls": [{"id": id, "type": "function", "function": {"name": name,
                         "arguments": input.to_string()}}]},
                     "finish_reason": "tool_calls"}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 5}}),
        )
    }

    pub fn openai_error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": code, "code": code}}),
        )
    }

    pub fn openai_stream_events(parts: &[&str]) -> Vec<String> {
        let mut ev: Vec<String> = parts
            .iter()
            .map(|p| {
                let delta = json!({"index": 0, "delta": {"content": p}, "finish_reason": null});
                format!(
                    "data: {}\n\n",
                    json!({"model": "scripted", "choices": [delta]})
                )
            })
            .collect();
        let end = json!({"index": 0, "delta": {}, "finish_reason": "stop"});
        ev.push(format!(
            "data: {}\n\n",
            json!({"model": "scripted", "choices": [end]})
        ));
        ev.push("data: [DONE]\n\n".into());
        ev
    }

    pub fn openai_stream(parts: &[&str]) -> Reply {
        Reply::sse(openai_stream_events(parts), Duration::from_millis(1))
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
