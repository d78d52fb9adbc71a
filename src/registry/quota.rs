//! Docker Hub's pull quota as a host reports it (`ratelimit-remaining: 76;w=21600` on manifest
//! answers), counted down locally between answers, so a run can stop pulling before the quota
//! reaches the configured reserve.

use std::sync::atomic::Ordering;

use reqwest::header::HeaderMap;

use super::RegistryClient;

impl RegistryClient {
    /// Reserves one pull (a manifest GET, which Docker Hub counts) unless that would take the
    /// remaining quota to `reserve` or below; `Err(left)` then. Always allowed while the
    /// registry has reported no quota.
    pub fn reserve_pull(&self, reserve: u64) -> Result<(), u64> {
        self.pulls_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                if n < 0 {
                    Some(n)
                } else if (n as u64) <= reserve {
                    None
                } else {
                    Some(n - 1)
                }
            })
            .map(|_| ())
            .map_err(|n| n.max(0) as u64)
    }

    /// Reads `ratelimit-remaining: 76;w=21600` (the integer before `;`).
    pub(super) fn note_ratelimit(&self, headers: &HeaderMap) {
        let remaining = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(remaining) = remaining {
            // Concurrent answers arrive out of order, and local reservations run ahead of
            // them: within a window the count only goes down, so keep the lowest.
            let remaining = remaining.min(i64::MAX as u64) as i64;
            let _ = self
                .pulls_remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(if n < 0 { remaining } else { n.min(remaining) })
                });
            if let Some(observer) = &self.observer {
                observer.ratelimit_remaining(&self.label, remaining as u64);
            }
        }
    }
}
