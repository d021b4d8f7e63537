//! `corpus`: full-text lookup over a directory the tool may only read.
//!
//! The operator grants a directory at `/data`; the tool ranks its
//! paragraphs (in `.txt` and `.md` files) by how many query terms they
//! contain. Confidence is the share of query terms the best paragraph has.

use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

wit_bindgen::generate!({ world: "tool", path: "../../wit" });

use backstop::tool::host::{log, Level};
use backstop::tool::types::Effect;

const ROOT: &str = "/data";
const MAX_FILES: usize = 10_000;

// Unknown fields are ignored: in a chain, one input goes to every target.
#[derive(Deserialize)]
struct Query {
    query: String,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    3
}

struct Corpus;

fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| t.len() > 2)
        .map(str::to_lowercase)
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if out.len() >= MAX_FILES {
            break;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("txt" | "md")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

impl Guest for Corpus {
    fn describe() -> ToolInfo {
        ToolInfo {
            name: "corpus".into(),
            description: "Search a local document collection; returns the best matching paragraphs with their file."
                .into(),
            input_schema: r#"{"type":"object","properties":{"query":{"type":"string","minLength":1},"limit":{"type":"integer","minimum":1,"maximum":20}},"required":["query"]}"#.into(),
            output_schema: Some(r#"{"type":"object","properties":{"results":{"type":"array","items":{"type":"object","properties":{"file":{"type":"string"},"snippet":{"type":"string"},"score":{"type":"number"}}}}},"required":["results"]}"#.into()),
            effect: Effect::ReadOnly,
        }
    }

    fn invoke(input: String) -> Result<Output, ToolError> {
        let q: Query = serde_json::from_str(&input).map_err(|e| {
            ToolError::InvalidInput(format!(
                "expected {{\"query\": string, \"limit\"?: 1-20}}: {e}"
            ))
        })?;
        let wanted = terms(&q.query);
        if wanted.is_empty() || !(1..=20).contains(&q.limit) {
            return Err(ToolError::InvalidInput(
                "`query` needs a word of 3+ letters and `limit` must be 1-20".into(),
            ));
        }
        let mut files = Vec::new();
        collect(Path::new(ROOT), &mut files).map_err(|e| {
            ToolError::Unavailable(format!("corpus directory {ROOT} is not readable: {e}"))
        })?;
        let mut hits = Vec::new();
        for file in &files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
                let have = terms(para);
                let matched = wanted.iter().filter(|t| have.contains(t)).count();
                if matched > 0 {
                    let score = matched as f64 / wanted.len() as f64;
                    let rel = file
                        .strip_prefix(ROOT)
                        .unwrap_or(file)
                        .display()
                        .to_string();
                    hits.push((score, rel, para.chars().take(400).collect::<String>()));
                }
            }
        }
        if hits.is_empty() {
            // Nothing here answers the query: let the chain try elsewhere.
            return Err(ToolError::Permanent(format!(
                "no document among {} matches `{}`",
                files.len(),
                q.query
            )));
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        hits.truncate(q.limit);
        log(
            Level::Info,
            "corpus search",
            &[
                ("files".into(), files.len().to_string()),
                ("hits".into(), hits.len().to_string()),
            ],
        );
        let confidence = hits[0].0;
        let results: Vec<_> = hits
            .into_iter()
            .map(|(score, file, snippet)| json!({"file": file, "snippet": snippet, "score": score}))
            .collect();
        Ok(Output {
            value: json!({ "results": results }).to_string(),
            confidence: Some(confidence),
        })
    }
}

export!(Corpus);
