//! An upstream registry as the engine sees it: the origin (where tags are resolved, with a HEAD)
//! and its mirrors (where content is fetched by digest first), plus the host's transfer limit and
//! pull-quota reserve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::SyncError;
use super::queue::TransferSlots;
use crate::config::RegistrySettings;
use crate::reference::Digest;
use crate::registry::{
    CredentialStore, EndpointError, FetchedManifest, RegistryClient, RegistryError,
    RequestObserver, RetryPolicy, Usage, is_schema1, mirror_endpoint,
};

/// A tag's resolution, shared by the targets of a run.
type ResolvedCell = Arc<tokio::sync::OnceCell<Result<Digest, Arc<SyncError>>>>;

/// One upstream host.
pub struct Upstream {
    /// The registry name from the reference (`docker.io`), used in messages and metrics.
    pub host: String,
    pub origin: RegistryClient,
    /// Content-by-digest sources tried before the origin, in order.
    pub mirrors: Vec<RegistryClient>,
    /// Mirrors that could not be reached this run are not asked again.
    pub mirror_down: Vec<std::sync::atomic::AtomicBool>,
    /// Blob transfers at once from this host: big blobs biggest first, small ones in arrival
    /// order (see [`TransferSlots`]).
    pub transfers: TransferSlots,
    /// Stop spending manifest GETs at the origin when its reported pulls left reach this.
    pub reserve: u64,
    /// Manifests fetched by tag while resolving it (no usable HEAD, or no digest on it), kept
    /// by (repository, digest) so the copy does not GET them a second time.
    pub prefetched: Mutex<HashMap<(String, Digest), FetchedManifest>>,
    /// What each tag resolved to this run, when several targets ask (`share_resolutions`):
    /// upstream is asked once.
    resolved: Mutex<HashMap<(String, String), ResolvedCell>>,
    pub share_resolutions: bool,
    /// The origin's `GET /v2/` probe, made once per run: `Err` is the short reason every tag of
    /// an unreachable host fails with.
    probed: tokio::sync::OnceCell<Result<(), String>>,
    /// Changed tags found so far, and the download connections opened ahead for them (at most
    /// as many as big blobs may download at once).
    changed_tags: std::sync::atomic::AtomicUsize,
    bulk_opened: std::sync::atomic::AtomicUsize,
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
        max_in_flight: usize,
    ) -> Result<Upstream, SyncError> {
        let failed = |e: EndpointError| match e {
            EndpointError::Client(source) => SyncError::Upstream {
                host: registry.to_string(),
                source: Box::new(source),
            },
            other => SyncError::Endpoint(other),
        };
        let usage = Usage {
            label: registry.to_string(),
            limits: settings.limits(),
            retry: retry.clone(),
            observer,
            max_in_flight,
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
        let small = origin.small_requests();
        Ok(Upstream {
            host: registry.to_string(),
            origin,
            mirror_down: mirrors.iter().map(|_| Default::default()).collect(),
            mirrors,
            transfers: TransferSlots::new(settings.concurrency, small),
            reserve: u64::from(settings.rate_limit_reserve.unwrap_or(0)),
            prefetched: Default::default(),
            resolved: Default::default(),
            share_resolutions: false,
            probed: tokio::sync::OnceCell::new(),
            changed_tags: Default::default(),
            bulk_opened: Default::default(),
        })
    }

    /// Fails fast when the origin cannot be reached. The first tag that needs the origin probes
    /// it (`GET /v2/`, with its retries); a failure is logged once, with the request that
    /// failed, and every tag of the host then fails with one short reason and no request of
    /// its own. A tag that needs nothing from upstream (a pinned digest already mirrored) never
    /// calls this.
    pub async fn reachable(&self) -> Result<(), SyncError> {
        let probed = self
            .probed
            .get_or_init(|| async {
                self.origin.ping().await.map_err(|e| {
                    tracing::error!(
                        registry = %self.host, operation = "GET /v2/", error = %e,
                        "upstream unreachable; its tags fail without further requests this run"
                    );
                    match e {
                        // A TLS failure says which setting to fix: short enough for every tag.
                        RegistryError::Tls { .. } => {
                            format!("upstream {} unreachable: {e}", self.host)
                        }
                        _ => format!(
                            "upstream {} unreachable (GET /v2/ failed; the error is logged once)",
                            self.host
                        ),
                    }
                })
            })
            .await;
        probed.clone().map_err(SyncError::Unreachable)
    }

    /// A tag of this host was found changed: its blobs will be downloaded after two or more
    /// manifest round trips (the tag's manifest, an index's children). Opens a connection for
    /// big blob downloads now, one per changed tag and at most as many as big blobs may
    /// download at once, so the handshakes (TCP and TLS: two round trips) are done by the time
    /// the blobs are asked for. Not with mirrors (the blobs come from them first).
    pub fn tag_changed(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.mirrors.is_empty() {
            return;
        }
        let seen = self.changed_tags.fetch_add(1, Relaxed) + 1;
        let want = seen.min(self.transfers.big_quota());
        let Ok(opened) = self
            .bulk_opened
            .fetch_update(Relaxed, Relaxed, |n| (n < want).then_some(want))
        else {
            return;
        };
        for _ in opened..want {
            let upstream = Arc::clone(self);
            tokio::spawn(async move { upstream.origin.open_bulk_connection().await });
        }
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
    pub fn note_failure(&self, i: usize, error: &RegistryError) {
        if matches!(
            error,
            RegistryError::Transport { .. } | RegistryError::Tls { .. }
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

    /// What `tag` points at upstream: a `HEAD` when the registry answers it with a digest,
    /// otherwise a `GET` (within the pull quota) whose bytes are kept for the copy. A HEAD
    /// answered 405/501, or 404 for something the GET then finds (Nexus, some proxies), makes
    /// the rest of the run use GET at once; a tag is reported missing only after a GET said so.
    /// A schema 1 manifest is refused without a GET when the HEAD's media type says so.
    ///
    /// The host's first HEAD of the run, when it has no credentials, goes out in place of the
    /// `GET /v2/` ping (see `RegistryClient::head_in_place_of_ping`); the host is known
    /// reachable, or not, before any other request.
    pub async fn resolve(
        self: &Arc<Self>,
        repository: &str,
        tag: &str,
    ) -> Result<Digest, SyncError> {
        if !self.share_resolutions {
            return self.resolve_once(repository, tag).await;
        }
        let cell = {
            let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                resolved
                    .entry((repository.to_string(), tag.to_string()))
                    .or_default(),
            )
        };
        cell.get_or_init(|| async { self.resolve_once(repository, tag).await.map_err(Arc::new) })
            .await
            .clone()
            .map_err(SyncError::Shared)
    }

    async fn resolve_once(
        self: &Arc<Self>,
        repository: &str,
        tag: &str,
    ) -> Result<Digest, SyncError> {
        let learned = self.origin.learned();
        let mut head_missing = false;
        let probe = learned.head_probe().await;
        let first = if probe.is_some() && self.probed.get().is_none() {
            self.origin.head_in_place_of_ping(repository, tag).await
        } else {
            Err(None)
        };
        self.reachable().await?;
        if !learned.head_unreliable() {
            let head = match first {
                Ok(head) => Ok(Some(head)),
                // Sent without credentials to a host that asks for none: its answer stands,
                // and the HEAD is not sent again.
                Err(Some(e))
                    if matches!(e.status(), Some(404 | 405 | 501))
                        && self.origin.asks_nothing().await =>
                {
                    match e.status() {
                        Some(404) => Ok(None),
                        _ => Err(e),
                    }
                }
                Err(_) => self.origin.head_manifest(repository, tag).await,
            };
            match head {
                Ok(Some(head)) => {
                    learned.trust_head();
                    if let Some(media_type) = head.media_type.as_deref()
                        && is_schema1(media_type)
                    {
                        return Err(self.schema1(repository, tag));
                    }
                    if let Some(digest) = head.digest.filter(|d| d.is_sha256()) {
                        return Ok(digest);
                    }
                }
                Ok(None) => head_missing = true,
                Err(e) if matches!(e.status(), Some(405 | 501)) => {
                    learned.distrust_head(&self.host, &e.to_string());
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        self.check_quota()?;
        let fetched = match self.origin.get_manifest(repository, tag).await {
            Ok(fetched) => fetched,
            Err(e) if e.status() == Some(404) => {
                return Err(SyncError::NotFound(format!(
                    "GET /v2/{repository}/manifests/{tag} at {} answered 404",
                    self.host
                )));
            }
            Err(e) => return Err(self.error(e)),
        };
        if head_missing {
            learned.distrust_head(&self.host, "HEAD answered 404 for a manifest GET found");
        }
        drop(probe);
        let digest = fetched.digest.clone();
        self.prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((repository.to_string(), digest.clone()), fetched);
        Ok(digest)
    }

    /// A manifest fetched while resolving a tag, handed over once.
    pub fn take_prefetched(&self, repository: &str, digest: &Digest) -> Option<FetchedManifest> {
        self.prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(repository.to_string(), digest.clone()))
    }

    fn schema1(&self, repository: &str, tag: &str) -> SyncError {
        SyncError::Schema1 {
            image: format!("{}/{repository}:{tag}", self.host),
        }
    }

    pub fn error(&self, source: RegistryError) -> SyncError {
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
