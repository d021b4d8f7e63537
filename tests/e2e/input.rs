//! A call's input is checked against the schema its tool declares before
//! the tool runs: a violation is `invalid-input` naming where, no instance
//! is started, nothing is retried; a tool may turn the check off.

use crate::common::{load, tempdir, PRELUDE};
use backstop::{Backstop, FailureClass};
use serde_json::{json, Value};

async fn setup(echo_extra: &str) -> (tempfile::TempDir, Backstop) {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let config = format!(
        r#"{PRELUDE}
[tools.echo]
component = "{{plugins}}/echo_rs.wasm"
{echo_extra}

[tools.search]
component = "{{plugins}}/corpus.wasm"
dirs = [{{ host = "{{dir}}/data", guest = "/data", mode = "ro" }}]
"#
    );
    let b = load(dir.path(), &config).await;
    (dir, b)
}

/// Calls `chain` with `input` and returns the refusal's message, checking
/// that it was one `invalid-input` attempt and that no instance started.
async fn refused(b: &Backstop, chain: &str, tool: &str, input: Value) -> String {
    let before = b.tool(tool).unwrap().instantiations();
    let o = b.call(chain, input.clone()).await.unwrap();
    assert!(!o.ok, "{input}: {o}");
    assert_eq!(o.attempts.len(), 1, "{input}: never retried: {o}");
    let err = o.error.unwrap();
    assert_eq!(err.class, FailureClass::InvalidInput, "{input}");
    assert_eq!(
        b.tool(tool).unwrap().instantiations(),
        before,
        "{input}: no wasm started"
    );
    err.message.into_owned()
}

#[tokio::test]
async fn input_that_breaks_the_declared_schema_never_reaches_the_tool() {
    let (_d, b) = setup("").await;
    // A wrong type names its JSON pointer.
    let m = refused(&b, "echo", "echo", json!({"say": 5})).await;
    assert!(
        m.contains("input at /say does not match the tool's input schema"),
        "{m}"
    );
    assert!(m.contains("\"string\""), "{m}");
    let m = refused(&b, "echo", "echo", json!({"until_attempt": 0})).await;
    assert!(m.contains("/until_attempt"), "{m}");
    // Not an object at all.
    let m = refused(&b, "echo", "echo", json!([])).await;
    assert!(m.contains("the input does not match"), "{m}");
    // A missing required key (the corpus tool requires `query`).
    let m = refused(&b, "search", "search", json!({})).await;
    assert!(m.contains("\"query\" is a required property"), "{m}");

    // Deeper than any JSON text the host parses (an embedding app can
    // build one): refused before the validator recurses into it.
    let mut deep = json!("leaf");
    for _ in 0..1_000 {
        deep = json!([deep]);
    }
    let m = refused(&b, "echo", "echo", json!({ "say": deep })).await;
    assert!(m.contains("nested deeper than 128"), "{m}");

    // Valid input runs the tool.
    let o = b.call("echo", json!({"say": "hi"})).await.unwrap();
    assert!(o.ok, "{o}");
}

#[tokio::test]
async fn a_tool_may_turn_the_check_off() {
    let (_d, b) = setup("validate_input = false").await;
    let before = b.tool("echo").unwrap().instantiations();
    // The echo tool takes what it is given: with the check off, the
    // wrongly typed value reaches it and comes back.
    let o = b.call("echo", json!({"say": 5})).await.unwrap();
    assert!(o.ok, "{o}");
    assert_eq!(o.value.unwrap()["said"], 5);
    assert_eq!(b.tool("echo").unwrap().instantiations(), before + 1);
}
