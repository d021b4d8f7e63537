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
        Command::Demo { plugins, dir } => {
            backstop::demo::run(&mut std::io::stdout(), &plugins, &dir).await?;
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
