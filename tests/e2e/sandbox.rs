//! Containment: a tool sees only what its TOML grants, and a runaway or
//! greedy guest is stopped without hurting the host.

use crate::common::{load, tempdir, PRELUDE};
use backstop::testkit::{Reply, ScriptedServer};
use backstop::{Backstop, FailureClass};
use serde_json::json;

fn config(origin: &str) -> String {
    format!(
        r#"{PRELUDE}
[tools.reader]
component = "{{plugins}}/fault.wasm"
dirs = [{{ host = "{{dir}}/granted", guest = "/data", mode = "ro" }}]
env = ["GRANTED_KEY=visible", "PASSED_THROUGH"]
retry = {{ attempts = 1 }}

[tools.scribe]
component = "{{plugins}}/fault.wasm"
dirs = [{{ host = "{{dir}}/out", guest = "/out", mode = "rw" }}]
retry = {{ attempts = 1 }}

[tools.spinner]
component = "{{plugins}}/fault.wasm"
timeout = "200ms"
retry = {{ attempts = 1 }}

[tools.hog]
component = "{{plugins}}/fault.wasm"
memory = "32MiB"
retry = {{ attempts = 1 }}

[tools.web]
component = "{{plugins}}/web_search.wasm"
http = ["{origin}"]
env = ["SEARCH_URL={origin}/search"]
retry = {{ attempts = 1 }}

[tools.web_denied]
component = "{{plugins}}/web_search.wasm"
http = ["http://127.0.0.1:1"]
env = ["SEARCH_URL={origin}/search"]
retry = {{ attempts = 1 }}
"#
    )
}

async fn setup(origin: &str) -> (tempfile::TempDir, Backstop) {
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("granted")).unwrap();
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(d.join("granted/hello.txt"), "hello from the grant").unwrap();
    std::fs::write(d.join("secret.txt"), "outside the grant").unwrap();
    std::os::unix::fs::symlink(d.join("secret.txt"), d.join("granted/link.txt")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", d.join("granted/rel-link.txt")).unwrap();
    let b = load(d, &config(origin)).await;
    (dir, b)
}

async fn read(b: &Backstop, path: &str) -> backstop::Outcome {
    b.call("reader", json!({"mode": "read", "path": path}))
        .await
        .unwrap()
}

#[tokio::test]
async fn files_outside_the_grant_are_invisible() {
    let (_d, b) = setup("http://127.0.0.1:9").await;
    let ok = read(&b, "/data/hello.txt").await;
    assert_eq!(ok.value.unwrap()["text"], "hello from the grant");
    for path in [
        "/etc/passwd",
        "/data/../secret.txt",
        "/data/link.txt",
        "/data/rel-link.txt",
        "../secret.txt",
    ] {
        let o = read(&b, path).await;
        assert!(!o.ok, "{path} was readable: {o}");
        assert_eq!(o.attempts[0].class.as_str(), "permanent", "{path}: {o}");
    }
}

#[tokio::test]
async fn read_only_grant_refuses_writes_and_read_write_allows_them() {
    let (d, b) = setup("http://127.0.0.1:9").await;
    let o = b
        .call("reader", json!({"mode": "record", "path": "/data/new.txt"}))
        .await
        .unwrap();
    assert!(!o.ok, "{o}");
    assert!(!d.path().join("granted/new.txt").exists());
    let o = b
        .call("scribe", json!({"mode": "record", "path": "/out/log.txt"}))
        .await
        .unwrap();
    assert!(o.ok, "{o}");
    let written = std::fs::read_to_string(d.path().join("out/log.txt")).unwrap();
    assert_eq!(written.trim(), &*o.key);
}

