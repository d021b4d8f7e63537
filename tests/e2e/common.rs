use backstop::{Backstop, Config, Outcome};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The built plugins. The first test to ask builds them (incrementally)
/// with the same script the README uses, so tests never see stale tools.
pub fn plugins() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let script = root().join("plugins/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("run plugins/build.sh");
        assert!(
            out.status.success(),
            "plugins/build.sh failed (is the wasm32-wasip2 target installed? `rustup target add \
                wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root().join("plugins/dist")
    })
}

/// Runs the `backstop` binary (with `-c config` when given): exit code,
/// stdout, stderr. No login name reaches it, so who-did-it defaults are
/// the same everywhere.
pub fn cli(config: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    let out = cmd
        .args(args)
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A compiled-code cache shared by tests, so each component compiles once.
pub fn shared_cache() -> PathBuf {
    root().join("target/e2e-cache")
}

/// A fresh directory for one test, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    let base = root().join("target/e2e-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// Fills `{plugins}`, `{cache}` and `{dir}` in a config and writes it to
/// `dir/backstop.toml`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let text = text
        .replace("{plugins}", &plugins().display().to_string())
        .replace("{cache}", &shared_cache().display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let path = dir.join("backstop.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub async fn load(dir: &Path, text: &str) -> Backstop {
    let path = write_config(dir, text);
    let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    Backstop::from_config(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Settings most tests share: seeded jitter, fast backoff.
pub const PRELUDE: &str = r#"
version = 1
seed = 42
cache_dir = "{cache}"

[defaults.retry]
attempts = 3
base = "10ms"
cap = "100ms"

[defaults.breaker]
consecutive_failures = 3
failure_rate = 0.0
open_for = "300ms"
"#;

/// `attempts` as (target, class, then) triples, for compact assertions.
pub fn trail(o: &Outcome) -> Vec<(String, String, String)> {
    o.attempts
        .iter()
        .map(|a| {
            (
                a.target.to_string(),
                a.class.to_string(),
                a.then.to_string(),
            )
        })
        .collect()
}

pub fn t(target: &str, class: &str, then: &str) -> (String, String, String) {
    (target.into(), class.into(), then.into())
}

/// A `backstop serve` process, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(config: &Path, token: Option<&str>) -> Server {
    serve_with(config, token, &[])
}

/// `serve` with more arguments (timeouts, limits).
pub fn serve_with(config: &Path, token: Option<&str>, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
    cmd.arg("-c")
        .arg(config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("BACKSTOP_LOG", "warn")
        .env_remove(backstop::serve::TOKEN_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(t) = token {
        cmd.env(backstop::serve::TOKEN_ENV, t);
    }
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let Some(base) = first
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_owned)
    else {
        let _ = child.kill();
        panic!("serve did not print its address: {first:?}");
    };
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    Server { child, base }
}

/// Held by tests that measure this process's memory, and by tests that use
/// a lot of it for a moment: the test binary runs tests in parallel in one
/// process, so one's spike would be the other's growth.
pub static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn memory_lock() -> tokio::sync::MutexGuard<'static, ()> {
    MEMORY.lock().await
}

/// An HTTP client for talking to servers the tests start. reqwest is
/// built without a TLS provider, so one is installed first (as the
/// library does for its own clients).
pub fn http() -> reqwest::Client {
    backstop::models::install_tls_provider();
    reqwest::Client::new()
}

/// The official MCP Python SDK, in a virtualenv of its own under
/// `target/peers` (made once, from PyPI, at the version the tests were
/// written against): the peer client of the MCP tests.
pub fn python_mcp() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = root().join("target/peers/mcp-2.3.0");
        let python = venv.join("bin/python");
        let ready = |p: &Path| {
            Command::new(p)
                .args(["-c", "import mcp, httpx2"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !ready(&python) {
            let _ = std::fs::remove_dir_all(&venv);
            let run = |cmd: &mut Command, what: &str| {
                let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    out.status.success(),
                    "{what} failed (the MCP tests need python3 with venv, and PyPI):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv",
            );
            run(
                Command::new(venv.join("bin/pip")).args(["install", "-q", "mcp==2.3.0"]),
                "pip install mcp==2.3.0",
            );
        }
        python
    })
}

/// The official MCP conformance suite (npm `@modelcontextprotocol/conformance`)
/// and the Node.js 22 it needs (npm `node`), installed once under
/// `target/peers`: the path of the suite's entry point, and of `node`.
pub fn conformance_suite() -> &'static (PathBuf, PathBuf) {
    static SUITE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SUITE.get_or_init(|| {
        let dir = root().join("target/peers/conformance-0.1.16");
        let entry = dir.join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
        let node = dir.join("node_modules/.bin/node");
        if !(entry.is_file() && node.is_file()) {
            std::fs::create_dir_all(&dir).unwrap();
            let out = Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .args(["node@22.23.3", "@modelcontextprotocol/conformance@0.1.16"])
                .output()
                .unwrap_or_else(|e| panic!("npm: {e}"));
            assert!(
                out.status.success(),
                "npm install of the MCP conformance suite failed (the MCP tests need npm and \
                 its registry):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (entry, node)
    })
}
