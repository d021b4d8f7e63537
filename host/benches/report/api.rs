//! What the HTTP API and the operating features cost: a call through
//! `POST /v1/calls` (keep-alive client and server on this machine) against
//! `Backstop::call` of the same component in the same run, sequential and
//! with many callers; and a `/metrics` scrape.

use crate::stats::{per_op, Spread};
use backstop::{Backstop, Config};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Figures {
    pub direct: Spread,
    pub http: Spread,
    pub direct_per_s: f64,
    pub http_per_s: f64,
    pub callers: usize,
    pub scrape: Spread,
    pub scrape_bytes: usize,
}

pub fn measure(root: &Path, samples: usize, n: u64, seconds: u64) -> Figures {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version = 1\ncache_dir = \"{}\"\nstate = \"sqlite:{}\"\n[tools.echo]\ncomponent = \
            \"{}\"\n",
        root.join("target/bench-cache").display(),
        dir.path().join("state.db").display(),
        root.join("plugins/dist/echo_rs.wasm").display()
    );
    let config = Config::from_str(&text, "bench.toml", root).unwrap();
    let b = Arc::new(rt.block_on(Backstop::from_config(config)).unwrap());
    let listener = rt
        .block_on(backstop::serve::bind(([127, 0, 0, 1], 0).into(), None))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(backstop::serve::serve(b.clone(), listener, None, async {
        let _ = stopped.await;
    }));
    let input = serde_json::json!({"say": "hi"});
    let body = serde_json::json!({"chain": "echo", "input": input}).to_string();
    // Idle connections are dropped before the server's 10 s idle limit
    // closes them: reusing one the server is closing fails the request.
    backstop::models::install_tls_provider();
    let client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("{base}/v1/calls");

    let direct = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                assert!(b.call("echo", input.clone()).await.unwrap().ok);
            }
        })
    });
    let post = |client: reqwest::Client, url: String, body: String| async move {
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let o: serde_json::Value = res.json().await.unwrap();
        assert_eq!(o["ok"], true);
    };
    let http = per_op(samples, n, || {
        rt.block_on(async {
            for _ in 0..n {
                post(client.clone(), url.clone(), body.clone()).await;
            }
        })
    });

    let callers = workers * 8;
    let rate = |over_http: bool| {
        let done = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(seconds);
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..callers {
                let (b, done, input) = (b.clone(), done.clone(), input.clone());
                let (client, url, body) = (client.clone(), url.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        if over_http {
                            post(client.clone(), url.clone(), body.clone()).await;
                        } else {
                            assert!(b.call("echo", input.clone()).await.unwrap().ok);
                        }
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
    let direct_per_s = rate(false);
    let http_per_s = rate(true);

    let mut scrape_bytes = 0;
    let scrape = per_op(samples, 10, || {
        rt.block_on(async {
            for _ in 0..10 {
                let text = client
                    .get(format!("{base}/metrics"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                scrape_bytes = text.len();
            }
        })
    });
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
    Figures {
        direct,
        http,
        direct_per_s,
        http_per_s,
        callers,
        scrape,
        scrape_bytes,
    }
}
