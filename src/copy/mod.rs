//! The engine: one tag's journey from upstream to target, for every configured tag.
//!
//! For each tag ([`Engine::sync_item`]): HEAD upstream and target with the same Accept list; the
//! same digest means unchanged and nothing more is asked upstream. Otherwise the manifest is
//! fetched by digest (exact bytes, digest verified), its blobs are made present at the target
//! (skipped when there, mounted when another target repository has them, else streamed and
//! verified), child manifests are pushed by digest, and the tag is written last.
//!
//! Tags run in parallel up to `concurrency`; blob transfers per upstream host are bounded by that
//! host's `concurrency`. A failing tag never stops the others.

mod ledger;
mod rewrite;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::TryStreamExt;
use tokio::sync::Semaphore;

use crate::config::{Config, CredentialStore, Platform, SyncItem, TargetKind};
use crate::manifest::{self, Descriptor, ManifestError, Parsed};
use crate::reference::Digest;
use crate::registry::{ClientOptions, FetchedManifest, RegistryClient, RegistryError};
use crate::report::{CopyStats, TagOutcome, TagResult};
use crate::target::{OciLayout, Target, TargetError};
use ledger::{BlobLedger, ManifestLedger};

/// Indexes may nest; deeper than this is refused rather than followed.
const MAX_INDEX_DEPTH: usize = 4;
/// Blob checks and copies started at once within one manifest.
const BLOBS_PER_MANIFEST: usize = 8;

