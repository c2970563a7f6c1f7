//! Retry policies for activities and sub-orchestrations.
//!
//! A policy is plain data; the orchestration context applies it with durable primitives
//! (a durable timer between attempts, then a new schedule action), so retries survive
//! restarts and replay deterministically. This module only computes delays and decides
//! whether another attempt is allowed.

use std::time::Duration;

use crate::error::FailureDetails;

/// How to retry a failed activity or sub-orchestration.
///
/// The delay before attempt *n + 1* is `first_retry_interval × backoff_coefficient^(n−1)`,
/// capped at `max_retry_interval`. Failures marked non-retriable are never retried.
///
/// ```
/// use duro_sdk::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::new(4, Duration::from_secs(1))
///     .with_backoff_coefficient(2.0)
///     .with_max_retry_interval(Duration::from_secs(3));
/// assert_eq!(policy.delay_after_attempt(1), Duration::from_secs(1));
/// assert_eq!(policy.delay_after_attempt(2), Duration::from_secs(2));
/// assert_eq!(policy.delay_after_attempt(3), Duration::from_secs(3)); // capped
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub first_retry_interval: Duration,
    /// Multiplier applied to the delay after each further failure (≥ 1 makes sense).
    pub backoff_coefficient: f64,
    /// Upper bound of a single delay.
    pub max_retry_interval: Option<Duration>,
    /// Give up once this much orchestration time has passed since the first attempt.
    pub retry_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts in total and a fixed `first_retry_interval`
    /// (backoff coefficient 1, no cap, no overall timeout).
    pub fn new(max_attempts: u32, first_retry_interval: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            first_retry_interval,
            backoff_coefficient: 1.0,
            max_retry_interval: None,
            retry_timeout: None,
        }
    }

    /// Sets the backoff coefficient.
    pub fn with_backoff_coefficient(mut self, coefficient: f64) -> Self {
        self.backoff_coefficient = coefficient;
        self
    }

    /// Caps each delay.
    pub fn with_max_retry_interval(mut self, max: Duration) -> Self {
        self.max_retry_interval = Some(max);
        self
    }

    /// Stops retrying once `timeout` has passed since the first attempt.
    pub fn with_retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = Some(timeout);
        self
    }

    /// The delay after failed attempt `attempt` (1-based), before the next one.
    pub fn delay_after_attempt(&self, attempt: u32) -> Duration {
        let mut secs = self.first_retry_interval.as_secs_f64();
        let coefficient = if self.backoff_coefficient.is_finite() && self.backoff_coefficient > 0.0 {
            self.backoff_coefficient
        } else {
            1.0
        };
        // Repeated multiplication (not powf) keeps the value identical on every platform,
        // which replay relies on.
        for _ in 1..attempt {
            secs *= coefficient;
            if let Some(max) = self.max_retry_interval {
                if secs >= max.as_secs_f64() {
                    break;
                }
            }
            if secs > 1e12 {
                break;
            }
        }
        // Whole milliseconds: timers are stored with millisecond precision.
        let mut delay = Duration::from_millis((secs * 1000.0).round().clamp(0.0, 1e15) as u64);
        if let Some(max) = self.max_retry_interval {
            delay = delay.min(max);
        }
        delay
    }

    /// Whether another attempt may follow failed attempt `attempt` (1-based) with `failure`.
    pub(crate) fn should_retry(&self, attempt: u32, failure: &FailureDetails) -> bool {
        !failure.is_non_retriable && attempt < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy::new(5, Duration::from_millis(100)).with_backoff_coefficient(3.0);
        assert_eq!(p.delay_after_attempt(1), Duration::from_millis(100));
        assert_eq!(p.delay_after_attempt(2), Duration::from_millis(300));
        assert_eq!(p.delay_after_attempt(3), Duration::from_millis(900));
        let p = p.with_max_retry_interval(Duration::from_millis(500));
        assert_eq!(p.delay_after_attempt(3), Duration::from_millis(500));
    }

    #[test]
    fn non_retriable_and_attempt_limit() {
        let p = RetryPolicy::new(2, Duration::from_secs(1));
        let f = FailureDetails::new("E", "x");
        assert!(p.should_retry(1, &f));
        assert!(!p.should_retry(2, &f));
        let nr = FailureDetails { is_non_retriable: true, ..f };
        assert!(!p.should_retry(1, &nr));
        assert_eq!(RetryPolicy::new(0, Duration::ZERO).max_attempts, 1);
    }
}
