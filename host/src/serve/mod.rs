//! `backstop serve`: the library over HTTP, for apps in other languages.
//!
//! Every route answers JSON (except `/metrics`); every error is a 4xx or
//! 5xx with `{"error": {"status", "message"}}`. With a token (from
//! [`TOKEN_ENV`]) every route but `/healthz` and `/openapi.json` wants
//! `Authorization: Bearer TOKEN`; without one the server only listens on
//! loopback. The routes are described in `openapi.json` (served at
//! `/openapi.json`).

use crate::agent::{ResumeOptions, RunError};
use crate::escalation::{parse_age, parse_reason, Filter, Resolution};
use crate::store::{QueueError, StoreError};
use crate::{Backstop, Error};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

mod canned;
mod conn;
pub use conn::ServeOptions;

/// The environment variable holding the API's bearer token.
pub const TOKEN_ENV: &str = "BACKSTOP_API_TOKEN";

/// The API's description, OpenAPI 3.1.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without a token: set {TOKEN_ENV} (only a loopback \
        address may go without one)"
    )]
    NoToken { addr: SocketAddr },
    #[error("{TOKEN_ENV} is set but empty")]
    EmptyToken,
    #[error("{TOKEN_ENV} {0}: a client could not send it in an `Authorization` header as it is")]
    BadToken(&'static str),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks, before binding, that `addr` may be served with `token`.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>) -> Result<(), ServeError> {
    match token {
        Some(t) if t.trim().is_empty() => Err(ServeError::EmptyToken),
        // HTTP strips a header value's surrounding whitespace, so such a
        // token could never match; a control character cannot be sent.
        Some(t) if t.trim() != t => Err(ServeError::BadToken("begins or ends with whitespace")),
        Some(t) if t.chars().any(|c| c.is_control() || !c.is_ascii()) => Err(ServeError::BadToken(
            "holds a control or non-ASCII character",
        )),
        None if !addr.ip().is_loopback() => Err(ServeError::NoToken { addr }),
        _ => Ok(()),
    }
}

/// Binds `addr` (after [`check_exposure`]).
pub async fn bind(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<tokio::net::TcpListener, ServeError> {
    check_exposure(addr, token)?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves the API on `listener` until `shutdown` completes, with the
/// default [`ServeOptions`].
pub async fn serve(
    backstop: Arc<Backstop>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(backstop, listener, token, ServeOptions::default(), shutdown).await
}

/// Serves the API on `listener` until `shutdown` completes, within
/// `options` (timeouts, connection limit, grace period on stopping).
pub async fn serve_with(
    backstop: Arc<Backstop>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // The run queue's workers stop claiming when serving stops (however
    // it stops); runs they drive go on to their end or to the process's.
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(crate::agent::queue::work(
        backstop.clone(),
        options.workers,
        backstop.queue_wake(),
        stop.cancelled_owned(),
    ));
    let app = router(backstop, token).layer(axum::Extension(options));
    conn::run(listener, app, options, shutdown).await?;
    Ok(())
}

/// An error answer: status and a message naming what is wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"status": self.status.as_u16(), "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::UnknownChain { .. } | Error::UnknownBreaker { .. } => StatusCode::NOT_FOUND,
            Error::Run(r) => return ApiError::from_run(r, e.to_string()),
            Error::Store(s) => return ApiError::from(s),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<&StoreError> for ApiError {
    fn from(e: &StoreError) -> Self {
        let status = match e {
            // Nothing was ever run with this config: whatever the caller
            // names is not there.
            StoreError::NoSuchRun(_) | StoreError::Missing(_) => StatusCode::NOT_FOUND,
            // Another host drives the run (or took it over from this one).
            StoreError::Held { .. } | StoreError::LeaseLost { .. } => StatusCode::CONFLICT,
            // The database is down or unreachable: try again later.
            StoreError::Postgres { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from(&e)
    }
}

impl ApiError {
    fn from_run(e: &RunError, message: String) -> Self {
        let status = match e {
            RunError::UnknownAgent { .. } => StatusCode::NOT_FOUND,
            // The run cannot go on under this config: the caller's to
            // resolve (wait, allow drift, restore the agent).
            RunError::Busy { .. }
            | RunError::Drift { .. }
            | RunError::AgentGone { .. }
            | RunError::McpCall { .. } => StatusCode::CONFLICT,
            RunError::Store(s) => return ApiError::from(s),
            RunError::Queue { source, .. } => return ApiError::from_queue(source, message),
            RunError::BadAnswer { .. } => StatusCode::BAD_GATEWAY,
            RunError::Template { .. } | RunError::Lock { .. } | RunError::UnknownChain { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, message)
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        let message = e.to_string();
        ApiError::from_run(&e, message)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let message = e.to_string();
        ApiError::from_queue(&e, message)
    }
}

impl ApiError {
    fn from_queue(e: &QueueError, message: String) -> Self {
        match e {
            QueueError::Store(s) => ApiError::new(ApiError::from(s).status, message),
            QueueError::NoSuch(_) => ApiError::new(StatusCode::NOT_FOUND, message),
            QueueError::NotAllowed { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
        }
    }
}

type Api<T> = Result<T, ApiError>;

/// Parses a JSON body, naming the field and position of what is wrong.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Api<T> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !json_media_type(ct) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body must be application/json, not `{ct}`"),
            ));
        }
    }
    // No body reads as `{}`, so routes whose fields all have defaults
    // (resume) can be posted without one; the others name what is missing.
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let message = if at == "." {
            format!("invalid body: {}", e.inner())
        } else {
            format!("invalid body at `{at}`: {}", e.inner())
        };
        ApiError::new(StatusCode::BAD_REQUEST, message)
    })?;
    de.end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))?;
    Ok(value)
}