/// Why one tag could not be synced.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("upstream {host}: {source}")]
    Upstream {
        host: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("not found upstream: {0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

/// Whether the engine copies or only reports what it would copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    /// `mirrorsync plan`: reads only, writes nothing anywhere.
    Plan,
}

/// An upstream registry host and its transfer limit.
struct Upstream {
    host: String,
    client: RegistryClient,
    transfers: Semaphore,
}

/// Per-tag counters, shared with the tasks that do the tag's work.
#[derive(Default)]
struct Counters {
    copied: AtomicU64,
    copied_bytes: AtomicU64,
    mounted: AtomicU64,
    present: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> CopyStats {
        CopyStats {
            copied: self.copied.load(Ordering::Relaxed),
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
            mounted: self.mounted.load(Ordering::Relaxed),
            present: self.present.load(Ordering::Relaxed),
        }
    }
}

/// Everything one run shares.
pub struct Engine {
    config: Arc<Config>,
    mode: Mode,
    target: Target,
    credentials: CredentialStore,
    upstreams: tokio::sync::Mutex<HashMap<String, Arc<Upstream>>>,
    blobs: BlobLedger,
    manifests: ManifestLedger,
}

impl Engine {
    /// Prepares a run: builds the target client (no request is made yet).
    pub fn new(config: Arc<Config>, mode: Mode) -> Result<Self, SyncError> {
        let target = match &config.target.kind {
            TargetKind::Registry(endpoint) => Target::Registry(Box::new(
                RegistryClient::new(ClientOptions {
                    host: endpoint.host.clone(),
                    insecure: endpoint.insecure,
                    ca_file: endpoint.ca_file.clone(),
                    credentials: endpoint.credentials.clone(),
                })
                .map_err(|e| SyncError::Target(TargetError::Registry(e)))?,
            )),
            TargetKind::Path(path) => Target::Layout(OciLayout::new(path.clone())),
        };
        let credentials = CredentialStore::load(config.docker_config.as_deref())
            .map_err(|e| SyncError::Other(e.to_string()))?;
        Ok(Engine {
            config,
            mode,
            target,
            credentials,
            upstreams: tokio::sync::Mutex::new(HashMap::new()),
            blobs: BlobLedger::default(),
            manifests: ManifestLedger::default(),
        })
    }

    /// The target, for commands that inspect it.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Syncs (or plans) every configured tag, `concurrency` at a time, in file order of start.
    pub async fn run(self: &Arc<Self>) -> Vec<TagOutcome> {
        let limit = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, item) in self.config.images.iter().enumerate() {
            let engine = Arc::clone(self);
            let limit = Arc::clone(&limit);
            let item = item.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (index, engine.sync_item(&item).await)
            });
        }
        let mut outcomes: Vec<(usize, TagOutcome)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(pair) => outcomes.push(pair),
                Err(e) => tracing::error!(error = %e, "a sync task panicked"),
            }
        }
        outcomes.sort_by_key(|(i, _)| *i);
        outcomes.into_iter().map(|(_, o)| o).collect()
    }

    /// One tag's journey. Never panics; failures become [`TagResult::Failed`].
    pub async fn sync_item(&self, item: &SyncItem) -> TagOutcome {
        let started = std::time::Instant::now();
        let counters = Arc::new(Counters::default());
        let result = match self.sync_item_inner(item, &counters).await {
            Ok(result) => result,
            Err(error) => TagResult::Failed {
                error: error.to_string(),
            },
        };
        let outcome = TagOutcome {
            source: item.source.to_string(),
            target: target_name(item),
            result,
            stats: counters.snapshot(),
            duration: started.elapsed(),
        };
        outcome.log();
        outcome
    }

    async fn sync_item_inner(
        &self,
        item: &SyncItem,
        counters: &Arc<Counters>,
    ) -> Result<TagResult, SyncError> {
        let upstream = self.upstream(item.source.registry()).await?;
        let repository = item.source.repository();
        let up_err = |source| SyncError::Upstream {
            host: upstream.host.clone(),
            source: Box::new(source),
        };
        // 1. What upstream holds now: a HEAD, which Docker Hub does not count as a pull.
        let digest = match (item.source.digest(), item.source.tag()) {
            (Some(digest), _) => digest.clone(),
            (None, Some(tag)) => {
                let head = upstream
                    .client
                    .head_manifest(repository, tag)
                    .await
                    .map_err(up_err)?
                    .ok_or_else(|| {
                        SyncError::NotFound(format!(
                            "HEAD /v2/{repository}/manifests/{tag} at {} answered 404",
                            upstream.host
                        ))
                    })?;
                match head.digest {
                    Some(d) if d.is_sha256() => d,
                    // No usable Docker-Content-Digest on the HEAD: the GET tells us.
                    _ => {
                        upstream
                            .client
                            .get_manifest(repository, tag)
                            .await
                            .map_err(up_err)?
                            .digest
                    }
                }
            }
            (None, None) => {
                return Err(SyncError::Other(
                    "reference has neither tag nor digest".into(),
                ));
            }
        };
        // 2. What the target holds.
        let target_ref = item
            .target_tag
            .clone()
            .unwrap_or_else(|| digest.to_string());
        let current = self
            .target
            .manifest_digest(&item.target_repository, &target_ref)
            .await?;
        if current.as_ref() == Some(&digest) {
            return Ok(TagResult::Unchanged { digest });
        }
        let filter = item.platforms.as_deref();
        if let Some(current) = &current
            && (filter.is_some() || self.converts_to_oci())
        {
            // A rewritten manifest has its own digest; its annotations say what it was made from.
            let existing = self
                .target
                .get_manifest(&item.target_repository, &current.to_string())
                .await?;
            if existing.is_some_and(|m| rewrite::is_current(&m.bytes, &digest, filter)) {
                return Ok(TagResult::Unchanged {
                    digest: current.clone(),
                });
            }
        }
        let new = current.is_none();
        // 3. Content, children first; 4. the tag, last.
        let manifest = self
            .copy_manifest(
                &upstream,
                repository,
                &item.target_repository,
                &digest,
                filter,
                0,
                counters,
            )
            .await?;
        if self.mode == Mode::Sync {
            self.target
                .put_manifest(&item.target_repository, &target_ref, &manifest)
                .await?;
        }
        Ok(TagResult::Synced {
            digest: manifest.digest.clone(),
            new,
        })
    }

    /// Copies a manifest and everything it references into `target_repo`, once per run per
    /// (repository, digest, platform filter), and returns the bytes to push (the upstream bytes,
    /// or a filtered index). Does not write the manifest itself: the caller writes it, the tag
    /// last.
    #[allow(clippy::too_many_arguments)]
    async fn copy_manifest(
        &self,
        upstream: &Arc<Upstream>,
        source_repo: &str,
        target_repo: &str,
        digest: &Digest,
        filter: Option<&[Platform]>,
        depth: usize,
        counters: &Arc<Counters>,
    ) -> Result<Arc<FetchedManifest>, SyncError> {
        let key = filter.map(rewrite::filter_key).unwrap_or_default();
        let cell = self.manifests.cell(target_repo, digest, &key);
        let result = cell
            .get_or_init(|| async {
                self.copy_manifest_once(
                    upstream,
                    source_repo,
                    target_repo,
                    digest,
                    filter,
                    depth,
                    counters,
                )
                .await
                .map(Arc::new)
                .map_err(|e| e.to_string())
            })
            .await;
        result.clone().map_err(SyncError::Other)
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_manifest_once(
        &self,
        upstream: &Arc<Upstream>,
        source_repo: &str,
        target_repo: &str,
        digest: &Digest,
        filter: Option<&[Platform]>,
        depth: usize,
        counters: &Arc<Counters>,
    ) -> Result<FetchedManifest, SyncError> {
        if depth > MAX_INDEX_DEPTH {
            return Err(SyncError::Other(format!(
                "manifest {digest}: indexes nested deeper than {MAX_INDEX_DEPTH} levels"
            )));
        }
        let fetched = upstream
            .client
            .get_manifest(source_repo, &digest.to_string())
            .await
            .map_err(|source| SyncError::Upstream {
                host: upstream.host.clone(),
                source: Box::new(source),
            })?;
        let parsed = manifest::parse(&fetched.media_type, &fetched.bytes).map_err(|source| {
            SyncError::Manifest {
                digest: digest.clone(),
                source,
            }
        })?;
        match parsed {
            Parsed::Image { blobs } => {
                futures_util::stream::iter(blobs.iter().map(Ok))
                    .try_for_each_concurrent(BLOBS_PER_MANIFEST, |blob| {
                        self.ensure_blob(upstream, source_repo, target_repo, blob, counters)
                    })
                    .await?;
                if self.converts_to_oci() && rewrite::needs_oci_conversion(&fetched.media_type) {
                    return rewrite::convert_image(&fetched)
                        .map_err(|e| SyncError::Other(format!("manifest {digest}: {e}")));
                }
                Ok(fetched)
            }
            Parsed::Index { manifests } => {
                let keep = rewrite::select(&manifests, filter);
                let chosen: Vec<&Descriptor> = manifests
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| **k)
                    .map(|(child, _)| child)
                    .collect();
                let replacements = std::sync::Mutex::new(HashMap::new());
                futures_util::stream::iter(chosen.into_iter().map(Ok))
                    .try_for_each_concurrent(BLOBS_PER_MANIFEST, |child| {
                        self.ensure_child(
                            upstream,
                            source_repo,
                            target_repo,
                            child,
                            depth,
                            counters,
                            &replacements,
                        )
                    })
                    .await?;
                let replacements = replacements.into_inner().unwrap_or_else(|p| p.into_inner());
                let how = rewrite::IndexRewrite {
                    keep: &keep,
                    platforms: filter,
                    replacements: &replacements,
                    to_oci: self.converts_to_oci(),
                };
                match rewrite::rewrite_index(&fetched, &manifests, &how)
                    .map_err(|e| SyncError::Other(format!("manifest {digest}: {e}")))?
                {
                    Some(rewritten) => Ok(rewritten),
                    None => Ok(fetched),
                }
            }
        }
    }

    /// Whether manifests are converted to OCI on the way (an OCI layout target).
    fn converts_to_oci(&self) -> bool {
        matches!(self.target, Target::Layout(_))
    }

    /// Makes one child manifest of an index present at the target, by digest. Records what it
    /// became when it was rewritten on the way (upstream digest -> new descriptor).
    #[allow(clippy::too_many_arguments)]
    async fn ensure_child(
        &self,
        upstream: &Arc<Upstream>,
        source_repo: &str,
        target_repo: &str,
        child: &Descriptor,
        depth: usize,
        counters: &Arc<Counters>,
        replacements: &std::sync::Mutex<HashMap<Digest, rewrite::Replacement>>,
    ) -> Result<(), SyncError> {
        if self
            .target
            .manifest_digest(target_repo, &child.digest.to_string())
            .await?
            .is_some()
        {
            return Ok(());
        }
        let fetched = Box::pin(self.copy_manifest(
            upstream,
            source_repo,
            target_repo,
            &child.digest,
            None,
            depth + 1,
            counters,
        ))
        .await?;
        if self.mode == Mode::Sync {
            self.target
                .put_manifest(target_repo, &fetched.digest.to_string(), &fetched)
                .await?;
        }
        if fetched.digest != child.digest {
            replacements
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(child.digest.clone(), rewrite::Replacement::of(&fetched));
        }
        Ok(())
    }

    /// Makes one blob present in `target_repo`: skip, mount, or stream from upstream.
    async fn ensure_blob(
        &self,
        upstream: &Arc<Upstream>,
        source_repo: &str,
        target_repo: &str,
        blob: &Descriptor,
        counters: &Arc<Counters>,
    ) -> Result<(), SyncError> {
        if blob.foreign {
            return Ok(());
        }
        let slot = self.blobs.slot(&blob.digest);
        let mut holders = slot.lock().await;
        if holders.iter().any(|r| r == target_repo) {
            counters.present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self
            .target
            .blob_size(target_repo, &blob.digest)
            .await?
            .is_some()
        {
            holders.push(target_repo.to_string());
            counters.present.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(from) = holders.first().cloned() {
            if self.mode == Mode::Plan
                || self.mount_or_copy_within(&from, target_repo, blob).await?
            {
                holders.push(target_repo.to_string());
                counters.mounted.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        if self.mode == Mode::Sync {
            let _permit = upstream
                .transfers
                .acquire()
                .await
                .map_err(|e| SyncError::Other(e.to_string()))?;
            let response = upstream
                .client
                .get_blob(source_repo, &blob.digest)
                .await
                .map_err(|source| SyncError::Upstream {
                    host: upstream.host.clone(),
                    source: Box::new(source),
                })?;
            if let Some(length) = response.content_length()
                && length != blob.size
            {
                return Err(SyncError::Other(format!(
                    "upstream blob {} has Content-Length {length}, descriptor says {}",
                    blob.digest, blob.size
                )));
            }
            let stream = verify::from_response(response, blob.digest.clone(), blob.size);
            self.target
                .write_blob(target_repo, &blob.digest, stream)
                .await?;
            tracing::debug!(digest = %blob.digest, bytes = blob.size, repository = target_repo, "blob copied");
        }
        holders.push(target_repo.to_string());
        counters.copied.fetch_add(1, Ordering::Relaxed);
        counters
            .copied_bytes
            .fetch_add(blob.size, Ordering::Relaxed);
        Ok(())
    }

    /// A blob already in another target repository: mount it, or, when the target refuses
    /// mounts, copy it between target repositories so upstream is not asked again.
    async fn mount_or_copy_within(
        &self,
        from: &str,
        target_repo: &str,
        blob: &Descriptor,
    ) -> Result<bool, SyncError> {
        match self.target.mount(target_repo, &blob.digest, from).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cross-repository mount failed; copying within the target")
            }
        }
        let source = self.target.read_blob(from, &blob.digest, blob.size).await?;
        self.target
            .write_blob(target_repo, &blob.digest, source)
            .await?;
        Ok(true)
    }

    /// The client for an upstream host, built on first use with its settings and credentials.
    async fn upstream(&self, registry: &str) -> Result<Arc<Upstream>, SyncError> {
        let mut upstreams = self.upstreams.lock().await;
        if let Some(existing) = upstreams.get(registry) {
            return Ok(Arc::clone(existing));
        }
        let settings = self.config.registry(registry);
        let credentials = match settings.endpoint.credentials.clone() {
            Some(c) => Some(c),
            None => {
                let store = self.credentials.clone();
                let host = registry.to_string();
                tokio::task::spawn_blocking(move || store.get(&host))
                    .await
                    .map_err(|e| SyncError::Other(e.to_string()))?
                    .map_err(|e| SyncError::Other(e.to_string()))?
            }
        };
        let client = RegistryClient::new(ClientOptions {
            host: settings.endpoint.host.clone(),
            insecure: settings.endpoint.insecure,
            ca_file: settings.endpoint.ca_file.clone(),
            credentials,
        })
        .map_err(|source| SyncError::Upstream {
            host: registry.to_string(),
            source: Box::new(source),
        })?;
        let upstream = Arc::new(Upstream {
            host: registry.to_string(),
            client,
            transfers: Semaphore::new(settings.concurrency.max(1)),
        });
        upstreams.insert(registry.to_string(), Arc::clone(&upstream));
        Ok(upstream)
    }
}

/// `repository:tag` (or `repository@digest`) at the target, for messages.
pub fn target_name(item: &SyncItem) -> String {
    match (&item.target_tag, item.source.digest()) {
        (Some(tag), _) => format!("{}:{tag}", item.target_repository),
        (None, Some(d)) => format!("{}@{d}", item.target_repository),
        (None, None) => item.target_repository.clone(),
    }
}
