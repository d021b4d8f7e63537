//! What one call's Store holds: the tool's WASI view (only its grants),
//! its outbound-HTTP gate, its memory limiter and the call's context.

use super::bindings::{self, CallContext, Level};
use super::stderr::TailPipe;
use crate::config::{Origin, ToolConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Most log records one call may write; more are dropped (counted once).
const MAX_LOGS: u32 = 1000;
const MAX_LOG_TEXT: usize = 4096;
/// Bytes of a tool's stderr kept to explain a trap: the end of it, where
/// a panic message or a traceback is.
pub const STDERR_CAPACITY: usize = 16 * 1024;

/// The call being served.
#[derive(Clone, Debug)]
pub struct CallInfo {
    /// Shared, not copied: a call's sandbox is built afresh every time.
    pub tool: Arc<str>,
    pub key: Arc<str>,
    pub attempt: u32,
    pub deadline: Instant,
}

/// Denies memory growth past the tool's cap, and remembers that it did so
/// the resulting trap is classified as exhaustion rather than a bug.
pub struct MemoryLimiter {
    pub cap: usize,
    pub hit_cap: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit_cap = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Lets a request out only to the origins granted to the tool, and
/// remembers the origins it refused, so a failure can name the grant to
/// add.
pub struct HttpGate {
    tool: Arc<str>,
    origins: Arc<Vec<Origin>>,
    denied: Vec<String>,
}

/// Distinct refused origins kept per call.
const MAX_DENIED: usize = 4;

impl HttpGate {
    fn allowed(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return false };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.origins.iter().any(|o| o.allows(scheme, host, port))
    }

    /// `uri`'s origin as an `http = [...]` entry grants it (the port only
    /// when it is not the scheme's own).
    fn remember(&mut self, uri: &http::Uri) {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return };
        let origin = match uri.port_u16() {
            Some(p) if !(scheme == "http" && p == 80 || scheme == "https" && p == 443) => {
                format!("{scheme}://{host}:{p}")
            }
            _ => format!("{scheme}://{host}"),
        };
        if self.denied.len() < MAX_DENIED && !self.denied.contains(&origin) {
            self.denied.push(origin);
        }
    }

    /// What to tell the operator after a failed call that was refused
    /// requests: the entries to add to the tool's `http` grant.
    pub fn hint(&self) -> Option<String> {
        if self.denied.is_empty() {
            return None;
        }
        let entries: Vec<String> = self.denied.iter().map(|o| format!("\"{o}\"")).collect();
        Some(format!(
            "the host refused requests to origins not granted to the tool; to allow them, add \
             {} to `http` in [tools.{}]",
            entries.join(", "),
            self.tool
        ))
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        if !self.allowed(request.uri()) {
            tracing::warn!(tool = %self.tool, uri = %request.uri(), "outbound request denied: \
                origin not granted");
            self.remember(request.uri());
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    gate: HttpGate,
    pub limiter: MemoryLimiter,
    pub call: CallInfo,
    logs: u32,
}

impl HostState {
    /// A sandbox holding exactly the tool's grants: its directories, its
    /// env keys, no sockets, no inherited stdio; stderr is captured.
    pub fn new(
        tool: &ToolConfig,
        origins: Arc<Vec<Origin>>,
        call: CallInfo,
        stderr: TailPipe,
    ) -> anyhow::Result<Self> {
        let mut b = WasiCtx::builder();
        b.stderr(stderr);
        for d in &tool.dirs {
            let perms = if d.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&d.host, &d.guest, perms).map_err(|e| {
                anyhow::anyhow!("cannot open granted directory {}: {e}", d.host.display())
            })?;
        }
        for e in &tool.env {
            let value = match &e.value {
                Some(v) => Some(v.clone()),
                None => std::env::var(&e.key).ok(),
            };
            if let Some(v) = value {
                b.env(&e.key, v);
            }
        }
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Ok(HostState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            gate: HttpGate {
                tool: call.tool.clone(),
                origins,
                denied: Vec::new(),
            },
            limiter: MemoryLimiter {
                cap: tool.memory.0 as usize,
                hit_cap: false,
            },
            call,
            logs: 0,
        })
    }
}

impl HostState {
    /// The grant to add, when the tool was refused requests.
    pub fn denial_hint(&self) -> Option<String> {
        self.gate.hint()
    }

    pub fn config_memory(&self) -> crate::config::ByteSize {
        crate::config::ByteSize(self.limiter.cap as u64)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

impl bindings::backstop::tool::types::Host for HostState {}

fn clip(mut s: String) -> String {
    if s.len() > MAX_LOG_TEXT {
        let mut end = MAX_LOG_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl bindings::backstop::tool::host::Host for HostState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        self.logs += 1;
        if self.logs > MAX_LOGS {
            if self.logs == MAX_LOGS + 1 {
                tracing::warn!(tool = %self.call.tool, "tool log limit reached; dropping further \
                    records");
            }
            return;
        }
        let message = clip(message);
        let fields: Vec<String> = fields
            .into_iter()
            .take(32)
            .map(|(k, v)| format!("{}={}", clip(k), clip(v)))
            .collect();
        let fields = fields.join(" ");
        let (tool, attempt) = (&*self.call.tool, self.call.attempt);
        match level {
            Level::Trace => {
                tracing::trace!(target: "backstop::tool", tool, attempt, fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "backstop::tool", tool, attempt, fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "backstop::tool", tool, attempt, fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "backstop::tool", tool, attempt, fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "backstop::tool", tool, attempt, fields, "{message}")
            }
        }
    }

    async fn context(&mut self) -> CallContext {
        let left = self.call.deadline.saturating_duration_since(Instant::now());
        CallContext {
            idempotency_key: self.call.key.to_string(),
            attempt: self.call.attempt,
            deadline_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            tool_name: self.call.tool.to_string(),
        }
    }
}

/// A deadline far enough away to mean "none" (for `describe`).
pub fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}
