//! Reading the TOML text: syntax and schema errors located at
//! `FILE:LINE:COL` with the key, and suggestions for misspelt keys.

use super::{schema, units, ConfigError, Location};
use serde_spanned::Spanned;
use std::path::{Path, PathBuf};

pub(super) struct Loader<'a> {
    pub(super) text: &'a str,
    pub(super) file: PathBuf,
    pub(super) base: PathBuf,
}

impl Loader<'_> {
    pub(super) fn at(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: self.file.clone(),
            line,
            col,
        }
    }

    pub(super) fn err(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            location: self.at(offset),
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn parse(&self) -> Result<schema::File, ConfigError> {
        let de = toml::Deserializer::parse(self.text).map_err(|e| {
            self.err(
                e.span().map_or(0, |s| s.start),
                "(syntax)",
                e.message().trim(),
            )
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let message = with_suggestion(inner.message().trim());
            self.err(inner.span().map_or(0, |s| s.start), key, message)
        })
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }
}

pub(super) fn check_name(
    loader: &Loader<'_>,
    name: &Spanned<String>,
    key: &str,
) -> Result<(), ConfigError> {
    units::check_name(name.get_ref()).map_err(|m| loader.err(name.span().start, key, m))
}

/// The known word closest to `word`, if any is close enough to be a typo.
pub(super) fn closest<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::jaro_winkler(word, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Adds "did you mean" to serde's unknown-field and unknown-variant
/// messages, which list the expected names between backticks.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_owned();
    };
    let Some((word, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(word, candidates.into_iter()) {
        Some(s) => format!("{message} (did you mean `{s}`?)"),
        None => message.to_owned(),
    }
}
