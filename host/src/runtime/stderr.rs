//! A guest's stderr: kept (its end, bounded) while the call runs, and read
//! for the guest's own explanation when the call traps.
//!
//! Each language runtime says why it died in its own words and wraps them
//! in its own boilerplate: Rust's panic header and backtrace note,
//! componentize-py's panic after a Python traceback, componentize-js's
//! "invalid variant tag" around a thrown JavaScript error, SpiderMonkey's
//! abort note. [`explain`] keeps the exception (type and message) and the
//! frames nearest to it, and drops the wrapping.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest explanation kept from stderr; the outcome's own message limit
/// applies after this.
const MAX_EXPLANATION: usize = 2048;
/// Frames of a traceback kept, nearest the exception first in the text.
const FRAMES: usize = 3;

/// Keeps the last `capacity` bytes a guest writes and accepts every write:
/// a tool that writes more than that to stderr is not failed for it (a
/// stream that refused would make Rust's `eprintln!` panic), and the end
/// is where a runtime's last words are.
#[derive(Clone)]
pub struct TailPipe {
    inner: Arc<Mutex<Tail>>,
}

struct Tail {
    capacity: usize,
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl TailPipe {
    pub fn new(capacity: usize) -> TailPipe {
        TailPipe {
            inner: Arc::new(Mutex::new(Tail {
                capacity,
                bytes: VecDeque::new(),
                dropped: 0,
            })),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let keep = data.len().min(t.capacity);
        let skipped = data.len() - keep;
        let over = (t.bytes.len() + keep).saturating_sub(t.capacity);
        t.bytes.drain(..over);
        t.bytes.extend(&data[skipped..]);
        t.dropped += (skipped + over) as u64;
    }

    /// What is kept, and how many earlier bytes were let go.
    pub fn contents(&self) -> (Vec<u8>, u64) {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (t.bytes.iter().copied().collect(), t.dropped)
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The permit a guest gets for each write: any size is accepted, this only
/// says how much to offer at once.
const PERMIT: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a trapped guest said about why, from its stderr: the exception or
/// panic with its nearest frames when a runtime's format is recognised,
/// else the last lines. `None` when it said nothing.
pub fn explain(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !is_boilerplate(l))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let said = python(&lines)
        .or_else(|| javascript(&lines))
        .or_else(|| rust_panic(&lines))
        .unwrap_or_else(|| last_lines(&lines));
    Some(crate::outcome::clip(said.into(), MAX_EXPLANATION).into_owned())
}

/// Lines every trap of a runtime prints, which say nothing about this one.
fn is_boilerplate(line: &str) -> bool {
    line.starts_with("note: run with `RUST_BACKTRACE=1`")
        || line == "Redirecting call to abort() to mozalloc_abort"
}

/// A Python traceback (the last one, if several): the exception line(s)
/// after its frames, and the frames nearest to it. componentize-py's own
/// panic, which follows, is dropped.
fn python(lines: &[&str]) -> Option<String> {
    let start = lines
        .iter()
        .rposition(|l| *l == "Traceback (most recent call last):")?;
    let rest = &lines[start + 1..];
    let frames: Vec<&str> = rest
        .iter()
        .filter(|l| l.starts_with("  File "))
        .map(|l| l.trim())
        .collect();
    // The exception is what follows the indented frames and source lines,
    // up to the runtime's panic.
    let exception: Vec<&str> = rest
        .iter()
        .skip_while(|l| l.starts_with(' '))
        .take_while(|l| !is_rust_panic_header(l))
        .map(|l| l.trim())
        .collect();
    if exception.is_empty() {
        return None;
    }
    let mut said = exception.join(" ");
    if !frames.is_empty() {
        let nearest = &frames[frames.len().saturating_sub(FRAMES)..];
        said.push_str(" (traceback, innermost last: ");
        said.push_str(&nearest.join("; "));
        said.push(')');
    }
    Some(said)
}

/// componentize-js reports a thrown value that is not a `{ tag, val }`
/// error as an invalid variant, quoting the value: that quote is the
/// error. Its stack, when it is only the binding glue's, is dropped.
fn javascript(lines: &[&str]) -> Option<String> {
    let (i, line) = lines
        .iter()
        .enumerate()
        .rfind(|(_, l)| l.contains("(received `"))?;
    let from = line.find("(received `")? + "(received `".len();
    let to = from + line[from..].rfind("`)")?;
    let thrown = &line[from..to];
    let frames: Vec<&str> = lines[i + 1..]
        .iter()
        .skip_while(|l| *l == &"Stack:")
        .take_while(|l| l.starts_with(' '))
        .map(|l| l.trim())
        .filter(|l| !l.contains("initializer.js"))
        .collect();
    let mut said = format!("uncaught {thrown}");
    if !frames.is_empty() {
        said.push_str(" (at ");
        said.push_str(&frames[..frames.len().min(FRAMES)].join("; "));
        said.push(')');
    }
    Some(said)
}

fn is_rust_panic_header(line: &str) -> bool {
    line.starts_with("thread '") && line.contains(" panicked at ")
}

/// A Rust panic: `panicked at FILE:LINE:COL: MESSAGE` (the message is on
/// the lines after the header since Rust 1.73, on the header before).
fn rust_panic(lines: &[&str]) -> Option<String> {
    let i = lines.iter().rposition(|l| is_rust_panic_header(l))?;
    let header = lines[i];
    let at = &header[header.find("panicked at ")?..];
    let message: Vec<&str> = lines[i + 1..].iter().map(|l| l.trim()).collect();
    let at = at.trim_end_matches(':');
    Some(if message.is_empty() {
        at.to_owned()
    } else {
        format!("{at}: {}", message.join(" "))
    })
}

/// Whatever else: the last few lines, which is where a C tool's
/// `fprintf(stderr, ...)` before `abort()` is.
fn last_lines(lines: &[&str]) -> String {
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_traceback_keeps_exception_and_nearest_frames() {
        let stderr =
            "Traceback (most recent call last):\n  File \"/0/app.py\", line 59, in invoke\n  \
            File \"/0/app.py\", line 35, in explode\nValueError: bad unit: parsec\n\nthread \
            '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:\nPython function threw an \
            unexpected exception\nnote: run with `RUST_BACKTRACE=1` environment variable to \
            display a backtrace\n";
        assert_eq!(
            explain(stderr.as_bytes()).unwrap(),
            "ValueError: bad unit: parsec (traceback, innermost last: File \"/0/app.py\", line \
             59, in invoke; File \"/0/app.py\", line 35, in explode)"
        );
    }

    #[test]
    fn javascript_thrown_error_is_unwrapped() {
        let stderr = "invalid variant tag value `undefined` (received `Error: bad unit: parsec`) \
            specified for `ToolError`\nStack:\n  export_invoke@/tmp/x/sources/initializer.js:381:17\
            \n\nRedirecting call to abort() to mozalloc_abort\n";
        assert_eq!(
            explain(stderr.as_bytes()).unwrap(),
            "uncaught Error: bad unit: parsec"
        );
    }

    #[test]
    fn rust_panic_keeps_place_and_message() {
        let stderr = "thread '<unnamed>' (1) panicked at echo_rs/src/lib.rs:51:13:\nbad unit: \
            parsec\nnote: run with `RUST_BACKTRACE=1` environment variable to display a \
            backtrace\n";
        assert_eq!(
            explain(stderr.as_bytes()).unwrap(),
            "panicked at echo_rs/src/lib.rs:51:13: bad unit: parsec"
        );
    }

    #[test]
    fn anything_else_is_its_last_lines() {
        let stderr = "one\ntwo\nthree\nfour\nfive\nsix\necho_c: bad unit\n";
        assert_eq!(
            explain(stderr.as_bytes()).unwrap(),
            "three | four | five | six | echo_c: bad unit"
        );
        assert_eq!(explain(b""), None);
        assert_eq!(explain(b"\n\n"), None);
    }

    #[test]
    fn the_pipe_keeps_the_end_and_refuses_nothing() {
        let mut p = TailPipe::new(8);
        for chunk in [&b"abcdef"[..], b"ghij", b"0123456789xyz"] {
            OutputStream::write(&mut p, Bytes::copy_from_slice(chunk)).unwrap();
        }
        assert_eq!(p.check_write().unwrap(), PERMIT);
        let (kept, dropped) = p.contents();
        assert_eq!(kept, b"56789xyz");
        assert_eq!(dropped, 23 - 8);
    }

    #[test]
    fn a_long_explanation_is_cut() {
        let long = format!(
            "thread 'main' panicked at a.rs:1:1:\n{}\n",
            "x".repeat(10_000)
        );
        let said = explain(long.as_bytes()).unwrap();
        assert!(said.len() <= MAX_EXPLANATION + 64, "{}", said.len());
    }
}
