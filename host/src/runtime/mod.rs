//! The wasm host: one Engine and Linker for the process, each component
//! compiled once (and cached on disk across starts), a fresh Store per
//! call from an `InstancePre`.

mod bindings;
mod fs_guard;
mod guests;
mod state;
mod stderr;
mod tool;

use crate::config::{Config, EngineConfig, Location};
use state::HostState;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use tool::{Reconciled, ToolDescription, WasmTool};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Why a tool could not be loaded; names the tool and where it is declared.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {key}: {message}")]
pub struct LoadError {
    pub tool: String,
    pub location: Location,
    /// The TOML key at fault, such as `tools.search.component`.
    pub key: String,
    pub message: String,
}

/// Why the wasm engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the engine's settings or the host's imports.
    #[error("{0}")]
    Wasmtime(String),
    #[error("cannot start the guest threads: {0}")]
    GuestThreads(#[source] std::io::Error),
}

impl EngineError {
    fn wasmtime(e: wasmtime::Error) -> EngineError {
        EngineError::Wasmtime(format!("{e:#}"))
    }
}

/// Why a component file could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is a core wasm module, not a component; build it for wasm32-wasip2 \
         or wrap it with `wasm-tools component new`",
        path.display()
    )]
    CoreModule { path: PathBuf },
    #[error("{} is not a WebAssembly component (a wasm binary starts with \\0asm)", path.display())]
    NotComponent { path: PathBuf },
    #[error("{} is not a valid WebAssembly component: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Increments the engine's epoch every tick until dropped: the clock that
/// epoch deadlines count in.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("backstop-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        Ticker { stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a component came from the on-disk cache or was compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileSource {
    Cache,
    Compiled,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    tick: Duration,
    pooling: bool,
    guests: Arc<guests::GuestPool>,
    /// Caps on what `describe` may return.
    max_description: usize,
    max_schema: usize,
    max_message: usize,
    _ticker: Ticker,
}

impl Runtime {
    /// Builds the engine for `config`. The pooling allocator is used when
    /// asked and this machine can reserve its memory; otherwise instances
    /// are allocated on demand.
    pub fn new(config: &Config) -> Result<Runtime, EngineError> {
        let max_memory = config
            .tools
            .values()
            .map(|t| t.memory.0)
            .max()
            .unwrap_or(256 << 20);
        let (engine, pooling) = build_engine(&config.engine, max_memory)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::wasmtime)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(EngineError::wasmtime)?;
        fs_guard::shadow_open_at(&mut linker).map_err(EngineError::wasmtime)?;
        bindings::Tool::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(EngineError::wasmtime)?;
        let ticker = Ticker::start(engine.clone(), config.engine.tick);
        let guests = Arc::new(
            guests::GuestPool::new(config.engine.guest_threads)
                .map_err(EngineError::GuestThreads)?,
        );
        Ok(Runtime {
            guests,
            max_description: config.engine.max_description,
            max_schema: config.engine.max_schema,
            max_message: config.engine.max_message,
            engine,
            linker,
            cache_dir: config.cache_dir.clone(),
            tick: config.engine.tick,
            pooling,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compiles `path`, or loads it from the cache when this engine already
    /// compiled the same bytes. Returns the component, its SHA-256 and
    /// where it came from.
    pub fn compile(&self, path: &Path) -> Result<(Component, String, CompileSource), CompileError> {
        use sha2::Digest;
        let bytes = std::fs::read(path).map_err(|source| CompileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let cached = self
            .cache_dir
            .join(format!("{digest}-{:016x}.cwasm", h.finish()));
        // Read into memory rather than mmap: a cache file truncated by
        // another process while mapped would kill this one with SIGBUS.
        if let Ok(serialized) = std::fs::read(&cached) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with this compatibility hash, into the operator's cache
            // directory, which is as trusted as this binary. A damaged file
            // fails wasmtime's header checks and is recompiled below.
            match unsafe { Component::deserialize(&self.engine, &serialized) } {
                Ok(c) => return Ok((c, digest, CompileSource::Cache)),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), "ignoring unreadable compiled cache \
                        entry: {e:#}")
                }
            }
        }
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(CompileError::CoreModule {
                path: path.to_owned(),
            });
        }
        // Text is accepted only when it looks like a component in the text
        // format; anything else gets a one-line answer, not a WAT parse error.
        let text_component =
            std::str::from_utf8(&bytes).is_ok_and(|t| t.trim_start().starts_with("(component"));
        if !bytes.starts_with(b"\0asm") && !text_component {
            return Err(CompileError::NotComponent {
                path: path.to_owned(),
            });
        }
        let component =
            Component::new(&self.engine, &bytes).map_err(|e| CompileError::Invalid {
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        if let Err(e) = self.store_cache(&component, &cached) {
            tracing::warn!(dir = %self.cache_dir.display(), "cannot write the compiled-code cache: \
                {e:#}");
        }
        Ok((component, digest, CompileSource::Compiled))
    }

    fn store_cache(&self, component: &Component, file: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.cache_dir)?;
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, component.serialize()?)?;
        // Rename is atomic: a concurrent start never reads half a file.
        std::fs::rename(&tmp, file)?;
        Ok(())
    }
}

fn build_engine(cfg: &EngineConfig, max_memory: u64) -> Result<(Engine, bool), EngineError> {
    let base = || {
        let mut c = wasmtime::Config::new();
        c.epoch_interruption(true);
        c.wasm_component_model(true);
        // A guest that recurses without bound traps instead of taking the
        // host's stack.
        c.max_wasm_stack(1 << 20);
        c
    };
    if cfg.pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            // A counter, not a reservation: components with many core
            // modules (Python's) must not run out of these before the
            // component slots the host-wide bulkhead is sized by.
            .total_core_instances(20_000)
            .total_memories(1000)
            .total_tables(2000)
            .total_stacks(1000)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .max_memory_size(max_memory as usize)
            // Reset a reused slot's first pages with memset instead of
            // returning them to the kernel: a fresh instance per call then
            // does not page-fault its stack and heap back in (the report
            // bench measured most of a bare call in the kernel without it).
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(1 << 16)
            .async_stack_keep_resident(1 << 16)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut c = base();
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&c) {
            Ok(e) => return Ok((e, true)),
            Err(e) => tracing::warn!("pooling allocator unavailable, allocating on demand: {e:#}"),
        }
    }
    Ok((Engine::new(&base()).map_err(EngineError::wasmtime)?, false))
}
