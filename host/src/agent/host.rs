//! The one door from a run to the rest of the host. [`crate::Backstop`]
//! implements it; the agent's unit tests implement it without wasm.

use crate::config::Config;
use crate::escalation::Escalation;
use crate::outcome::{Effect, Failure, Outcome};
use crate::runtime::{Reconciled, ToolDescription};
use crate::store::{Store, StoreError};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A future a [`Host`] gives back.
pub type HostFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a run needs of the host that runs it.
pub trait Host: Send + Sync {
    /// The loaded configuration: agents, chains, tools' settings and the
    /// escalation policy.
    fn config(&self) -> &Config;

    /// The state store runs are journaled in.
    fn journal(&self) -> Result<Arc<dyn Store>, StoreError>;

    /// Calls `chain` through its guards with idempotency key `key`; `None`
    /// when no chain, tool or model has that name.
    fn call<'a>(
        &'a self,
        chain: &'a str,
        input: Value,
        key: String,
    ) -> HostFuture<'a, Option<Outcome>>;

    /// The effect that applies to tool `tool`; `None` when it is not a
    /// loaded tool (a model, say).
    fn tool_effect(&self, tool: &str) -> Option<Effect>;

    /// What tool `tool` said about itself.
    fn tool_description(&self, tool: &str) -> Option<ToolDescription>;

    /// Whether tool `tool` exports `reconcile`.
    fn can_reconcile(&self, tool: &str) -> bool;

    /// Asks tool `tool` whether the call with `key` happened.
    fn reconcile<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
    ) -> HostFuture<'a, Result<Reconciled, Failure>>;

    /// Announces a new escalation (the webhook), without waiting.
    fn notify(&self, escalation: &Escalation);

    /// How long until some target of `chain` admits a call.
    fn next_probe_in(&self, chain: &str) -> Option<Duration>;

    /// Every loaded tool with its component's digest: with the config's
    /// digest, what a resume compares to refuse drift.
    fn tool_digests(&self) -> Vec<(String, String)>;

    /// The strictest effect among `chain`'s targets: what is at stake if
    /// a call's fate is unknown.
    fn chain_effect(&self, chain: &str) -> Effect {
        let plan = self.config().chain(chain);
        plan.iter()
            .flat_map(|c| c.targets.iter())
            .filter_map(|t| self.tool_effect(t))
            .max()
            .unwrap_or(Effect::ReadOnly)
    }

    /// Whether a person must approve a call of `chain` before it runs: a
    /// target that is irreversible, or that the TOML marks `approval`
    /// (which can also waive it).
    fn needs_approval(&self, chain: &str) -> bool {
        let config = self.config();
        config
            .chain(chain)
            .iter()
            .flat_map(|c| c.targets.iter())
            .any(|t| {
                self.tool_effect(t).is_some_and(|effect| {
                    let approval = config.tools.get(t).and_then(|c| c.approval);
                    approval.unwrap_or(effect == Effect::Irreversible)
                })
            })
    }
}
