//! The HTTP layer's own refusals, in the API's JSON error shape.
//!
//! hyper answers a request it cannot parse (a bad request line, a head
//! over the size limit) itself, before any route runs, with an empty body:
//! a client reading `{"error": ...}` from every other error got nothing.
//! Every answer the router gives an error status has a JSON body (the
//! `json_errors` middleware makes sure), so an error answer with
//! `content-length: 0` can only be one of hyper's: this writer, between
//! hyper and the socket, gives it the documented body on its way out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Canned<T> {
    inner: T,
    /// A rewritten answer still being written.
    pending: Vec<u8>,
    sent: usize,
}

impl<T> Canned<T> {
    pub fn new(inner: T) -> Self {
        Canned {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

/// `buf` as a JSON error answer, when it is one of hyper's bodiless ones.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if head_end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    let status: u16 = code.parse().ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let headers: Vec<&str> = lines.collect();
    let empty = headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"));
    if !empty {
        return None;
    }
    let message = match status {
        400 => "the request could not be parsed as HTTP/1.1".to_owned(),
        414 => "the request's URI is too long".to_owned(),
        431 => "the request's head (request line and headers) is over 64 KiB".to_owned(),
        _ => reason.to_owned(),
    };
    let body = serde_json::json!({"error": {"status": status, "message": message}}).to_string();
    let mut out = format!("{version} {code} {reason}\r\n");
    for h in headers {
        let name = h.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("content-type")
        {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

impl<T: AsyncRead + Unpin> AsyncRead for Canned<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Canned<T> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = {
                let (inner, pending, sent) = (&mut self.inner, &self.pending, self.sent);
                match Pin::new(inner).poll_write(cx, &pending[sent..]) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Canned<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        // Only hyper's own answers start a write with a bodiless error
        // head; anything else passes untouched.
        if buf.starts_with(b"HTTP/1.") && buf.len() < 1024 {
            if let Some(out) = rewrite(buf) {
                self.pending = out;
                self.sent = 0;
                let _ = self.drain(cx)?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn hypers_bodiless_errors_get_the_json_body() {
        let canned = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: \
            Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(canned).unwrap()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(out.contains("content-type: application/json\r\n"), "{out}");
        assert!(out.contains("date: Tue"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["status"], 431);
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        // Answers with a body, and successes, pass untouched.
        assert!(rewrite(b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        // A head followed by body bytes in the same write is not hyper's.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx").is_none());
    }
}
