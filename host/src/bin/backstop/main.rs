//! `backstop`: a thin shell over the `backstop` library. Only this file
//! and `commands.rs` decide exit codes: 0 success, 1 bad config, usage or
//! state, 2 a call nothing could serve (or a failed run), 3 a run that
//! needs attention, 4 an escalation that was already resolved.

mod commands;
mod demo;
mod new;
mod out;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Run agent tools as sandboxed WASM components behind retries, breakers and fallback \
        chains"
)]
struct Cli {
    /// Config file.
    #[arg(short, long, global = true, default_value = backstop::config::DEFAULT_FILE)]
    config: PathBuf,
    /// Log format on stderr: readable text, or one JSON object per line.
    /// The level comes from BACKSTOP_LOG (default: info for serve, error
    /// otherwise); a span closes per call and per attempt at info.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "BACKSTOP_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Breakers, the escalation queue and recent runs, as every process
    /// sharing the state store sees them.
    Status {
        #[arg(long)]
        json: bool,
        /// How many recent runs to show.
        #[arg(long, default_value_t = 10)]
        runs: u32,
    },
    /// Serve the HTTP API (described at /openapi.json) and /metrics. With
    /// BACKSTOP_API_TOKEN set, requests need `Authorization: Bearer TOKEN`;
    /// without it, only a loopback address is allowed.
    Serve {
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: std::net::SocketAddr,
        /// Time for a request's headers (and between keep-alive requests).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        header_timeout: std::time::Duration,
        /// Time for a request's body once its headers arrived.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        body_timeout: std::time::Duration,
        /// Connections open at once (default: 1,024, or half the
        /// descriptor limit when lower); more are closed on arrival.
        #[arg(long)]
        max_connections: Option<usize>,
        /// On SIGTERM: how long in-flight requests may finish before the
        /// connections still open are closed.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Queued runs (`run --detach`, `wait: false`) this host drives at
        /// once; 0 leaves them to other hosts.
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
    /// Serve MCP on stdin and stdout (what a desktop client launches):
    /// every chain and tool of the config (or those `[mcp] expose` names)
    /// is an MCP tool. Logs go to stderr.
    Mcp,
    /// Validate the config and load every tool; exit 1 on any error.
    Check,
    /// Create the state store, or bring its schema up to this backstop's
    /// version (opening it to write does too; this says what it did).
    /// A schema newer than this backstop is refused, unchanged.
    Migrate,
    /// List tools: what they say about themselves and what they may touch.
    Tools {
        #[arg(long)]
        json: bool,
        /// Also print each tool's input and output schemas.
        #[arg(long)]
        schemas: bool,
    },
    /// Call a chain (or a single tool) and print the marked outcome.
    Call {
        chain: String,
        /// The input, as JSON.
        #[arg(long, short)]
        input: String,
        /// Print one JSON object instead of the readable form.
        #[arg(long)]
        json: bool,
        /// Idempotency key (default: a new random key).
        #[arg(long)]
        key: Option<String>,
    },
    /// Ask a model chain (or one model) a question and print the marked
    /// outcome.
    Ask {
        chain: String,
        prompt: String,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// Print one JSON object instead of the readable form.
        #[arg(long)]
        json: bool,
    },
    /// Start a run of an agent: prints the run id, a line per step, then
    /// the output. Exit 0 finished, 3 needs attention, 2 failed.
    Run {
        agent: String,
        #[arg(long)]
        task: String,
        /// Queue the run and print its id at once: a `backstop serve`
        /// (on any host sharing the state store) drives it.
        #[arg(long)]
        detach: bool,
    },
    /// Resume a run from its journal without repeating completed steps.
    Resume {
        run: String,
        /// Resume even though the config or a component changed.
        #[arg(long)]
        allow_drift: bool,
    },
    /// List runs, or show one run's journal.
    Runs {
        #[command(subcommand)]
        show: Option<RunsCommand>,
    },
    /// The escalation queue: open escalations (filters), or one, or resolve.
    Escalations {
        #[command(subcommand)]
        action: Option<EscalationCommand>,
        /// Only this reason (retries-exhausted, ambiguous-state, low-confidence,
        /// needs-human, approval-required, circuit-open).
        #[arg(long)]
        reason: Option<String>,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Only those at least this old, such as "10m".
        #[arg(long)]
        older_than: Option<String>,
        /// Include resolved ones.
        #[arg(long)]
        all: bool,
        /// Queue depth and oldest age instead of the list.
        #[arg(long)]
        stats: bool,
        #[arg(long)]
        json: bool,
    },
    /// Breakers: list them (with who last set one by hand), or reset one,
    /// or hold one open or closed until a reset. Works beside a running
    /// `backstop serve`, which takes the change on within 250 ms.
    Breakers {
        #[command(subcommand)]
        action: Option<BreakerCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Make a new tool from its language's template, register it in the
    /// plugins build, and print the TOML block that declares it.
    New {
        /// The tool's name (lowercase letters, digits, `_` or `-`).
        name: String,
        #[arg(long, value_enum)]
        lang: new::Lang,
        /// The plugins folder (the one with build.sh).
        #[arg(long, default_value = "plugins")]
        plugins: PathBuf,
    },
    /// Run the offline demo on the embedded defaults.
    Demo {
        /// Where the built plugins are.
        #[arg(long, default_value = "plugins/dist")]
        plugins: PathBuf,
        /// Working directory for the demo's files.
        #[arg(long, default_value = ".backstop/demo")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum EscalationCommand {
    /// Everything about one escalation.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Answer an escalation (the first answer wins), then optionally resume
    /// the run.
    #[command(group(
        clap::ArgGroup::new("answer")
            .required(true)
            .args(["approve", "reject", "result", "retry", "abort"])
    ))]
    Resolve {
        id: String,
        /// Run the pending call.
        #[arg(long)]
        approve: bool,
        /// Do not run it; the run sees a tool error carrying this comment.
        #[arg(long, value_name = "COMMENT")]
        reject: Option<String>,
        /// This JSON is the step's result.
        #[arg(long, value_name = "JSON")]
        result: Option<String>,
        /// Try the step again.
        #[arg(long)]
        retry: bool,
        /// Stop the run.
        #[arg(long)]
        abort: bool,
        /// Who is answering (recorded with the resolution).
        #[arg(long, default_value = "operator")]
        by: String,
        /// Resume the run right after.
        #[arg(long)]
        resume: bool,
    },
}

