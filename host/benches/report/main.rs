//! Writes BENCHMARKS.md: every figure on that page comes from one run of
//! this binary, each beside a baseline measured in the same run.
//!
//! `plugins/build.sh && cargo bench -p backstop --bench report`
//! BENCH_OUT=path writes elsewhere; BENCH_QUICK=1 makes a short smoke run
//! (fewer samples, 10 s of load), whose figures are not for the page.

macro_rules! p {
    ($out:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        writeln!($out, $($t)*).unwrap();
    }};
}

mod api;
mod containment;
mod deadline;
mod guard;
mod herd;
mod journal;
mod languages;
mod load;
mod mcp;
mod startup;
mod stats;
mod stores;
mod wasm;

use stats::fmt;
use std::path::Path;
use std::time::Duration;

#[global_allocator]
static ALLOC: stats::Counting = stats::Counting;

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, Linux {}, {}, wasmtime 48.0.8, release profile",
        command("uname", &["-r"]),
        command("rustc", &["--version"])
    )
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The MCP section: both transports against their baselines, and the
/// issue's two goals.
/// An instruction count as the report prints it.
fn count(c: Option<f64>) -> String {
    c.map_or_else(|| "-".into(), |c| format!("{c:.0}"))
}

fn mcp_section(m: &mcp::Figures) -> String {
    let added = m.lines.median.saturating_sub(m.direct_one.median);
    let raw_added = m.raw_lines.median.saturating_sub(m.direct_one.median);
    let stdio_added = m.stdio.median.saturating_sub(m.direct.median);
    let http_ratio = m.http.median.as_secs_f64() / m.api.median.as_secs_f64();
    let raw_http_ratio = m.raw_http.median.as_secs_f64() / m.api.median.as_secs_f64();
    let remote_added = m
        .remote_target
        .median
        .saturating_sub(m.remote_direct.median);
    format!(
        "## MCP\n\n`tools/call` of `echo_rs` (`{{\"say\": \"hi\"}}`) with rmcp's client in \
         the 2026-07-28 revision, one call at a time; baselines `Backstop::call` and `POST \
         /v1/calls` (keep-alive reqwest) of the same component in the same run. Over stdio \
         twice: Backstop's line transport on an in-memory pipe in this process (what the \
         protocol costs), and a real `backstop mcp` process (what a client sees, the OS's pipe \
         round trip included: the `cat` row is a line written to `cat` and read back). HTTP is \
         `/mcp` of the serve router on 127.0.0.1 in this process. The rmcp-client rows include \
         that client's own work (about as much again as the server's); the server-alone rows \
         drive Backstop with a prepared request (what the official Python SDK sends) from the \
         same client as the baseline, and are what the goals are read against.\n\n\
         | path | per call | against | |\n| --- | --- | --- | --- |\n\
         | `Backstop::call` (baseline) | {} | | |\n\
         | `Backstop::call` on one thread (baseline) | {} | | |\n\
         | MCP over stdio, in-memory pipe, on that thread, rmcp's client | {} | {} added | \
         |\n\
         | the same pipe, a client writing a prepared line and reading one (the server alone) \
         | {} | {} added (goal <= 30 us) | {} |\n\
         | the same two, in instructions per call (callgrind) | {} / {} | {} added ({}x the \
         call) | |\n\
         | a line to `cat` and back (OS pipe round trip) | {} | | |\n\
         | MCP over stdio, `backstop mcp` process | {} | {} added | |\n\
         | `POST /v1/calls` (baseline) | {} | | |\n\
         | MCP over HTTP, rmcp's client | {} | {:.2}x `/v1/calls` | |\n\
         | `/mcp` posted the same call by the `/v1/calls` client (the server alone) | {} | \
         {:.2}x `/v1/calls` (goal <= 1.00) | {} |\n\
         | rmcp client calling a remote MCP server's echo (baseline) | {} | | |\n\
         | `Backstop::call` of it as a remote target | {} | {} added (goal <= 50 us) | {} \
         |\n\nThe remote server is an rmcp one in this process on 127.0.0.1 (plain JSON \
         answers); both clients speak 2026-07-28 to it.\n",
        m.direct.show(),
        m.direct_one.show(),
        m.lines.show(),
        fmt(added),
        m.raw_lines.show(),
        fmt(raw_added),
        met(raw_added <= Duration::from_micros(30)),
        count(m.counted.0),
        count(m.counted.1),
        match m.counted {
            (Some(a), Some(b)) => count(Some(b - a)),
            _ => "-".into(),
        },
        match m.counted {
            (Some(a), Some(b)) => format!("{:.2}", (b - a) / a),
            _ => "-".into(),
        },
        m.pipe.show(),
        m.stdio.show(),
        fmt(stdio_added),
        m.api.show(),
        m.http.show(),
        http_ratio,
        m.raw_http.show(),
        raw_http_ratio,
        met(raw_http_ratio <= 1.0),
        m.remote_direct.show(),
        m.remote_target.show(),
        fmt(remote_added),
        met(remote_added <= Duration::from_micros(50)),
    )
}

