//! The library's error type: what can go wrong before a call can start.
//! Failures of a call itself are not errors: they are in its
//! [`crate::Outcome`].

use crate::config::ConfigError;
use crate::runtime::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("unknown chain or tool `{name}`{hint}")]
    UnknownChain { name: String, hint: String },
    #[error("no breaker `{name}`{hint}")]
    UnknownBreaker { name: String, hint: String },
    #[error(transparent)]
    Run(#[from] crate::agent::RunError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot start the wasm engine: {0}")]
    Engine(#[from] crate::runtime::EngineError),
}
