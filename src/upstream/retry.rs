//! When to try again: exponential backoff with jitter, at least what `Retry-After` asks.
//! Pure functions of their inputs (attempt number, a random draw, the clock), so tests need
//! no sleeping.

use std::time::{Duration, SystemTime};

/// A `Retry-After` longer than this is not waited for: the request fails instead.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, initial_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based): `initial · 2^(attempt-1)`,
    /// capped at `max_delay`, scaled by a jitter factor from `random` in [0,1) to between half
    /// and all of it; never less than `retry_after`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let backoff = self.initial_delay.saturating_mul(1 << exponent).min(self.max_delay);
        let jittered = backoff.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0));
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// Reads `Retry-After`: delay-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let policy = RetryPolicy { attempts: 5, initial_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        assert_eq!(policy.delay(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(policy.delay(2, None, 1.0), Duration::from_millis(200));
        assert_eq!(policy.delay(3, None, 0.0), Duration::from_millis(200), "half with the lowest draw");
        assert_eq!(policy.delay(10, None, 1.0), Duration::from_secs(1), "capped");
        assert_eq!(policy.delay(64, None, 1.0), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3)), 0.5), Duration::from_secs(3));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(0)));
        let earlier = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", earlier), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