#[tokio::test]
async fn only_granted_env_keys_are_visible() {
    // SAFETY: this test binary sets no other variable; tests only read it.
    unsafe { std::env::set_var("PASSED_THROUGH", "from-host") };
    let (_d, b) = setup("http://127.0.0.1:9").await;
    let env = |k: &'static str| {
        let b = &b;
        async move {
            b.call("reader", json!({"mode": "env", "key": k}))
                .await
                .unwrap()
                .value
                .unwrap()["value"]
                .clone()
        }
    };
    assert_eq!(env("GRANTED_KEY").await, "visible");
    assert_eq!(env("PASSED_THROUGH").await, "from-host");
    assert!(std::env::var("PATH").is_ok());
    assert_eq!(env("PATH").await, serde_json::Value::Null);
    assert_eq!(env("HOME").await, serde_json::Value::Null);
}

#[tokio::test]
async fn http_reaches_only_granted_origins() {
    let server = ScriptedServer::start(Reply::json(200, json!({"results": [{"title": "t"}]})))
        .await
        .unwrap();
    let (_d, b) = setup(&server.origin()).await;
    let o = b.call("web", json!({"query": "wasm"})).await.unwrap();
    assert!(o.ok, "{o}");
    assert_eq!(o.value.unwrap()["results"][0]["title"], "t");
    assert_eq!(server.arrivals().len(), 1);
    assert_eq!(server.arrivals()[0].path, "/search?q=wasm");

    let o = b
        .call("web_denied", json!({"query": "wasm"}))
        .await
        .unwrap();
    assert!(!o.ok);
    assert_eq!(o.attempts[0].class.as_str(), "permanent");
    assert!(o.attempts[0].message.contains("denied"), "{o}");
    // The failure names the grant that would let the request out.
    let want = format!(
        "add \"{}\" to `http` in [tools.web_denied]",
        server.origin().trim_end_matches('/')
    );
    assert!(o.attempts[0].message.contains(&want), "{want} in {o}");
    assert_eq!(
        server.arrivals().len(),
        1,
        "the denied request must not reach the server"
    );
}

#[tokio::test]
async fn runaway_loop_is_stopped_at_its_deadline_and_the_host_keeps_serving() {
    let (_d, b) = setup("http://127.0.0.1:9").await;
    let o = b.call("spinner", json!({"mode": "spin"})).await.unwrap();
    let a = &o.attempts[0];
    assert_eq!(a.class.as_str(), "timeout", "{o}");
    assert!(a.message.contains("deadline"), "{a:?}");
    // Deadline 200 ms plus one 10 ms epoch tick; the rest is slack for a
    // loaded CI machine, not a performance claim (see BENCHMARKS.md).
    assert!(
        a.elapsed_ms < 200 + 10 + 150,
        "stopped after {} ms",
        a.elapsed_ms
    );
    assert!(b.call("spinner", json!({"mode": "echo"})).await.unwrap().ok);
}

#[tokio::test]
async fn memory_bomb_stops_at_its_cap_and_the_host_keeps_serving() {
    let (_d, b) = setup("http://127.0.0.1:9").await;
    let o = b.call("hog", json!({"mode": "alloc"})).await.unwrap();
    assert!(!o.ok);
    let e = o.error.unwrap();
    assert_eq!(e.class, FailureClass::ResourceExhausted);
    assert!(
        o.attempts[0].message.contains("memory cap 32MiB reached"),
        "{:?}",
        o.attempts[0]
    );
    assert!(b.call("hog", json!({"mode": "echo"})).await.unwrap().ok);
}

#[tokio::test]
async fn malformed_output_is_classified() {
    let (_d, b) = setup("http://127.0.0.1:9").await;
    let o = b.call("reader", json!({"mode": "bad-json"})).await.unwrap();
    assert_eq!(o.attempts[0].class.as_str(), "malformed-output");
    let o = b
        .call("reader", json!({"mode": "echo", "confidence": 1.5}))
        .await
        .unwrap();
    assert_eq!(o.attempts[0].class.as_str(), "malformed-output");
    assert!(o.attempts[0].message.contains("confidence"), "{o}");
}
