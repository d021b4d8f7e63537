//! Where a store is: the `state` setting, read once and checked before
//! anything connects, so a mistake in it is named with the config's line.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The schema a PostgreSQL store uses when the URL names none.
pub const DEFAULT_SCHEMA: &str = "backstop";

/// Connections a host keeps to PostgreSQL when the URL does not say.
pub const DEFAULT_POOL: usize = 16;

/// How long a host's hold on a run lasts unless renewed, when the URL
/// does not say (`lease=10s`).
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `sqlite:PATH`, resolved against the config's directory.
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(PgLocation),
}

impl Location {
    /// Reads a `state` value (a path is resolved by the caller); the error
    /// says what is wrong, for the caller to prefix with where.
    pub fn parse(text: &str, resolve: impl FnOnce(&str) -> PathBuf) -> Result<Location, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("`sqlite:` names no file".into());
            }
            return Ok(Location::Sqlite(resolve(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return PgLocation::from_str(text).map(Location::Postgres);
        }
        Err(
            "expected `sqlite:PATH` (such as \"sqlite:.backstop/state.db\") or a PostgreSQL URL \
            (such as \"postgres://backstop@db.internal/backstop\")"
                .into(),
        )
    }
}

impl fmt::Display for Location {
    /// Never shows a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(pg) => write!(f, "{pg}"),
        }
    }
}

/// A PostgreSQL store: the server's URL (as libpq reads it) and the schema
/// holding Backstop's tables. Three keys of the query are Backstop's, not
/// libpq's: `schema` (default `backstop`), `pool_size` (default 16) and
/// `lease` (how long a host's hold on a run lasts unless renewed, default
/// 10s; renewed every third of it while the run goes on).
#[derive(Clone, PartialEq, Eq)]
pub struct PgLocation {
    /// The URL without Backstop's own keys.
    url: String,
    pub schema: String,
    pub pool_size: usize,
    pub lease: std::time::Duration,
}

impl PgLocation {
    /// The server's connection settings.
    pub fn config(&self) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(&self.url).expect("checked when parsed")
    }

    /// The same server with another schema: tests make one each.
    pub fn with_schema(&self, schema: &str) -> Result<PgLocation, String> {
        check_schema(schema)?;
        Ok(PgLocation {
            schema: schema.to_owned(),
            ..self.clone()
        })
    }

    /// The setting as written, with Backstop's keys and the password.
    pub fn url(&self) -> String {
        let mut u = url::Url::parse(&self.url).expect("checked when parsed");
        u.query_pairs_mut()
            .append_pair("schema", &self.schema)
            .append_pair("pool_size", &self.pool_size.to_string())
            .append_pair("lease", &humantime::format_duration(self.lease).to_string());
        u.to_string()
    }
}

fn check_schema(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "schema `{}` is not a plain PostgreSQL name (lowercase letters, digits and `_`, \
            starting with a letter or `_`, at most 63)",
            crate::term::visible(s)
        ))
    }
}

impl FromStr for PgLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<PgLocation, String> {
        let mut u = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
        let (mut schema, mut pool_size) = (DEFAULT_SCHEMA.to_owned(), DEFAULT_POOL);
        let mut lease = DEFAULT_LEASE;
        let mut rest = Vec::new();
        for (k, v) in u.query_pairs() {
            match &*k {
                "schema" => schema = v.into_owned(),
                "pool_size" => {
                    pool_size = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| format!("pool_size `{v}` is not a number from 1 to 1024"))?
                }
                "lease" => {
                    lease = humantime::parse_duration(&v)
                        .ok()
                        .filter(|d| *d >= std::time::Duration::from_millis(300))
                        .ok_or_else(|| {
                            format!("lease `{v}` is not a duration of at least 300ms (such as 10s)")
                        })?
                }
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        check_schema(&schema)?;
        if rest.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(rest);
        }
        let url = u.to_string();
        tokio_postgres::Config::from_str(&url).map_err(|e| {
            let shown = PgLocation {
                url: url.clone(),
                schema: schema.clone(),
                pool_size,
                lease,
            };
            format!("{shown}: {e}")
        })?;
        Ok(PgLocation {
            url,
            schema,
            pool_size,
            lease,
        })
    }
}

impl fmt::Display for PgLocation {
    /// The URL with the password (in the user part or the query) hidden,
    /// and the schema: what every message about the store shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut u = match url::Url::parse(&self.url) {
            Ok(u) => u,
            Err(_) => return f.write_str("postgres://(unreadable)"),
        };
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        if !pairs.is_empty() {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        write!(f, "{u} (schema {})", self.schema)
    }
}

impl fmt::Debug for PgLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgLocation({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_keeps_its_schema_and_hides_its_password() {
        let l: PgLocation = "postgres://bob:s3cret@db:5433/prod?schema=bs_1&sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(l.schema, "bs_1");
        assert_eq!(l.pool_size, DEFAULT_POOL);
        let shown = l.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("bob:***@db:5433/prod?sslmode=disable"),
            "{shown}"
        );
        let c = l.config();
        assert_eq!(c.get_dbname(), Some("prod"));
        let q: PgLocation = "postgresql://h/d?password=pw&pool_size=4".parse().unwrap();
        assert!(!q.to_string().contains("pw&"), "{q}");
        assert_eq!((q.pool_size, q.schema.as_str()), (4, DEFAULT_SCHEMA));
    }

    #[test]
    fn a_bad_setting_says_what_is_wrong() {
        let e = Location::parse("mysql://x", |p| PathBuf::from(p)).unwrap_err();
        assert!(e.contains("expected `sqlite:PATH`"), "{e}");
        let e = PgLocation::from_str("postgres://h/d?schema=Robert;DROP").unwrap_err();
        assert!(e.contains("not a plain PostgreSQL name"), "{e}");
        let e = PgLocation::from_str("postgres://h/d?pool_size=0").unwrap_err();
        assert!(e.contains("pool_size `0`"), "{e}");
        let e = PgLocation::from_str("postgres://h/d?lease=1ms").unwrap_err();
        assert!(e.contains("lease `1ms`"), "{e}");
        let l = PgLocation::from_str("postgres://h/d?lease=2s").unwrap();
        assert_eq!(l.lease, std::time::Duration::from_secs(2));
        assert_eq!(l.url().parse::<PgLocation>().unwrap(), l);
        let e = PgLocation::from_str("postgres://h/d?nonsense=1").unwrap_err();
        assert!(e.contains("nonsense"), "{e}");
        assert!(matches!(
            Location::parse("sqlite:a.db", |p| PathBuf::from(p)),
            Ok(Location::Sqlite(_))
        ));
    }
}
