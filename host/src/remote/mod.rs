//! Tools another MCP server serves, as chain targets: `[tools.NAME] mcp =
//! { url, tool, token_env }`. Spoken to over streamable HTTP in the
//! newest revision the server announces (2026-07-28 by `server/discover`,
//! else the 2025-11-25 handshake), through the official SDK's client.
//!
//! A remote tool is a target like a component: the guards retry, break,
//! bound and fall back around it; it never retries itself. Its effect
//! comes from its MCP annotations (read-only, idempotent, destructive;
//! MCP's defaults when absent: destructive), made stricter by the TOML,
//! never looser. Until the server has described the tool (it was down at
//! start), the effect is the TOML's, or irreversible when the TOML says
//! none: nothing is repeated or run unapproved on a guess. Input is
//! checked against the tool's input schema before it is sent; structured
//! output against its output schema when it declares one. How each way a
//! call can fail is classified: see [`classify`].

pub mod classify;

use crate::config::{RemoteMcp, ToolConfig};
use crate::outcome::{Effect, Failure, FailureClass};
use crate::runtime::ToolDescription;
use crate::target::{CallCtx, CallFuture, CallTarget, TargetOutput};
use rmcp::model::{CallToolRequestParams, ProtocolVersion, Tool, ToolAnnotations};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use serde_json::Value;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

type Client = RunningService<RoleClient, ()>;

/// Longest the description may take at load: a slow server must not hold
/// up the host's start (its calls fail, and fall back, on their own).
const DESCRIBE_AT_LOAD: Duration = Duration::from_secs(5);

/// What the server said of the tool, checked.
struct Described {
    description: ToolDescription,
    input: Option<jsonschema::Validator>,
    output: Option<jsonschema::Validator>,
}

pub struct RemoteTool {
    config: ToolConfig,
    remote: RemoteMcp,
    http: reqwest::Client,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    described: OnceLock<Described>,
    effect: AtomicU8,
}

fn effect_code(e: Effect) -> u8 {
    e as u8
}

fn effect_of(code: u8) -> Effect {
    match code {
        0 => Effect::ReadOnly,
        1 => Effect::Idempotent,
        2 => Effect::SideEffect,
        _ => Effect::Irreversible,
    }
}

/// The effect MCP's annotations claim (with MCP's defaults for hints
/// left out: not read-only, destructive, not idempotent).
pub fn annotated_effect(a: Option<&ToolAnnotations>) -> Effect {
    let read_only = a.and_then(|a| a.read_only_hint).unwrap_or(false);
    let destructive = a.and_then(|a| a.destructive_hint).unwrap_or(true);
    let idempotent = a.and_then(|a| a.idempotent_hint).unwrap_or(false);
    if read_only {
        Effect::ReadOnly
    } else if destructive {
        Effect::Irreversible
    } else if idempotent {
        Effect::Idempotent
    } else {
        Effect::SideEffect
    }
}

impl RemoteTool {
    /// Makes the target and asks the server for the tool's description
    /// (within a few seconds). A server that answers without the tool is
    /// a load error; one that does not answer leaves the tool described
    /// later, on its first call that reaches it.
    pub async fn load(config: &ToolConfig, http: reqwest::Client) -> Result<RemoteTool, String> {
        let remote = config.mcp.clone().expect("a remote tool's config");
        let unknown = config.effect.unwrap_or(Effect::Irreversible);
        let tool = RemoteTool {
            config: config.clone(),
            remote,
            http,
            client: tokio::sync::Mutex::new(None),
            described: OnceLock::new(),
            effect: AtomicU8::new(effect_code(unknown)),
        };
        let timeout = DESCRIBE_AT_LOAD.min(config.timeout);
        match tokio::time::timeout(timeout, tool.describe()).await {
            Ok(Ok(())) => {}
            Ok(Err(f)) if f.class == FailureClass::Permanent => return Err(f.message.into()),
            Ok(Err(f)) => tracing::warn!(
                "tools.{}: {} did not describe `{}` ({}); it is treated as {} until it does",
                config.name,
                tool.remote.url,
                tool.remote.tool,
                f.message,
                unknown
            ),
            Err(_) => tracing::warn!(
                "tools.{}: {} did not answer within {}; `{}` is treated as {} until it does",
                config.name,
                tool.remote.url,
                humantime::format_duration(timeout),
                tool.remote.tool,
                unknown
            ),
        }
        Ok(tool)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ToolConfig {
        &self.config
    }

    pub fn remote(&self) -> &RemoteMcp {
        &self.remote
    }

    /// What the server said of the tool, once it has.
    pub fn description(&self) -> Option<&ToolDescription> {
        self.described.get().map(|d| &d.description)
    }

    async fn connect(&self) -> Result<Arc<Client>, Failure> {
        let mut held = self.client.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.remote.url.as_str());
        if let Some(var) = &self.remote.token_env {
            match std::env::var(var) {
                Ok(token) if !token.is_empty() => config.auth_header = Some(token),
                _ => {
                    return Err(Failure::new(
                        FailureClass::Permanent,
                        format!(
                            "{var} (the bearer token for {}) is not set",
                            self.remote.url
                        ),
                    ))
                }
            }
        }
        // The server's answers are capped as a component's output is.
        let cap = (self.config.max_output.0 as usize).saturating_mul(2) + (64 << 10);
        config.max_json_response_size = cap;
        config.max_sse_event_size = cap;
        let transport =
            StreamableHttpClientTransport::with_client(self.http.clone(), config.clone());
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let client = match ().serve_with_lifecycle(transport, lifecycle).await {
            Ok(c) => c,
            // A server that answers `server/discover` with only
            // handshake-era revisions is spoken to with `initialize`.
            Err(rmcp::service::ClientInitializeError::NoCompatibleProtocolVersion { .. }) => {
                let transport =
                    StreamableHttpClientTransport::with_client(self.http.clone(), config);
                ().serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
                    .await
                    .map_err(|e| classify::startup(&e))?
            }
            Err(e) => return Err(classify::startup(&e)),
        };
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }

