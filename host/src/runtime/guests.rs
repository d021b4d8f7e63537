//! Where guest code runs: its own threads, not the caller's.
//!
//! A guest computing without end used to run on the async runtime's
//! workers: 100 spinning calls held both workers, every other request of
//! `backstop serve` (`/healthz` included) waited tens of seconds, and the
//! calls' own timeouts fired late because their timers could not run.
//!
//! Now a call's first slice runs on the caller's task (a call that ends
//! before the next epoch tick, which is most of them, costs no thread
//! hop); when the guest is still running at the next tick, or waits on a
//! host call, the rest of the call moves to the guest pool, a runtime of
//! its own. At most one first slice per core runs on callers' threads at
//! a time, and none while guests already run on the pool: a flood of slow
//! guests goes straight there. There every running guest yields at each epoch tick, so the
//! guests share the pool's threads and each is stopped at its own deadline,
//! while the caller's runtime only waits on a timer. Its blocking pool is
//! where the guests' file operations run; the pool is shut down without
//! waiting for them when the host is dropped, so a guest stuck in the
//! kernel cannot keep the process alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

pub struct GuestPool {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// Calls running on the pool now.
    on_pool: Arc<AtomicUsize>,
    /// Calls in their first slice on a caller's thread now, and how many
    /// may be: a first slice can run up to one epoch tick before it
    /// yields, so at most this many of the callers' workers are ever
    /// busy with guest code.
    inline: AtomicUsize,
    max_inline: usize,
}

/// One of the first slices allowed on callers' threads, given back when
/// the slice ends (or its caller goes away mid-slice).
struct Inline<'a>(&'a AtomicUsize);

impl<'a> Inline<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Inline<'a>> {
        if count.fetch_add(1, Ordering::AcqRel) < max {
            Some(Inline(count))
        } else {
            count.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

impl Drop for Inline<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a call off the pool when its task ends or is aborted.
struct OnPool(Arc<AtomicUsize>);

impl Drop for OnPool {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Host code under a guest call (the output schema check) recurses in the
/// depth of the value: give it room beyond tokio's 2 MiB default. Only the
/// pages touched are ever committed.
const STACK: usize = 64 << 20;

impl GuestPool {
    pub fn new(threads: usize) -> std::io::Result<GuestPool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("backstop-guest")
            .thread_stack_size(STACK)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(GuestPool {
            runtime: Some(runtime),
            handle,
            on_pool: Arc::new(AtomicUsize::new(0)),
            inline: AtomicUsize::new(0),
            max_inline: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Runs `call` as described in the module docs, for at most `limit`
    /// from now. The timer is armed only if the call outlives its first
    /// slice: most calls end there, and a timer costs a clock read and a
    /// registration with the runtime's driver.
    pub async fn run<T: Send + 'static>(
        &self,
        mut call: Pin<Box<dyn Future<Output = T> + Send>>,
        limit: Duration,
    ) -> Result<T, Ended> {
        // While guests already run on the pool (a flood of slow ones), or
        // enough first slices run on callers' threads, go straight there.
        let slot = (self.on_pool.load(Ordering::Relaxed) == 0)
            .then(|| Inline::take(&self.inline, self.max_inline))
            .flatten();
        // A first slice is bounded by the next epoch tick (guest code
        // yields there) or by the first host call that has to wait.
        let started = std::time::Instant::now();
        if let Some(slot) = slot {
            let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            drop(slot);
            if let Poll::Ready(v) = first {
                return Ok(v);
            }
        }
        self.on_pool.fetch_add(1, Ordering::Relaxed);
        let counted = OnPool(self.on_pool.clone());
        let task = AbortOnDrop(self.handle.spawn(async move {
            let _counted = counted;
            call.await
        }));
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, task).await {
            Err(_) => Err(Ended::TimedOut),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_panic() => Err(Ended::Panicked(panic_text(e.into_panic()))),
            Ok(Err(_)) => Err(Ended::Panicked("the guest pool was shut down".to_owned())),
        }
    }
}

/// Why [`GuestPool::run`] has no value.
#[derive(Debug)]
pub enum Ended {
    /// The limit passed first; the call was cancelled.
    TimedOut,
    /// Host code under the call panicked (a guest's own trap is a value).
    Panicked(String),
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast_ref::<&str>()
            .map_or_else(|| "a host task panicked".to_owned(), |s| (*s).to_owned()),
    }
}

/// Cancels the guest's task when the caller stops waiting (its timeout
/// fired, or its own caller went away): the Store is dropped on the
/// pool at the guest's next yield.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for GuestPool {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never wait: a blocking thread stuck in a host call must not
            // hold up the host's exit, and a runtime may not be dropped
            // from inside another runtime's task.
            rt.shutdown_background();
        }
    }
}
