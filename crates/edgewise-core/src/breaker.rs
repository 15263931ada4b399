//! A circuit breaker for remote model endpoints (cloud fallback now, mesh offload next): after N
//! consecutive failures the endpoint is not tried for a cooldown, then one trial call decides.
//!
//! Written here rather than taken from a crate: the crates on offer wrap the call itself (futures,
//! their own error types, their own clocks), while callers here need the decision and the
//! recording apart — they pick another target when it is open — and tests need to drive time.
//! The state machine is twenty lines; time is passed in, so it is tested without sleeping.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is out; others are refused until it reports.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

/// Why a call may not go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    /// Time until the next trial call is let through; zero while a trial is in flight.
    pub retry_in: Duration,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures (at least 1) for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: State::Closed { failures: 0 },
        }
    }

    /// Whether a call may go out at `now`. When the cooldown has passed this lets exactly one
    /// trial through (half-open); its success closes the breaker, its failure reopens it.
    pub fn allow(&mut self, now: Instant) -> Result<(), BreakerOpen> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Ok(())
            }
            State::Open { until } => Err(BreakerOpen {
                retry_in: until - now,
            }),
            State::HalfOpen => Err(BreakerOpen {
                retry_in: Duration::ZERO,
            }),
        }
    }

    pub fn record_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn record_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.cooldown,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_lets_one_trial_through_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            assert!(b.allow(t0).is_ok());
            b.record_failure(t0);
        }
        assert!(!b.is_open(), "two failures of three");
        b.record_failure(t0);
        assert!(b.is_open());
        let refused = b.allow(t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_secs(20));

        // Cooldown over: one trial, a second caller waits for it.
        let t1 = t0 + Duration::from_secs(30);
        assert!(b.allow(t1).is_ok());
        assert_eq!(b.allow(t1).unwrap_err().retry_in, Duration::ZERO);
        // The trial fails: open again for a full cooldown from then.
        b.record_failure(t1);
        assert!(b.allow(t1 + Duration::from_secs(29)).is_err());
        assert!(b.allow(t1 + Duration::from_secs(30)).is_ok());
        b.record_success();
        assert!(!b.is_open());
        assert!(b.allow(t1 + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(2, Duration::from_secs(5));
        b.record_failure(t);
        b.record_success();
        b.record_failure(t);
        assert!(!b.is_open());
        b.record_failure(t);
        assert!(b.is_open());
    }

    #[test]
    fn a_zero_threshold_means_one() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(0, Duration::from_secs(5));
        assert!(b.allow(t).is_ok());
        b.record_failure(t);
        assert!(b.is_open());
    }
}
