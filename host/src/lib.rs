//! Backstop runs AI-agent tools as sandboxed WebAssembly components and
//! keeps agents working when tools fail.
//!
//! Every call goes through a chain of targets declared in TOML; each target
//! has a circuit breaker and a retry policy, and one deadline covers the
//! whole call (see [`guard`] for the order). Failures are classified
//! ([`FailureClass`]) and the [`Outcome`] says who served the call, every
//! attempt made, and whether a fallback served it (`degraded`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), backstop::Error> {
//! let backstop = backstop::Backstop::load("backstop.toml").await?;
//! let outcome = backstop.call("search", serde_json::json!({"query": "wasm"})).await?;
//! if outcome.degraded {
//!     eprintln!("served by fallback {:?}: {:?}", outcome.served_by, outcome.degraded_reason);
//! }
//! println!("{}", serde_json::to_string(&outcome.value).unwrap());
//! # Ok(()) }
//! ```

pub mod agent;
pub mod config;
mod error;
pub mod escalation;
pub mod guard;
mod host;
pub mod journal;
pub mod mcp;
pub mod metrics;
pub mod models;
pub mod outcome;
pub mod remote;
pub mod runtime;
pub mod schema;
pub mod serve;
pub mod status;
pub mod store;
pub mod target;
pub mod term;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhook;

pub use config::{Config, ConfigError};
pub use error::Error;
pub use host::{clean_actor, Backstop};
pub use outcome::{
    Attempt, AttemptClass, CallError, Effect, EscalationReason, Failure, FailureClass, Next,
    Outcome,
};