/// A JSON request body, checked by [`body`]: its errors are 4xx JSON
/// answers naming the field.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let within = req
            .extensions()
            .get::<ServeOptions>()
            .map_or(std::time::Duration::from_secs(10), |o| o.body_timeout);
        // A body that never ends must not hold the connection.
        let bytes = tokio::time::timeout(within, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {}",
                        humantime::format_duration(within)
                    ),
                )
                .into_response()
            })?
            .map_err(IntoResponse::into_response)?;
        body(&headers, &bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    chain: String,
    input: Value,
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskBody {
    chain: String,
    prompt: String,
    #[serde(default)]
    system: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    agent: String,
    task: String,
    /// Answer when the run stops (true) or as soon as it has an id.
    #[serde(default = "yes")]
    wait: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    #[serde(default)]
    allow_drift: bool,
}

fn operator() -> String {
    "operator".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    resolution: Resolution,
    #[serde(default = "operator")]
    by: String,
    #[serde(default)]
    resume: bool,
    /// With `resume`: answer when the run stops (true), or queue it for
    /// any host's worker and answer at once (false).
    #[serde(default = "yes")]
    wait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalationsQuery {
    reason: Option<String>,
    run: Option<String>,
    older_than: Option<String>,
    #[serde(default)]
    all: bool,
}

type App = Arc<Backstop>;

/// Largest JSON-RPC body `/mcp` reads (the SDK refuses larger ones).
const MAX_MCP_BODY: usize = crate::mcp::MAX_MESSAGE;

/// Reads a request's body within the body timeout before the MCP
/// transport sees it: a body that never ends must not hold the
/// connection (the SDK caps its size, not its time).
async fn bounded_body(
    State(fast): State<Arc<crate::mcp::FastPath>>,
    req: Request,
    next: Next,
) -> Response {
    let within = req
        .extensions()
        .get::<ServeOptions>()
        .map_or(std::time::Duration::from_secs(10), |o| o.body_timeout);
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, MAX_MCP_BODY + 1);
    let bytes = match tokio::time::timeout(within, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an MCP request body may hold at most {MAX_MCP_BODY} bytes"),
            )
            .into_response()
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(within)
                ),
            )
            .into_response()
        }
    };
    if let Some((status, body)) = fast.answer(&parts, &bytes).await {
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .expect("a valid response");
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The API's routes, with auth and JSON errors.
pub fn router(backstop: Arc<Backstop>, token: Option<String>) -> Router {
    // Without a token the server listens only on loopback, and the MCP
    // transport checks that `Host` names it (a page's DNS rebinding must
    // not reach a local server); with one, the token guards it.
    let (service, fast) = crate::mcp::http_service(backstop.clone(), token.is_none(), MAX_MCP_BODY);
    let mcp = Router::new()
        .route_service("/mcp", service)
        .layer(middleware::from_fn_with_state(Arc::new(fast), bounded_body));
    let token: Option<Arc<str>> = token.map(Into::into);
    Router::new()
        .merge(mcp)
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/breakers", get(breakers))
        .route("/v1/breakers/{target}", post(set_breaker))
        .route("/v1/calls", post(call))
        .route("/v1/asks", post(ask))
        .route("/v1/runs", get(runs).post(start_run))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/resume", post(resume_run))
        .route("/v1/escalations", get(escalations))
        .route("/v1/escalations/{id}", get(show_escalation))
        .route("/v1/escalations/{id}/resolve", post(resolve))
        .fallback(no_route)
        .with_state(backstop.clone())
        .layer(middleware::from_fn_with_state(token, auth))
        .layer(middleware::from_fn_with_state(backstop, json_errors))
}

/// Ready while the state store answers: a host that lost its database
/// starts no step, so a load balancer should send it nothing.
///
/// The route needs no token, so the answer names no host, user or path:
/// the reason goes to the log.
async fn healthz(State(b): State<App>) -> Response {
    match b.ready().await {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the state store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "not ready",
                    "store": "the state store does not answer (the server's log says why)",
                })),
            )
                .into_response()
        }
    }
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn metrics(State(b): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        b.metrics_text().await,
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    runs: Option<u32>,
}

