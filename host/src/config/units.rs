//! Validated value types for the TOML: durations, sizes, names, origins.
//! Each rejects bad input while deserializing, so the error carries the
//! value's position and key, and says how to fix it.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// The longest duration any setting accepts; beyond it a value is a typo.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration written as `"250ms"`, `"2s"`, `"1m 30s"`: at most 7 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Dur).map_err(de::Error::custom)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "duration `{text}` is negative; write a length such as \"500ms\" or \"2s\""
        ));
    }
    let d = humantime::parse_duration(trimmed).map_err(|e| {
        format!(
            "`{text}` is not a duration ({e}); write a number and a unit, such as \"500ms\", \
            \"2s\" or \"1m\""
        )
    })?;
    if d > MAX_DURATION {
        return Err(format!("duration `{text}` is longer than the 7-day limit"));
    }
    Ok(d)
}

/// A duration that must be more than zero (timeouts, deadlines, open time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PositiveDur(pub Duration);

impl<'de> Deserialize<'de> for PositiveDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Dur(d0) = Dur::deserialize(d)?;
        if d0.is_zero() {
            return Err(de::Error::custom("must be longer than zero"));
        }
        Ok(PositiveDur(d0))
    }
}

/// A byte size written as `"64MiB"`, `"512 KiB"`, `"1GB"` or a bare number
/// of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const MIB: u64 = 1 << 20;
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 0 => Ok(ByteSize(n as u64)),
            Raw::Int(n) => Err(de::Error::custom(format!("size {n} is negative"))),
            Raw::Text(t) => parse_size(&t).map(ByteSize).map_err(de::Error::custom),
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let hint = "write a size such as \"64MiB\", \"512KiB\" or \"1GiB\"";
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; {hint}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{text}`; {hint}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Checks a name used as a TOML key for tools, models, chains and agents.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1-64 lowercase letters, digits, `_` or `-`, \
                starting with a letter"
        ))
    }
}

/// An origin a tool may send HTTP requests to: `scheme://host[:port]`.
/// `host` may start with `*.` to allow subdomains; `port` may be `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    /// `None` means any port.
    pub port: Option<u16>,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Origin, String> {
        let hint =
            "write an origin such as \"https://api.example.com\" or \"http://127.0.0.1:8080\"";
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` is not an origin; {hint}"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{text}`: only http and https are supported"));
        }
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!("`{text}` has a path or credentials; {hint}"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, "*")) => (h, None),
            Some((h, p)) => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("`{text}`: port `{p}` is not a number"))?,
                ),
            ),
            None => (rest, Some(if scheme == "https" { 443 } else { 80 })),
        };
        if host.is_empty()
            || (host.contains('*') && !(host.starts_with("*.") && host[2..].find('*').is_none()))
        {
            return Err(format!("`{text}`: bad host; {hint}"));
        }
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a request to `scheme://host:port` is allowed by this origin.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        };
        self.scheme.eq_ignore_ascii_case(scheme) && host_ok && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}://{}:{p}", self.scheme, self.host),
            None => write!(f, "{}://{}:*", self.scheme, self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("10").unwrap_err().contains("not a duration"));
        assert!(parse_duration("30d").unwrap_err().contains("7-day"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert!(parse_size("12 parsecs").unwrap_err().contains("unit"));
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }

    #[test]
    fn origins() {
        let o = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert!(o.allows("http", "127.0.0.1", 8080));
        assert!(!o.allows("http", "127.0.0.1", 8081));
        assert!(!o.allows("https", "127.0.0.1", 8080));
        let o = Origin::parse("https://*.example.com").unwrap();
        assert!(o.allows("https", "api.example.com", 443));
        assert!(!o.allows("https", "example.com", 443));
        assert!(!o.allows("https", "evilexample.com", 443));
        let o = Origin::parse("http://localhost:*").unwrap();
        assert!(o.allows("http", "LOCALHOST", 1));
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("https://x.com/path").is_err());
        assert!(Origin::parse("https://*evil.com").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("web_search").is_ok());
        assert!(check_name("Web").is_err());
        assert!(check_name("1x").is_err());
        assert!(check_name("").is_err());
    }
}
