//! Copying a manifest and everything under it, children before parents.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{StreamExt, TryStreamExt};

use super::ledger::CopiedManifest;
use super::upstream::UpstreamRef;
use super::{BLOBS_PER_MANIFEST, Counters, Engine, MAX_INDEX_DEPTH, Mode, SyncError, rewrite};
use crate::config::Platform;
use crate::manifest::{self, Descriptor, Parsed};
use crate::reference::Digest;
use crate::registry::FetchedManifest;

/// A manifest this run copied, and its bytes when still held (see [`Engine::body_of`]).
pub(super) struct Copied {
    pub manifest: CopiedManifest,
    body: Option<Arc<FetchedManifest>>,
}

/// Where a manifest copy happens: which upstream repository to which target repository.
#[derive(Clone, Copy)]
pub(super) struct Route<'a> {
    pub upstream: &'a UpstreamRef,
    pub source_repo: &'a str,
    pub target_repo: &'a str,
    pub counters: &'a Arc<Counters>,
    /// `platforms_mode: sparse`: the chosen children are copied, the index is kept as is.
    pub sparse: bool,
}

/// An index fetched from upstream, with its child manifests.
struct Index<'a> {
    digest: &'a Digest,
    fetched: FetchedManifest,
    manifests: &'a [Descriptor],
}

impl Engine {
    /// Copies a manifest and everything it references into the target repository, once per run
    /// per (repository, digest, platform filter), and returns what it became (upstream's bytes,
    /// or a rewritten manifest). Does not write this manifest itself: the caller does, tag last.
    pub(super) async fn copy_manifest(
        &self,
        route: Route<'_>,
        digest: &Digest,
        filter: Option<&[Platform]>,
        depth: usize,
    ) -> Result<Copied, SyncError> {
        let mut key = filter.map(rewrite::filter_key).unwrap_or_default();
        if route.sparse && filter.is_some() {
            key.push_str(";sparse");
        }
        let cell = self.manifests.cell(route.target_repo, digest, &key);
        let mut mine = None;
        let slot = &mut mine;
        let result = cell
            .get_or_init(|| async move {
                match self.copy_manifest_once(route, digest, filter, depth).await {
                    Ok(manifest) => {
                        let manifest = Arc::new(manifest);
                        let copied = CopiedManifest::of(&manifest);
                        *slot = Some(manifest);
                        Ok(copied)
                    }
                    Err(e) => Err(Arc::new(e)),
                }
            })
            .await;
        let manifest = result.clone().map_err(SyncError::Shared)?;
        let body = mine.or_else(|| manifest.body());
        Ok(Copied { manifest, body })
    }

    /// The bytes of a copied manifest, to push: held by this task or another one still
    /// pushing it, or else read back from the target repository, where the task that copied it
    /// pushed it (the run does not keep manifest bytes once pushed).
    pub(super) async fn body_of(
        &self,
        repository: &str,
        copied: &Copied,
    ) -> Result<Arc<FetchedManifest>, SyncError> {
        if let Some(body) = &copied.body {
            return Ok(Arc::clone(body));
        }
        let digest = &copied.manifest.digest;
        match self
            .target
            .get_manifest(repository, &digest.to_string())
            .await?
        {
            Some(found) if found.digest == *digest => Ok(Arc::new(found)),
            _ => Err(SyncError::SharedManifestMissing {
                digest: digest.clone(),
                repository: repository.to_string(),
            }),
        }
    }

    async fn copy_manifest_once(
        &self,
        route: Route<'_>,
        digest: &Digest,
        filter: Option<&[Platform]>,
        depth: usize,
    ) -> Result<FetchedManifest, SyncError> {
        if depth > MAX_INDEX_DEPTH {
            return Err(SyncError::IndexTooDeep {
                digest: digest.clone(),
            });
        }
        let fetched = self.fetch_manifest(route, digest).await?;
        // Held until its children and blobs are copied: bounded for the run as a whole.
        let _held = self.manifest_budget.hold(fetched.bytes.len())?;
        let parsed = manifest::parse(&fetched.media_type, &fetched.bytes).map_err(|source| {
            SyncError::Manifest {
                digest: digest.clone(),
                source,
            }
        })?;
        match parsed {
            Parsed::Image { blobs } => {
                self.copy_blobs(route, &blobs).await?;
                if self.converts_to_oci() && rewrite::needs_oci_conversion(&fetched.media_type) {
                    return rewrite::convert_image(&fetched).map_err(|reason| SyncError::Rewrite {
                        digest: digest.clone(),
                        reason,
                    });
                }
                Ok(fetched)
            }
            Parsed::Index { manifests } => {
                let index = Index {
                    digest,
                    fetched,
                    manifests: &manifests,
                };
                self.copy_index(route, index, filter, depth).await
            }
        }
    }

