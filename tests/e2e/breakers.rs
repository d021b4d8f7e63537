//! An operator's hand on the breakers: `backstop breakers` and
//! `/v1/breakers` list them, reset one, or hold one open or closed until a
//! reset, recording who did it; a running server takes a change made from
//! the shell on within its sync interval.

use crate::common::{serve, tempdir, write_config, PRELUDE};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn config() -> String {
    format!(
        r#"{PRELUDE}
[tools.flaky]
component = "{{plugins}}/fault.wasm"
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1, open_for = "1h" }}
"#
    )
}

fn backstop(config: &Path, args: &[&str]) -> (i32, String, String) {
    crate::common::cli(Some(config), args)
}

/// The `flaky` breaker as `backstop breakers --json` shows it.
fn listed(config: &Path) -> Value {
    let (code, out, err) = backstop(config, &["breakers", "--json"]);
    assert_eq!(code, 0, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    all.as_array().unwrap()[0].clone()
}

/// The class of a CLI call's only attempt.
fn call(config: &Path, input: Value) -> String {
    let (_, out, err) = backstop(
        config,
        &["call", "flaky", "--input", &input.to_string(), "--json"],
    );
    let o: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    o["attempts"][0]["class"].as_str().unwrap().to_owned()
}

fn fail() -> Value {
    json!({"mode": "fail", "class": "unavailable"})
}

fn echo() -> Value {
    json!({"mode": "echo"})
}

#[test]
fn the_cli_resets_and_forces_a_breaker_and_says_who() {
    let dir = tempdir();
    let path = write_config(dir.path(), &config());
    assert_eq!(call(&path, fail()), "unavailable");
    let b = listed(&path);
    assert_eq!(
        (b["state"].as_str(), b["opened"].as_u64()),
        (Some("open"), Some(1))
    );
    assert!(b.get("set_by").is_none(), "{b}: the breaker opened itself");
    assert_eq!(call(&path, echo()), "circuit-open");

    // A reset: closed, and the next call runs.
    let (code, _, err) = backstop(&path, &["breakers", "reset", "flaky", "--by", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("flaky: reset by alice"), "{err}");
    let b = listed(&path);
    assert_eq!(
        (b["state"].as_str(), b["set_by"].as_str()),
        (Some("closed"), Some("alice"))
    );
    assert_eq!(call(&path, echo()), "ok");

    // Forced open: a healthy tool is refused; who did it defaults to the CLI.
    let (code, _, _) = backstop(&path, &["breakers", "force-open", "flaky"]);
    assert_eq!(code, 0);
    let b = listed(&path);
    assert_eq!(
        (b["forced"].as_str(), b["set_by"].as_str()),
        (Some("open"), Some("cli"))
    );
    assert_eq!(call(&path, echo()), "circuit-open");

    // Forced closed: failures past the trigger do not open it. A name's
    // control characters are not kept.
    let (code, _, _) = backstop(
        &path,
        &["breakers", "force-close", "flaky", "--by", "bob\u{1b}[31m"],
    );
    assert_eq!(code, 0);
    for _ in 0..3 {
        assert_eq!(call(&path, fail()), "unavailable");
    }
    let b = listed(&path);
    assert_eq!(
        (b["forced"].as_str(), b["set_by"].as_str()),
        (Some("closed"), Some("bob[31m"))
    );
    let (_, table, _) = backstop(&path, &["breakers"]);
    assert!(
        table.contains("forced-closed") && table.contains("bob[31m"),
        "{table}"
    );

    // After a reset the breaker is itself again: one failure opens it.
    backstop(&path, &["breakers", "reset", "flaky"]);
    assert_eq!(call(&path, fail()), "unavailable");
    assert_eq!(call(&path, echo()), "circuit-open");
    let b = listed(&path);
    assert!(
        b.get("set_by").is_none() && b.get("forced").is_none(),
        "{b}"
    );

    // A name that is no breaker says which are.
    let (code, _, err) = backstop(&path, &["breakers", "reset", "flakey"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no breaker `flakey`") && err.contains("(breakers: flaky)"),
        "{err}"
    );
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let res = http.post(url).json(&body).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn the_api_sets_breakers_and_a_server_takes_on_a_change_from_the_shell() {
    let dir = tempdir();
    let path = write_config(dir.path(), &config());
    let server = serve(&path, None);
    let http = crate::common::http();
    let base = server.base.clone();
    let call = |input: Value| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (code, o) = post(
                &http,
                format!("{base}/v1/calls"),
                json!({"chain": "flaky", "input": input}),
            )
            .await;
            assert_eq!(code, 200, "{o}");
            o["attempts"][0]["class"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(call(echo()).await, "ok");

    let (code, b) = post(
        &http,
        format!("{base}/v1/breakers/flaky"),
        json!({"action": "force-open", "by": "bob"}),
    )
    .await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(
        (
            b["breaker"]["forced"].as_str(),
            b["breaker"]["set_by"].as_str()
        ),
        (Some("open"), Some("bob"))
    );
    assert_eq!(call(echo()).await, "circuit-open");
    let listed: Value = http
        .get(format!("{base}/v1/breakers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["breakers"][0]["forced"], "open", "{listed}");
    // The shell sees what the server did.
    let (_, out, _) = backstop(&path, &["breakers"]);
    assert!(out.contains("forced-open") && out.contains("bob"), "{out}");

    // A reset from the shell reaches the running server.
    let (code, _, err) = backstop(&path, &["breakers", "reset", "flaky", "--by", "alice"]);
    assert_eq!(code, 0, "{err}");
    let since = Instant::now();
    loop {
        if call(echo()).await == "ok" {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the server kept the forced state"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Mistakes are the caller's.
    let (code, e) = post(
        &http,
        format!("{base}/v1/breakers/nope"),
        json!({"action": "reset"}),
    )
    .await;
    assert_eq!(code, 404, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(breakers: flaky)"),
        "{e}"
    );
    let (code, e) = post(
        &http,
        format!("{base}/v1/breakers/flaky"),
        json!({"action": "smash"}),
    )
    .await;
    assert_eq!(code, 400, "{e}");
}

/// `shared_failures`: failures counted by every process sharing the store.
/// Four separate `backstop call` processes each fail once: each alone has
/// one failure, yet the third failure anywhere opens the breaker, and the
/// fourth process finds it open. A breaker without the setting counts per
/// process and never opens this way.
fn failures_from_many_processes_open_a_shared_breaker(backend: crate::runs::Backend) {
    let dir = tempdir();
    let pg = match backend {
        crate::runs::Backend::Sqlite => None,
        crate::runs::Backend::Postgres => {
            match backstop::store::postgres::scratch::Scratch::new("breakers::shared") {
                Some(pg) => Some(pg),
                None => return,
            }
        }
    };
    let state = pg
        .as_ref()
        .map_or("sqlite:{dir}/state.db".to_owned(), |pg| pg.state());
    let path = write_config(
        dir.path(),
        &format!(
            r#"state = "{state}"
{PRELUDE}
[tools.flaky]
component = "{{plugins}}/fault.wasm"
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 0, failure_rate = 0.0, shared_failures = 3, open_for = "1h" }}

[tools.own]
component = "{{plugins}}/fault.wasm"
retry = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 2, failure_rate = 0.0, open_for = "1h" }}
"#
        ),
    );
    let class = |tool: &str| {
        let (_, out, err) = backstop(
            &path,
            &["call", tool, "--input", &fail().to_string(), "--json"],
        );
        let o: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
        o["attempts"][0]["class"].as_str().unwrap().to_owned()
    };
    let seen: Vec<String> = (0..4).map(|_| class("flaky")).collect();
    assert_eq!(
        seen,
        ["unavailable", "unavailable", "unavailable", "circuit-open"],
        "the third failure, in a third process, opened it for the fourth"
    );
    let own: Vec<String> = (0..4).map(|_| class("own")).collect();
    assert_eq!(own, ["unavailable"; 4], "per-process counts never reach 2");
    drop(pg);
}

mod failures_from_many_processes_open_a_shared_breaker {
    #[test]
    fn sqlite() {
        super::failures_from_many_processes_open_a_shared_breaker(crate::runs::Backend::Sqlite)
    }
    #[test]
    fn postgres() {
        super::failures_from_many_processes_open_a_shared_breaker(crate::runs::Backend::Postgres)
    }
}
