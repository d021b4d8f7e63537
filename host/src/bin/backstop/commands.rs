use crate::Command;
use backstop::Backstop;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub async fn run(command: Command, config: &Path) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check => check(config).await,
        Command::Tools { json } => tools(config, json).await,
        Command::Call {
            chain,
            input,
            json,
            key,
        } => call(config, &chain, &input, json, key).await,
        Command::Ask {
            chain,
            prompt,
            system,
            json,
        } => ask(config, &chain, &prompt, system, json).await,
        Command::Run { agent, task } => {
            let b = Backstop::load(config).await?;
            let report = b.run_agent(&agent, &task, &mut print_progress).await?;
            Ok(finish(&report))
        }
        Command::Resume { run, allow_drift } => {
            let b = Backstop::load(config).await?;
            let options = backstop::agent::ResumeOptions { allow_drift };
            let report = b.resume_run(&run, &options, &mut print_progress).await?;
            Ok(finish(&report))
        }
        Command::Runs { show: None } => runs(config).await,
        Command::Runs {
            show: Some(crate::RunsCommand::Show { run, json }),
        } => show_run(config, &run, json).await,
        Command::Demo { plugins, dir } => {
            let exe = std::env::current_exe()?;
            backstop::demo::run(&mut std::io::stdout(), &plugins, &dir, &exe).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn check(config: &Path) -> anyhow::Result<ExitCode> {
    let b = Backstop::load(config).await?;
    let c = b.config();
    println!(
        "{}: ok: {} tool(s), {} model(s), {} chain(s){}",
        config.display(),
        c.tools.len(),
        c.models.len(),
        c.chains.len(),
        if b.runtime().pooling() {
            ""
        } else {
            " (pooling allocator unavailable)"
        }
    );
    for (name, chain) in &c.chains {
        println!("  chain {name}: {}", chain.targets.join(" -> "));
    }
    Ok(ExitCode::SUCCESS)
}

async fn tools(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let b = Backstop::load(config).await?;
    if json {
        let list: Vec<_> = b
            .tools()
            .map(|t| {
                let c = t.config();
                serde_json::json!({
                    "name": t.name(),
                    "describe": t.description(),
                    "effect": t.effect(),
                    "digest": t.digest(),
                    "component": c.component,
                    "grants": {
                        "dirs": c.dirs.iter().map(|d| serde_json::json!({"host": d.host, "guest": d.guest, "mode": if d.writable {"rw"} else {"ro"}})).collect::<Vec<_>>(),
                        "env": c.env.iter().map(|e| &e.key).collect::<Vec<_>>(),
                        "http": c.http.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                    },
                    "timeout_ms": c.timeout.as_millis() as u64,
                    "memory": c.memory.to_string(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for t in b.tools() {
        let c = t.config();
        let d = t.description();
        writeln!(out, "{} [{}] {}", t.name(), t.effect(), d.description)?;
        writeln!(
            out,
            "  component {} (sha256 {})",
            c.component.display(),
            &t.digest()[..12]
        )?;
        writeln!(
            out,
            "  limits    timeout {}, memory {}",
            humantime::format_duration(c.timeout),
            c.memory
        )?;
        let dirs: Vec<String> = c
            .dirs
            .iter()
            .map(|d| {
                format!(
                    "{} -> {} ({})",
                    d.host.display(),
                    d.guest,
                    if d.writable { "rw" } else { "ro" }
                )
            })
            .collect();
        let none = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        writeln!(out, "  dirs      {}", none(dirs))?;
        writeln!(
            out,
            "  env       {}",
            none(c.env.iter().map(|e| e.key.clone()).collect())
        )?;
        writeln!(
            out,
            "  http      {}",
            none(c.http.iter().map(|o| o.to_string()).collect())
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn call(
    config: &Path,
    chain: &str,
    input: &str,
    json: bool,
    key: Option<String>,
) -> anyhow::Result<ExitCode> {
    let input: serde_json::Value =
        serde_json::from_str(input).map_err(|e| anyhow::anyhow!("--input is not JSON: {e}"))?;
    let b = Backstop::load(config).await?;
    let outcome = match key {
        Some(k) => b.call_with_key(chain, input, k).await?,
        None => b.call(chain, input).await?,
    };
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{outcome}");
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn ask(
    config: &Path,
    chain: &str,
    prompt: &str,
    system: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let b = Backstop::load(config).await?;
    let mut request = backstop::models::ChatRequest::prompt(prompt);
    request.system = system;
    let outcome = b.call(chain, serde_json::to_value(&request)?).await?;
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        // The attempts and the verdict, then the answer's text alone.
        let mut readable = outcome.clone();
        readable.value = None;
        println!("{readable}");
        if let Some(text) = outcome.value.as_ref().and_then(|v| v["text"].as_str()) {
            println!("\n{text}");
        }
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_progress(p: backstop::agent::Progress) {
    use backstop::agent::Progress;
    match p {
        Progress::Started { run, agent } => println!("run {run} (agent {agent})"),
        Progress::Resumed { run, agent } => println!("run {run} (agent {agent}) resumed"),
        Progress::Step { step, line } => println!("  step {step}: {line}"),
    }
}

fn finish(r: &backstop::agent::RunReport) -> ExitCode {
    use backstop::journal::RunStatus;
    match r.status {
        RunStatus::Finished => {
            println!("finished after step {}", r.step);
            let out = r.output.clone().unwrap_or_default();
            match out.get("text").and_then(|t| t.as_str()) {
                Some(text) => println!("{text}"),
                None => println!("{out}"),
            }
            ExitCode::SUCCESS
        }
        RunStatus::NeedsAttention => {
            if let Some(a) = &r.attention {
                println!(
                    "NEEDS ATTENTION at step {}: {} ({}): {}",
                    a.step, a.reason, a.chain, a.message
                );
            }
            println!(
                "after a person decides, continue with: backstop resume {}",
                r.run
            );
            ExitCode::from(3)
        }
        RunStatus::Failed | RunStatus::Running => {
            println!("FAILED: {}", r.output.clone().unwrap_or_default());
            ExitCode::from(2)
        }
    }
}

fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn runs(config: &Path) -> anyhow::Result<ExitCode> {
    let config = backstop::Config::from_file(config)?;
    let journal = backstop::journal::SqliteJournal::open(&config.state_path)?;
    use backstop::journal::Journal;
    let runs = journal.runs()?;
    if runs.is_empty() {
        println!("no runs in {}", config.state_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<12} {:<16} {:>5}  STARTED",
        "ID", "AGENT", "STATUS", "STEP"
    );
    for r in runs {
        println!(
            "{:<14} {:<12} {:<16} {:>5}  {}",
            r.id,
            r.agent,
            r.status.as_str(),
            r.step,
            when(r.started_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_run(config: &Path, run: &str, json: bool) -> anyhow::Result<ExitCode> {
    let config = backstop::Config::from_file(config)?;
    let journal = backstop::journal::SqliteJournal::open(&config.state_path)?;
    use backstop::journal::Journal;
    let record = journal.run(run)?;
    let entries = journal.entries(run)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"run": record, "entries": entries}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "run {} (agent {}), {} at step {}, started {}",
        record.id,
        record.agent,
        record.status.as_str(),
        record.step,
        when(record.started_at)
    );
    println!("task: {}", record.task);
    for e in entries {
        let p = &e.payload;
        let what = match e.kind {
            backstop::journal::EntryKind::ToolIntent => format!(
                "{} key {} input {}",
                p["chain"].as_str().unwrap_or(""),
                p["key"].as_str().unwrap_or(""),
                p["input"]
            ),
            backstop::journal::EntryKind::ToolResult | backstop::journal::EntryKind::ModelCall => {
                let o = &p["outcome"];
                let by = o["served_by"]
                    .as_str()
                    .map(|b| format!("served by {b}"))
                    .unwrap_or_else(|| {
                        format!("FAILED {}", o["error"]["class"].as_str().unwrap_or(""))
                    });
                let degraded = if o["degraded"] == true {
                    format!(
                        " (DEGRADED: {})",
                        o["degraded_reason"].as_str().unwrap_or("")
                    )
                } else {
                    String::new()
                };
                format!("{} {by}{degraded}", p["chain"].as_str().unwrap_or(""))
            }
            backstop::journal::EntryKind::Attention => format!(
                "{} {}: {}",
                p["reason"].as_str().unwrap_or(""),
                p["chain"].as_str().unwrap_or(""),
                p["message"].as_str().unwrap_or("")
            ),
            _ => p.to_string().chars().take(120).collect(),
        };
        println!(
            "  #{:<4} step {:<4} {:<13} {}",
            e.seq,
            e.step,
            e.kind.as_str(),
            what
        );
    }
    Ok(ExitCode::SUCCESS)
}
