//! The contract between the guards and what they call: a target (a wasm
//! tool, a model, any future kind) takes JSON input and a [`CallCtx`] and
//! gives a [`TargetOutput`] or a classified [`Failure`].
//!
//! This module sits below `guard`, `runtime` and `models` so that none of
//! them needs another for these plain types.

use crate::outcome::{Effect, Failure};
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The per-attempt facts a call needs.
#[derive(Clone, Debug)]
pub struct CallCtx {
    pub key: Arc<str>,
    pub attempt: u32,
    /// This attempt's time limit (already cut to the call's deadline).
    pub timeout: Duration,
    /// What is left of the call's deadline: a streamed answer may run
    /// past `timeout` once it began, but not past this.
    pub call_left: Duration,
}

/// A successful result, checked against the target's contract.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetOutput {
    pub value: serde_json::Value,
    pub confidence: Option<f64>,
}

/// What one attempt of a target gives back.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<TargetOutput, Failure>> + Send + 'a>>;

/// Something a chain can call: a tool or a model. Implementations never
/// retry: the chain is the one layer that does.
pub trait CallTarget: Send + Sync {
    fn name(&self) -> &str;
    fn effect(&self) -> Effect;
    /// The longest a single attempt may take.
    fn timeout(&self) -> Duration;
    fn call<'a>(&'a self, input: &'a serde_json::Value, ctx: &'a CallCtx) -> CallFuture<'a>;
}
