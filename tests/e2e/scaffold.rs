//! `backstop new` and the plugins build, as a new tool author meets them:
//! a tool made from each language's template builds with `build.sh`, loads
//! and answers; the build names the rule a tool breaks and leaves no stale
//! component behind.
//!
//! Everything happens in a scratch copy of the plugins folder (its
//! toolchains linked, not installed again), never in `plugins/` itself.

use crate::common::{root, tempdir};
use backstop::FailureClass;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A plugins folder beside a `wit` link, with the real one's scripts and
/// toolchains and no tools of its own.
fn scratch_plugins(dir: &Path) -> PathBuf {
    // The toolchains linked below exist once the real plugins are built.
    crate::common::plugins();
    let real = root().join("plugins");
    let p = dir.join("plugins");
    std::os::unix::fs::symlink(root().join("wit"), dir.join("wit")).unwrap();
    for sub in ["c", "js", "python", "dist"] {
        std::fs::create_dir_all(p.join(sub)).unwrap();
    }
    for f in [
        "build.sh",
        "Cargo.lock",
        "c/build.sh",
        "c/json.h",
        "js/package.json",
    ] {
        std::fs::copy(real.join(f), p.join(f)).unwrap();
    }
    std::fs::copy(
        real.join("js/package-lock.json"),
        p.join("js/package-lock.json"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(real.join("Cargo.toml")).unwrap();
    let start = manifest.find("members = [").unwrap();
    let end = start + manifest[start..].find(']').unwrap() + 1;
    let manifest = format!("{}members = []{}", &manifest[..start], &manifest[end..]);
    std::fs::write(p.join("Cargo.toml"), manifest).unwrap();
    // Built and installed once already: shared, so nothing is fetched.
    for (link, to) in [
        ("target", "target"),
        ("python/.venv", "python/.venv"),
        ("js/node_modules", "js/node_modules"),
        ("c/wasm-helper", "c/wasm-helper"),
        ("c/vendor", "c/vendor"),
    ] {
        std::os::unix::fs::symlink(real.join(to), p.join(link)).unwrap();
    }
    p
}

fn backstop(args: &[&str]) -> (i32, String, String) {
    crate::common::cli(None, args)
}

fn build(plugins: &Path, langs: &[&str]) -> (bool, String) {
    // As the real build runs (see `common::plugins`).
    let out = Command::new("bash")
        .arg(plugins.join("build.sh"))
        .args(langs)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_new_tool_in_each_language_builds_loads_and_answers() {
    let dir = tempdir();
    let plugins = scratch_plugins(dir.path());
    let p = plugins.to_str().unwrap();
    let mut config = "version = 1\n".to_string();
    for (name, lang) in [
        ("unit-conv", "rust"),
        ("conv_py", "python"),
        ("conv_js", "js"),
        ("conv_c", "c"),
    ] {
        let (code, out, err) = backstop(&["new", name, "--lang", lang, "--plugins", p]);
        assert_eq!(code, 0, "{lang}: {err}");
        let name = name.replace('-', "_");
        let block = format!("[tools.{name}]\ncomponent = \"{p}/dist/{name}.wasm\"");
        assert!(out.contains(&block), "{lang}: {out}");
        assert!(out.contains(&format!("{p}/build.sh {lang}")), "{out}");
        config.push_str(&block);
        config.push('\n');
    }
    // Naming rules met, and the Rust tool is in the workspace.
    let manifest = std::fs::read_to_string(plugins.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("members = [\"unit_conv\"]"), "{manifest}");
    assert!(plugins.join("unit_conv/src/lib.rs").is_file());
    // A name taken in any language is refused, as is one no build accepts.
    let (code, _, err) = backstop(&["new", "conv_c", "--lang", "rust", "--plugins", p]);
    assert_eq!(code, 1);
    assert!(
        err.contains("a tool named `conv_c` exists already"),
        "{err}"
    );
    let (code, _, err) = backstop(&["new", "Conv", "--lang", "c", "--plugins", p]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot be a tool's name"), "{err}");

    let (ok, err) = build(&plugins, &[]);
    assert!(ok, "{err}");
    let config_path = dir.path().join("backstop.toml");
    std::fs::write(&config_path, &config).unwrap();
    let config = backstop::Config::from_file(&config_path).unwrap();
    let b = backstop::Backstop::from_config(config).await.unwrap();
    for name in ["unit_conv", "conv_py", "conv_js", "conv_c"] {
        let o = b.call(name, json!({"text": "hello"})).await.unwrap();
        assert!(o.ok, "{name}: {o}");
        assert_eq!(
            o.value.unwrap(),
            json!({"text": "hello", "length": 5}),
            "{name}"
        );
        let o = b.call(name, json!({"txt": "hello"})).await.unwrap();
        assert_eq!(
            o.error.map(|e| e.class),
            Some(FailureClass::InvalidInput),
            "{name}"
        );
    }
}

#[test]
fn the_build_names_the_rule_a_tool_breaks_and_keeps_no_stale_component() {
    let dir = tempdir();
    let plugins = scratch_plugins(dir.path());
    let crate_at = |folder: &str, crate_name: &str| {
        std::fs::create_dir_all(plugins.join(folder).join("src")).unwrap();
        std::fs::write(
            plugins.join(folder).join("Cargo.toml"),
            format!("[package]\nname = \"{crate_name}\"\nversion = \"0.1.0\"\n"),
        )
        .unwrap();
    };
    crate_at("wrong", "other");
    crate_at("my-tool", "my-tool");
    crate_at("loose", "loose");
    std::fs::write(plugins.join("dist/gone.wasm"), b"old").unwrap();
    std::fs::write(plugins.join("dist/loose.wasm"), b"old").unwrap();
    let (ok, err) = build(&plugins, &["rust"]);
    assert!(!ok, "{err}");
    for rule in [
        "plugins/wrong: the crate is named 'other'; a Rust tool's folder must equal its crate's \
         name",
        "plugins/my-tool: a Rust tool's name may not contain '-'",
        "plugins/loose is not a member of the plugins workspace: add \"loose\"",
        "removing dist/gone.wasm: no tool's sources make it any more",
    ] {
        assert!(err.contains(rule), "wants {rule:?} in:\n{err}");
    }
    // The failed build left no component of a tool it did not build.
    assert!(!plugins.join("dist/gone.wasm").exists());
    assert!(!plugins.join("dist/loose.wasm").exists());
}
