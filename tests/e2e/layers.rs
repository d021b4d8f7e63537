//! The crate's shape, checked from its source: imports go one way (no
//! module imports one that imports it back, at any level of the module
//! tree) and no line is longer than rustfmt's 100 columns.
//!
//! The scan reads `crate::`, `super::` and `self::` paths (with `use`
//! groups expanded), follows `use` re-exports to the module that defines a
//! name, and leaves `#[cfg(test)]` modules out: a test may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Semi,
    Hash,
    Other,
}

/// Tokens with their line, comments, strings and char literals dropped.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let b = text.as_bytes();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push((Tok::Ident("r".into()), line));
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if b[j] == b'\n' {
                        line += 1;
                    }
                    if b[j] == b'"' && b[j + 1..].iter().take(hashes).all(|&h| h == b'#') {
                        break;
                    }
                    j += 1;
                }
                i = j + 1 + hashes;
                out.push((Tok::Other, line));
            }
            b'"' => {
                i += 1;
                while b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += 1;
                out.push((Tok::Other, line));
            }
            // A char literal ('x', '\n', '\u{..}'); anything else is a
            // lifetime.
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
            b'\'' if b.get(i + 1).is_some_and(|&n| n >= 0x80) => {
                i += 1;
                while b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push((Tok::Path, line));
                i += 2;
            }
            b'{' => {
                out.push((Tok::Open, line));
                i += 1;
            }
            b'}' => {
                out.push((Tok::Close, line));
                i += 1;
            }
            b',' => {
                out.push((Tok::Comma, line));
                i += 1;
            }
            b';' => {
                out.push((Tok::Semi, line));
                i += 1;
            }
            b'#' => {
                out.push((Tok::Hash, line));
                i += 1;
            }
            c if is_ident(c) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                out.push((Tok::Ident(text[start..i].to_owned()), line));
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                out.push((Tok::Other, line));
                i += 1;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A module path from the crate root, `[]` being the root.
type ModPath = Vec<String>;

#[derive(Default)]
struct Crate {
    modules: BTreeSet<ModPath>,
    /// `use` items: (module, name) -> the path it names.
    uses: BTreeMap<(ModPath, String), ModPath>,
    /// Every path a module mentions, absolute, with where.
    refs: Vec<(ModPath, ModPath, String)>,
    /// Modules compiled only for tests.
    test_modules: BTreeSet<ModPath>,
}

