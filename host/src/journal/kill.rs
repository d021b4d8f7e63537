//! Kill points: named places between a run's writes where a test can have
//! the process die, so every write is a place a crash is tried.
//!
//! `BACKSTOP_KILL_AT=NAME` (or `NAME:N`, the Nth time) aborts the process
//! at that point, with no cleanup, as SIGKILL would. Unset (always, in
//! production) it costs one load of a cached value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const VAR: &str = "BACKSTOP_KILL_AT";

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static SEEN: AtomicU64 = AtomicU64::new(0);

fn target() -> &'static Option<(String, u64)> {
    TARGET.get_or_init(|| {
        let v = std::env::var(VAR).ok()?;
        Some(match v.rsplit_once(':') {
            Some((name, n)) if n.parse::<u64>().is_ok() => (name.to_owned(), n.parse().unwrap()),
            _ => (v, 1),
        })
    })
}

/// Dies here when the environment names this point (see the module docs).
pub fn point(name: &str) {
    if let Some((at, nth)) = target() {
        if at == name && SEEN.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
            eprintln!("{VAR}: dying at {name}");
            std::process::abort();
        }
    }
}
