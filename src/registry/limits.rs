//! Per-host request and bandwidth limits (governor), so a run never exceeds what an operator
//! configured for a registry.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Bandwidth is metered in cells of this many bytes.
const CELL: usize = 1024;

pub use crate::config::LimitSettings;

/// The live limiters of one host.
pub struct HostLimits {
    requests: Option<DefaultDirectRateLimiter>,
    bytes: Option<(DefaultDirectRateLimiter, u32)>,
}

impl HostLimits {
    pub fn new(settings: LimitSettings) -> Self {
        let requests = settings
            .requests_per_second
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|rps| {
                let burst = settings
                    .burst
                    .unwrap_or_else(|| rps.ceil().max(1.0) as u32)
                    .max(1);
                let period = std::time::Duration::from_secs_f64(1.0 / rps);
                let quota = Quota::with_period(period)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                RateLimiter::direct(quota)
            });
        let bytes = settings.bytes_per_second.filter(|b| *b > 0).map(|bps| {
            let cells_per_second = (bps / CELL as u64).clamp(1, u32::MAX as u64) as u32;
            // A burst of a quarter second (at least 256 KiB) smooths the flow without letting
            // a chunk exceed the bucket.
            let burst = (cells_per_second / 4).max(256);
            let quota =
                Quota::per_second(NonZeroU32::new(cells_per_second).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            (RateLimiter::direct(quota), burst)
        });
        HostLimits { requests, bytes }
    }

    /// Waits until one more request is allowed.
    pub async fn request(&self) {
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
    }

    /// Waits until `n` more bytes may flow.
    pub async fn bytes(&self, n: usize) {
        let Some((limiter, burst)) = &self.bytes else {
            return;
        };
        let mut cells = n.div_ceil(CELL) as u32;
        while cells > 0 {
            let step = cells.min(*burst);
            if let Some(step) = NonZeroU32::new(step) {
                // `step` never exceeds the burst, so this cannot fail for lack of capacity.
                let _ = limiter.until_n_ready(step).await;
            }
            cells -= step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn holds_requests_to_the_configured_rate() {
        let limits = HostLimits::new(LimitSettings {
            requests_per_second: Some(20.0),
            burst: Some(1),
            bytes_per_second: None,
        });
        let start = Instant::now();
        for _ in 0..11 {
            limits.request().await;
        }
        // 1 immediately, then 10 at 50 ms each.
        assert!(start.elapsed().as_millis() >= 450, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn meters_bytes_larger_than_the_burst() {
        let limits = HostLimits::new(LimitSettings {
            requests_per_second: None,
            burst: None,
            bytes_per_second: Some(1024 * 1024),
        });
        let start = Instant::now();
        limits.bytes(1024 * 1024 + 300 * 1024).await;
        assert!(start.elapsed().as_millis() >= 900, "{:?}", start.elapsed());
    }
}
