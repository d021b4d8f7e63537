//! How long to wait before the next attempt.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How randomness spreads retries so that clients failing together do not
/// retry together. `Full` is the default: the AWS backoff study found it
/// does the least total work under contention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in `[0, min(cap, base * 2^n)]`.
    #[default]
    Full,
    /// Half fixed, half random: `t/2 + uniform[0, t/2]`.
    Equal,
    /// `min(cap, uniform[base, 3 * previous])`: grows from the last wait.
    Decorrelated,
    /// Plain exponential, no randomness (for comparison only).
    None,
    /// `t * uniform[0.75, 1.0]`: the narrow jitter of the provider SDKs
    /// (for comparison: clients failing together still retry nearly
    /// together).
    Narrow,
}

/// Exponential backoff with jitter. Construct with [`Backoff::new`], which
/// rejects a base above the cap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Result<Self, String> {
        if base > cap {
            return Err(format!(
                "backoff base {} is above its cap {}",
                humantime::format_duration(base),
                humantime::format_duration(cap)
            ));
        }
        Ok(Backoff { base, cap, jitter })
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered ceiling for retry number `retry` (0 for the first
    /// retry): `min(cap, base * 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The wait before retry number `retry`, given the previous wait (used
    /// by decorrelated jitter).
    pub fn delay(&self, retry: u32, previous: Duration, rng: &mut impl Rng) -> Duration {
        let uniform = |rng: &mut dyn rand::RngCore, lo: Duration, hi: Duration| {
            if hi <= lo {
                lo
            } else {
                Duration::from_nanos(rng.random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64))
            }
        };
        match self.jitter {
            Jitter::None => self.ceiling(retry),
            Jitter::Full => uniform(rng, Duration::ZERO, self.ceiling(retry)),
            Jitter::Equal => {
                let half = self.ceiling(retry) / 2;
                half + uniform(rng, Duration::ZERO, half)
            }
            Jitter::Decorrelated => {
                let prev = previous.max(self.base);
                uniform(rng, self.base, prev.saturating_mul(3)).min(self.cap)
            }
            Jitter::Narrow => {
                let t = self.ceiling(retry);
                uniform(rng, t.mul_f64(0.75), t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_base_above_cap() {
        assert!(Backoff::new(ms(10), ms(5), Jitter::Full).is_err());
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(ms(100), ms(1000), Jitter::None).unwrap();
        let got: Vec<_> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(200), ms(1000));
    }

    #[test]
    fn every_jitter_stays_in_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for jitter in [
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::Narrow,
        ] {
            let b = Backoff::new(ms(10), ms(500), jitter).unwrap();
            let mut prev = Duration::ZERO;
            for n in 0..50 {
                let d = b.delay(n, prev, &mut rng);
                let ceiling = b.ceiling(n);
                match jitter {
                    Jitter::Full => assert!(d <= ceiling),
                    Jitter::Equal => assert!(d >= ceiling / 2 && d <= ceiling),
                    Jitter::Narrow => assert!(d >= ceiling.mul_f64(0.75) && d <= ceiling),
                    _ => assert!(d >= ms(10) && d <= ms(500) && d <= prev.max(ms(10)) * 3),
                }
                prev = d;
            }
        }
    }

    #[test]
    fn seeded_rng_repeats() {
        let b = Backoff::new(ms(10), ms(500), Jitter::Full).unwrap();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..5)
                .map(|n| b.delay(n, Duration::ZERO, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
