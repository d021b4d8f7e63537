//! Goals 2 and 3: a guarded tool call against a bare wasmtime call on the
//! same component and engine (`InstancePre` + new Store + call, nothing
//! else), and guarded calls per second on every core.

use crate::stats::{per_op, Spread};
use backstop::{Backstop, Config};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Typed bindings for the baseline, as any wasmtime host would generate.
mod typed {
    wasmtime::component::bindgen!({
        world: "tool",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

use typed::backstop::tool::host::{CallContext, Host, Level};

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl typed::backstop::tool::types::Host for Bare {}

/// Host imports that answer constants.
impl Host for Bare {
    async fn log(&mut self, _: Level, _: String, _: Vec<(String, String)>) {}
    async fn context(&mut self) -> CallContext {
        CallContext {
            idempotency_key: "key".into(),
            attempt: 1,
            deadline_ms: 1000,
            tool_name: "echo".into(),
        }
    }
}

/// The baseline call: the runtime's engine (same pooling allocator and
/// epoch settings) and compiled component, typed bindings, a plain WASI
/// context, host imports that answer constants.
struct BareCall {
    engine: wasmtime::Engine,
    pre: typed::ToolPre<Bare>,
    input: String,
}

impl BareCall {
    fn new(b: &Backstop, component: &Path, input: String) -> BareCall {
        let engine = b.runtime().engine().clone();
        let (component, _, _) = b.runtime().compile(component).unwrap();
        let mut linker: Linker<Bare> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        typed::Tool::add_to_linker::<_, HasSelf<Bare>>(&mut linker, |s| s).unwrap();
        let pre = typed::ToolPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        BareCall { engine, pre, input }
    }

    /// One call; its output's JSON text.
    async fn call(&self) -> String {
        let mut store = Store::new(
            &self.engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(100);
        let tool = self.pre.instantiate_async(&mut store).await.unwrap();
        let out = tool.call_invoke(&mut store, &self.input).await.unwrap();
        out.expect("echo answers").value
    }
}

/// The bench's config: the `echo_rs` component, a cache under `target/`.
fn echo_backstop(rt: &tokio::runtime::Runtime, root: &Path) -> Backstop {
    let text = format!(
        "version = 1\ncache_dir = \"{}\"\n[tools.echo]\ncomponent = \"{}\"\n",
        root.join("target/bench-cache").display(),
        root.join("plugins/dist/echo_rs.wasm").display()
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    rt.block_on(Backstop::from_config(config)).unwrap()
}

pub struct Figures {
    /// Checking a call's input against the tool's declared schema.
    pub input_check: Spread,
    pub bare: Spread,
    pub guarded: Spread,
    pub invoke: Spread,
    pub throughput: f64,
    pub throughput_noop_wasm: f64,
    pub workers: usize,
}

pub fn measure(root: &Path, samples: usize, n: u64, seconds: u64) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let component_path = root.join("plugins/dist/echo_rs.wasm");
    let b = Arc::new(echo_backstop(&rt, root));
    let input = serde_json::json!({"say": "hi"});
    let input_text = input.to_string();
    let bare_call = BareCall::new(&b, &component_path, input_text.clone());
    let bare = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                bare_call.call().await;
            }
        })
    });
    let tool = b.tool("echo").unwrap();
    let ctx = backstop::target::CallCtx {
        call_left: std::time::Duration::from_secs(3600),
        key: "key".into(),
        attempt: 1,
        timeout: Duration::from_secs(5),
    };
    let input_check = per_op(samples, n * 50, || {
        for _ in 0..n * 50 {
            std::hint::black_box(tool.check_input(std::hint::black_box(&input))).unwrap();
        }
    });
    let invoke = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                tool.invoke(input_text.clone(), &ctx).await.unwrap();
            }
        })
    });
    let guarded = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                assert!(b.call("echo", input.clone()).await.unwrap().ok);
            }
        })
    });

    // Throughput: as many callers as keep every worker busy.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let throughput = |chain: &'static str, input: serde_json::Value| {
        let mt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let stop = t0 + Duration::from_secs(seconds);
        mt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..workers * 8 {
                let (b, done, input) = (b.clone(), done.clone(), input.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < stop {
                        assert!(b.call(chain, input.clone()).await.unwrap().ok);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
    };
    let throughput_noop_wasm = throughput("echo", serde_json::json!({}));
    let throughput = throughput("echo", input.clone());
    Figures {
        input_check,
        bare,
        guarded,
        invoke,
        throughput,
        throughput_noop_wasm,
        workers,
    }
}

/// The wasm paths counted in instructions (`BENCH_CALLGRIND=PATH:N`), or
/// run for a profiler (`BENCH_ONLY=PATH BENCH_N=N`): the bare call, the
/// bare call then parsing its output as the host does, `WasmTool::invoke`,
/// `Backstop::call`, and the input check alone.
pub const PATHS: [&str; 5] = [
    "bare-wasm",
    "bare-wasm-parse",
    "invoke",
    "call-wasm",
    "check-input",
];

/// Runs `n` calls of one of [`PATHS`] and nothing else.
pub fn spin(root: &Path, path: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = echo_backstop(&rt, root);
    let input = serde_json::json!({"say": "hi"});
    let text = input.to_string();
    let bare_call = BareCall::new(&b, &root.join("plugins/dist/echo_rs.wasm"), text.clone());
    let tool = b.tool("echo").unwrap();
    let ctx = backstop::target::CallCtx {
        call_left: std::time::Duration::from_secs(3600),
        key: "key".into(),
        attempt: 1,
        timeout: Duration::from_secs(5),
    };
    rt.block_on(async {
        for _ in 0..n {
            match path {
                "bare-wasm" => {
                    bare_call.call().await;
                }
                "bare-wasm-parse" => {
                    let out = bare_call.call().await;
                    std::hint::black_box(serde_json::from_str::<serde_json::Value>(&out).unwrap());
                }
                "invoke" => {
                    std::hint::black_box(tool.invoke(text.clone(), &ctx).await.unwrap());
                }
                "check-input" => {
                    std::hint::black_box(tool.check_input(std::hint::black_box(&input))).unwrap();
                }
                "call-wasm" => {
                    assert!(b.call("echo", input.clone()).await.unwrap().ok);
                }
                other => panic!("no wasm path `{other}` (one of {PATHS:?})"),
            }
        }
    });
}
