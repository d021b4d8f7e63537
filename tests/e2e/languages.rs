//! Tools written in Rust, Python, JavaScript and C, built from `plugins/`
//! by one script, called through the host: every `tool-error` case and the
//! call context must cross the boundary intact in each language (through
//! each language's template tool, the one plugins/README.md starts from),
//! and each language's real tool must do its job.

use crate::common::{load, t, tempdir, trail, PRELUDE};
use backstop::{Backstop, EscalationReason, FailureClass};
use serde_json::{json, Value};

const CASES: [&str; 6] = [
    "invalid-input",
    "transient",
    "rate-limited",
    "unavailable",
    "permanent",
    "needs-human",
];

/// Loads `echo` (the language's template tool) plus `extra` tool tables.
async fn setup(echo: &str, extra: &str) -> (tempfile::TempDir, Backstop) {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let config = format!(
        r#"{PRELUDE}
[tools.echo]
component = "{{plugins}}/{echo}"
timeout = "5s"
# Failing on purpose is this tool's job here: no breaker.
breaker = {{ consecutive_failures = 0, failure_rate = 0.0 }}

[chains.retrying]
targets = ["echo"]
retry = {{ attempts = 3 }}

[chains.once]
targets = ["echo"]
retry = {{ attempts = 1 }}
{extra}"#
    );
    let b = load(dir.path(), &config).await;
    (dir, b)
}