fn main() {
    // As the `backstop` binary does: library backtraces off (wasmtime
    // captures one per Store drop when RUST_BACKTRACE=1 is set).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // Under callgrind (see `stats::instructions`): one path, then out.
    if let Some(spec) = std::env::var_os("BENCH_CALLGRIND") {
        let spec = spec.to_string_lossy().into_owned();
        let (path, n) = spec.split_once(':').expect("BENCH_CALLGRIND=PATH:N");
        let n = n.parse().expect("a count");
        if wasm::PATHS.contains(&path) {
            wasm::spin(root, path, n);
        } else if mcp::PATHS.contains(&path) {
            mcp::spin(root, path, n);
        } else {
            guard::spin(path, n);
        }
        return;
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    assert!(
        root.join("plugins/dist/echo_py.wasm").is_file(),
        "run plugins/build.sh first"
    );
    let samples = if quick { 5 } else { 31 };
    let date = command("date", &["-u", "+%Y-%m-%d"]);

    if let Some(only) = std::env::var_os("BENCH_ONLY") {
        // For working on one section: print it, write no page.
        match only.to_str() {
            Some("load") => eprintln!("{}", load::run(if quick { 10 } else { 60 }, 200)),
            Some("journal") => eprintln!("{}", journal::run(if quick { 1_000 } else { 10_000 })),
            Some("stores") => eprintln!(
                "{}",
                stores::section(&stores::measure(200, if quick { 5 } else { 15 }))
            ),
            Some(path) if wasm::PATHS.contains(&path) => wasm::spin(
                root,
                path,
                std::env::var("BENCH_N")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(200_000),
            ),
            Some("wasm") => {
                let w = wasm::measure(root, samples, 2_000, 2);
                eprintln!(
                    "bare {} invoke {} guarded {}",
                    w.bare.show(),
                    w.invoke.show(),
                    w.guarded.show()
                );
            }
            Some("guard") => {
                let g = guard::measure(samples, 200_000);
                let p = guard::measure_peer(samples, 200_000);
                eprintln!(
                    "bare {} guarded {} rejected {} allocs {:.2}; peer bare {} stack {} allocs \
                        {:.2}",
                    g.bare.show(),
                    g.guarded.show(),
                    g.rejected.show(),
                    g.guarded_allocs,
                    p.bare.show(),
                    p.stack.show(),
                    p.stack_allocs
                );
                for path in guard::PATHS {
                    let i = stats::instructions(path, 20_000, 40_000);
                    eprintln!("{path}: {i:?} instructions per call");
                }
            }
            Some("api") => {
                let a = api::measure(root, samples, 500, if quick { 2 } else { 10 });
                eprintln!(
                    "direct {} http {} direct/s {:.0} http/s {:.0} scrape {} ({} bytes)",
                    a.direct.show(),
                    a.http.show(),
                    a.direct_per_s,
                    a.http_per_s,
                    a.scrape.show(),
                    a.scrape_bytes
                );
            }
            Some("containment") => eprintln!("{}", containment::run(root, quick)),
            Some("mcp") => {
                let m = mcp::measure(root, samples, 300);
                eprintln!("{}", mcp_section(&m));
            }
            _ => {
                eprintln!("BENCH_ONLY: load, journal, stores, wasm, guard, api, mcp or containment")
            }
        }
        return;
    }
    // Load first, so its memory figures are not those of the sections
    // before it (compiled code and pools of the other benches).
    eprintln!("report: load");
    let load = load::run(if quick { 10 } else { 60 }, 200);
    eprintln!("report: guard");
    let g = guard::measure(samples, if quick { 10_000 } else { 200_000 });
    let peer = guard::measure_peer(samples, if quick { 10_000 } else { 200_000 });
    // Instructions per call under callgrind: the same whatever else the
    // machine does (two runs each, so setup cancels out).
    let counted: Vec<Option<f64>> = guard::PATHS
        .iter()
        .map(|p| stats::instructions(p, 20_000, 40_000))
        .collect();
    let wasm_counted: Vec<Option<f64>> = wasm::PATHS
        .iter()
        .map(|p| stats::instructions(p, 300, 900))
        .collect();
    eprintln!("report: wasm calls and throughput");
    let w = wasm::measure(
        root,
        samples,
        if quick { 200 } else { 2_000 },
        if quick { 2 } else { 10 },
    );
    eprintln!("report: journal");
    let journal = journal::run(if quick { 1_000 } else { 10_000 });
    eprintln!("report: stores");
    let stores = stores::measure(200, if quick { 5 } else { 15 });
    eprintln!("report: thundering herd");
    let herd_runs = if quick { 5 } else { 100 };
    eprintln!("report: deadline");
    let d = deadline::measure(root, if quick { 5 } else { 30 });
    eprintln!("report: start-up");
    let small: [(&str, &str); 10] = [
        ("cache", "cache.wasm"),
        ("corpus", "corpus.wasm"),
        ("fault", "fault.wasm"),
        ("ledger", "ledger.wasm"),
        ("web_search", "web_search.wasm"),
        ("echo_rs", "echo_rs.wasm"),
        ("echo_c", "echo_c.wasm"),
        ("textstats", "textstats.wasm"),
        ("fault_b", "fault.wasm"),
        ("corpus_b", "corpus.wasm"),
    ];
    let (small_first, small_cached) = startup::measure(
        root,
        &small,
        if quick { 1 } else { 3 },
        if quick { 3 } else { 10 },
    );
    // The 8 distinct Rust and C components above, then Python and JavaScript.
    let all: Vec<(&str, &str)> = small[..8]
        .iter()
        .copied()
        .chain([
            ("echo_py", "echo_py.wasm"),
            ("calc", "calc.wasm"),
            ("echo_js", "echo_js.wasm"),
            ("jsonpath", "jsonpath.wasm"),
        ])
        .collect();
    let (all_first, all_cached) = startup::measure(root, &all, 1, if quick { 3 } else { 10 });
    eprintln!("report: api");
    let api = api::measure(
        root,
        samples,
        if quick { 100 } else { 500 },
        if quick { 2 } else { 10 },
    );
    eprintln!("report: mcp");
    let mcp = mcp::measure(root, samples, if quick { 50 } else { 300 });
    eprintln!("report: containment");
    let contained = containment::run(root, quick);
    eprintln!("report: languages");
    let langs = languages::run(
        if quick { 1 } else { 3 },
        if quick { 3 } else { 10 },
        if quick { 50 } else { 300 },
    );

    let mut page = String::new();
    p!(page, "# Benchmarks\n");
    p!(
        page,
        "Generated by one command, and every figure below comes from its run:\n"
    );
    p!(
        page,
        "```sh\nplugins/build.sh && cargo bench -p backstop --bench report\n```\n"
    );
    p!(
        page,
        "Run on {date}. Machine: {}. Times are median (min-max) over {samples} samples unless \
        said otherwise; each baseline was measured in the same run. Peer figures (from the brief, \
        other machines) are for orders of magnitude, not ratios.\n",
        machine()
    );
    if quick {
        p!(
            page,
            "**BENCH_QUICK run: too few samples for these figures to be quoted.**\n"
        );
    }

    let guard_ns = g.guarded.median.saturating_sub(g.bare.median);
    let guard_allocs = g.guarded_allocs - g.bare_allocs;
    let reject = g.rejected.median;
    let ratio = w.guarded.median.as_secs_f64() / w.bare.median.as_secs_f64();
    p!(page, "## Summary\n");
    p!(
        page,
        "| # | benchmark | goal | measured | |\n| --- | --- | --- | --- | --- |"
    );
    p!(
        page,
        "| 1 | guard overhead around a no-op call (guarded minus bare, medians) | <= 150 ns, \
        no allocation | {} , {guard_allocs:.2} allocations | {} \
        |",
        fmt(guard_ns),
        met(guard_ns <= Duration::from_nanos(150) && guard_allocs < 0.01)
    );
    let ours_ns = g.guarded.median.saturating_sub(g.bare.median).as_nanos() as f64;
    let theirs_ns = peer
        .stack
        .median
        .saturating_sub(peer.bare.median)
        .as_nanos() as f64;
    let time_ratio = ours_ns / theirs_ns;
    let ins = |i: usize| counted[i];
    let ins_ratio = match (ins(0), ins(1), ins(2), ins(3)) {
        (Some(b), Some(g), Some(pb), Some(p)) => Some((g - b) / (p - pb)),
        _ => None,
    };
    p!(
        page,
        "| 1 | guard overhead / the tower + tower-resilience peer's, time | < 0.40 | \
         {time_ratio:.2} | {} |",
        met(time_ratio < 0.40)
    );
    p!(
        page,
        "| 1 | the same in instructions (callgrind) | < 0.40 | {} | {} |",
        ins_ratio.map_or("valgrind not found".into(), |r| format!("{r:.2}")),
        met(ins_ratio.is_some_and(|r| r < 0.40))
    );
    p!(
        page,
        "| 1 | a call rejected by an open breaker | <= 100 ns | {} | {} |",
        fmt(reject),
        met(reject <= Duration::from_nanos(100))
    );
    p!(
        page,
        "| 2 | guarded tool call / bare wasmtime call, same component | <= 1.05 | {ratio:.2} \
        | {} |",
        met(ratio <= 1.05)
    );
    let wasm_ins = |i: usize| wasm_counted[i];
    let wasm_ins_ratio = match (wasm_ins(0), wasm_ins(3)) {
        (Some(b), Some(g)) => Some(g / b),
        _ => None,
    };
    p!(
        page,
        "| 2 | the same in instructions (callgrind) | <= 1.05 | {} | {} |",
        wasm_ins_ratio.map_or("valgrind not found".into(), |r| format!("{r:.2}")),
        met(wasm_ins_ratio.is_some_and(|r| r <= 1.05))
    );
    p!(
        page,
        "| 2 | bare fresh-instance call p50 | <= 20 µs | {} | {} |",
        fmt(w.bare.median),
        met(w.bare.median <= Duration::from_micros(20))
    );
    p!(
        page,
        "| 3 | guarded tool calls per second, {} workers | >= 50,000 | {:.0} | {} |",
        w.workers,
        w.throughput,
        met(w.throughput >= 50_000.0)
    );
    p!(page, "| 4 | journal | see below | see below | |");
    p!(
        page,
        "| 5 | thundering herd | beside the AWS figures | see below | |"
    );
    let deadline_ok = d.overshoot.max <= d.tick + Duration::from_millis(2);
    p!(
        page,
        "| 6 | runaway tool stopped after its deadline | within one tick ({}) | overshoot {} \
        | {} |",
        fmt(d.tick),
        d.overshoot.show(),
        met(deadline_ok)
    );
    p!(
        page,
        "| 7 | cached start, 10 tools | <= 50 ms | {} | {} |\n",
        fmt(small_cached.median),
        met(small_cached.median <= Duration::from_millis(50))
    );

    p!(page, "## 1. Guard overhead\n");
    p!(
        page,
        "The chain, retry and breaker path (`ChainRunner::run`, one target, breaker closed) \
        around a target that answers at once, against calling that target bare. Single-threaded \
        runtime; allocations counted by a counting global allocator.\n"
    );
    p!(
        page,
        "| call | time per call | allocations per call |\n| --- | --- | --- |"
    );
    p!(
        page,
        "| bare: the no-op target (baseline) | {} | {:.2} |",
        g.bare.show(),
        g.bare_allocs
    );
    p!(
        page,
        "| guarded: through the chain, breaker closed | {} | {:.2} |",
        g.guarded.show(),
        g.guarded_allocs
    );
    p!(
        page,
        "| rejected: the chain with the target's breaker open | {} | {:.2} |",
        g.rejected.show(),
        g.rejected_allocs
    );
    p!(
        page,
        "| breaker alone: acquire + record, closed | {} | |",
        g.breaker_closed.show()
    );
    p!(
        page,
        "| breaker alone: acquire refused, open | {} | |\n",
        g.breaker_open.show()
    );
    p!(
        page,
        "The peer, in the same run: the same boxed no-op answer behind tower's `timeout` \
         around tower-resilience 0.13's circuit breaker (failure rate over a 20-call window) \
         and retry (5 attempts, exponential backoff), a request of `()` (nothing to clone, \
         which favours it). Backstop's guard adds bulkheads and an outcome record the peer \
         does not have.\n"
    );
    p!(
        page,
        "| | time per call | overhead | instructions per call | overhead | allocations |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    let show_ins = |i: Option<f64>| i.map_or("-".to_owned(), |i| format!("{i:.0}"));
    let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}", a - b),
        _ => "-".into(),
    };
    p!(
        page,
        "| Backstop: bare no-op | {} | | {} | | {:.2} |",
        g.bare.show(),
        show_ins(ins(0)),
        g.bare_allocs
    );
    p!(
        page,
        "| Backstop: guarded | {} | {ours_ns:.0} ns | {} | {} | {:.2} |",
        g.guarded.show(),
        show_ins(ins(1)),
        over(ins(1), ins(0)),
        g.guarded_allocs
    );
    p!(
        page,
        "| peer: bare service | {} | | {} | | |",
        peer.bare.show(),
        show_ins(ins(2))
    );
    p!(
        page,
        "| peer: timeout + breaker + retry | {} | {theirs_ns:.0} ns | {} | {} | {:.2} |",
        peer.stack.show(),
        show_ins(ins(3)),
        over(ins(3), ins(2)),
        peer.stack_allocs
    );
    p!(
        page,
        "| **ratio, Backstop's overhead to the peer's** | | **{time_ratio:.2}** | | **{}** | |\n",
        ins_ratio.map_or("-".into(), |r| format!("{r:.2}"))
    );
    p!(
        page,
        "Instructions: `valgrind --tool=callgrind` on this binary with \
         `BENCH_CALLGRIND=PATH:N` (paths `bare`, `guarded`, `peer-bare`, `peer`), 20,000 and \
         40,000 calls, the difference over 20,000. In this build tokio's `test-util` feature is \
         on (the crate's unit tests pause the clock), so each of the guard's two clock reads \
         goes through tokio's clock lookup; a release build of the binary reads the clock \
         directly.\n"
    );
    p!(
        page,
        "Where the guarded call's time goes: two clock reads (start, end), two breaker lock \
         round trips, the target's and the host's bulkhead counters, a tracing span per \
         attempt (disabled: a branch), and moving the call's state ({} B future) and its \
         outcome record ({} B, copied three times by `memcpy`) into place. The happy path \
         allocates nothing of its own: target names and the key are shared (`Arc<str>`), \
         classes are enums, the first attempt record is inline. A rejection allocates \
         nothing either. Issue 15 took out what a success never needed (1,276 -> 944 \
         instructions of overhead; issue 16's truer reports of a failed chain, which track \
         the cause of a refused retry, added about 17): window sums after a success, the \
         bucket scan, clock \
         subtractions (a bucket holds its end, a first attempt's deadline is the chain's), \
         the key's atomic count (it is lent to the attempt and taken back), the bulkhead \
         slot list, and calls for the breaker's success path, its lock and the disabled \
         span (now inline, the rest out of line). Instructions now meet the goal; time does \
         not, because about sixteen atomic read-modify-writes per call (the breaker's lock \
         and unlock, twice; four bulkhead counter updates; the shared names' counts in the \
         outcome, taken and given back) cost far more cycles than their instruction count. \
         A lock-free closed state for the breaker and names that need no count are the next \
         steps.\n",
        g.future_bytes,
        g.outcome_bytes
    );

    p!(
        page,
        "## 2. Guarded tool call against a bare wasmtime call\n"
    );
    p!(
        page,
        "The `echo_rs` component, `{{\"say\": \"hi\"}}`. Bare: `InstancePre` + new Store with \
        a plain WASI context + instantiate + call through typed bindings, host imports answering \
        constants, on the same engine (pooling allocator) and compiled component. \
        Single-threaded runtime.\n"
    );
    let ins_cell = |i: usize| match (wasm_ins(i), wasm_ins(0)) {
        (Some(n), Some(b)) => format!("{n:.0} | {:.2}", n / b),
        _ => "valgrind not found | -".to_owned(),
    };
    p!(
        page,
        "| call | time per call | ratio | instructions per call | ratio |\n\
        | --- | --- | --- | --- | --- |"
    );
    p!(
        page,
        "| bare wasmtime call (baseline) | {} | 1.00 | {} |",
        w.bare.show(),
        ins_cell(0)
    );
    p!(
        page,
        "| bare call, then its output parsed as JSON (what the host must do) | - | - | {} |",
        ins_cell(1)
    );
    p!(
        page,
        "| `WasmTool::invoke`: grants, limits, deadline, host imports, output checks | {} | \
        {:.2} | {} |",
        w.invoke.show(),
        w.invoke.median.as_secs_f64() / w.bare.median.as_secs_f64(),
        ins_cell(2)
    );
    p!(
        page,
        "| `Backstop::call`: the same through chain, breaker, retry, outcome | {} | \
        **{ratio:.2}** | {} |\n",
        w.guarded.show(),
        ins_cell(3)
    );
    p!(
        page,
        "Checking the input against the tool's declared schema (issue 16; `echo_rs` declares \
        six typed properties), before any instance starts: {} per call, {} instructions, \
        {:.1}% of the guarded call's instructions. It is in the `Backstop::call` row above; \
        `validate_input = false` turns it off.\n",
        w.input_check.show(),
        wasm_ins(4).map_or("-".into(), |n| format!("{n:.0}")),
        match (wasm_ins(4), wasm_ins(3)) {
            (Some(c), Some(g)) => 100.0 * c / g,
            _ => f64::NAN,
        }
    );
    p!(
        page,
        "Peers (brief): `InstancePre` with pooling and copy-on-write heaps instantiates in \
        about 5 µs; a naive fresh Store + WASI + instantiate + call 60-100 µs.\n"
    );
    p!(
        page,
        "What the host adds to the bare call, every part of it on purpose: a WASI context \
        built from the tool's grants (preopened directories, environment, no sockets), the HTTP \
        gate, the memory limiter, a captured stderr pipe (to explain a panic), a host-side \
        timer beside the epoch deadline (for a guest blocked in a host call, armed only when a \
        call outlives its first slice), and parsing the output as JSON; `Backstop::call` then \
        adds a fresh idempotency key, serializing the input, the chain's guards and the \
        outcome record. Two settings found by this bench matter more than all of that: the \
        pooling allocator keeps each slot's first pages resident (reset by `memset`, scanned \
        with `PAGEMAP_SCAN`) instead of returning them to the kernel, and library backtraces \
        are off by default, because with `RUST_BACKTRACE=1` wasmtime captures a stack trace \
        on every Store drop.\n"
    );
    p!(
        page,
        "Instructions: `BENCH_CALLGRIND=PATH:N` with the paths `bare-wasm`, `bare-wasm-parse`, \
        `invoke` and `call-wasm`, 300 and 900 calls after one call that fills the compile cache, \
        the difference over 600. The goal of 1.05 cannot be met while the host hands back the \
        output as a parsed `serde_json::Value`: parsing the echo's answer (six short fields) \
        alone (the second row) costs more than 5% of the bare call, in allocations for every key \
        and string and the map's nodes. Issue 15 took out what was not the contract: the guest \
        call is boxed once instead of three times (its future was copied into each box), the host \
        timer is armed only past the first slice, and a fresh key is one allocation. What is left \
        between the parsed bare call and `Backstop::call` is spread thin (the chain's guards, \
        about 1,000 instructions; the per-call sandbox's pipe, limiter and epoch callback; \
        serializing the input; metrics; the span). Meeting 1.05 would take handing back the \
        tool's JSON text unparsed (checked, not built), a change of the public `TargetOutput` \
        left for its own decision.\n"
    );

    p!(page, "## 3. Throughput\n");
    p!(
        page,
        "`Backstop::call` of the `echo_rs` component from {} callers on a {}-worker runtime \
        for {} s: **{:.0} calls/s** (`{{\"say\": \"hi\"}}`), {:.0} calls/s (empty input). Each \
        call is a fresh instance.\n",
        w.workers * 8,
        w.workers,
        if quick { 2 } else { 10 },
        w.throughput,
        w.throughput_noop_wasm
    );

    p!(page, "## 4. Journal and resume\n");
    p!(
        page,
        "A step = a durable tool intent + a durable tool result (`synchronous = FULL`, WAL, a \
        snapshot every 64 entries). Goals: per-step cost at step 10,000 / at step 10 <= 1.2; bytes \
        stored / raw payload <= 2; resume of a 10,000-step run <= 100 ms.\n"
    );
    p!(page, "```\n{}```\n", journal);
    p!(page, "{}", stores::section(&stores));

    p!(page, "## 5. Thundering herd\n");
    p!(
        page,
        "The AWS backoff study's scenario, re-implemented as a discrete-event simulation \
        whose clients decide with Backstop's own `RetryPolicy::decide` (base 5 ms, cap 2 s): N \
        clients each write one row once with optimistic concurrency (read the version, write \
        with it, back off and start over on a conflict), every message delayed |Normal(10 \
        ms, 2 ms)|. Mean of {herd_runs} seeded runs. Backstop numbers its first retry \
        0, so its first wait is drawn under 5 ms where the study's was under 10 \
        ms.\n"
    );
    p!(
        page,
        "| clients | jitter | calls | completion | AWS study (100 clients) |\n| --- | --- | \
        --- | --- | --- |"
    );
    for clients in [50, 100, 190] {
        for (jitter, name) in herd::JITTERS {
            let r = herd::occ(clients, jitter, herd_runs);
            let aws = match (clients, name) {
                (100, "full") => "795 calls, 4.9 s",
                (100, "none (plain exponential)") => "1,859 calls, 63.5 s",
                (100, "SDK-style x0.75-1.0") => "898 calls, 10.1 s",
                _ => "",
            };
            p!(
                page,
                "| {clients} | {name} | {:.0} | {:.2} s | {aws} |",
                r.calls,
                r.seconds
            );
        }
    }
    p!(
        page,
        "\nA capacity-limited server: 200 clients call once each; the server admits 50 \
        calls/s (a bucket of 5) and answers the rest 429 with `Retry-After` in whole seconds. Full \
        jitter, base 100 ms, cap 20 s. Ideal completion: 4 s.\n"
    );
    p!(
        page,
        "| Retry-After | calls | completion |\n| --- | --- | --- |"
    );
    for honour in [true, false] {
        let r = herd::rate_limited(200, 50, honour, herd_runs);
        p!(
            page,
            "| {} | {:.0} | {:.2} s |",
            if honour {
                "honoured: wait `Retry-After` + the jittered backoff"
            } else {
                "ignored: jittered backoff only"
            },
            r.calls,
            r.seconds
        );
    }
    p!(page, "");

    p!(page, "## 6. Deadline precision\n");
    p!(
        page,
        "The `fault` tool in `spin` mode (an infinite loop) with a {} deadline, {} runs; the \
        epoch ticks every {}.\n",
        fmt(d.deadline),
        if quick { 5 } else { 30 },
        fmt(d.tick)
    );
    p!(page, "| measure | median (min-max) |\n| --- | --- |");
    p!(page, "| stopped after | {} |", d.stopped_after.show());
    p!(page, "| past the deadline | {} |\n", d.overshoot.show());

    p!(page, "## 7. Start-up\n");
    p!(
        page,
        "`Backstop::from_config` until every tool is compiled (or read from the cache), \
        instantiated and described. Cached start is what a restarted process pays.\n"
    );
    p!(
        page,
        "| tools | first start (empty cache) | cached start |\n| --- | --- | --- |"
    );
    p!(
        page,
        "| 10 Rust and C tools (8 components, 2 loaded twice under other names) | {} | {} |",
        small_first.show(),
        small_cached.show()
    );
    p!(
        page,
        "| all 12 components, with the 2 Python and 2 JavaScript ones | {} | {} |\n",
        all_first.show(),
        all_cached.show()
    );

    p!(page, "## Tools by language\n");
    p!(
        page,
        "Each language's template tool: component size, first start (compile + instantiate + \
        `describe`, empty cache), cached start (a new engine reading the cache), one guarded call \
        (a fresh instance).\n"
    );
    p!(page, "{langs}");

    p!(page, "## The HTTP API\n");
    p!(
        page,
        "`backstop serve`'s router on 127.0.0.1 and a keep-alive `reqwest` client in the same \
        process, sharing the {} cores, calling `echo_rs` with `{{\"say\": \"hi\"}}`; the baseline \
        is `Backstop::call` of the same component in the same run. The HTTP figure includes \
        the client's own work (building the request, parsing the JSON \
        answer).\n",
        api.callers / 8
    );
    p!(
        page,
        "| | `Backstop::call` (baseline) | `POST /v1/calls` | ratio |\n| --- | --- | --- | --- |"
    );
    p!(
        page,
        "| one call at a time, per call | {} | {} | {:.1}x |",
        api.direct.show(),
        api.http.show(),
        api.http.median.as_secs_f64() / api.direct.median.as_secs_f64()
    );
    p!(
        page,
        "| {} concurrent callers, calls/s | {:.0} | {:.0} | {:.2} |\n",
        api.callers,
        api.direct_per_s,
        api.http_per_s,
        api.http_per_s / api.direct_per_s
    );
    p!(
        page,
        "A `/metrics` scrape of this one-tool config ({} bytes): {}.\n",
        api.scrape_bytes,
        api.scrape.show()
    );

    p!(page, "{}", mcp_section(&mcp));

    p!(page, "## Containment\n");
    p!(page, "{contained}");

    p!(page, "## Load\n");
    p!(
        page,
        "200 concurrent callers through `flaky -> backup` (two `fault` tools), 30% of calls \
        injected with a failure on `flaky` (transient, unavailable, trap, permanent), for {} s on \
        a multi-threaded runtime:\n",
        if quick { 10 } else { 60 }
    );
    p!(page, "```\n{}```", load);

    let out = std::env::var_os("BENCH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("BENCHMARKS.md"));
    std::fs::write(&out, &page).unwrap();
    eprintln!("report: wrote {}", out.display());
}
