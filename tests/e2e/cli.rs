//! The `backstop` binary: exit codes, readable and JSON output.

use crate::common::{tempdir, write_config, PRELUDE};

fn backstop(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    crate::common::cli(Some(config), args)
}

fn config() -> String {
    format!(
        r#"{PRELUDE}
[tools.flaky]
component = "{{plugins}}/fault.wasm"

[tools.corpus]
component = "{{plugins}}/corpus.wasm"
dirs = [{{ host = "{{dir}}/docs", guest = "/data", mode = "ro" }}]
env = ["LANG=C"]

[chains.main]
targets = ["flaky", "corpus"]
"#
    )
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("docs/a.md"),
        "Breakers stop calls to failing services.",
    )
    .unwrap();
    let path = write_config(dir.path(), &config());
    (dir, path)
}

#[test]
fn check_accepts_a_good_config_and_rejects_a_bad_one_with_its_location() {
    let (dir, path) = setup();
    let (code, out, _) = backstop(&path, &["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: 2 tool(s), 0 model(s), 1 chain(s)"),
        "{out}"
    );
    assert!(out.contains("chain main: flaky -> corpus"), "{out}");

    let bad = write_config(
        dir.path(),
        &config().replace(
            "targets = [\"flaky\", \"corpus\"]",
            "targets = [\"flaky\", \"corpsu\"]",
        ),
    );
    let (code, _, err) = backstop(&bad, &["check"]);
    assert_eq!(code, 1);
    assert!(err.contains("backstop.toml:25:21:"), "{err}");
    assert!(
        err.contains("chains.main.targets[1]: unknown target `corpsu`"),
        "{err}"
    );
    assert!(err.contains("did you mean `corpus`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let missing = dir.path().join("nope.toml");
    let (code, _, err) = backstop(&missing, &["check"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nope.toml") && err.contains("cannot read config file"),
        "{err}"
    );
}

#[test]
fn tools_lists_description_and_grants() {
    let (_dir, path) = setup();
    let (code, out, _) = backstop(&path, &["tools"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("corpus [read-only] Search a local document collection"),
        "{out}"
    );
    assert!(out.contains("/docs -> /data (ro)"), "{out}");
    assert!(out.contains("env       LANG"), "{out}");
    let (_, json, _) = backstop(&path, &["tools", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let corpus = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "corpus")
        .unwrap();
    assert_eq!(corpus["grants"]["dirs"][0]["guest"], "/data");
    assert_eq!(corpus["describe"]["input_schema"]["required"][0], "query");
    assert!(
        !out.contains("input schema"),
        "schemas only when asked: {out}"
    );
    let (code, out, _) = backstop(&path, &["tools", "--schemas"]);
    assert_eq!(code, 0);
    let corpus = &out[out.find("corpus [").unwrap()..];
    assert!(
        corpus.contains("input     checked against the schema before each call")
            && corpus.contains("  input schema\n      {")
            && corpus.contains("\"required\": [")
            && corpus.contains("\"query\""),
        "{out}"
    );
}

#[test]
fn call_prints_the_marked_outcome() {
    let (_dir, path) = setup();
    let input = r#"{"flaky": {"mode": "fail", "class": "unavailable"}, "query": "breakers"}"#;
    let (code, out, _) = backstop(&path, &["call", "main", "--input", input, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["served_by"], "corpus");
    assert_eq!(v["degraded"], true);
    assert_eq!(v["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(v["attempts"][0]["class"], "unavailable");
    assert!(v["value"]["results"][0]["snippet"]
        .as_str()
        .unwrap()
        .contains("Breakers"));

    let (code, out, _) = backstop(&path, &["call", "main", "--input", input]);
    assert_eq!(code, 0);
    assert!(out.contains("flaky #1: unavailable"), "{out}");
    assert!(
        out.contains("served by corpus (DEGRADED: fallback: flaky: unavailable)"),
        "{out}"
    );

    let none = r#"{"mode": "fail", "class": "permanent", "query": "zebras"}"#;
    let (code, out, _) = backstop(&path, &["call", "main", "--input", none, "--json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["class"], "permanent");
    assert_eq!(v["error"]["escalate"], "failed");

    let (code, _, err) = backstop(&path, &["call", "nosuch", "--input", "{}"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown chain or tool `nosuch` (known: main, corpus, flaky)"),
        "{err}"
    );
    let (code, _, err) = backstop(&path, &["call", "main", "--input", "{oops"]);
    assert_eq!(code, 1);
    assert!(err.contains("--input is not JSON"), "{err}");
    let (code, _, err) = backstop(&path, &["call", "main", "--input", r#"{"km": 1e400}"#]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--input holds a number out of range") && err.contains("column 12"),
        "{err}"
    );
}

/// A first compile of a large component shows what is happening (by
/// default, on stderr); `check` compiles and caches every tool, so a second
/// `check`, like a deploy after it, reads the cache.
#[test]
fn check_shows_a_long_compile_and_warms_the_cache() {
    let dir = tempdir();
    let path = write_config(
        dir.path(),
        "version = 1\ncache_dir = \"{dir}/fresh-cache\"\n[tools.py]\ncomponent = \
         \"{plugins}/echo_py.wasm\"\n",
    );
    let (code, out, err) = backstop(&path, &["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tool py: compiled now, and cached"), "{out}");
    assert!(
        err.contains("tools.py: compiling ") && err.contains(" MB); this takes a while once"),
        "{err}"
    );
    assert!(err.contains("tools.py: compiled in "), "{err}");
    let (code, out, err) = backstop(&path, &["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("tool py: compiled code read from the cache"),
        "{out}"
    );
    assert!(!err.contains("compiling"), "{err}");
}

/// A reader that goes away (`backstop call ... | head -1`) cuts the output
/// short and nothing else: no panic (it used to abort a run mid-way), and
/// the command's own result stands.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    let (_dir, path) = setup();
    let input = r#"{"flaky": {"mode": "fail", "class": "unavailable"}, "query": "breakers"}"#;
    for args in [
        vec!["call", "main", "--input", input],
        vec!["tools", "--schemas"],
        vec!["status"],
    ] {
        // `true` exits at once, so every write finds the pipe closed.
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#""$0" "$@" | true; echo "status=${PIPESTATUS[0]}""#)
            .arg(env!("CARGO_BIN_EXE_backstop"))
            .arg("-c")
            .arg(&path)
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stdout.contains("status=0"), "{args:?}: {stdout} {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
