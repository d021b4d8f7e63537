//! The offline demo: a research agent on the embedded defaults, against a
//! scripted search service and a scripted model on 127.0.0.1. It shows a
//! transient failure retried, a service going down and its breaker
//! opening, marked fallbacks (tools and models), a process killed mid-run
//! and resumed without repeating a step, and a stop for attention.

use anyhow::Context;
use backstop::agent::{Progress, ResumeOptions};
use backstop::journal::EntryKind;
use backstop::testkit::{model, Arrival, Reply, ScriptedServer};
use backstop::{Backstop, Config, Outcome};
use serde_json::json;
use std::io::Write;
use std::path::Path;

const CONFIG: &str = include_str!("backstop.toml");
const FILES: &[(&str, &str)] = &[
    ("corpus/sandboxing.md", include_str!("corpus/sandboxing.md")),
    ("corpus/retries.md", include_str!("corpus/retries.md")),
    ("corpus/breakers.md", include_str!("corpus/breakers.md")),
    ("cache/answers.json", include_str!("cache/answers.json")),
];

fn search_results(query: &str) -> serde_json::Value {
    json!({"results": [
        {"title": format!("{query}: an overview"), "url": "https://example.org/overview"},
        {"title": format!("Field notes on {query}"), "url": "https://example.org/notes"},
    ]})
}

