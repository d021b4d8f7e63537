//! The thundering-herd scenario of the AWS backoff study ("Exponential
//! Backoff And Jitter", 2015), re-implemented as a discrete-event
//! simulation whose clients decide with Backstop's own `RetryPolicy`.
//!
//! OCC: N clients each want to write one row once. A client reads the
//! version, then writes with it; the write fails if another write landed
//! in between, and the client backs off and starts over. Every message
//! crosses a network of |Normal(10 ms, 2 ms)| delay. Counted: writes that
//! reached the server ("calls"), and when the last client finished.
//!
//! Rate limit: N clients each make one call to a server that admits
//! `capacity` calls per second (a token bucket) and answers the rest 429
//! with `Retry-After`, either honoured (Backstop) or ignored.

use backstop::guard::{Backoff, Decision, Jitter, RetryPolicy};
use backstop::{Effect, Failure, FailureClass};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

pub const JITTERS: [(Jitter, &str); 5] = [
    (Jitter::None, "none (plain exponential)"),
    (Jitter::Full, "full"),
    (Jitter::Equal, "equal"),
    (Jitter::Decorrelated, "decorrelated"),
    (Jitter::Narrow, "SDK-style x0.75-1.0"),
];

fn policy(jitter: Jitter, base_ms: u64, cap_ms: u64) -> RetryPolicy {
    RetryPolicy {
        attempts: u32::MAX,
        backoff: Backoff::new(
            Duration::from_millis(base_ms),
            Duration::from_millis(cap_ms),
            jitter,
        )
        .unwrap(),
        max_retry_after: Duration::from_secs(3600),
    }
}

/// |Normal(mean, sd)| in microseconds (Box-Muller).
fn net(rng: &mut StdRng) -> u64 {
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    ((10_000.0 + 2_000.0 * z).abs()) as u64
}

/// Asks the policy what to do after `attempt` failed.
fn next_wait(
    p: &RetryPolicy,
    failure: &Failure,
    attempt: u32,
    previous: Duration,
    rng: &mut StdRng,
) -> Duration {
    match p.decide(
        failure,
        Effect::Idempotent,
        attempt,
        previous,
        Duration::MAX,
        rng,
    ) {
        Decision::Retry(d) => d,
        other => panic!("the simulation retries until done, got {other:?}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    ReadAtServer(usize),
    ReadReply(usize, u64),
    WriteAtServer(usize, u64),
    WriteReply(usize, bool),
}

pub struct Result {
    pub calls: f64,
    pub seconds: f64,
}

/// Mean over `runs` simulations of `clients` contending clients.
pub fn occ(clients: usize, jitter: Jitter, runs: u64) -> Result {
    let p = policy(jitter, 5, 2000);
    let conflict = Failure::new(FailureClass::Transient, "version changed");
    let (mut calls, mut time) = (0u64, 0u64);
    for seed in 0..runs {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut q: BinaryHeap<Reverse<(u64, Ev)>> = BinaryHeap::new();
        let mut attempt = vec![0u32; clients];
        let mut previous = vec![Duration::ZERO; clients];
        let mut version = 0u64;
        for c in 0..clients {
            q.push(Reverse((net(&mut rng), Ev::ReadAtServer(c))));
        }
        let mut now = 0;
        while let Some(Reverse((t, ev))) = q.pop() {
            now = t;
            let (at, next) = match ev {
                Ev::ReadAtServer(c) => (t + net(&mut rng), Ev::ReadReply(c, version)),
                Ev::ReadReply(c, v) => (t + net(&mut rng), Ev::WriteAtServer(c, v)),
                Ev::WriteAtServer(c, v) => {
                    calls += 1;
                    let ok = v == version;
                    if ok {
                        version += 1;
                    }
                    (t + net(&mut rng), Ev::WriteReply(c, ok))
                }
                Ev::WriteReply(_, true) => continue,
                Ev::WriteReply(c, false) => {
                    attempt[c] += 1;
                    let wait = next_wait(&p, &conflict, attempt[c], previous[c], &mut rng);
                    previous[c] = wait;
                    let wait = wait.as_micros() as u64;
                    (t + net(&mut rng) + wait, Ev::ReadAtServer(c))
                }
            };
            q.push(Reverse((at, next)));
        }
        time += now;
    }
    Result {
        calls: calls as f64 / runs as f64,
        seconds: time as f64 / runs as f64 / 1e6,
    }
}

/// Mean over `runs` simulations: `clients` callers at once against a
/// server admitting `capacity` calls per second (bucket of `capacity / 10`),
/// answering the rest 429 with the whole seconds until a token is free.
pub fn rate_limited(clients: usize, capacity: u64, honour_retry_after: bool, runs: u64) -> Result {
    let p = policy(Jitter::Full, 100, 20_000);
    let (mut calls, mut time) = (0u64, 0u64);
    let interval = 1_000_000 / capacity; // µs per token
    let burst = (capacity / 10).max(1);
    for seed in 0..runs {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut q: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut attempt = vec![0u32; clients];
        let mut previous = vec![Duration::ZERO; clients];
        for c in 0..clients {
            q.push(Reverse((net(&mut rng), c)));
        }
        // Token bucket: `tokens` at time `filled`.
        let (mut tokens, mut filled) = (burst, 0u64);
        let mut now = 0;
        while let Some(Reverse((t, c))) = q.pop() {
            calls += 1;
            let earned = (t - filled) / interval;
            if earned > 0 {
                tokens = (tokens + earned).min(burst);
                filled += earned * interval;
            }
            if tokens > 0 {
                tokens -= 1;
                now = now.max(t + net(&mut rng));
                continue;
            }
            // HTTP's Retry-After is in whole seconds.
            let free_in = filled + interval - t;
            let asked = Duration::from_secs(free_in.div_ceil(1_000_000));
            let mut f = Failure::new(FailureClass::RateLimited, "429");
            if honour_retry_after {
                f.retry_after = Some(asked);
            }
            attempt[c] += 1;
            let wait = next_wait(&p, &f, attempt[c], previous[c], &mut rng);
            previous[c] = wait;
            let back = t + net(&mut rng);
            q.push(Reverse((back + wait.as_micros() as u64 + net(&mut rng), c)));
        }
        time += now;
    }
    Result {
        calls: calls as f64 / runs as f64,
        seconds: time as f64 / runs as f64 / 1e6,
    }
}