    /// Makes an image's blobs present at the target, biggest first, a few at once.
    async fn copy_blobs(&self, route: Route<'_>, blobs: &[Descriptor]) -> Result<(), SyncError> {
        route
            .counters
            .blobs_total
            .fetch_add(blobs.len() as u64, Ordering::Relaxed);
        // After a failure no new blob starts, but the ones in flight finish: a transfer
        // dropped mid-request would leave its upload session in a state the registry no
        // longer matches, so it could not be cancelled.
        let failed = std::sync::atomic::AtomicBool::new(false);
        let failed = &failed;
        // Biggest first: over a long link the big blobs set the run's length.
        let mut by_size: Vec<&Descriptor> = blobs.iter().collect();
        by_size.sort_by_key(|blob| std::cmp::Reverse(blob.size));
        let transfers: Vec<_> = by_size
            .into_iter()
            .map(|blob| async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                let result = self
                    .ensure_blob(
                        route.upstream,
                        route.source_repo,
                        route.target_repo,
                        blob,
                        route.counters,
                    )
                    .await;
                if result.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                result
            })
            .collect();
        let results: Vec<Result<(), SyncError>> = futures_util::stream::iter(transfers)
            .buffer_unordered(BLOBS_PER_MANIFEST)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    /// Makes the chosen children of an index present at the target, then returns the index as
    /// it is to be pushed: upstream's bytes, or rewritten (filtered, children replaced,
    /// converted to OCI).
    async fn copy_index(
        &self,
        route: Route<'_>,
        index: Index<'_>,
        filter: Option<&[Platform]>,
        depth: usize,
    ) -> Result<FetchedManifest, SyncError> {
        let Index {
            digest,
            fetched,
            manifests,
        } = index;
        let keep = rewrite::select(manifests, filter);
        let chosen: Vec<&Descriptor> = manifests
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(child, _)| child)
            .collect();
        let replacements = std::sync::Mutex::new(HashMap::new());
        futures_util::stream::iter(chosen.into_iter().map(Ok))
            .try_for_each_concurrent(BLOBS_PER_MANIFEST, |child| {
                self.ensure_child(route, child, depth, &replacements)
            })
            .await?;
        let replacements = replacements.into_inner().unwrap_or_else(|p| p.into_inner());
        if route.sparse && !self.converts_to_oci() {
            return Ok(fetched);
        }
        let how = rewrite::IndexRewrite {
            keep: &keep,
            platforms: filter,
            replacements: &replacements,
            to_oci: self.converts_to_oci(),
        };
        match rewrite::rewrite_index(&fetched, manifests, &how).map_err(|reason| {
            SyncError::Rewrite {
                digest: digest.clone(),
                reason,
            }
        })? {
            Some(rewritten) => Ok(rewritten),
            None => Ok(fetched),
        }
    }

    /// GET a manifest by digest: from a mirror when one has it (verified by digest, so a stale
    /// or hostile mirror cannot inject anything), else from the origin, within its pull quota.
    pub(super) async fn fetch_manifest(
        &self,
        route: Route<'_>,
        digest: &Digest,
    ) -> Result<FetchedManifest, SyncError> {
        match &self.hub.fan_out {
            Some(fan_out) => {
                let key = (
                    format!("{}/{}", route.upstream.host, route.source_repo),
                    digest.clone(),
                );
                fan_out
                    .manifest(key, || self.fetch_manifest_once(route, digest))
                    .await
            }
            None => self.fetch_manifest_once(route, digest).await,
        }
    }

    /// [`Engine::fetch_manifest`] from upstream, for this engine alone.
    async fn fetch_manifest_once(
        &self,
        route: Route<'_>,
        digest: &Digest,
    ) -> Result<FetchedManifest, SyncError> {
        let upstream = route.upstream;
        if let Some(fetched) = upstream.take_prefetched(route.source_repo, digest) {
            return Ok(fetched);
        }
        for source in (0..upstream.source_count()).filter(|s| upstream.usable(*s)) {
            let client = upstream.source(source);
            if upstream.is_origin(source) {
                upstream.check_quota()?;
                return client
                    .get_manifest(route.source_repo, &digest.to_string())
                    .await
                    .map_err(|e| upstream.error(e));
            }
            match client
                .get_manifest(route.source_repo, &digest.to_string())
                .await
            {
                Ok(m) => return Ok(m),
                Err(e) => {
                    upstream.note_failure(source, &e);
                    tracing::info!(mirror = client.host(), %digest, error = %e, "mirror lacks the manifest; trying the next source")
                }
            }
        }
        Err(SyncError::NoManifestSource {
            digest: digest.clone(),
        })
    }

    /// Makes one child manifest of an index present at the target, by digest. Records what it
    /// became when it was rewritten on the way (upstream digest -> new descriptor).
    async fn ensure_child(
        &self,
        route: Route<'_>,
        child: &Descriptor,
        depth: usize,
        replacements: &std::sync::Mutex<HashMap<Digest, rewrite::Replacement>>,
    ) -> Result<(), SyncError> {
        if self
            .target
            .manifest_digest(route.target_repo, &child.digest.to_string())
            .await?
            .is_some()
        {
            return Ok(());
        }
        if self.mode == Mode::Sync
            && let Some(first) = self.target.by_digest_refusal()
        {
            return Err(super::refusals::refused_by_digest_before(first));
        }
        let child_route = Route {
            sparse: false,
            ..route
        };
        let copied =
            Box::pin(self.copy_manifest(child_route, &child.digest, None, depth + 1)).await?;
        let became = &copied.manifest;
        if self.mode == Mode::Sync {
            let body = self.body_of(route.target_repo, &copied).await?;
            self.target
                .put_manifest(route.target_repo, &became.digest.to_string(), &body)
                .await
                .map_err(|e| super::refusals::explain_by_digest(e, &self.target))?;
        }
        if became.digest != child.digest {
            replacements
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    child.digest.clone(),
                    rewrite::Replacement {
                        digest: became.digest.clone(),
                        size: became.size,
                        media_type: became.media_type.clone(),
                    },
                );
        }
        Ok(())
    }
}