    /// Forgets the connection after a transport failure: the next call
    /// makes a new one (a restarted server, an expired session).
    fn reset(&self) {
        // Never waits: a connect in progress holds the lock and is
        // bounded by its own call's timeout.
        if let Ok(mut held) = self.client.try_lock() {
            *held = None;
        }
    }

    /// Lists the server's tools and keeps this one's description.
    async fn describe(&self) -> Result<(), Failure> {
        if self.described.get().is_some() {
            return Ok(());
        }
        let client = self.connect().await?;
        let tools = match client.list_all_tools().await {
            Ok(t) => t,
            Err(e) => {
                self.reset();
                return Err(classify::service(&e));
            }
        };
        let Some(tool) = tools.iter().find(|t| t.name == self.remote.tool) else {
            let names: Vec<&str> = tools.iter().take(50).map(|t| t.name.as_ref()).collect();
            return Err(Failure::new(
                FailureClass::Permanent,
                format!(
                    "tools.{}.mcp.tool: {} has no tool `{}` (it has: {})",
                    self.config.name,
                    self.remote.url,
                    self.remote.tool,
                    names.join(", ")
                ),
            ));
        };
        let d = self.check_description(tool)?;
        let claimed = annotated_effect(tool.annotations.as_ref());
        let effect = match self.config.effect {
            Some(toml) => claimed.max(toml),
            None => claimed,
        };
        self.effect.store(effect_code(effect), Ordering::Relaxed);
        let _ = self.described.set(d);
        Ok(())
    }

    /// A described tool's schemas, bounded as a component's are.
    fn check_description(&self, tool: &Tool) -> Result<Described, Failure> {
        let bad = |what: &str, e: String| {
            Failure::new(
                FailureClass::MalformedOutput,
                format!(
                    "{} describes `{}` with a bad {what}: {e}",
                    self.remote.url, tool.name
                ),
            )
        };
        let input_schema = Value::Object((*tool.input_schema).clone());
        let output_schema = tool
            .output_schema
            .as_ref()
            .map(|s| Value::Object((**s).clone()));
        let input = crate::schema::compile(&input_schema)
            .map_err(|e| bad("input schema", e.to_string()))?;
        let output = match &output_schema {
            Some(s) => {
                Some(crate::schema::compile(s).map_err(|e| bad("output schema", e.to_string()))?)
            }
            None => None,
        };
        let text = tool.description.as_deref().unwrap_or_default();
        Ok(Described {
            description: ToolDescription {
                name: tool.name.to_string(),
                description: crate::outcome::clip(text.to_owned().into(), 16 << 10).into_owned(),
                input_schema,
                output_schema,
                effect: annotated_effect(tool.annotations.as_ref()),
            },
            input: self.config.validate_input.then_some(input),
            output,
        })
    }

    async fn attempt(&self, input: &Value, ctx: &CallCtx) -> Result<TargetOutput, Failure> {
        // Described first: the effect and the schemas then hold.
        self.describe().await?;
        let d = self.described.get().expect("described above");
        if let Some(v) = &d.input {
            if let Err(e) = v.validate(input) {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() {
                    "the input".to_owned()
                } else {
                    format!("input at {at}")
                };
                return Err(Failure::new(
                    FailureClass::InvalidInput,
                    format!("{at} does not match the tool's input schema: {e}"),
                ));
            }
        }
        let Value::Object(args) = input.clone() else {
            return Err(Failure::new(
                FailureClass::InvalidInput,
                "an MCP tool takes a JSON object as its input",
            ));
        };
        let client = self.connect().await?;
        let mut request = CallToolRequestParams::new(self.remote.tool.clone()).with_arguments(args);
        let mut meta = rmcp::model::RequestMetaObject::default();
        meta.0
            .insert("idempotencyKey".into(), Value::String(ctx.key.to_string()));
        request.meta = Some(meta);
        let result = match client.call_tool(request).await {
            Ok(r) => r,
            Err(e) => {
                self.reset();
                return Err(classify::service(&e));
            }
        };
        classify::result(result, d.output.as_ref(), self.config.max_output.0 as usize)
    }
}

impl CallTarget for RemoteTool {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn effect(&self) -> Effect {
        effect_of(self.effect.load(Ordering::Relaxed))
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    fn call<'a>(&'a self, input: &'a Value, ctx: &'a CallCtx) -> CallFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(ctx.timeout, self.attempt(input, ctx)).await {
                Ok(r) => r,
                Err(_) => {
                    // A connection held by a server that stopped answering
                    // is not reused.
                    self.reset();
                    Err(Failure::new(
                        FailureClass::Timeout,
                        format!(
                            "{} did not answer `{}` within {}",
                            self.remote.url,
                            self.remote.tool,
                            humantime::format_duration(ctx.timeout)
                        ),
                    ))
                }
            }
        })
    }
}
