//! The bad-configuration corpus: each `tests/configs/CASE.toml` must give
//! exactly the one-line error in `CASE.err` (file, line, column, key and
//! what to do), exit code 1, and no panic. A regression is two new files.

use crate::common::{plugins, root, tempdir};

#[test]
fn every_bad_config_gives_one_clear_error() {
    let corpus = root().join("tests/configs");
    let dir = tempdir();
    let work = dir.path();
    let fixtures = work.join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    for f in std::fs::read_dir(corpus.join("fixtures")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), fixtures.join(f.file_name())).unwrap();
    }
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "the corpus has only {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(case)
            .unwrap()
            .replace("{plugins}", &plugins().display().to_string());
        std::fs::write(work.join(&name), text).unwrap();
        let expected = std::fs::read_to_string(case.with_extension("err"))
            .unwrap_or_else(|_| panic!("{name} has no .err file"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .current_dir(work)
            .args(["-c", &name, "check"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1)
            || stderr.trim() != expected.trim()
            || stderr.contains("panicked")
        {
            failures.push(format!(
                "{name}: exit {:?}\n  want: {}\n  got:  {}",
                out.status.code(),
                expected.trim(),
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
