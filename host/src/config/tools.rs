//! The `[tools.NAME]` section: components, grants, limits and policies.

use super::parse::{check_name, Loader};
use super::resolve::{bulkhead, merge_retry, resolve_breaker, resolve_retry};
use super::schema::DirMode;
use super::{schema, ByteSize, ConfigError, DirGrant, EnvGrant, Origin, RemoteMcp, ToolConfig};
use serde_spanned::Spanned;
use std::time::Duration;

impl Loader<'_> {
    pub(super) fn tool(
        &self,
        name: &Spanned<String>,
        spec: &schema::ToolSpec,
        defaults: &schema::Defaults,
    ) -> Result<ToolConfig, ConfigError> {
        let key = format!("tools.{}", name.get_ref());
        check_name(self, name, &key)?;
        let (component, component_at) = match (&spec.component, &spec.mcp) {
            (Some(c), None) => {
                let component = self.path(c.get_ref());
                if !component.is_file() {
                    return Err(self.err(
                        c.span().start,
                        format!("{key}.component"),
                        format!(
                            "component file {} does not exist (build the plugins first: \
                             plugins/build.sh)",
                            component.display()
                        ),
                    ));
                }
                (component, self.at(c.span().start))
            }
            (Some(c), Some(_)) => {
                return Err(self.err(
                    c.span().start,
                    key,
                    "a tool is a `component` or an `mcp` server's tool, not both",
                ))
            }
            (None, Some(m)) => (std::path::PathBuf::new(), self.at(m.span().start)),
            (None, None) => {
                return Err(self.err(
                    name.span().start,
                    key,
                    "needs `component = \"PATH.wasm\"` or `mcp = { url = \"...\" }`",
                ))
            }
        };
        let mut dirs = Vec::new();
        for (i, d) in spec.dirs.iter().enumerate() {
            let host = self.path(&d.get_ref().host);
            let k = format!("{key}.dirs[{i}]");
            if !host.is_dir() {
                return Err(self.err(
                    d.span().start,
                    k,
                    format!("directory {} does not exist", host.display()),
                ));
            }
            if !d.get_ref().guest.starts_with('/') {
                return Err(self.err(
                    d.span().start,
                    k,
                    format!(
                        "guest path `{}` must be absolute, such as \"/data\"",
                        d.get_ref().guest
                    ),
                ));
            }
            dirs.push(DirGrant {
                host,
                guest: d.get_ref().guest.clone(),
                writable: d.get_ref().mode == DirMode::ReadWrite,
            });
        }
        let mut env = Vec::new();
        for (i, e) in spec.env.iter().enumerate() {
            let (k, v) = match e.get_ref().split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (e.get_ref().clone(), None),
            };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.err(
                    e.span().start,
                    format!("{key}.env[{i}]"),
                    format!("`{k}` is not an environment variable name"),
                ));
            }
            env.push(EnvGrant { key: k, value: v });
        }
        let mut http = Vec::new();
        for (i, o) in spec.http.iter().enumerate() {
            http.push(
                Origin::parse(o.get_ref())
                    .map_err(|m| self.err(o.span().start, format!("{key}.http[{i}]"), m))?,
            );
        }
        let mcp = match &spec.mcp {
            Some(m) => Some(self.remote(name.get_ref(), m, spec, &http)?),
            None => None,
        };
        let mut retry = defaults.retry.clone();
        if let Some(r) = &spec.retry {
            merge_retry(&mut retry, r);
            resolve_retry(&retry)
                .map_err(|m| self.err(name.span().start, format!("{key}.retry"), m))?;
        }
        Ok(ToolConfig {
            name: name.get_ref().clone(),
            component,
            mcp,
            component_at,
            effect: spec.effect.as_ref().map(|e| *e.get_ref()),
            effect_at: self.at(spec
                .effect
                .as_ref()
                .map_or(name.span().start, |e| e.span().start)),
            dirs,
            env,
            http,
            timeout: spec
                .timeout
                .or(defaults.timeout)
                .map_or(Duration::from_secs(30), |d| d.0),
            memory: spec
                .memory
                .or(defaults.memory)
                .unwrap_or(ByteSize(256 << 20)),
            max_output: spec
                .max_output
                .or(defaults.max_output)
                .unwrap_or(ByteSize(1 << 20)),
            breaker: resolve_breaker(&defaults.breaker, spec.breaker.as_ref()),
            bulkhead: bulkhead(spec.max_concurrent, spec.max_queue, defaults),
            approval: spec.approval,
            validate_input: spec.validate_input.unwrap_or(true),
            retry: spec.retry.clone().unwrap_or_default(),
        })
    }
}

impl Loader<'_> {
    /// A remote MCP tool: an http(s) URL whose origin the tool's `http`
    /// list allows, and none of the keys that only a component has.
    fn remote(
        &self,
        name: &str,
        m: &Spanned<schema::McpToolSpec>,
        spec: &schema::ToolSpec,
        http: &[Origin],
    ) -> Result<RemoteMcp, ConfigError> {
        let key = format!("tools.{name}.mcp");
        let at = m.span().start;
        let r = m.get_ref();
        let url = url::Url::parse(&r.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                self.err(
                    at,
                    format!("{key}.url"),
                    format!(
                        "`{}` is not an http(s) URL, such as \"http://127.0.0.1:8080/mcp\"",
                        r.url
                    ),
                )
            })?;
        let (scheme, host) = (url.scheme(), url.host_str().unwrap_or_default());
        let port = url.port_or_known_default().unwrap_or(80);
        if !http.iter().any(|o| o.allows(scheme, host, port)) {
            let origin = format!("{scheme}://{host}:{port}");
            return Err(self.err(
                at,
                format!("{key}.url"),
                format!(
                    "the origin {origin} is not allowed: add \"{origin}\" to `http` in \
                     [tools.{name}] (a remote tool reaches only the origins it is granted)"
                ),
            ));
        }
        if let Some(v) = &r.token_env {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.err(
                    at,
                    format!("{key}.token_env"),
                    format!("`{v}` is not an environment variable name"),
                ));
            }
        }
        let only_components = [
            ("dirs", !spec.dirs.is_empty()),
            ("env", !spec.env.is_empty()),
            ("memory", spec.memory.is_some()),
        ];
        if let Some((k, _)) = only_components.iter().find(|(_, set)| *set) {
            return Err(self.err(
                at,
                format!("tools.{name}.{k}"),
                format!("`{k}` applies to components only, not to a remote MCP tool"),
            ));
        }
        Ok(RemoteMcp {
            url: r.url.clone(),
            tool: r.tool.clone().unwrap_or_else(|| name.to_owned()),
            token_env: r.token_env.clone(),
        })
    }
}