async fn status(State(b): State<App>, q: Query<StatusQuery>) -> Api<Json<Value>> {
    let s = b.status(q.runs.unwrap_or(10)).await?;
    Ok(Json(serde_json::to_value(s).expect("status serializes")))
}

async fn breakers(State(b): State<App>) -> Json<Value> {
    Json(json!({"breakers": crate::store::offload(|| b.breakers())}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerBody {
    action: crate::guard::Action,
    #[serde(default = "api_actor")]
    by: String,
}

fn api_actor() -> String {
    "api".into()
}

async fn set_breaker(
    State(b): State<App>,
    Path(target): Path<String>,
    JsonBody(req): JsonBody<BreakerBody>,
) -> Api<Json<Value>> {
    // The store write is a blocking SQLite statement.
    let breaker = crate::store::offload(|| b.set_breaker(&target, req.action, &req.by))?;
    Ok(Json(json!({ "breaker": breaker })))
}

async fn call(State(b): State<App>, JsonBody(req): JsonBody<CallBody>) -> Api<Json<Value>> {
    let outcome = match req.key {
        Some(k) => b.call_with_key(&req.chain, req.input, k).await?,
        None => b.call(&req.chain, req.input).await?,
    };
    Ok(Json(
        serde_json::to_value(outcome).expect("outcome serializes"),
    ))
}

async fn ask(State(b): State<App>, JsonBody(req): JsonBody<AskBody>) -> Api<Json<Value>> {
    let mut chat = crate::models::ChatRequest::prompt(&req.prompt);
    chat.system = req.system;
    let chat = serde_json::to_value(chat).expect("a request serializes");
    let outcome = b.call(&req.chain, chat).await?;
    Ok(Json(
        serde_json::to_value(outcome).expect("outcome serializes"),
    ))
}

async fn runs(State(b): State<App>, q: Query<RunsQuery>) -> Api<Json<Value>> {
    let runs = b.store()?.recent_runs(q.limit.unwrap_or(50)).await?;
    Ok(Json(json!(runs)))
}

async fn start_run(State(b): State<App>, JsonBody(req): JsonBody<RunBody>) -> Api<Response> {
    if req.wait {
        let report = b.run_agent(&req.agent, &req.task, &mut |_| {}).await?;
        return Ok(Json(json!(report)).into_response());
    }
    // Queued in the store, for any host's worker: it survives this host.
    let run = b.enqueue_run(&req.agent, &req.task).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "status": "running", "queued": true})),
    )
        .into_response())
}