#[derive(Subcommand)]
enum BreakerCommand {
    /// Close it and clear its failure counts; a forced state is let go.
    Reset {
        target: String,
        /// Who did it (kept with the state).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Refuse every call of the target, with no probes, until a reset.
    ForceOpen {
        target: String,
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Admit every call of the target, failures or not, until a reset.
    ForceClose {
        target: String,
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
}

/// `cli:` and the login name, when there is one.
fn default_actor() -> String {
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(u) if !u.is_empty() => format!("cli:{u}"),
        _ => "cli".into(),
    }
}

#[derive(Subcommand)]
enum RunsCommand {
    /// A run's journal, entry by entry.
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
}

fn logging(cli: &Cli) {
    use tracing_subscriber::fmt::format::FmtSpan;
    // Compile progress (a first start of a large component takes up to a
    // minute) is shown whatever the command.
    let default = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "error,backstop::compile=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BACKSTOP_LOG")
        .unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(FmtSpan::CLOSE);
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().with_current_span(true).init(),
    }
}

fn main() -> ExitCode {
    // With RUST_BACKTRACE=1 in the environment, wasmtime captures a stack
    // trace for an internal error value on every Store drop: a bare call of
    // `echo_rs` took 29.0 µs with it and 16.3 µs without (report bench,
    // BENCH_QUICK). Panics still print their backtrace; only
    // library-captured ones are off unless asked for.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    logging(&cli);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // One client's requests over stdio arrive one line at a time: on one
    // worker they are read, served and answered without waking another
    // thread for each (a quarter of a call's time on this kind of VM).
    // Guest code runs on its own pool, and a blocking store write hands
    // the worker's other tasks on, as ever.
    if matches!(cli.command, Command::Mcp) {
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(commands::run(cli.command, &cli.config));
    // A blocking task still stuck in the kernel (a host call of a guest
    // that timed out) must not keep the process alive: wait a moment for
    // the rest, then exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        // The reader went away (`backstop status | head -1`): the output
        // was cut short, nothing failed.
        Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // A load error can quote what a tool's `describe` said.
            out::err_line(&format!(
                "error: {}",
                backstop::term::visible(&e.to_string())
            ));
            for cause in e.chain().skip(1) {
                out::err_line(&format!(
                    "  caused by: {}",
                    backstop::term::visible(&cause.to_string())
                ));
            }
            ExitCode::from(1)
        }
    }
}
