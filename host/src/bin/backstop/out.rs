//! Writing the CLI's output without panicking: `println!` panics when the
//! reader has gone (`backstop run | head -1`), which aborted a run mid-way.
//! A closed stdout or stderr now just stops that stream's output; the
//! command goes on (a run still finishes and journals every step).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// One line on stdout, unless its reader has gone.
pub fn line(text: &str) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

/// One line on stderr, unless its reader has gone.
pub fn err_line(text: &str) {
    if STDERR_GONE.load(Ordering::Relaxed) {
        return;
    }
    if writeln!(std::io::stderr().lock(), "{text}").is_err() {
        STDERR_GONE.store(true, Ordering::Relaxed);
    }
}

/// Whether `e` is only a reader that went away (output cut short, not a
/// failure of the command).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