async fn show_run(State(b): State<App>, Path(id): Path<String>) -> Api<Json<Value>> {
    let store = b.store()?;
    let run = store.run(&id).await?;
    let entries = store.entries(&id).await?;
    Ok(Json(json!({"run": run, "entries": entries})))
}

async fn resume_run(
    State(b): State<App>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ResumeBody>,
) -> Api<Json<Value>> {
    let options = ResumeOptions {
        allow_drift: req.allow_drift,
    };
    let report = b.resume_run(&id, &options, &mut |_| {}).await?;
    Ok(Json(json!(report)))
}

async fn escalations(State(b): State<App>, q: Query<EscalationsQuery>) -> Api<Json<Value>> {
    let q = q.0;
    // `?reason=` means no filter, as an absent parameter does.
    let given = |v: Option<String>| v.filter(|s| !s.is_empty());
    let (reason, run, older_than) = (given(q.reason), given(q.run), given(q.older_than));
    let bad = |name: &'static str| {
        move |e: String| ApiError::new(StatusCode::BAD_REQUEST, format!("{name} {e}"))
    };
    let reason = reason
        .map(|r| parse_reason(&r).map_err(bad("reason")))
        .transpose()?;
    let older_than_ms = older_than
        .map(|d| parse_age(&d).map_err(bad("older_than")))
        .transpose()?;
    let filter = Filter {
        reason,
        run,
        older_than_ms,
        all: q.all,
    };
    let list = b.store()?.escalations(&filter).await?;
    Ok(Json(json!(list)))
}

async fn show_escalation(State(b): State<App>, Path(id): Path<String>) -> Api<Json<Value>> {
    Ok(Json(json!(b.store()?.escalation(&id).await?)))
}

async fn resolve(
    State(b): State<App>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ResolveBody>,
) -> Api<Json<Value>> {
    let r = b.store()?.resolve(&id, req.resolution, &req.by).await?;
    let e = r.escalation;
    if !r.first {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "escalation {id} was already resolved by {}: {}; nothing changed",
                e.resolved_by.as_deref().unwrap_or("?"),
                e.resolution
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ),
        ));
    }
    if !req.resume {
        return Ok(Json(json!({"escalation": e})));
    }
    if crate::journal::is_mcp_call(&e.run) {
        // Nothing to resume here: the client's call, naming the
        // escalation, is what runs it.
        let note = format!(
            "run {} is an MCP client's call: it runs when the client calls again naming \
             escalation {id}",
            e.run
        );
        return Ok(Json(json!({"escalation": e, "note": note})));
    }
    if !req.wait {
        b.requeue_run(&e.run).await?;
        return Ok(Json(
            json!({"escalation": e, "run": {"run": e.run, "status": "running", "queued": true}}),
        ));
    }
    let report = b
        .resume_run(&e.run, &ResumeOptions::default(), &mut |_| {})
        .await?;
    b.flush_notifications(std::time::Duration::from_secs(5))
        .await;
    Ok(Json(json!({"escalation": e, "run": report})))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {method} {} (see /openapi.json)", uri.path()),
    )
}

