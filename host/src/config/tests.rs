use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join("backstop-config-unit");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("t.wasm"), b"not checked here").unwrap();
    Config::from_str(text, "test.toml", &dir)
}

const TOOL: &str = "[tools.a]\ncomponent = \"t.wasm\"\n";

#[test]
fn minimal_config_resolves_defaults() {
    let c = load(TOOL).unwrap();
    let t = &c.tools["a"];
    assert_eq!(t.timeout, Duration::from_secs(30));
    assert_eq!(t.breaker.consecutive_failures, 5);
    let r = c.retry_policy("a", "a");
    assert_eq!(r.attempts, 5);
    assert_eq!(r.backoff.base(), Duration::from_secs(1));
    assert_eq!(r.backoff.cap(), Duration::from_secs(60));
}

#[test]
fn target_overrides_chain_overrides_defaults() {
    let c = load(&format!(
        "[defaults.retry]\nattempts = 4\nbase = \"10ms\"\n{TOOL}retry = {{ attempts = 2 \
            }}\n[tools.b]\ncomponent = \"t.wasm\"\n[chains.c]\ntargets = [\"a\", \"b\"]\nretry = \
            {{ attempts = 3, base = \"20ms\" }}\n"
    ))
    .unwrap();
    assert_eq!(c.retry_policy("c", "a").attempts, 2);
    assert_eq!(
        c.retry_policy("c", "a").backoff.base(),
        Duration::from_millis(20)
    );
    assert_eq!(c.retry_policy("c", "b").attempts, 3);
    assert_eq!(c.retry_policy("b", "b").attempts, 4);
}

#[test]
fn nested_chains_flatten() {
    let c = load(&format!(
        "{TOOL}[tools.b]\ncomponent = \"t.wasm\"\n[chains.inner]\ntargets = \
            [\"b\"]\n[chains.outer]\ntargets = [\"a\", \"inner\", \"b\"]\n"
    ))
    .unwrap();
    assert_eq!(c.chains["outer"].targets, ["a", "b"]);
}

fn err(text: &str) -> ConfigError {
    load(text).expect_err("config should be rejected")
}

#[test]
fn unknown_key_has_location_and_suggestion() {
    let e = err(&format!("{TOOL}timout = \"1s\"\n"));
    assert_eq!((e.location.line, e.location.col), (3, 1), "{e}");
    assert_eq!(e.key, "tools.a.timout");
    assert!(e.message.contains("did you mean `timeout`"), "{e}");
    assert!(
        e.to_string()
            .starts_with("test.toml:3:1: tools.a.timout: unknown field `timout`"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_key() {
    let e = err(&format!("{TOOL}timeout = \"soon\"\n"));
    assert_eq!(e.key, "tools.a.timeout");
    assert_eq!(e.location.line, 3);
    assert!(e.message.contains("not a duration"), "{e}");
}

#[test]
fn unknown_target_suggests() {
    let e = err(&format!(
        "{TOOL}[chains.c]\ntargets = [\"a\", \"aa\", \"x\"]\n"
    ));
    assert!(e.key == "chains.c.targets[1]", "{e}");
    assert!(e.message.contains("did you mean `a`"), "{e}");
}

#[test]
fn cycle_is_reported() {
    let e = err(&format!(
        "{TOOL}[chains.x]\ntargets = [\"y\"]\n[chains.y]\ntargets = [\"a\", \"x\"]\n"
    ));
    assert!(e.message.contains("cycle: x -> y -> x"), "{e}");
    // The edge that closes the cycle.
    assert_eq!(
        (e.key.as_str(), e.location.line),
        ("chains.y.targets[1]", 6)
    );
}

#[test]
fn empty_chain_and_missing_component() {
    let e = err(&format!("{TOOL}[chains.x]\ntargets = []\n"));
    assert!(e.message.contains("at least one target"), "{e}");
    assert_eq!(e.key, "chains.x.targets");
    let e = err("[tools.a]\ncomponent = \"missing.wasm\"\n");
    assert_eq!(
        (e.key.as_str(), e.location.line, e.location.col),
        ("tools.a.component", 2, 13)
    );
    assert!(e.message.contains("does not exist"), "{e}");
}

#[test]
fn syntax_error_has_location() {
    let e = err("[tools.a\ncomponent = 1\n");
    assert_eq!(e.key, "(syntax)");
    assert_eq!(e.location.line, 1);
}

#[test]
fn bad_values() {
    assert!(err(&format!("{TOOL}memory = \"12 parsecs\"\n"))
        .message
        .contains("unit"));
    assert!(err(&format!("{TOOL}memory = \"8GiB\"\n"))
        .message
        .contains("outside"));
    assert!(err(&format!("{TOOL}retry = {{ attempts = 0 }}\n"))
        .message
        .contains("between 1 and 100"));
    assert!(err(&format!("{TOOL}timeout = \"0s\"\n"))
        .message
        .contains("longer than zero"));
    assert!(err(&format!("{TOOL}http = [\"ftp://x\"]\n"))
        .message
        .contains("http and https"));
    assert!(err(&format!("{TOOL}effect = \"sideeffect\"\n"))
        .message
        .contains("did you mean `side-effect`"));
    assert!(err(&format!(
        "{TOOL}retry = {{ base = \"2s\", cap = \"1s\" }}\n"
    ))
    .message
    .contains("above its cap"));
    assert!(err("version = 2\n").message.contains("unsupported version"));
    assert!(err("[tools.Bad]\ncomponent = \"t.wasm\"\n")
        .message
        .contains("lowercase"));
    assert!(err(&format!("{TOOL}[chains.a]\ntargets = [\"a\"]\n"))
        .message
        .contains("namespace"));
    assert!(err("state = \"mysql://x\"\n").message.contains("sqlite:"));
    let e = err("state = \"postgres://h/d?schema=No-Way\"\n");
    assert!(
        e.message.contains("schema `No-Way`") && e.key == "state",
        "{e:?}"
    );
}

#[test]
fn where_the_state_is_kept_is_not_part_of_the_digest_runs_compare() {
    let dir = tempfile::tempdir().unwrap();
    let with = |state: &str, extra: &str| {
        let text = format!("state = \"{state}\"\n{extra}");
        Config::from_str(&text, "t.toml", dir.path())
            .unwrap()
            .digest
    };
    let a = with("postgres://h:5432/d?schema=s", "");
    assert_eq!(a, with("postgres://h:6432/d?schema=s&pool_size=4", ""));
    assert_ne!(a, with("postgres://h:5432/d?schema=s", "seed = 1\n"));
}

#[test]
fn the_breaker_sync_interval_is_a_setting() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::from_str("", "t.toml", dir.path()).unwrap();
    assert_eq!(c.engine.breaker_sync, crate::guard::shared::SYNC_EVERY);
    let c = Config::from_str("[engine]\nbreaker_sync = \"2s\"\n", "t.toml", dir.path()).unwrap();
    assert_eq!(c.engine.breaker_sync, Duration::from_secs(2));
    let e = err("[engine]\nbreaker_sync = \"0s\"\n");
    assert!(e.key.contains("breaker_sync"), "{e:?}");
}
