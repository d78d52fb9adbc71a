//! An upstream registry as the engine sees it: the origin (where tags are resolved, with a HEAD)
//! and its mirrors (where content is fetched by digest first), plus the host's transfer limit and
//! pull-quota reserve.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::SyncError;
use crate::config::RegistrySettings;
use crate::registry::{
    CredentialStore, EndpointError, RegistryClient, RequestObserver, RetryPolicy, Usage,
    mirror_endpoint,
};

/// One upstream host.
pub struct Upstream {
    /// The registry name from the reference (`docker.io`), used in messages and metrics.
    pub host: String,
    pub origin: RegistryClient,
    /// Content-by-digest sources tried before the origin, in order.
    pub mirrors: Vec<RegistryClient>,
    /// Mirrors that could not be reached this run are not asked again.
    pub mirror_down: Vec<std::sync::atomic::AtomicBool>,
    /// Blob transfers at once from this host.
    pub transfers: Semaphore,
    /// Stop spending manifest GETs at the origin when its reported pulls left reach this.
    pub reserve: u64,
}

impl Upstream {
    /// The upstream for `registry` (`docker.io`): its origin with the configured settings and
    /// credentials (`auth:`, else the Docker config), and its mirrors (anonymous, no retries:
    /// a mirror is an optimisation, the origin is the fallback). No request is made.
    pub async fn build(
        registry: &str,
        settings: &RegistrySettings,
        docker: &CredentialStore,
        retry: &RetryPolicy,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Upstream, SyncError> {
        let failed = |e: EndpointError| match e {
            EndpointError::Client(source) => SyncError::Upstream {
                host: registry.to_string(),
                source: Box::new(source),
            },
            other => SyncError::Other(other.to_string()),
        };
        let usage = Usage {
            label: registry.to_string(),
            limits: settings.limits(),
            retry: retry.clone(),
            observer,
        };
        let origin = RegistryClient::for_endpoint(
            &settings.endpoint,
            Some((docker, registry)),
            usage.clone(),
        )
        .await
        .map_err(failed)?;
        let mut mirrors = Vec::new();
        for endpoint in settings.mirrors.iter().filter_map(|m| mirror_endpoint(m)) {
            let usage = Usage {
                retry: RetryPolicy::new(1, 0),
                ..usage.clone()
            };
            mirrors.push(
                RegistryClient::for_endpoint(&endpoint, None, usage)
                    .await
                    .map_err(failed)?,
            );
        }
        Ok(Upstream {
            host: registry.to_string(),
            origin,
            mirror_down: mirrors.iter().map(|_| Default::default()).collect(),
            mirrors,
            transfers: Semaphore::new(settings.concurrency.max(1)),
            reserve: u64::from(settings.rate_limit_reserve.unwrap_or(0)),
        })
    }

    /// How many content sources there are: the mirrors, then the origin.
    pub fn source_count(&self) -> usize {
        self.mirrors.len() + 1
    }

    /// Content source `i`: mirrors first (in configured order), the origin last.
    pub fn source(&self, i: usize) -> &RegistryClient {
        self.mirrors.get(i).unwrap_or(&self.origin)
    }

    /// Whether source `i` may be asked: the origin always, a mirror until it was unreachable.
    pub fn usable(&self, i: usize) -> bool {
        self.mirror_down
            .get(i)
            .is_none_or(|down| !down.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Notes a failed request to source `i`: an unreachable mirror is skipped from now on.
    pub fn note_failure(&self, i: usize, error: &crate::registry::RegistryError) {
        if matches!(
            error,
            crate::registry::RegistryError::Transport { .. }
                | crate::registry::RegistryError::Tls { .. }
        ) && let Some(down) = self.mirror_down.get(i)
        {
            down.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(mirror = self.source(i).host(), error = %error, "mirror unreachable; using the origin for the rest of the run");
        }
    }

    /// Whether source `i` is the origin (where pulls count against a quota).
    pub fn is_origin(&self, i: usize) -> bool {
        i >= self.mirrors.len()
    }

    /// Reserves one pull at the origin before a manifest GET; fails with
    /// [`SyncError::Deferred`] when it would eat into the reserve. Reserving (not just
    /// checking) keeps tags copied in parallel from overspending together.
    pub fn check_quota(&self) -> Result<(), SyncError> {
        self.origin.reserve_pull(self.reserve).map_err(|left| {
            SyncError::Deferred(format!(
                "{} pull quota: {left} left, reserve {}",
                self.host, self.reserve
            ))
        })
    }

    pub fn error(&self, source: crate::registry::RegistryError) -> SyncError {
        if source.status() == Some(429) {
            return SyncError::Deferred(format!("{} is rate limiting us: {source}", self.host));
        }
        SyncError::Upstream {
            host: self.host.clone(),
            source: Box::new(source),
        }
    }
}

/// Shared handle.
pub type UpstreamRef = Arc<Upstream>;