/// Constant-time comparison, so the token cannot be guessed byte by byte
/// from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(token): State<Option<Arc<str>>>, req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/healthz" | "/openapi.json");
    if let (Some(token), false) = (&token, open) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        let ok = given.is_some_and(|g| same(g.as_bytes(), token.as_bytes()));
        if !ok {
            let message = if given.is_some() {
                "the bearer token is wrong"
            } else {
                "this server wants `Authorization: Bearer TOKEN` (the token in BACKSTOP_API_TOKEN)"
            };
            let mut res = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    next.run(req).await
}

/// The credentials of `Bearer TOKEN`: the scheme is case-insensitive
/// (RFC 9110, section 11.1), `bearer` as valid as `Bearer`.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Whether a `Content-Type` names JSON: the media type `application/json`
/// in any case, with or without parameters (`; charset=utf-8`), and not a
/// type that merely begins the same way (`application/jsonp`).
fn json_media_type(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(json_media_type)
}

/// Logs and counts every request, and turns the framework's own
/// plain-text errors (405, 413, a bad path or query) into the JSON error
/// body.
async fn json_errors(State(b): State<App>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status();
    // Labels from a closed set: a client cannot make new series with odd
    // methods or paths.
    let method_label = match method {
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD => method.as_str(),
        _ => "other",
    };
    b.metrics()
        .observe_http(method_label, &route, status.as_u16(), started.elapsed());
    tracing::info!(
        target: "backstop::serve",
        %method,
        path,
        status = status.as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    let mut res = res;
    // Refused before its body was read (no token, or over the limit): the
    // connection cannot carry another request, so say so, or a client
    // reusing it finds it closed under its next request.
    if matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !(status.is_client_error() || status.is_server_error()) || is_json(res.headers()) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    for keep in [header::ALLOW, header::WWW_AUTHENTICATE, header::CONNECTION] {
        if let Some(v) = parts.headers.get(&keep) {
            out.headers_mut().insert(keep, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the caller can fix answers 4xx; what the server must fix, 5xx.
    #[test]
    fn run_errors_map_to_the_status_that_says_whose_it_is() {
        let run = || "r1".to_owned();
        let cases = [
            (
                RunError::UnknownAgent {
                    name: run(),
                    hint: String::new(),
                },
                404,
            ),
            (
                RunError::Busy {
                    run: run(),
                    pid: Some(1),
                    holder: None,
                },
                409,
            ),
            (
                RunError::Drift {
                    run: run(),
                    changes: run(),
                },
                409,
            ),
            (
                RunError::AgentGone {
                    run: run(),
                    agent: run(),
                },
                409,
            ),
            (RunError::Store(StoreError::NoSuchRun(run())), 404),
            (RunError::Store(StoreError::Missing(run())), 404),
            (
                RunError::Queue {
                    run: run(),
                    source: QueueError::NoSuch(run()),
                },
                404,
            ),
            (
                RunError::BadAnswer {
                    run: run(),
                    message: run(),
                },
                502,
            ),
            (
                RunError::Store(StoreError::Damaged {
                    run: run(),
                    seq: 1,
                    message: run(),
                }),
                500,
            ),
            (
                RunError::Template {
                    run: run(),
                    message: run(),
                },
                500,
            ),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), want, "{text}");
            assert_eq!(api.message, text);
        }
        let unknown = Error::UnknownChain {
            name: "x".into(),
            hint: String::new(),
        };
        assert_eq!(ApiError::from(unknown).status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn json_is_the_media_type_not_a_prefix() {
        assert!(json_media_type("application/json"));
        assert!(json_media_type("Application/JSON; charset=utf-8"));
        assert!(!json_media_type("application/jsonp"));
        assert!(!json_media_type("application/json-seq"));
        assert!(!json_media_type("text/plain"));
    }

    #[test]
    fn tokens_that_cannot_match_are_refused_at_start() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for bad in ["", "   ", "tok ", " tok", "to\nk", "tök"] {
            assert!(
                check_exposure(local, Some(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(check_exposure(local, Some("a-good-token")).is_ok());
    }
}
