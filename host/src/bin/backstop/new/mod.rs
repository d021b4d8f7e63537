//! `backstop new NAME --lang L`: a tool from its language's template, with
//! the naming rules met, registered in the plugins build, and the TOML block
//! that declares it printed.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    fn build_arg(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }
}

const RUST_LIB: &str = include_str!("rust_lib.rs");
const RUST_CARGO: &str = include_str!("rust_Cargo.toml");
const PYTHON_APP: &str = include_str!("python_app.py");
const JS_TOOL: &str = include_str!("js_tool.js");
const C_TOOL: &str = include_str!("c_tool.c");

/// The name every language's build accepts: a Rust crate's folder must
/// equal its crate's name and the component is named after it, and cargo
/// writes `my-tool` as `my_tool.wasm`; so lowercase letters, digits and
/// `_`, starting with a letter. A `-` becomes `_` (said so).
pub fn tool_name(given: &str) -> anyhow::Result<String> {
    let name = given.replace('-', "_");
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!(
            "`{}` cannot be a tool's name: use lowercase letters, digits and `_` (or `-`), \
             starting with a letter, at most 64 characters",
            backstop::term::visible(given)
        );
    }
    Ok(name)
}

/// Where each language keeps a tool's sources.
fn sources(plugins: &Path, name: &str) -> [(Lang, PathBuf); 4] {
    [
        (Lang::Rust, plugins.join(name)),
        (Lang::Python, plugins.join("python").join(name)),
        (Lang::Js, plugins.join("js").join(format!("{name}.js"))),
        (Lang::C, plugins.join("c").join(format!("{name}.c"))),
    ]
}

/// Adds `name` to `members = [...]` of the plugins workspace's manifest,
/// keeping the file's layout; `None` when the list is not found.
fn add_member(manifest: &str, name: &str) -> Option<String> {
    let key = manifest.find("members")?;
    let open = key + manifest[key..].find('[')?;
    let close = open + manifest[open..].find(']')?;
    let inside = manifest[open + 1..close].trim_end();
    let sep = if inside.trim().is_empty() {
        ""
    } else if inside.ends_with(',') {
        " "
    } else {
        ", "
    };
    let at = open + 1 + inside.len();
    Some(format!(
        "{}{sep}\"{name}\"{}",
        &manifest[..at],
        &manifest[at..]
    ))
}

pub fn run(given: &str, lang: Lang, plugins: &Path) -> anyhow::Result<()> {
    let name = tool_name(given)?;
    let manifest_path = plugins.join("Cargo.toml");
    if !plugins.join("build.sh").is_file() || !manifest_path.is_file() {
        bail!(
            "{} is not a Backstop plugins folder (no build.sh and Cargo.toml there); pass \
             --plugins DIR",
            plugins.display()
        );
    }
    for (_, path) in sources(plugins, &name) {
        if path.exists() {
            bail!(
                "a tool named `{name}` exists already: {} (components are named after their \
                 tool, in every language, so names must differ)",
                path.display()
            );
        }
    }
    let fill = |template: &str| template.replace("__NAME__", &name);
    let mut created = Vec::new();
    let mut write = |path: PathBuf, text: String| -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        created.push(path);
        Ok(())
    };
    match lang {
        Lang::Rust => {
            let manifest = std::fs::read_to_string(&manifest_path)
                .with_context(|| format!("reading {}", manifest_path.display()))?;
            let Some(updated) = add_member(&manifest, &name) else {
                bail!(
                    "{} has no `members = [...]` list to add `{name}` to",
                    manifest_path.display()
                );
            };
            let dir = plugins.join(&name);
            write(dir.join("Cargo.toml"), fill(RUST_CARGO))?;
            write(dir.join("src/lib.rs"), fill(RUST_LIB))?;
            std::fs::write(&manifest_path, updated)
                .with_context(|| format!("writing {}", manifest_path.display()))?;
            println!(
                "added `{name}` to the members of {}",
                manifest_path.display()
            );
        }
        Lang::Python => write(
            plugins.join("python").join(&name).join("app.py"),
            fill(PYTHON_APP),
        )?,
        Lang::Js => write(plugins.join("js").join(format!("{name}.js")), fill(JS_TOOL))?,
        Lang::C => write(plugins.join("c").join(format!("{name}.c")), fill(C_TOOL))?,
    }
    if name != given {
        println!("named `{name}`: `-` becomes `_`, as cargo names the component");
    }
    for path in &created {
        println!("created {}", path.display());
    }
    let build = plugins.join("build.sh");
    let component = plugins.join("dist").join(format!("{name}.wasm"));
    println!(
        "\nbuild it:\n  {} {}\n\ndeclare it in your backstop.toml (paths are relative to \
         that file):\n\n[tools.{name}]\ncomponent = \"{}\"\ntimeout = \"5s\"\n\
         # dirs = [{{ host = \"data\", guest = \"/data\", mode = \"ro\" }}]\n\
         # http = [\"https://api.example.com\"]\n\nthen try it:\n  \
         backstop call {name} --input '{{\"text\": \"hello\"}}'",
        build.display(),
        lang.build_arg(),
        component.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_meet_every_build_rule() {
        assert_eq!(tool_name("unit-converter").unwrap(), "unit_converter");
        assert_eq!(tool_name("calc2").unwrap(), "calc2");
        for bad in ["", "2calc", "Calc", "my tool", "a/b", "é", &"x".repeat(65)] {
            assert!(tool_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_member_is_added_whatever_the_list_looks_like() {
        assert_eq!(
            add_member("members = [\"a\", \"b\"]\n", "c").unwrap(),
            "members = [\"a\", \"b\", \"c\"]\n"
        );
        assert_eq!(
            add_member("members = []\n", "c").unwrap(),
            "members = [\"c\"]\n"
        );
        assert_eq!(
            add_member("members = [\n  \"a\",\n]\n", "c").unwrap(),
            "members = [\n  \"a\", \"c\"\n]\n"
        );
        assert_eq!(add_member("[workspace]\n", "c"), None);
    }
}