/// Writes the demo's files into `dir` and returns the config text.
fn prepare(dir: &Path, plugins: &Path, port: u16, model_port: u16) -> anyhow::Result<String> {
    // A fresh demo each time: its runs and its published ledger start empty.
    for stale in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "published/ledger.jsonl",
    ] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    std::fs::create_dir_all(dir.join("published"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("has a parent"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let abs = |p: &Path| std::path::absolute(p).map(|p| p.display().to_string());
    Ok(CONFIG
        .replace("{plugins}", &abs(plugins)?)
        .replace("{dir}", &abs(dir)?)
        .replace("{cache}", &abs(&dir.join("../cache"))?)
        .replace("{port}", &port.to_string())
        .replace("{model_port}", &model_port.to_string()))
}

fn show(out: &mut dyn Write, query: &str, o: &Outcome) -> std::io::Result<()> {
    writeln!(out, "   search {query:?}")?;
    for line in o.to_string().lines() {
        if line.starts_with("  ") {
            writeln!(out, "   {line}")?;
        } else if line.starts_with("served by") || line.starts_with("FAILED") {
            writeln!(out, "   => {line}")?;
        }
    }
    if let Some(v) = &o.value {
        let first = &v["results"][0];
        let text = first["snippet"]
            .as_str()
            .or(first["title"].as_str())
            .unwrap_or("");
        let text: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(100)
            .collect();
        writeln!(out, "      first result: {text}")?;
    }
    Ok(())
}

/// The scripted local model: it answers from the conversation, in the
/// OpenAI format, so it gives the same answer to the same state even
/// across a crash: search first, then publish, then a final answer.
fn scripted_model(a: &Arrival) -> Reply {
    let req: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let task = msgs
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("the task")
        .to_owned();
    let results: Vec<&serde_json::Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    match results.len() {
        0 => model::openai_tool_call("call_1", "search", json!({ "query": task })),
        1 => {
            let found: serde_json::Value =
                serde_json::from_str(results[0]["content"].as_str().unwrap_or("{}"))
                    .unwrap_or_default();
            let snippet = found["value"]["results"][0]["snippet"]
                .as_str()
                .unwrap_or("nothing found");
            let first_line = snippet
                .lines()
                .find(|l| !l.starts_with('#') && !l.trim().is_empty())
                .unwrap_or(snippet);
            // A slow publish, so the demo can kill the process mid-call.
            model::openai_tool_call(
                "call_2",
                "publish",
                json!({ "entry": format!("Report on {task}: \
                    {first_line}"), "sleep_before_ms": 1500 }),
            )
        }
        _ => model::openai_text(&format!("Published a short report on {task}.")),
    }
}

/// Runs the demo, printing to `out`. `plugins` holds the built tools;
/// `dir` receives the demo's config and data; `exe` is the `backstop`
/// binary, run as a child process that the demo kills.
pub async fn run(
    out: &mut dyn Write,
    plugins: &Path,
    dir: &Path,
    exe: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::var_os("BACKSTOP_DEMO_NO_KEY").is_none(),
        "BACKSTOP_DEMO_NO_KEY is set: the demo needs it unset to show a provider without a key"
    );
    for tool in ["web_search", "corpus", "cache", "ledger"] {
        let p = plugins.join(format!("{tool}.wasm"));
        anyhow::ensure!(
            p.is_file(),
            "{} is missing: build the plugins first with plugins/build.sh",
            p.display()
        );
    }
    let server = ScriptedServer::start(Reply::json(200, search_results("query"))).await?;
    let llm = ScriptedServer::start(Reply::status(500)).await?;
    llm.set_handler(std::sync::Arc::new(scripted_model));
    let text = prepare(dir, plugins, server.port(), llm.port())?;
    let config_path = dir.join("backstop.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::from_str(&text, &config_path, dir)?;
    let started = std::time::Instant::now();
    let b = std::sync::Arc::new(Backstop::from_config(config).await?);
    let web = b.tool("web_search").expect("declared in the demo config");
    let cached = match web.compile_source() {
        backstop::runtime::CompileSource::Cache => "loaded from the compiled-code cache",
        backstop::runtime::CompileSource::Compiled => "compiled (cached for next time)",
    };

    writeln!(
        out,
        "Backstop demo: a research agent's search chain, offline"
    )?;
    writeln!(
        out,
        "   config   {} (written from the embedded defaults)",
        config_path.display()
    )?;
    writeln!(out, "   chain    search: web_search -> corpus -> cache")?;
    writeln!(
        out,
        "   service  web_search calls a scripted search service at {}",
        server.origin()
    )?;
    writeln!(
        out,
        "   tools    3 components {cached} in {} ms",
        started.elapsed().as_millis()
    )?;

    writeln!(
        out,
        "\n1. A transient failure is retried with jittered backoff"
    )?;
    let q = "wasm sandbox";
    server.push([Reply::status(500), Reply::json(200, search_results(q))]);
    let o = b.call("search", json!({ "query": q })).await?;
    show(out, q, &o)?;

    writeln!(
        out,
        "\n2. The search service goes down (503): fall back, and count toward the breaker"
    )?;
    server.set_fallback(Reply::status(503));
    for q in ["jitter retries", "circuit breaker probes"] {
        let o = b.call("search", json!({ "query": q })).await?;
        show(out, q, &o)?;
        let state = b
            .breaker_state("web_search")
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_default();
        writeln!(out, "      web_search breaker: {state}")?;
    }

    writeln!(
        out,
        "\n3. The breaker is open: web_search is not even started, the chain falls back at once"
    )?;
    let before = (web.instantiations(), server.arrivals().len());
    let q = "wasm memory limiter";
    let o = b.call("search", json!({ "query": q })).await?;
    show(out, q, &o)?;
    writeln!(
        out,
        "      web_search instances started: {}, requests to the service: {}",
        web.instantiations() - before.0,
        server.arrivals().len() - before.1
    )?;
    writeln!(
        out,
        "   Another process sees the same breaker (its state is in the store): backstop status"
    )?;
    child(out, exe, &config_path, &["status", "--runs", "0"], |_| {
        Ok(false)
    })
    .await?;

    writeln!(
        out,
        "\n4. The corpus has nothing on the topic: the cache answers, marked stale"
    )?;
    let q = "durable execution";
    let o = b.call("search", json!({ "query": q })).await?;
    show(out, q, &o)?;

    agent(out, &b, exe, &config_path, &llm).await?;
    operate(out, &b).await?;

    writeln!(
        out,
        "\nEvery fallback above is marked: `served_by`, `degraded` and the reason travel \
        with the result."
    )?;
    writeln!(
        out,
        "Try it yourself: backstop -c {} call search --input '{{\"query\": \"breakers\"}}' --json",
        config_path.display()
    )?;
    writeln!(
        out,
        "(web_search will be unreachable then: the demo's service has stopped, so watch \
        it fall back.)"
    )?;
    Ok(())
}

/// Serves this process's Backstop over HTTP on 127.0.0.1 for a moment and
/// scrapes it, as Prometheus and an operator's script would.
async fn operate(out: &mut dyn Write, b: &std::sync::Arc<Backstop>) -> anyhow::Result<()> {
    writeln!(
        out,
        "\n6. Operating it: the HTTP API (backstop serve) scraped for metrics and status"
    )?;
    let listener = backstop::serve::bind(([127, 0, 0, 1], 0).into(), None).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(backstop::serve::serve(b.clone(), listener, None, async {
        let _ = stopped.await;
    }));
    let http = backstop::models::http_client();
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    writeln!(
        out,
        "   GET {base}/metrics (this process's calls; nonzero series of the search chain):"
    )?;
    for line in metrics.lines() {
        let shown = [
            "backstop_calls_total{chain=\"search\"",
            "backstop_attempts_total{target=\"web_search\"",
            "backstop_retries_total{target=\"web_search\"",
            "backstop_fallbacks_total",
            "backstop_breaker_state{target=\"web_search\"",
            "backstop_breaker_transitions_total{target=\"web_search\"",
        ]
        .iter()
        .any(|p| line.starts_with(p));
        if (shown && !line.ends_with(" 0")) || line.starts_with("backstop_escalations_open ") {
            writeln!(out, "     {line}")?;
        }
    }
    let status: serde_json::Value = http
        .get(format!("{base}/v1/status?runs=1"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let q = &status["escalations"];
    let run = &status["runs"][0];
    writeln!(
        out,
        "   GET {base}/v1/status: escalations open {}, resolved {}; latest run {} {}",
        q["open"],
        q["resolved"],
        run["id"].as_str().unwrap_or("-"),
        run["status"].as_str().unwrap_or("-")
    )?;
    let _ = stop.send(());
    server.await??;
    writeln!(
        out,
        "   (alert rules for these series: docs/alerts.yml; the API: docs/OPERATIONS.md)"
    )?;
    Ok(())
}

/// Starts `backstop ARGS` and echoes its output until it exits, or until
/// `kill_when` says so (then SIGKILLs it). Returns the first run id seen
/// and whether the child was killed.
async fn child(
    out: &mut dyn Write,
    exe: &Path,
    config_path: &Path,
    args: &[&str],
    mut kill_when: impl FnMut(Option<&str>) -> anyhow::Result<bool>,
) -> anyhow::Result<(Option<String>, bool)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .arg("-c")
        .arg(config_path)
        .args(args)
        .env_remove("BACKSTOP_DEMO_NO_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut run_id: Option<String> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        while let Ok(line) = rx.try_recv() {
            if run_id.is_none() && line.starts_with("run ") {
                run_id = line.split_whitespace().nth(1).map(str::to_owned);
            }
            writeln!(out, "     | {}", line.trim_start())?;
        }
        if kill_when(run_id.as_deref())? {
            child.kill()?;
            child.wait()?;
            return Ok((run_id, true));
        }
        if let Some(_status) = child.try_wait()? {
            let _ = reader.join();
            while let Ok(line) = rx.try_recv() {
                writeln!(out, "     | {}", line.trim_start())?;
            }
            return Ok((run_id, false));
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the child process took too long"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn agent(
    out: &mut dyn Write,
    b: &Backstop,
    exe: &Path,
    config_path: &Path,
    llm: &ScriptedServer,
) -> anyhow::Result<()> {
    let journal = b.store()?;
    let cfg = config_path.display();
    writeln!(
        out,
        "\n5. An agent run: a model fallback, a stop for approval, a kill, a resume \
        without repeats"
    )?;
    writeln!(
        out,
        "   model chain llm: sonnet (its key variable is unset: fails fast, never \
        called) -> local (a scripted model on 127.0.0.1)"
    )?;
    let task = "wasm sandboxing";
    writeln!(out, "   $ backstop run research --task {task:?}")?;
    let (id, _) = child(
        out,
        exe,
        config_path,
        &["run", "research", "--task", task],
        |_| Ok(false),
    )
    .await?;
    let id = id.context("the run printed no id")?;
    let open = journal
        .escalations(&backstop::escalation::Filter {
            run: Some(id.clone()),
            ..Default::default()
        })
        .await?;
    let esc = open.first().context("the run should wait for approval")?;
    writeln!(out, "   $ backstop escalations")?;
    writeln!(
        out,
        "     | {} run {} step {}: {} for `{}`, input {}",
        esc.id, esc.run, esc.step, esc.reason, esc.chain, esc.input
    )?;
    let r = journal
        .resolve(
            &esc.id,
            backstop::escalation::Resolution::Approve,
            "demo-operator",
        )
        .await?;
    writeln!(
        out,
        "   $ backstop escalations resolve {} --approve --by demo-operator",
        esc.id
    )?;
    writeln!(
        out,
        "     | escalation {} resolved by demo-operator: {}",
        esc.id,
        r.escalation
            .resolution
            .map(|r| r.to_string())
            .unwrap_or_default()
    )?;

    writeln!(
        out,
        "   $ backstop resume {id}      (killed with SIGKILL once `publish` has started)"
    )?;
    let asked = llm.arrivals().len();
    // Read between polls of the child, on the store's blocking interface.
    let backstop::store::Location::Sqlite(state) = &b.config().store else {
        anyhow::bail!("the demo's config keeps its state in SQLite");
    };
    let watch = backstop::store::SqliteStore::open(state)?;
    let (_, killed) = child(out, exe, config_path, &["resume", &id], |_| {
        Ok(watch
            .entries(&id)?
            .iter()
            .any(|e| e.kind == EntryKind::ToolIntent && e.payload["chain"] == "publish"))
    })
    .await?;
    anyhow::ensure!(killed, "the resume ended before `publish` started");
    writeln!(
        out,
        "     | KILLED while `publish` (irreversible, approved) was running: its intent \
        is journaled, its result is not"
    )?;

    writeln!(out, "   resuming run {id} in this process:")?;
    let mut lines = Vec::new();
    let report = b
        .resume_run(&id, &ResumeOptions::default(), &mut |p| {
            if let Progress::Step { step, line } = p {
                lines.push(format!("     | step {step}: {line}"));
            }
        })
        .await?;
    for l in lines {
        writeln!(out, "{l}")?;
    }
    let published =
        std::fs::read_to_string(config_path.with_file_name("published").join("ledger.jsonl"))
            .unwrap_or_default();
    writeln!(
        out,
        "   => run {id} is {} after step {}: {}",
        report.status,
        report.step,
        report
            .output
            .as_ref()
            .and_then(|o| o["text"].as_str())
            .unwrap_or("")
    )?;
    writeln!(
        out,
        "   => completed steps came from the journal: the model was asked {} more time(s) after \
            the kill (only for its final answer)",
        llm.arrivals().len() - asked
    )?;
    writeln!(
        out,
        "   => `publish` ran exactly once: {} line(s) in its ledger",
        published.lines().count()
    )?;
    writeln!(out, "   its journal: backstop -c {cfg} runs show {id}")?;
    Ok(())
}
