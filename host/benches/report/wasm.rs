//! Goals 2 and 3: a guarded tool call against a bare wasmtime call on the
//! same component and engine (`InstancePre` + new Store + call, nothing
//! else), and guarded calls per second on every core.

use crate::stats::{per_op, Spread};
use backstop::{Backstop, Config};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, ResourceTable, Val};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

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

pub struct Figures {
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
    let text = format!(
        "version = 1\ncache_dir = \"{}\"\n[tools.echo]\ncomponent = \"{}\"\n",
        root.join("target/bench-cache").display(),
        component_path.display()
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    let b = Arc::new(rt.block_on(Backstop::from_config(config)).unwrap());
    let input = serde_json::json!({"say": "hi"});
    let input_text = input.to_string();

    // The bare call: the runtime's engine (same pooling allocator and
    // epoch settings) and compiled component, a plain WASI context, host
    // imports that answer constants.
    let engine = b.runtime().engine().clone();
    let (component, _, _) = b.runtime().compile(&component_path).unwrap();
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    {
        let mut host = linker.instance("backstop:tool/host@0.1.0").unwrap();
        host.func_new("log", |_, _, _, _| Ok(())).unwrap();
        host.func_new("context", |_, _, _, results| {
            results[0] = Val::Record(vec![
                ("idempotency-key".into(), Val::String("key".into())),
                ("attempt".into(), Val::U32(1)),
                ("deadline-ms".into(), Val::U64(1000)),
                ("tool-name".into(), Val::String("echo".into())),
            ]);
            Ok(())
        })
        .unwrap();
    }
    let pre = linker.instantiate_pre(&component).unwrap();
    let bare_call = || async {
        let mut store = Store::new(
            &engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(100);
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let invoke = instance.get_func(&mut store, "invoke").unwrap();
        let mut results = [Val::Bool(false)];
        invoke
            .call_async(&mut store, &[Val::String(input_text.clone())], &mut results)
            .await
            .unwrap();
        assert!(matches!(&results[0], Val::Result(Ok(_))), "{results:?}");
    };
    if std::env::var_os("BENCH_PROFILE_BARE").is_some() {
        rt.block_on(async {
            for _ in 0..20000 {
                bare_call().await;
            }
        });
        std::process::exit(0);
    }
    let bare = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                bare_call().await;
            }
        })
    });
    let tool = b.tool("echo").unwrap();
    let ctx = backstop::runtime::CallCtx {
        key: "key".into(),
        attempt: 1,
        timeout: Duration::from_secs(5),
    };
    let invoke = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                tool.invoke(&input_text, &ctx).await.unwrap();
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
        bare,
        guarded,
        invoke,
        throughput,
        throughput_noop_wasm,
        workers,
    }
}
