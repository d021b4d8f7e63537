//! Loading tools: the compiled-code cache, and components that are wrong.

use crate::common::{tempdir, write_config};
use backstop::runtime::CompileSource;
use backstop::{Backstop, Config, Effect, Error};

async fn try_load(dir: &std::path::Path, text: &str) -> Result<Backstop, Error> {
    let path = write_config(dir, text);
    Backstop::from_config(Config::from_file(path)?).await
}

#[tokio::test]
async fn compiled_code_is_cached_across_starts() {
    let dir = tempdir();
    let text =
        "cache_dir = \"{dir}/cache\"\n[tools.corpus]\ncomponent = \"{plugins}/corpus.wasm\"\n";
    let first = try_load(dir.path(), text).await.unwrap();
    assert_eq!(
        first.tool("corpus").unwrap().compile_source(),
        CompileSource::Compiled
    );
    drop(first);
    let second = try_load(dir.path(), text).await.unwrap();
    let tool = second.tool("corpus").unwrap();
    assert_eq!(tool.compile_source(), CompileSource::Cache);
    assert_eq!(tool.description().name, "corpus");
    assert_eq!(tool.effect(), Effect::ReadOnly);
    assert_eq!(tool.digest().len(), 64);
    // A damaged cache entry is ignored and rewritten, not trusted.
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    drop(second);
    let third = try_load(dir.path(), text).await.unwrap();
    assert_eq!(
        third.tool("corpus").unwrap().compile_source(),
        CompileSource::Compiled
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_named_with_its_location() {
    let dir = tempdir();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"definitely not wasm").unwrap();
    let e = try_load(
        dir.path(),
        "# tools\n[tools.core]\ncomponent = \"core.wasm\"\n",
    )
    .await
    .err()
    .unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("backstop.toml:3:13: tools.core.component:"),
        "{msg}"
    );
    assert!(msg.contains("core wasm module, not a component"), "{msg}");
    let e = try_load(dir.path(), "[tools.junk]\ncomponent = \"junk.wasm\"\n")
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("junk.wasm is not a WebAssembly component (a wasm binary starts with"),
        "{e}"
    );
}

#[tokio::test]
async fn a_component_of_another_world_is_rejected() {
    let dir = tempdir();
    // A valid component (text format) that exports nothing.
    std::fs::write(dir.path().join("empty.wasm"), "(component)").unwrap();
    let e = try_load(dir.path(), "[tools.empty]\ncomponent = \"empty.wasm\"\n")
        .await
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("tools.empty.component"), "{msg}");
    assert!(
        msg.contains("does not implement world `backstop:tool/tool`"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_config_may_tighten_but_not_loosen_a_tools_effect() {
    let dir = tempdir();
    let ok = "[tools.f]\ncomponent = \"{plugins}/fault.wasm\"\neffect = \"irreversible\"\n";
    let b = try_load(dir.path(), ok).await.unwrap();
    assert_eq!(b.tool("f").unwrap().effect(), Effect::Irreversible);
    assert_eq!(b.tool("f").unwrap().description().effect, Effect::ReadOnly);

    let loose = "[tools.f]\ncomponent = \"{plugins}/fault.wasm\"\nenv = \
        [\"FAULT_EFFECT=side-effect\"]\neffect = \"read-only\"\n";
    let e = try_load(dir.path(), loose).await.err().unwrap().to_string();
    assert!(e.contains("backstop.toml:4:10: tools.f.effect:"), "{e}");
    assert!(
        e.contains(
            "describes itself as side-effect; the config may only declare a stricter \
        effect, not read-only"
        ),
        "{e}"
    );
}
