//! The one place that decides retries: which failures are worth another try, how long to wait,
//! and how many tries a request and a whole run may spend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{RegistryClient, RegistryError};

/// Retry settings shared by every client of one run.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries per request, the first included.
    pub attempts: u32,
    /// First backoff; doubles each try, with full jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is capped to it.
    pub max_retry_after: Duration,
    /// Retries left for the whole run, so a sick registry cannot stretch a run forever.
    budget: Arc<AtomicU32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new(5, 500)
    }
}

impl RetryPolicy {
    pub fn new(attempts: u32, run_budget: u32) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            budget: Arc::new(AtomicU32::new(run_budget)),
        }
    }

    /// Whether another try may follow failure number `attempt` (0-based) with `error`; takes
    /// one retry from the run's budget when it may.
    pub fn may_retry(&self, attempt: u32, error: &RegistryError) -> bool {
        error.is_retryable()
            && attempt + 1 < self.attempts
            && self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok()
    }

    /// How long to wait before try `attempt + 1`: the server's `Retry-After` when it gave one
    /// (capped), else exponential backoff with full jitter.
    pub fn delay(&self, attempt: u32, error: &RegistryError) -> Duration {
        if let Some(after) = error.retry_after() {
            return after.min(self.max_retry_after);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        ceiling
            .mul_f64(fastrand::f64())
            .max(Duration::from_millis(10))
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl RegistryClient {
    /// Runs an idempotent operation, retrying retryable failures with backoff.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if self.retry.may_retry(attempt, &e) => {
                    let delay = self.retry.delay(attempt, &e);
                    tracing::warn!(registry = %self.label, operation = what, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, retry_after: Option<Duration>) -> RegistryError {
        RegistryError::Status {
            method: "GET".into(),
            url: "u".into(),
            status: code,
            errors: vec![],
            body_excerpt: None,
            retry_after,
        }
    }

    #[test]
    fn honours_and_caps_retry_after() {
        let policy = RetryPolicy::new(3, 10);
        assert_eq!(
            policy.delay(0, &status(429, Some(Duration::from_secs(2)))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.delay(0, &status(503, Some(Duration::from_secs(3600)))),
            Duration::from_secs(60)
        );
        assert!(policy.delay(3, &status(503, None)) <= Duration::from_millis(1600));
    }

    #[test]
    fn bounded_per_request_and_per_run() {
        let policy = RetryPolicy::new(3, 2);
        let e = status(503, None);
        assert!(policy.may_retry(0, &e));
        assert!(
            !policy.may_retry(2, &e),
            "third failure of a request is final"
        );
        assert!(policy.may_retry(1, &e));
        assert!(!policy.may_retry(0, &e), "run budget spent");
        assert!(!RetryPolicy::new(3, 10).may_retry(0, &status(404, None)));
    }

    #[test]
    fn parses_both_retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
