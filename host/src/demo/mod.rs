//! The offline demo: a research agent's search chain on the embedded
//! defaults, against a scripted search service on 127.0.0.1. It shows a
//! transient failure retried, a service going down and its breaker
//! opening, a marked fallback, and a fallback of a fallback.

use crate::testkit::{Reply, ScriptedServer};
use crate::{Backstop, Config, Outcome};
use anyhow::Context;
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
fn prepare(dir: &Path, plugins: &Path, port: u16) -> anyhow::Result<String> {
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
        .replace("{port}", &port.to_string()))
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

/// Runs the demo, printing to `out`. `plugins` holds the built tools;
/// `dir` receives the demo's config and data.
pub async fn run(out: &mut dyn Write, plugins: &Path, dir: &Path) -> anyhow::Result<()> {
    for tool in ["web_search", "corpus", "cache"] {
        let p = plugins.join(format!("{tool}.wasm"));
        anyhow::ensure!(
            p.is_file(),
            "{} is missing: build the plugins first with plugins/build.sh",
            p.display()
        );
    }
    let server = ScriptedServer::start(Reply::json(200, search_results("query"))).await?;
    let text = prepare(dir, plugins, server.port())?;
    let config_path = dir.join("backstop.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::from_str(&text, &config_path, dir)?;
    let started = std::time::Instant::now();
    let b = Backstop::from_config(config).await?;
    let web = b.tool("web_search").expect("declared in the demo config");
    let cached = match web.compile_source() {
        crate::runtime::CompileSource::Cache => "loaded from the compiled-code cache",
        crate::runtime::CompileSource::Compiled => "compiled (cached for next time)",
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
        "\n4. The corpus has nothing on the topic: the cache answers, marked stale"
    )?;
    let q = "durable execution";
    let o = b.call("search", json!({ "query": q })).await?;
    show(out, q, &o)?;

    writeln!(out, "\nEvery fallback above is marked: `served_by`, `degraded` and the reason travel with the result.")?;
    writeln!(
        out,
        "Try it yourself: backstop -c {} call search --input '{{\"query\": \"breakers\"}}' --json",
        config_path.display()
    )?;
    writeln!(out, "(web_search will be unreachable then: the demo's service has stopped, so watch it fall back.)")?;
    Ok(())
}