fn module_of(file: &Path) -> ModPath {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn absolute(here: &ModPath, path: &[String]) -> Option<ModPath> {
    let mut base = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" | "super" => here.clone(),
        _ => return None,
    };
    let mut rest = &path[usize::from(path[0] == "crate")..];
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

impl Crate {
    fn scan(&mut self, file: &Path, text: &str) {
        let toks = tokens(text);
        let location = |line: usize| format!("{}:{line}", file.display());
        let mut stack: Vec<(ModPath, usize)> = vec![(module_of(file), 0)];
        self.modules.insert(stack[0].0.clone());
        let (mut depth, mut i) = (0usize, 0);
        while i < toks.len() {
            let here = stack.last().unwrap().0.clone();
            match &toks[i].0 {
                Tok::Hash if is_cfg_test(&toks[i..]) => {
                    // `#[cfg(test)] mod tests;` leaves out a whole file.
                    if let [(Tok::Ident(m), _), (Tok::Ident(name), _), (Tok::Semi, _)] =
                        toks.get(i + 6..i + 9).unwrap_or_default()
                    {
                        if m == "mod" {
                            let mut inner = here.clone();
                            inner.push(name.clone());
                            self.test_modules.insert(inner);
                        }
                    }
                    i = skip_item(&toks, i);
                    continue;
                }
                Tok::Open => depth += 1,
                Tok::Close => {
                    depth -= 1;
                    if stack.len() > 1 && stack.last().unwrap().1 == depth {
                        stack.pop();
                    }
                }
                Tok::Ident(w) if w == "mod" => {
                    if let (Some((Tok::Ident(name), _)), Some((Tok::Open, _))) =
                        (toks.get(i + 1), toks.get(i + 2))
                    {
                        let mut inner = here.clone();
                        inner.push(name.clone());
                        self.modules.insert(inner.clone());
                        stack.push((inner, depth));
                        depth += 1;
                        i += 3;
                        continue;
                    }
                }
                Tok::Ident(w) if w == "use" => {
                    let line = toks[i].1;
                    let end = (i..toks.len()).find(|&j| toks[j].0 == Tok::Semi).unwrap();
                    let mut items = Vec::new();
                    expand(&toks[i + 1..end], &[], &mut items);
                    for (path, alias) in items {
                        let Some(abs) = absolute(&here, &path).or_else(|| {
                            // `use child::Item` names a child module of this one.
                            let mut p = here.clone();
                            p.extend(path.iter().cloned());
                            self.modules.contains(&p[..here.len() + 1]).then_some(p)
                        }) else {
                            continue;
                        };
                        self.uses.insert((here.clone(), alias), abs.clone());
                        self.refs.push((here.clone(), abs, location(line)));
                    }
                    i = end + 1;
                    continue;
                }
                Tok::Ident(w) if matches!(w.as_str(), "crate" | "super" | "self") => {
                    let mut path = vec![w.clone()];
                    let mut j = i + 1;
                    while let (Some((Tok::Path, _)), Some((Tok::Ident(n), _))) =
                        (toks.get(j), toks.get(j + 1))
                    {
                        path.push(n.clone());
                        j += 2;
                    }
                    if let Some(abs) = absolute(&here, &path) {
                        self.refs.push((here, abs, location(toks[i].1)));
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// The module that defines what `path` names: the longest module
    /// prefix, following `use` items to where they point.
    fn resolve(&self, path: &ModPath) -> ModPath {
        let mut path = path.clone();
        for _ in 0..16 {
            let k = (0..=path.len())
                .rev()
                .find(|&k| self.modules.contains(&path[..k]))
                .unwrap_or(0);
            let module = path[..k].to_vec();
            match path
                .get(k)
                .and_then(|name| self.uses.get(&(module.clone(), name.clone())))
            {
                Some(target) if target != &path[..=k] => {
                    let mut next = target.clone();
                    next.extend(path[k + 1..].iter().cloned());
                    path = next;
                }
                _ => return module,
            }
        }
        path
    }
}

fn is_cfg_test(toks: &[(Tok, usize)]) -> bool {
    let words: Vec<_> = toks.iter().take(6).map(|t| &t.0).collect();
    matches!(
        &words[..],
        [Tok::Hash, Tok::Other, Tok::Ident(cfg), Tok::Other, Tok::Ident(test), Tok::Other]
            if cfg == "cfg" && test == "test"
    )
}

/// Past the item that follows an attribute at `i`: to its `;` or its
/// closing brace.
fn skip_item(toks: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0;
    while i < toks.len() {
        match toks[i].0 {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            Tok::Semi if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Expands a `use` tree into (path, name it binds).
/// A `use` item: the path it names and the name it binds.
type UseItem = (Vec<String>, String);

fn expand(toks: &[(Tok, usize)], prefix: &[String], out: &mut Vec<UseItem>) {
    let mut i = 0;
    let mut path = prefix.to_vec();
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Ident(w) if w == "as" => {
                if let Some((Tok::Ident(alias), _)) = toks.get(i + 1) {
                    out.push((path.clone(), alias.clone()));
                    path = prefix.to_vec();
                }
                i += 2;
                continue;
            }
            Tok::Ident(w) => path.push(w.clone()),
            Tok::Open => {
                let mut depth = 1;
                let mut j = i + 1;
                while depth > 0 {
                    match toks[j].0 {
                        Tok::Open => depth += 1,
                        Tok::Close => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let inner = path.clone();
                for part in split_commas(&toks[i + 1..j - 1]) {
                    expand(part, &inner, out);
                }
                path = prefix.to_vec();
                i = j;
                continue;
            }
            Tok::Comma => {
                finish(&mut path, prefix, out);
            }
            _ => {}
        }
        i += 1;
    }
    finish(&mut path, prefix, out);
}

fn finish(path: &mut Vec<String>, prefix: &[String], out: &mut Vec<UseItem>) {
    if path.len() > prefix.len() {
        let last = path.last().unwrap().clone();
        if last == "self" {
            path.pop();
            let name = path.last().cloned().unwrap_or_default();
            out.push((path.clone(), name));
        } else if last != "*" {
            out.push((path.clone(), last));
        }
    }
    *path = prefix.to_vec();
}

fn split_commas(toks: &[(Tok, usize)]) -> Vec<&[(Tok, usize)]> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, t) in toks.iter().enumerate() {
        match t.0 {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Comma if depth == 0 => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

fn load() -> Crate {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut krate = Crate::default();
    // Module names first, so `use child::X` resolves in any file order.
    for f in &files {
        if !f.starts_with(src().join("bin")) {
            krate.modules.insert(module_of(f));
        }
    }
    for f in &files {
        if !f.starts_with(src().join("bin")) {
            krate.scan(f, &std::fs::read_to_string(f).unwrap());
        }
    }
    krate
}

/// For every module, the edges between its children: child A -> child B
/// when something in A's subtree names something in B's.
fn sibling_edges(krate: &Crate) -> BTreeMap<ModPath, BTreeMap<(String, String), String>> {
    let mut levels: BTreeMap<ModPath, BTreeMap<(String, String), String>> = BTreeMap::new();
    for (from, path, at) in &krate.refs {
        if krate.test_modules.iter().any(|t| from.starts_with(t)) {
            continue;
        }
        let to = krate.resolve(path);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common < from.len() && common < to.len() {
            levels
                .entry(from[..common].to_vec())
                .or_default()
                .entry((from[common].clone(), to[common].clone()))
                .or_insert_with(|| at.clone());
        }
    }
    levels
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let krate = load();
    assert!(
        krate.modules.len() > 30,
        "the scan found the crate's modules"
    );
    let mut cycles = Vec::new();
    for (parent, edges) in sibling_edges(&krate) {
        let graph: BTreeMap<&str, Vec<&str>> =
            edges.keys().fold(BTreeMap::new(), |mut g, (a, b)| {
                g.entry(a.as_str())
                    .or_insert_with(Vec::new)
                    .push(b.as_str());
                g
            });
        for start in graph.keys() {
            // Depth-first from each node, looking for a way back to it.
            let mut stack = vec![(*start, vec![*start])];
            let mut seen = BTreeSet::new();
            while let Some((node, trail)) = stack.pop() {
                for next in graph.get(node).into_iter().flatten() {
                    if next == start {
                        // Each cycle once, from its smallest module.
                        if trail.iter().any(|t| t < start) {
                            continue;
                        }
                        let mut ring = trail.clone();
                        ring.push(start);
                        let hops: Vec<String> = ring
                            .windows(2)
                            .map(|w| {
                                let at = &edges[&(w[0].to_owned(), w[1].to_owned())];
                                format!("{} -> {} ({at})", w[0], w[1])
                            })
                            .collect();
                        let level = format!("crate::{}", parent.join("::"));
                        cycles.push(format!("in {level}: {}", hops.join(", ")));
                    } else if seen.insert(*next) {
                        let mut t = trail.clone();
                        t.push(next);
                        stack.push((next, t));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The checker itself finds a cycle it is shown, follows re-exports, and
/// ignores test modules.
#[test]
fn the_cycle_check_sees_cycles() {
    let mut krate = Crate::default();
    for m in [
        vec![],
        vec!["a".to_owned()],
        vec!["b".to_owned()],
        vec!["c".to_owned()],
    ] {
        krate.modules.insert(m);
    }
    let root = src();
    krate.scan(&root.join("lib.rs"), "mod a; mod b; pub use b::Thing;");
    krate.scan(
        &root.join("a.rs"),
        "use crate::Thing;\n#[cfg(test)]\nmod tests { use crate::c::X; }",
    );
    krate.scan(
        &root.join("b.rs"),
        "pub struct Thing; fn f() { crate::a::g(); let c = '{'; }",
    );
    krate.scan(&root.join("c.rs"), "use crate::{a::{self, g as h}, b};");
    let edges = sibling_edges(&krate);
    let top: BTreeSet<_> = edges[&vec![]].keys().cloned().collect();
    let want: BTreeSet<_> = [("a", "b"), ("b", "a"), ("c", "a"), ("c", "b")]
        .into_iter()
        .map(|(x, y)| (x.to_owned(), y.to_owned()))
        .collect();
    assert_eq!(top, want);
}

#[test]
fn no_line_is_longer_than_rustfmt_allows() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let root = src().join("..").join("..");
    for dir in ["tests", "host/benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut long = Vec::new();
    for f in &files {
        for (n, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            if line.chars().count() > 100 {
                long.push(format!("{}:{}", f.display(), n + 1));
            }
        }
    }
    assert!(
        long.is_empty(),
        "lines past 100 columns:\n{}",
        long.join("\n")
    );
}

/// An app embedding the library with `default-features = false` compiles
/// neither the command line's dependencies nor the test kit's.
#[test]
fn the_library_alone_leaves_the_cli_dependencies_out() {
    let tree = |features: &[&str]| {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "-p",
                "backstop",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--offline",
            ])
            .args(features)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let names = |tree: &str| -> BTreeSet<String> {
        tree.lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let alone = names(&tree(&["--no-default-features"]));
    let full = names(&tree(&[]));
    for cli_only in ["clap", "tracing-subscriber"] {
        assert!(full.contains(cli_only), "the binary uses {cli_only}");
        assert!(
            !alone.contains(cli_only),
            "the library alone pulls in {cli_only}"
        );
    }
    assert!(alone.contains("wasmtime"), "the tree was read: {alone:?}");
}
