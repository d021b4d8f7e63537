//! Timing and allocation counting for the report.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts allocations (all threads) so a benchmark can say how many one
/// operation makes.
pub struct Counting;

pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Median, min and max of some samples.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Spread {
    pub fn of(mut xs: Vec<Duration>) -> Spread {
        xs.sort();
        Spread {
            median: xs[xs.len() / 2],
            min: xs[0],
            max: xs[xs.len() - 1],
        }
    }

    /// `median (min-max)`.
    pub fn show(&self) -> String {
        format!("{} ({}-{})", fmt(self.median), fmt(self.min), fmt(self.max))
    }
}

pub fn fmt(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Runs `batch` (which performs `per_batch` operations) `samples` times
/// and returns the spread of the per-operation time.
pub fn per_op(samples: usize, per_batch: u64, mut batch: impl FnMut()) -> Spread {
    batch(); // warm up
    let xs = (0..samples)
        .map(|_| {
            let t0 = Instant::now();
            batch();
            t0.elapsed() / per_batch as u32
        })
        .collect();
    Spread::of(xs)
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Instructions per call of `path` (one of `guard::PATHS` or
/// `wasm::PATHS`), counted by callgrind: two runs of this same binary,
/// `short` and `long` calls, so setup cancels out. `None` when valgrind
/// is not installed.
pub fn instructions(path: &str, short: u64, long: u64) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let count = |n: u64| -> Option<f64> {
        let out_file = std::env::temp_dir().join(format!("backstop-callgrind-{path}-{n}.out"));
        let out = std::process::Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&exe)
            .env("BENCH_CALLGRIND", format!("{path}:{n}"))
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&out_file);
        let text = String::from_utf8_lossy(&out.stderr);
        let total = text
            .lines()
            .find_map(|l| l.split("Collected :").nth(1))?
            .trim()
            .parse::<f64>()
            .ok()?;
        Some(total)
    };
    // A first run fills the compile cache, which would count in `short`.
    count(1)?;
    let (a, b) = (count(short)?, count(long)?);
    Some((b - a) / (long - short) as f64)
}
