//! The guards every call passes through, outermost first:
//!
//! 1. **deadline**: one deadline covers every attempt of a chain call;
//! 2. **chain**: targets are tried in order; a failure that retries cannot
//!    fix moves to the next target, and the outcome says so;
//! 3. **bulkhead**: per target and for the host; a full one (queue
//!    included, its wait counted against the deadline) fails the target
//!    fast, like an open breaker;
//! 4. **breaker**: per target; an open breaker fails the target fast,
//!    without running it;
//! 5. **retry**: bounded attempts with jittered backoff; Retry-After is
//!    honoured and never undercut;
//! 6. **attempt timeout**: each attempt gets the target's timeout, cut to
//!    what is left of the deadline.
//!
//! Only this layer retries: targets (tools, model clients) never do.

mod backoff;
mod breaker;
pub mod bulkhead;
mod chain;
mod retry;
pub mod shared;

pub use backoff::{Backoff, Jitter};
pub use breaker::{
    Breaker, BreakerPolicy, BreakerState, Change, Forced, Permit, Rejected, Remote, SharedBreaker,
    Transitions,
};
pub use bulkhead::{Bulkhead, BulkheadPolicy};
pub use chain::{Breakers, ChainRunner, ChainTarget};
pub use retry::{Decision, RetryPolicy};
pub use shared::Action;