/// The template tool's contract, the same in every language.
async fn conformance(b: &Backstop, language: &str) {
    // Context and a non-ASCII string, both ways.
    let said = "héllo \"wörld\"\n😀 \\ end";
    let o = b.call("echo", json!({ "say": said })).await.unwrap();
    assert!(o.ok, "{language}: {o}");
    let v = o.value.clone().unwrap();
    assert_eq!(v["said"], said, "{language}");
    assert_eq!(v["language"], language);
    assert_eq!(v["key"], &*o.key, "{language}: the idempotency key crossed");
    assert_eq!(v["attempt"], 1, "{language}");
    assert_eq!(
        v["tool"], "echo",
        "{language}: the operator's name, not the tool's"
    );
    let left = v["deadline_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 5000, "{language}: deadline_ms {left}");
    assert_eq!(o.confidence, Some(1.0), "{language}");

    // The attempt number and one key across retries.
    let o = b
        .call_with_key(
            "retrying",
            json!({ "fail": "transient", "until_attempt": 3, "say": "third" }),
            "key-from-the-caller".to_string(),
        )
        .await
        .unwrap();
    assert_eq!(
        trail(&o),
        [
            t("echo", "transient", "retry"),
            t("echo", "transient", "retry"),
            t("echo", "ok", "done")
        ],
        "{language}"
    );
    let v = o.value.unwrap();
    assert_eq!(v["attempt"], 3, "{language}");
    assert_eq!(v["key"], "key-from-the-caller", "{language}");

    // Every error case arrives as itself, message intact.
    for case in CASES {
        let message = format!("{case}: ünïcödé ✓");
        let o = b
            .call("echo", json!({ "fail": case, "message": message }))
            .await
            .unwrap();
        assert!(!o.ok, "{language} {case}");
        assert_eq!(o.attempts[0].class.as_str(), case, "{language}: {o}");
        assert_eq!(o.attempts[0].message, message, "{language} {case}");
        let err = o.error.unwrap();
        assert_eq!(err.class.as_str(), case, "{language}");
        if case == "needs-human" {
            assert_eq!(
                err.escalate,
                Some(EscalationReason::NeedsHuman),
                "{language}"
            );
        }
    }

    // `retry-after-ms` crosses as Some(n) and as None.
    let o = b
        .call(
            "retrying",
            json!({ "fail": "rate-limited", "retry_after_ms": 250, "until_attempt": 2 }),
        )
        .await
        .unwrap();
    assert!(o.ok, "{language}: {o}");
    assert_eq!(o.attempts[0].class.as_str(), "rate-limited");
    assert!(
        o.attempts[0].delay_ms >= 250,
        "{language}: {:?}",
        o.attempts[0]
    );
    let o = b
        .call(
            "retrying",
            json!({ "fail": "rate-limited", "until_attempt": 2 }),
        )
        .await
        .unwrap();
    assert!(o.ok, "{language}: {o}");
    assert!(
        o.attempts[0].delay_ms <= 100,
        "{language}: {:?}",
        o.attempts[0]
    );

    // A bug in the tool (a panic, an uncaught exception, an abort) is a
    // trap whose message is the tool's own explanation, not its runtime's
    // boilerplate.
    let o = b
        .call("once", json!({ "raise": "bad unit: parsec" }))
        .await
        .unwrap();
    let err = o.error.as_ref().unwrap();
    assert_eq!(err.class, FailureClass::Trap, "{language}: {o}");
    let want: &[&str] = match language {
        "rust" => &["panicked at echo_rs/src/lib.rs:", ": bad unit: parsec"],
        "python" => &["ValueError: bad unit: parsec", "line ", "in explode"],
        "javascript" => &["uncaught Error: bad unit: parsec"],
        "c" => &["echo_c: bad unit: parsec"],
        other => panic!("no expectation for {other}"),
    };
    for w in want {
        assert!(
            err.message.contains(w),
            "{language}: wants {w:?} in {:?}",
            err.message
        );
    }
    for boilerplate in [
        "RUST_BACKTRACE",
        "Python function threw an unexpected exception",
        "mozalloc_abort",
        "invalid variant tag",
    ] {
        assert!(
            !err.message.contains(boilerplate),
            "{language}: {:?}",
            err.message
        );
    }

    // Input the tool rejects.
    for input in [json!([1, 2]), json!({ "fail": "no-such-case" })] {
        let o = b.call("echo", input).await.unwrap();
        assert_eq!(
            o.error.map(|e| e.class),
            Some(FailureClass::InvalidInput),
            "{language}"
        );
    }
}

#[tokio::test]
async fn rust_template() {
    let (_d, b) = setup("echo_rs.wasm", "").await;
    conformance(&b, "rust").await;
}

#[tokio::test]
async fn python_tools() {
    let (_d, b) = setup(
        "echo_py.wasm",
        r#"
[tools.calc]
component = "{plugins}/calc.wasm"
timeout = "5s"
"#,
    )
    .await;
    conformance(&b, "python").await;

    let calc = |expression: &str, variables: Value| {
        let b = &b;
        let input = json!({ "expression": expression, "variables": variables });
        async move { b.call("calc", input).await.unwrap() }
    };
    let o = calc("(2 + 3) * x - 7 // 2", json!({ "x": 4 })).await;
    assert_eq!(o.value.unwrap(), json!({ "value": 17, "exact": true }));
    let o = calc("2 ** 64", json!({})).await;
    assert_eq!(o.value.unwrap()["integer"], "18446744073709551616");
    let o = calc("sqrt(2) * sqrt(2)", json!({})).await;
    let v = o.value.unwrap();
    assert!((v["value"].as_f64().unwrap() - 2.0).abs() < 1e-12 && v["exact"] == false);
    // Rejected clearly, inside the sandbox's limits, never run.
    for (expression, says) in [
        ("1 +", "syntax error"),
        ("1 / 0", "division by zero"),
        ("2 ** 10 ** 9", "exceeds 4096 bits"),
        ("__import__('os')", "unknown function `__import__`"),
        ("().__class__", "is not arithmetic"),
        ("y + 1", "unknown name `y`"),
    ] {
        let o = calc(expression, json!({})).await;
        assert_eq!(
            o.attempts[0].class.as_str(),
            "invalid-input",
            "{expression}: {o}"
        );
        assert!(o.attempts[0].message.contains(says), "{expression}: {o}");
    }
}

#[tokio::test]
async fn javascript_tools() {
    let (_d, b) = setup(
        "echo_js.wasm",
        r#"
[tools.jsonpath]
component = "{plugins}/jsonpath.wasm"
timeout = "5s"
"#,
    )
    .await;
    conformance(&b, "javascript").await;

    let doc = json!({
        "items": [
            { "name": "a", "price": 1 },
            { "name": "b", "price": 2, "tags": { "name": "nested" } },
            { "name": "c", "price": 3 }
        ],
        "odd key": true
    });
    let select = |path: &str, limit: u64| {
        let b = &b;
        let input = json!({ "path": path, "document": doc, "limit": limit });
        async move { b.call("jsonpath", input).await.unwrap() }
    };
    let cases = [
        ("$.items[*].name", json!(["a", "b", "c"])),
        ("$.items[-1].price", json!([3])),
        ("$.items[0:2].price", json!([1, 2])),
        ("$..name", json!(["a", "b", "nested", "c"])),
        ("$['odd key']", json!([true])),
        ("$.missing", json!([])),
    ];
    for (path, matches) in cases {
        let o = select(path, 100).await;
        assert_eq!(o.value.unwrap()["matches"], matches, "{path}");
    }
    let v = select("$..name", 2).await.value.unwrap();
    assert_eq!(
        (v["count"].clone(), v["truncated"].clone()),
        (json!(4), json!(true))
    );
    // JSON given as text is parsed by the tool.
    let o = b
        .call(
            "jsonpath",
            json!({ "path": "$.a", "document_text": "{\"a\": [1]}" }),
        )
        .await
        .unwrap();
    assert_eq!(o.value.unwrap()["matches"], json!([[1]]));
    for (input, says) in [
        (json!({ "path": "$.a[?x]", "document": {} }), "column 4"),
        (
            json!({ "path": "items", "document": {} }),
            "must start with `$`",
        ),
        (json!({ "path": "$", "document_text": "{" }), "is not JSON"),
        (json!({ "path": "$" }), "give `document`"),
    ] {
        let o = b.call("jsonpath", input.clone()).await.unwrap();
        assert_eq!(
            o.attempts[0].class.as_str(),
            "invalid-input",
            "{input}: {o}"
        );
        assert!(o.attempts[0].message.contains(says), "{input}: {o}");
    }
}

#[tokio::test]
async fn c_tools() {
    let (dir, b) = setup(
        "echo_c.wasm",
        r#"
[tools.textstats]
component = "{plugins}/textstats.wasm"
dirs = [{ host = "{dir}/data", guest = "/data", mode = "ro" }]

[tools.units]
component = "{plugins}/units_c.wasm"
"#,
    )
    .await;
    conformance(&b, "c").await;

    // Real JSON in C (vendored cJSON): numbers of every form in and out,
    // a boolean, a nested object, and a refusal the tool decides.
    let o = b
        .call("units", json!({"value": 1.5, "from": "km", "to": "mi"}))
        .await
        .unwrap();
    let v = o.value.unwrap();
    assert!(
        (v["value"].as_f64().unwrap() - 1500.0 / 1609.344).abs() < 1e-12,
        "{v}"
    );
    assert_eq!(
        (&v["unit"], &v["input"]),
        (&json!("mi"), &json!({"value": 1.5, "unit": "km"}))
    );
    let o = b
        .call(
            "units",
            json!({"value": -2.5e3, "from": "m", "to": "ft", "round": true}),
        )
        .await
        .unwrap();
    assert_eq!(o.value.unwrap()["value"], json!(-8202.1));
    let o = b
        .call("units", json!({"value": 7, "from": "in", "to": "in"}))
        .await
        .unwrap();
    // A whole number comes back as one (cJSON prints 7.0 as `7`).
    assert_eq!(o.value.unwrap()["value"].as_f64(), Some(7.0));
    let o = b
        .call("units", json!({"value": 3, "from": "km", "to": "parsec"}))
        .await
        .unwrap();
    let e = o.error.unwrap();
    assert_eq!(
        (e.class, &*e.message),
        (
            FailureClass::InvalidInput,
            "unknown unit: use m, km, mi, ft or in"
        )
    );

    let text = "The quick brown fox\njumps over the lazy dög\n";
    std::fs::write(dir.path().join("data/fox.txt"), text).unwrap();
    let want = json!({
        "bytes": 45, "chars": 44, "words": 9, "lines": 2, "longest_line": 23,
        // CRC-32 (IEEE) of `text`, as zlib computes it.
        "crc32": "8eab17fe"
    });
    let o = b.call("textstats", json!({ "text": text })).await.unwrap();
    assert_eq!(o.value.unwrap(), want);
    let o = b
        .call("textstats", json!({ "path": "/data/fox.txt" }))
        .await
        .unwrap();
    assert_eq!(o.value.unwrap(), want, "read from the granted directory");
    // Outside the grant, and missing: permanent, with the reason.
    for path in ["/etc/passwd", "/data/../../etc/passwd", "/data/missing.txt"] {
        let o = b.call("textstats", json!({ "path": path })).await.unwrap();
        assert_eq!(o.attempts[0].class.as_str(), "permanent", "{path}: {o}");
        assert!(o.attempts[0].message.contains("cannot open"), "{o}");
    }
    for input in [json!({}), json!({ "text": 5 }), json!("text")] {
        let o = b.call("textstats", input.clone()).await.unwrap();
        assert_eq!(
            o.attempts[0].class.as_str(),
            "invalid-input",
            "{input}: {o}"
        );
    }
}
