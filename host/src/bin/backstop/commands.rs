use crate::Command;
use backstop::Backstop;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// A line of text output: guest- and provider-controlled text in it is
/// made visible, never executed by the terminal (`backstop::term`). JSON
/// output is printed exactly, with `crate::out::line`. Neither panics when
/// the reader has gone.
macro_rules! say {
    () => { crate::out::line("") };
    ($($arg:tt)*) => {
        crate::out::line(&backstop::term::visible(&format!($($arg)*)))
    };
}

pub async fn run(command: Command, config: &Path) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check => check(config).await,
        Command::Migrate => migrate(config).await,
        Command::Mcp => mcp(config).await,
        Command::Status { json, runs } => status(config, json, runs).await,
        Command::Breakers { action, json } => breakers(config, action, json).await,
        Command::Serve {
            listen,
            header_timeout,
            body_timeout,
            max_connections,
            grace,
            workers,
        } => {
            let defaults = backstop::serve::ServeOptions::default();
            let options = backstop::serve::ServeOptions {
                header_timeout,
                body_timeout,
                max_connections: max_connections.unwrap_or(defaults.max_connections),
                grace,
                workers: backstop::agent::queue::Workers {
                    concurrency: workers,
                    ..defaults.workers
                },
                ..defaults
            };
            serve(config, listen, options).await
        }
        Command::Tools { json, schemas } => tools(config, json, schemas).await,
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
        Command::Run {
            agent,
            task,
            detach: true,
        } => {
            let b = Backstop::load(config).await?;
            let id = b.enqueue_run(&agent, &task).await?;
            say!("run {id} queued: a `backstop serve` sharing the state store drives it");
            say!("follow it with: backstop runs show {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { agent, task, .. } => {
            let b = Backstop::load(config).await?;
            let report = b.run_agent(&agent, &task, &mut print_progress).await?;
            b.flush_notifications(std::time::Duration::from_secs(5))
                .await;
            Ok(finish(&report))
        }
        Command::Resume { run, allow_drift } => {
            let b = Backstop::load(config).await?;
            let options = backstop::agent::ResumeOptions { allow_drift };
            let report = b.resume_run(&run, &options, &mut print_progress).await?;
            b.flush_notifications(std::time::Duration::from_secs(5))
                .await;
            Ok(finish(&report))
        }
        Command::Escalations {
            action: None,
            reason,
            run,
            older_than,
            all,
            stats,
            json,
        } => list_escalations(config, reason, run, older_than, all, stats, json).await,
        Command::Escalations {
            action: Some(crate::EscalationCommand::Show { id, json }),
            ..
        } => show_escalation(config, &id, json).await,
        Command::Escalations {
            action:
                Some(crate::EscalationCommand::Resolve {
                    id,
                    approve,
                    reject,
                    result,
                    retry,
                    abort,
                    by,
                    resume,
                }),
            ..
        } => {
            use backstop::escalation::Resolution;
            let resolution = match (approve, reject, result, retry, abort) {
                (true, ..) => Resolution::Approve,
                (_, Some(comment), ..) => Resolution::Reject { comment },
                (_, _, Some(json), ..) => Resolution::Result {
                    value: serde_json::from_str(&json).map_err(|e| {
                        anyhow::anyhow!(backstop::outcome::json_error("--result", &e))
                    })?,
                },
                (_, _, _, true, _) => Resolution::Retry,
                _ => Resolution::Abort,
            };
            resolve(config, &id, resolution, &by, resume).await
        }
        Command::Runs { show: None } => runs(config).await,
        Command::Runs {
            show: Some(crate::RunsCommand::Show { run, json }),
        } => show_run(config, &run, json).await,
        Command::New {
            name,
            lang,
            plugins,
        } => {
            crate::new::run(&name, lang, &plugins)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { plugins, dir } => {
            let exe = std::env::current_exe()?;
            crate::demo::run(&mut std::io::stdout(), &plugins, &dir, &exe).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn migrate(config: &Path) -> anyhow::Result<ExitCode> {
    let config = backstop::Config::from_file(config)?;
    let at = config.store.clone();
    let m = tokio::task::spawn_blocking(move || backstop::store::migrate(&at)).await??;
    if m.from == m.to {
        say!("{}: schema at version {}, up to date", config.store, m.to);
    } else {
        say!(
            "{}: schema migrated from version {} to {}",
            config.store,
            m.from,
            m.to
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &Path) -> anyhow::Result<ExitCode> {
    let b = Backstop::load(config).await?;
    let c = b.config();
    say!(
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
        say!("  chain {name}: {}", chain.targets.join(" -> "));
    }
    // Loading compiled every tool not in the cache yet and cached it: so
    // `check` is also how to warm the cache before a deploy.
    for t in b.tools() {
        say!(
            "  tool {}: {}",
            t.name(),
            match t.compile_source() {
                backstop::runtime::CompileSource::Cache => "compiled code read from the cache",
                backstop::runtime::CompileSource::Compiled => "compiled now, and cached",
            }
        );
    }
    for r in b.remotes() {
        say!(
            "  tool {}: `{}` at {} ({})",
            r.name(),
            r.remote().tool,
            r.remote().url,
            if r.description().is_some() {
                "described by the server"
            } else {
                "the server did not answer; described on its first call"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn tools(config: &Path, json: bool, schemas: bool) -> anyhow::Result<ExitCode> {
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
                        "dirs": c.dirs.iter().map(|d| serde_json::json!({"host": d.host,
                            "guest": d.guest,
                                "mode": if d.writable {"rw"} else {"ro"}})).collect::<Vec<_>>(),
                        "env": c.env.iter().map(|e| &e.key).collect::<Vec<_>>(),
                        "http": c.http.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                    },
                    "timeout_ms": c.timeout.as_millis() as u64,
                    "memory": c.memory.to_string(),
                })
            })
            .chain(b.remotes().map(|r| {
                use backstop::target::CallTarget;
                serde_json::json!({
                    "name": r.name(),
                    "describe": r.description(),
                    "effect": r.effect(),
                    "mcp": {"url": r.remote().url, "tool": r.remote().tool},
                    "grants": {
                        "http": r.config().http.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                    },
                    "timeout_ms": r.config().timeout.as_millis() as u64,
                })
            }))
            .collect();
        crate::out::line(&serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for t in b.tools() {
        let c = t.config();
        let d = t.description();
        writeln!(
            out,
            "{} [{}] {}",
            t.name(),
            t.effect(),
            backstop::term::visible(&d.description)
        )?;
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
        writeln!(
            out,
            "  input     {}",
            if c.validate_input {
                "checked against the schema before each call"
            } else {
                "not checked (validate_input = false)"
            }
        )?;
        if schemas {
            // Guest-written text: indented, escaped for the terminal.
            let show = |v: &serde_json::Value| {
                let text = serde_json::to_string_pretty(v).unwrap_or_default();
                backstop::term::visible(&text.replace('\n', "\n      ")).into_owned()
            };
            writeln!(out, "  input schema\n      {}", show(&d.input_schema))?;
            match &d.output_schema {
                Some(o) => writeln!(out, "  output schema\n      {}", show(o))?,
                None => writeln!(out, "  output schema  none declared")?,
            }
        }
    }
    for r in b.remotes() {
        use backstop::target::CallTarget;
        let about = r.description().map_or_else(
            || "(not described yet: the server did not answer at start)".to_owned(),
            |d| backstop::term::visible(&d.description).into_owned(),
        );
        writeln!(out, "{} [{}] {about}", r.name(), r.effect())?;
        writeln!(
            out,
            "  mcp       `{}` at {}",
            r.remote().tool,
            r.remote().url
        )?;
        writeln!(
            out,
            "  limits    timeout {}, output {}",
            humantime::format_duration(r.config().timeout),
            r.config().max_output
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
    let input: serde_json::Value = serde_json::from_str(input)
        .map_err(|e| anyhow::anyhow!(backstop::outcome::json_error("--input", &e)))?;
    let b = Backstop::load(config).await?;
    let outcome = match key {
        Some(k) => b.call_with_key(chain, input, k).await?,
        None => b.call(chain, input).await?,
    };
    if json {
        crate::out::line(&serde_json::to_string(&outcome)?);
    } else {
        say!("{outcome}");
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
        crate::out::line(&serde_json::to_string(&outcome)?);
    } else {
        // The attempts and the verdict, then the answer's text alone.
        let mut readable = outcome.clone();
        readable.value = None;
        say!("{readable}");
        if let Some(text) = outcome.value.as_ref().and_then(|v| v["text"].as_str()) {
            say!("\n{text}");
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
        Progress::Started { run, agent } => say!("run {run} (agent {agent})"),
        Progress::Resumed { run, agent } => say!("run {run} (agent {agent}) resumed"),
        Progress::Step { step, line } => say!("  step {step}: {line}"),
    }
}

fn finish(r: &backstop::agent::RunReport) -> ExitCode {
    use backstop::journal::RunStatus;
    match r.status {
        RunStatus::Finished => {
            say!("finished after step {}", r.step);
            let out = r.output.clone().unwrap_or_default();
            match out.get("text").and_then(|t| t.as_str()) {
                Some(text) => say!("{text}"),
                None => say!("{out}"),
            }
            ExitCode::SUCCESS
        }
        RunStatus::NeedsAttention => {
            if let Some(a) = &r.attention {
                say!(
                    "NEEDS ATTENTION at step {}: {} ({}): {}",
                    a.step,
                    a.reason,
                    a.chain,
                    a.message
                );
            }
            match r.attention.as_ref().and_then(|a| a.escalation.as_ref()) {
                Some(id) => say!(
                    "escalation {id} waits for a person: backstop escalations show {id}, then \
                        resolve it (--resume continues the run)"
                ),
                None => say!(
                    "after a person decides, continue with: backstop resume {}",
                    r.run
                ),
            }
            ExitCode::from(3)
        }
        RunStatus::Failed | RunStatus::Running => {
            say!("FAILED: {}", r.output.clone().unwrap_or_default());
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
    let journal = match backstop::store::open_read_only(&config.store) {
        Err(backstop::store::StoreError::Missing(_)) => {
            say!("no runs in {}", config.store);
            return Ok(ExitCode::SUCCESS);
        }
        j => j?,
    };
    let runs = journal.runs().await?;
    if runs.is_empty() {
        say!("no runs in {}", config.store);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<14} {:<12} {:<16} {:>5}  STARTED",
        "ID",
        "AGENT",
        "STATUS",
        "STEP"
    );
    for r in runs {
        say!(
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
    let journal = backstop::store::open_read_only(&config.store)?;
    let record = journal.run(run).await?;
    let entries = journal.entries(run).await?;
    if json {
        crate::out::line(&serde_json::to_string(
            &serde_json::json!({"run": record, "entries": entries}),
        )?);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "run {} (agent {}), {} at step {}, started {}",
        record.id,
        record.agent,
        record.status.as_str(),
        record.step,
        when(record.started_at)
    );
    say!("task: {}", record.task);
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
        say!(
            "  #{:<4} step {:<4} {:<13} {}",
            e.seq,
            e.step,
            e.kind.as_str(),
            what
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn queue(
    config: &Path,
) -> anyhow::Result<(backstop::Config, std::sync::Arc<dyn backstop::store::Store>)> {
    let config = backstop::Config::from_file(config)?;
    let journal = backstop::store::open(&config.store)?;
    Ok((config, journal))
}

/// The queue for commands that only read it (see `open_read_only`).
fn queue_read(
    config: &Path,
) -> anyhow::Result<(backstop::Config, std::sync::Arc<dyn backstop::store::Store>)> {
    let config = backstop::Config::from_file(config)?;
    let journal = backstop::store::open_read_only(&config.store)?;
    Ok((config, journal))
}

fn age(ms: i64) -> String {
    let secs = (backstop_now() - ms).max(0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn backstop_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn list_escalations(
    config: &Path,
    reason: Option<String>,
    run: Option<String>,
    older_than: Option<String>,
    all: bool,
    stats: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let q = match queue_read(config) {
        Ok((_, q)) => q,
        Err(e)
            if matches!(
                e.downcast_ref::<backstop::store::StoreError>(),
                Some(backstop::store::StoreError::Missing(_))
            ) && !stats =>
        {
            if json {
                crate::out::line("[]");
            } else {
                say!("no escalations (no state store yet)");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    if stats {
        let s = q.escalation_stats().await?;
        if json {
            crate::out::line(&serde_json::to_string(&s)?);
        } else {
            say!("open: {}", s.open);
            say!(
                "oldest open: {}",
                s.oldest_open_age_ms
                    .map(|a| age(backstop_now() - a))
                    .unwrap_or_else(|| "-".into())
            );
            for (r, n) in &s.by_reason {
                say!("  {r}: {n}");
            }
            say!("resolved: {}", s.resolved);
        }
        return Ok(ExitCode::SUCCESS);
    }
    use backstop::escalation::{parse_age, parse_reason};
    let reason = reason
        .map(|r| parse_reason(&r).map_err(|e| anyhow::anyhow!("--reason {e}")))
        .transpose()?;
    let older_than_ms = older_than
        .map(|d| parse_age(&d).map_err(|e| anyhow::anyhow!("--older-than {e}")))
        .transpose()?;
    let list = q
        .escalations(&backstop::escalation::Filter {
            reason,
            run,
            older_than_ms,
            all,
        })
        .await?;
    if json {
        crate::out::line(&serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        say!("no {}escalations", if all { "" } else { "open " });
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<12} {:<14} {:>4}  {:<18} {:<12} {:>5}  STATUS",
        "ID",
        "RUN",
        "STEP",
        "REASON",
        "CHAIN",
        "AGE"
    );
    for e in list {
        let status = match (&e.resolution, &e.resolved_by) {
            (Some(r), by) => format!(
                "resolved: {} by {}",
                r.kind().as_str(),
                by.as_deref().unwrap_or("?")
            ),
            (None, _) => "open".into(),
        };
        say!(
            "{:<12} {:<14} {:>4}  {:<18} {:<12} {:>5}  {status}",
            e.id,
            e.run,
            e.step,
            e.reason.as_str(),
            e.chain,
            age(e.created_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_escalation(config: &Path, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (config, q) = queue_read(config)?;
    let e = q.escalation(id).await?;
    if json {
        crate::out::line(&serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!("escalation {} ({})", e.id, e.reason.as_str());
    say!("  run      {} step {} (key {})", e.run, e.step, e.key);
    say!("  chain    {}", e.chain);
    say!("  why      {}", e.message);
    say!("  input    {}", e.input);
    for a in &e.attempts {
        say!(
            "  attempt  {} #{}: {}{}",
            a.target,
            a.attempt,
            a.class,
            if a.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.message)
            }
        );
    }
    say!("  opened   {} ago", age(e.created_at));
    match &e.resolution {
        Some(r) => say!(
            "  resolved {} by {} ({} ago)",
            r,
            e.resolved_by.as_deref().unwrap_or("?"),
            age(e.resolved_at.unwrap_or(0))
        ),
        None => {
            let allowed: Vec<String> = e
                .allowed
                .iter()
                .map(|k| match k.as_str() {
                    "reject" => "--reject TEXT".to_string(),
                    "result" => "--result JSON".to_string(),
                    other => format!("--{other}"),
                })
                .collect();
            say!(
                "  answer   backstop -c {} escalations resolve {} {} [--by NAME] [--resume]",
                config.path.display(),
                e.id,
                allowed.join(" | ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn resolve(
    config: &Path,
    id: &str,
    resolution: backstop::escalation::Resolution,
    by: &str,
    resume: bool,
) -> anyhow::Result<ExitCode> {
    let (_, q) = queue(config)?;
    let r = q.resolve(id, resolution, by).await?;
    let e = &r.escalation;
    let res = e
        .resolution
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    if !r.first {
        say!(
            "escalation {id} was already resolved by {} ({} ago): {res}; nothing changed",
            e.resolved_by.as_deref().unwrap_or("?"),
            age(e.resolved_at.unwrap_or(0))
        );
        return Ok(ExitCode::from(4));
    }
    say!("escalation {id} resolved by {by}: {res}");
    if backstop::journal::is_mcp_call(&e.run) {
        say!(
            "an MCP client's call: it runs when the client calls again with \
             _meta.escalation = \"{id}\""
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !resume {
        say!("continue the run with: backstop resume {}", e.run);
        return Ok(ExitCode::SUCCESS);
    }
    drop(q);
    let b = Backstop::load(config).await?;
    let report = b
        .resume_run(&e.run, &Default::default(), &mut print_progress)
        .await?;
    b.flush_notifications(std::time::Duration::from_secs(5))
        .await;
    Ok(finish(&report))
}

/// Lists the breakers, or applies an operator's action to one, through the
/// state store alone (no tool is loaded).
async fn breakers(
    config: &Path,
    action: Option<crate::BreakerCommand>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use crate::BreakerCommand as C;
    use backstop::guard::Action;
    let config = backstop::Config::from_file(config)?;
    if let Some(action) = action {
        let (target, action, by) = match action {
            C::Reset { target, by } => (target, Action::Reset, by),
            C::ForceOpen { target, by } => (target, Action::ForceOpen, by),
            C::ForceClose { target, by } => (target, Action::ForceClose, by),
        };
        let names = config.breaker_targets();
        if !names.contains(&target.as_str()) {
            crate::out::err_line(&format!(
                "error: no breaker `{}` in {} (breakers: {})",
                backstop::term::visible(&target),
                config.path.display(),
                names.join(", ")
            ));
            return Ok(ExitCode::from(1));
        }
        let store = backstop::store::open(&config.store)?;
        let by = backstop::clean_actor(&by);
        backstop::guard::shared::set_in_store(store.breakers()?.as_ref(), &target, action, &by)?;
        crate::out::err_line(&format!(
            "{}: {} by {}",
            backstop::term::visible(&target),
            action.as_str(),
            backstop::term::visible(&by)
        ));
    }
    let s = backstop::status::Status::read(&config, 0).await?;
    if json {
        crate::out::line(&serde_json::to_string_pretty(&s.breakers)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<14} {:>7}  {:<10} BY",
        "TARGET", "STATE", "OPENED", "CHANGED"
    )?;
    for b in &s.breakers {
        writeln!(
            out,
            "{:<20} {:<14} {:>7}  {:<10} {}",
            backstop::term::visible(&b.target),
            b.state_text(),
            b.opened,
            b.changed_at
                .map(|t| format!("{} ago", age(t)))
                .unwrap_or_else(|| "never".into()),
            b.set_by
                .as_deref()
                .map_or_else(|| "-".into(), backstop::term::visible)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Path, json: bool, runs: u32) -> anyhow::Result<ExitCode> {
    let config = backstop::Config::from_file(config)?;
    let s = backstop::status::Status::read(&config, runs).await?;
    if json {
        crate::out::line(&serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "BREAKERS")?;
    writeln!(
        out,
        "  {:<20} {:<13} {:>10} {:>7}  CHANGED",
        "TARGET", "STATE", "RETRY IN", "OPENED"
    )?;
    for b in &s.breakers {
        writeln!(
            out,
            "  {:<20} {:<13} {:>10} {:>7}  {}",
            b.target,
            b.state_text(),
            if b.retry_in_ms == 0 {
                "-".to_string()
            } else {
                humantime::format_duration(std::time::Duration::from_secs(
                    b.retry_in_ms.div_ceil(1000),
                ))
                .to_string()
            },
            b.opened,
            b.changed_at
                .map(|t| format!("{} ago", age(t)))
                .unwrap_or_else(|| "never".into())
        )?;
    }
    let q = &s.escalations;
    writeln!(
        out,
        "\nESCALATIONS  open {}, oldest {}, resolved {}",
        q.open,
        q.oldest_open_age_ms
            .map(|a| age(backstop_now() - a))
            .unwrap_or_else(|| "-".into()),
        q.resolved
    )?;
    for (reason, n) in &q.by_reason {
        writeln!(out, "  {reason}: {n}")?;
    }
    writeln!(out, "\nRECENT RUNS")?;
    if s.runs.is_empty() {
        writeln!(out, "  none")?;
    }
    for r in &s.runs {
        writeln!(
            out,
            "  {:<14} {:<12} {:<16} step {:<5} {} ago",
            r.id,
            r.agent,
            r.status.as_str(),
            r.step,
            age(r.updated_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn mcp(config: &Path) -> anyhow::Result<ExitCode> {
    let b = std::sync::Arc::new(Backstop::load(config).await?);
    backstop::mcp::serve_stdio(b.clone()).await?;
    b.flush_notifications(std::time::Duration::from_secs(5))
        .await;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    config: &Path,
    listen: std::net::SocketAddr,
    options: backstop::serve::ServeOptions,
) -> anyhow::Result<ExitCode> {
    let token = std::env::var(backstop::serve::TOKEN_ENV).ok();
    // Refused before any tool loads: a server open to the network without
    // a token must not start at all.
    backstop::serve::check_exposure(listen, token.as_deref())?;
    let b = std::sync::Arc::new(Backstop::load(config).await?);
    let listener = backstop::serve::bind(listen, token.as_deref()).await?;
    let addr = listener.local_addr()?;
    crate::out::line(&format!("listening on http://{addr}"));
    std::io::stdout().flush()?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    backstop::serve::serve_with(b.clone(), listener, token, options, shutdown).await?;
    b.flush_notifications(std::time::Duration::from_secs(5))
        .await;
    Ok(ExitCode::SUCCESS)
}
