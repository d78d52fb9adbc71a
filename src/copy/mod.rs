//! The engine: every configured tag's journey from upstream to target.
//!
//! A run has two phases. First every tag is inspected (`Engine::inspect`): HEAD upstream and
//! target with the same Accept list; the same digest means unchanged and nothing more is asked
//! upstream (HEADs do not count against Docker Hub's pull quota). Then only the changed tags are
//! copied (`Engine::copy_tag`), the longest-pending first, while the pull quota lasts: the
//! manifest is fetched by digest (exact bytes, digest verified), its blobs are made present at
//! the target (skipped, mounted, or streamed and verified), child manifests are pushed by digest,
//! and the tag is written last.
//!
//! Tags run in parallel up to `concurrency`; blob transfers per upstream host are bounded by that
//! host's `concurrency`. A failing tag never stops the others. A stop request (signal,
//! `--max-duration`) lets running tags finish within a grace period; the rest are deferred.

mod blobs;
mod download;
mod ledger;
mod manifests;
pub mod progress;
mod rewrite;
mod upstream;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, CredentialStore, SyncItem, TargetKind};
use crate::manifest::ManifestError;
use crate::reference::{Digest, TargetImage, TargetReference};
use crate::registry::{
    ClientOptions, LimitSettings, RegistryClient, RegistryError, RequestObserver, RetryPolicy,
};
use crate::report::{CopyStats, TagOutcome, TagResult};
use crate::target::{OciLayout, Target, TargetError};
use ledger::{BlobLedger, ManifestLedger};
use manifests::Route;
use upstream::{Upstream, UpstreamRef};

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
    /// Not a failure: the tag is left for a later run (quota reserve reached, stop requested).
    #[error("deferred: {0}")]
    Deferred(String),
    /// The same error, met by another tag that shared this work.
    #[error("{0}")]
    Shared(Arc<SyncError>),
    #[error("{0}")]
    Other(String),
}

impl SyncError {
    fn deferred_reason(&self) -> Option<&str> {
        match self {
            SyncError::Deferred(reason) => Some(reason),
            SyncError::Shared(inner) => inner.deferred_reason(),
            _ => None,
        }
    }
}

/// Whether the engine copies or only reports what it would copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    /// `mirrorsync plan`: reads only, writes nothing anywhere.
    Plan,
}

/// How a run may be stopped early.
#[derive(Clone)]
pub struct RunControl {
    /// Cancelled on SIGTERM or when `--max-duration` is up: no new tag starts after it.
    pub stop: CancellationToken,
    /// How long running tags may go on after a stop before they are abandoned.
    pub grace: Duration,
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            stop: CancellationToken::new(),
            grace: Duration::from_secs(30),
        }
    }
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

/// What the inspection of one tag found.
enum Inspection {
    Done(TagResult),
    Changed(Change),
}

/// A tag whose target is missing or behind upstream.
struct Change {
    upstream: UpstreamRef,
    /// Upstream's digest now.
    digest: Digest,
    /// What the target tag points at now, if anything.
    current: Option<Digest>,
    target_ref: String,
}

/// A repository's tag list, fetched on first use.
type TagListCell = Arc<tokio::sync::OnceCell<Arc<Vec<String>>>>;

/// Everything one run shares.
pub struct Engine {
    config: Arc<Config>,
    mode: Mode,
    target: Target,
    credentials: CredentialStore,
    observer: Option<Arc<dyn RequestObserver>>,
    retry: RetryPolicy,
    upstreams: tokio::sync::Mutex<HashMap<String, UpstreamRef>>,
    /// Tag lists, fetched once per repository per run.
    tag_lists: std::sync::Mutex<HashMap<String, TagListCell>>,
    blobs: BlobLedger,
    manifests: ManifestLedger,
    stop: CancellationToken,
    /// Live counters for the terminal progress line.
    pub progress: Arc<progress::Progress>,
}

impl Engine {
    /// Prepares a run: builds the target client (no request is made yet).
    pub fn new(
        config: Arc<Config>,
        mode: Mode,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Self, SyncError> {
        let retry = RetryPolicy::default();
        let target = match &config.target.kind {
            TargetKind::Registry(endpoint) => {
                let mut options = ClientOptions::new(
                    &endpoint.host,
                    endpoint.insecure,
                    endpoint.ca_file.clone(),
                    endpoint.credentials.clone(),
                );
                options.label = "target".into();
                options.limits = config.target.limits;
                options.retry = retry.clone();
                options.observer = observer.clone();
                Target::Registry(Box::new(
                    RegistryClient::new(options).map_err(|e| SyncError::Target(e.into()))?,
                ))
            }
            TargetKind::Path(path) => Target::Layout(OciLayout::new(path.clone())),
        };
        let credentials = CredentialStore::load(config.docker_config.as_deref())
            .map_err(|e| SyncError::Other(e.to_string()))?;
        Ok(Engine {
            config,
            mode,
            target,
            credentials,
            observer,
            retry,
            upstreams: tokio::sync::Mutex::new(HashMap::new()),
            tag_lists: std::sync::Mutex::new(HashMap::new()),
            blobs: BlobLedger::default(),
            manifests: ManifestLedger::default(),
            stop: CancellationToken::new(),
            progress: Arc::default(),
        })
    }

    /// The target, for commands that inspect it.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Tells the engine where blobs were seen at the target in earlier runs, so new
    /// repositories can mount them instead of pulling again.
    pub fn remember_blobs(&self, known: impl IntoIterator<Item = (Digest, String)>) {
        for (digest, repository) in known {
            if let Ok(mut holders) = self.blobs.slot(&digest).try_lock()
                && !holders.contains(&repository)
            {
                holders.push(repository);
            }
        }
    }

    /// Where blobs are known to be at the target now (for the next run).
    pub fn known_blobs(&self) -> Vec<(Digest, String)> {
        self.blobs.snapshot()
    }

    /// Syncs (or plans) every configured tag. `priority` orders changed tags (lower first, e.g.
    /// when a tag was first seen pending); tags not in it come after, in file order.
    pub async fn run(
        self: &Arc<Self>,
        control: &RunControl,
        priority: &HashMap<String, i64>,
    ) -> Vec<TagOutcome> {
        let run_started = Instant::now();
        // Stop requests reach the engine's own token, which blob transfers check.
        let stop = self.stop.clone();
        let outer = control.stop.clone();
        let forward = tokio::spawn(async move {
            outer.cancelled().await;
            stop.cancel();
        });

        // Tag filters are resolved against each repository's tag list, fetched once.
        let (mut items, mut outcomes) = self.expand_selections().await;
        // Phase 1: HEAD everything (free), concurrency-limited.
        let mut inspections = self.inspect_all(&items, control).await;
        let referrers = self.referrer_items(&items, &inspections).await;
        if !referrers.is_empty() {
            inspections.extend(self.inspect_all(&referrers, control).await);
            items.extend(referrers);
        }
        let counters: Vec<Arc<Counters>> = items
            .iter()
            .map(|_| Arc::new(Counters::default()))
            .collect();
        self.progress
            .tags_total
            .store(items.len(), Ordering::Relaxed);
        let mut results: Vec<Option<TagResult>> = vec![None; items.len()];
        let mut changed = Vec::new();
        for (i, inspection) in inspections.into_iter().enumerate() {
            match inspection {
                Inspection::Done(result) => {
                    self.progress.tags_done.fetch_add(1, Ordering::Relaxed);
                    results[i] = Some(result)
                }
                Inspection::Changed(change) => changed.push((i, change)),
            }
        }
        // Phase 2: copy what changed, the longest-pending first.
        changed.sort_by_key(|(i, _)| {
            let since = priority.get(&item_key(&items[*i])).copied();
            (since.unwrap_or(i64::MAX), *i)
        });
        let order: Vec<usize> = changed.iter().map(|(i, _)| *i).collect();
        let jobs: Arc<std::sync::Mutex<HashMap<usize, Change>>> =
            Arc::new(std::sync::Mutex::new(changed.into_iter().collect()));
        let copy_items: Vec<SyncItem> = order.iter().map(|i| items[*i].clone()).collect();
        let copied = self
            .for_each_item(&copy_items, control, |engine, item, k| {
                let index = order[k];
                let job = jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&index);
                let counters = Arc::clone(&counters[index]);
                async move {
                    let result = match job {
                        Some(change) => engine.copy_tag(&item, change, &counters).await,
                        None => deferred("internal: missing work item"),
                    };
                    engine.progress.tags_done.fetch_add(1, Ordering::Relaxed);
                    result
                }
            })
            .await;
        for (k, result) in copied.into_iter().enumerate() {
            results[order[k]] = Some(match result {
                None => deferred("stopped before the copy started"),
                Some(Ok(result)) => result,
                Some(Err(error)) => TagResult::Failed { error },
            });
        }
        forward.abort();

        let elapsed = run_started.elapsed();
        for (i, item) in items.iter().enumerate() {
            let outcome = TagOutcome {
                source: item.source.to_string(),
                target: target_image(item),
                result: results[i].take().unwrap_or_else(|| deferred("not reached")),
                stats: counters[i].snapshot(),
                duration: elapsed,
                key: item_key(item),
            };
            outcome.log();
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Phase 1 over a list of items; a stopped or crashed inspection becomes a result.
    async fn inspect_all(
        self: &Arc<Self>,
        items: &[SyncItem],
        control: &RunControl,
    ) -> Vec<Inspection> {
        self.for_each_item(items, control, |engine, item, _| async move {
            engine.inspect(&item).await
        })
        .await
        .into_iter()
        .map(|r| match r {
            None => Inspection::Done(deferred("stopped before the tag was checked")),
            Some(Err(error)) => Inspection::Done(TagResult::Failed { error }),
            Some(Ok(inspection)) => inspection,
        })
        .collect()
    }

    /// The configured fixed tags plus the tags each `tags:` filter selects now. A selection
    /// whose tag list cannot be read becomes a failed outcome of its own.
    async fn expand_selections(&self) -> (Vec<SyncItem>, Vec<TagOutcome>) {
        let mut items = self.config.images.clone();
        let mut failures = Vec::new();
        let mut taken: std::collections::HashSet<String> = items.iter().map(target_name).collect();
        for selection in &self.config.selections {
            let listed = async {
                let upstream = self.upstream(selection.source.registry()).await?;
                self.tag_list(&upstream, selection.source.repository())
                    .await
            }
            .await;
            let tags = match listed {
                Ok(tags) => tags,
                Err(e) => {
                    let outcome = TagOutcome {
                        source: format!("{} (tag filters)", selection.source.name()),
                        target: TargetImage {
                            repository: selection.target_repository.clone(),
                            reference: TargetReference::Selection,
                        },
                        result: TagResult::Failed {
                            error: e.to_string(),
                        },
                        stats: CopyStats::default(),
                        duration: Duration::ZERO,
                        key: format!(
                            "{} (tag filters) -> {}",
                            selection.source.name(),
                            selection.target_repository
                        ),
                    };
                    outcome.log();
                    failures.push(outcome);
                    continue;
                }
            };
            let chosen = crate::tags::select(&tags, &selection.filters);
            tracing::info!(repository = %selection.source.name(), listed = tags.len(), chosen = chosen.len(), "tag filters applied");
            for tag in chosen {
                let mut options = selection.options.clone();
                options.immutable = selection
                    .immutable
                    .iter()
                    .any(|p| crate::tags::glob_match(p, &tag));
                let item = SyncItem {
                    source: selection.source.with_tag(&tag),
                    target_repository: selection.target_repository.clone(),
                    target_tag: Some(tag),
                    platforms: selection.platforms.clone(),
                    location: selection.location.clone(),
                    options,
                };
                // A tag listed exactly elsewhere, or chosen by two filters, is synced once.
                if taken.insert(target_name(&item)) {
                    items.push(item);
                }
            }
        }
        (items, failures)
    }

    /// A repository's tags, listed once per run.
    async fn tag_list(
        &self,
        upstream: &UpstreamRef,
        repository: &str,
    ) -> Result<Arc<Vec<String>>, SyncError> {
        let key = format!("{}/{repository}", upstream.host);
        let cell = {
            let mut lists = self.tag_lists.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(lists.entry(key).or_default())
        };
        cell.get_or_try_init(|| async {
            upstream
                .origin
                .list_tags(repository)
                .await
                .map(Arc::new)
                .map_err(|e| upstream.error(e))
        })
        .await
        .cloned()
    }

    /// For entries with `referrers: true`: cosign's `sha256-<hex>.sig|.att|.sbom` tags and the
    /// OCI referrers fallback tag `sha256-<hex>` of each mirrored digest that exist upstream.
    async fn referrer_items(
        &self,
        items: &[SyncItem],
        inspections: &[Inspection],
    ) -> Vec<SyncItem> {
        let mut extra = Vec::new();
        let mut taken: std::collections::HashSet<String> = items.iter().map(target_name).collect();
        for (item, inspection) in items.iter().zip(inspections) {
            // Signatures name upstream's digest: useless where the mirror rewrites manifests.
            if !item.options.referrers || item.platforms.is_some() {
                continue;
            }
            let digest = match inspection {
                Inspection::Done(TagResult::Unchanged { digest }) => digest.clone(),
                Inspection::Changed(change) => change.digest.clone(),
                _ => continue,
            };
            let Ok(upstream) = self.upstream(item.source.registry()).await else {
                continue;
            };
            let tags = match self.tag_list(&upstream, item.source.repository()).await {
                Ok(tags) => tags,
                Err(e) => {
                    tracing::warn!(repository = %item.source.name(), error = %e, "cannot list tags to find signatures");
                    continue;
                }
            };
            let base = format!("{}-{}", digest.algorithm(), digest.encoded());
            for suffix in ["", ".sig", ".att", ".sbom"] {
                let tag = format!("{base}{suffix}");
                if !tags.contains(&tag) {
                    continue;
                }
                let referrer = SyncItem {
                    source: item.source.with_tag(&tag),
                    target_repository: item.target_repository.clone(),
                    target_tag: Some(tag),
                    platforms: None,
                    location: item.location.clone(),
                    options: crate::config::ItemOptions::default(),
                };
                if taken.insert(target_name(&referrer)) {
                    extra.push(referrer);
                }
            }
        }
        extra
    }

    /// Runs `work` for each item, `concurrency` at a time, on the runtime's threads. Items not
    /// started when a stop is requested give `None`; items still running a grace period after
    /// the stop are abandoned and give `None` too.
    async fn for_each_item<F, Fut, T>(
        self: &Arc<Self>,
        items: &[SyncItem],
        control: &RunControl,
        work: F,
    ) -> Vec<Option<Result<T, String>>>
    where
        F: Fn(Arc<Engine>, SyncItem, usize) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let limit = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = HashMap::new();
        // Permits are taken here, in list order, so work starts in priority order however the
        // runtime schedules tasks; a stop ends the starting.
        for (k, item) in items.iter().enumerate() {
            let permit = tokio::select! {
                permit = Arc::clone(&limit).acquire_owned() => permit.ok(),
                _ = control.stop.cancelled() => None,
            };
            let Some(permit) = permit else {
                break;
            };
            let fut = work(Arc::clone(self), item.clone(), k);
            let handle = tasks.spawn(async move {
                let _permit = permit;
                (k, Some(fut.await))
            });
            ids.insert(handle.id(), k);
        }
        let mut out: Vec<Option<Result<T, String>>> = (0..items.len()).map(|_| None).collect();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                None => tokio::select! {
                    joined = tasks.join_next() => joined,
                    _ = control.stop.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + control.grace);
                        continue;
                    }
                },
                Some(at) => tokio::select! {
                    joined = tasks.join_next() => joined,
                    _ = tokio::time::sleep_until(at) => {
                        tracing::warn!(running = tasks.len(), "grace period over; abandoning running tags");
                        tasks.abort_all();
                        deadline = Some(at + Duration::from_secs(3600));
                        continue;
                    }
                },
            };
            match next {
                None => break,
                Some(Ok((k, value))) => out[k] = value.map(Ok),
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a sync task panicked");
                    if let Some(k) = ids.get(&e.id()) {
                        out[*k] = Some(Err(format!("internal error: {e}")));
                    }
                }
            }
        }
        out
    }

    /// Phase 1 for one tag: what upstream holds (a HEAD) against what the target holds.
    async fn inspect(&self, item: &SyncItem) -> Inspection {
        match self.inspect_inner(item).await {
            Ok(inspection) => inspection,
            Err(e) => Inspection::Done(failed_or_deferred(e)),
        }
    }

    async fn inspect_inner(&self, item: &SyncItem) -> Result<Inspection, SyncError> {
        if item.options.immutable
            && let Some(tag) = &item.target_tag
            && let Some(digest) = self
                .target
                .manifest_digest(&item.target_repository, tag)
                .await?
        {
            // An immutable tag already mirrored: upstream is not asked at all.
            return Ok(Inspection::Done(TagResult::Unchanged { digest }));
        }
        let upstream = self.upstream(item.source.registry()).await?;
        let repository = item.source.repository();
        let digest = match (item.source.digest(), item.source.tag()) {
            (Some(digest), _) => digest.clone(),
            (None, Some(tag)) => {
                let head = upstream
                    .origin
                    .head_manifest(repository, tag)
                    .await
                    .map_err(|e| upstream.error(e))?
                    .ok_or_else(|| {
                        SyncError::NotFound(format!(
                            "HEAD /v2/{repository}/manifests/{tag} at {} answered 404",
                            upstream.host
                        ))
                    })?;
                match head.digest {
                    Some(d) if d.is_sha256() => d,
                    // No usable Docker-Content-Digest on the HEAD: only a GET tells us.
                    _ => {
                        upstream.check_quota()?;
                        upstream
                            .origin
                            .get_manifest(repository, tag)
                            .await
                            .map_err(|e| upstream.error(e))?
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
        let target_ref = item
            .target_tag
            .clone()
            .unwrap_or_else(|| digest.to_string());
        let current = self
            .target
            .manifest_digest(&item.target_repository, &target_ref)
            .await?;
        if current.as_ref() == Some(&digest) {
            return Ok(Inspection::Done(TagResult::Unchanged { digest }));
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
                return Ok(Inspection::Done(TagResult::Unchanged {
                    digest: current.clone(),
                }));
            }
        }
        Ok(Inspection::Changed(Change {
            upstream,
            digest,
            current,
            target_ref,
        }))
    }

    /// Phase 2 for one changed tag: content first, the tag last.
    async fn copy_tag(
        &self,
        item: &SyncItem,
        change: Change,
        counters: &Arc<Counters>,
    ) -> TagResult {
        let route = Route {
            upstream: &change.upstream,
            source_repo: item.source.repository(),
            target_repo: &item.target_repository,
            counters,
            sparse: item.options.sparse,
        };
        let copied = async {
            let manifest = self
                .copy_manifest(route, &change.digest, item.platforms.as_deref(), 0)
                .await?;
            if self.mode == Mode::Sync {
                if let (Some(template), Some(current), Some(tag)) =
                    (&item.options.backup_tag, &change.current, &item.target_tag)
                {
                    self.keep_backup(&item.target_repository, tag, current, template)
                        .await?;
                }
                self.target
                    .put_manifest(&item.target_repository, &change.target_ref, &manifest)
                    .await?;
            }
            Ok::<_, SyncError>(manifest)
        }
        .await;
        match copied {
            Ok(manifest) => TagResult::Synced {
                digest: manifest.digest.clone(),
                new: change.current.is_none(),
            },
            Err(e) => failed_or_deferred(e),
        }
    }

    /// `backup_tag`: before a tag moves, the digest it pointed at gets another tag.
    async fn keep_backup(
        &self,
        repository: &str,
        tag: &str,
        current: &Digest,
        template: &str,
    ) -> Result<(), SyncError> {
        let date = chrono::Utc::now().format("%Y%m%d").to_string();
        let backup = crate::config::expand_backup_tag(template, tag, &date);
        let Some(old) = self
            .target
            .get_manifest(repository, &current.to_string())
            .await?
        else {
            return Ok(());
        };
        self.target.put_manifest(repository, &backup, &old).await?;
        tracing::info!(repository, tag, backup = %backup, digest = %current, "kept the previous digest under a backup tag");
        Ok(())
    }

    /// Whether manifests are converted to OCI on the way (an OCI layout target).
    fn converts_to_oci(&self) -> bool {
        matches!(self.target, Target::Layout(_))
    }

    /// A stop was requested: new blob transfers do not start.
    fn stop_if_requested(&self) -> Result<(), SyncError> {
        if self.stop.is_cancelled() {
            return Err(SyncError::Deferred("stop requested".into()));
        }
        Ok(())
    }

    /// The upstream for a registry host, built on first use with its settings and credentials.
    async fn upstream(&self, registry: &str) -> Result<UpstreamRef, SyncError> {
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
        let limits = LimitSettings {
            requests_per_second: settings.requests_per_second,
            burst: settings.burst,
            bytes_per_second: settings.bytes_per_second,
        };
        let client = |host: &str, insecure: bool, credentials| {
            let mut options = ClientOptions::new(
                host,
                insecure,
                settings.endpoint.ca_file.clone(),
                credentials,
            );
            options.label = registry.to_string();
            options.limits = limits;
            options.retry = self.retry.clone();
            options.observer = self.observer.clone();
            RegistryClient::new(options).map_err(|source| SyncError::Upstream {
                host: registry.to_string(),
                source: Box::new(source),
            })
        };
        let origin = client(
            &settings.endpoint.host,
            settings.endpoint.insecure,
            credentials,
        )?;
        let mut mirrors = Vec::new();
        for mirror in &settings.mirrors {
            let (insecure, host) = match url::Url::parse(mirror) {
                Ok(u) => (
                    u.scheme() == "http",
                    match (u.host_str(), u.port()) {
                        (Some(h), Some(p)) => format!("{h}:{p}"),
                        (Some(h), None) => h.to_string(),
                        _ => continue,
                    },
                ),
                Err(_) => continue,
            };
            // A mirror is an optimisation: no retries, the origin is the fallback.
            let mut options = ClientOptions::new(&host, insecure, None, None);
            options.label = registry.to_string();
            options.limits = limits;
            options.retry = RetryPolicy::new(1, 0);
            options.observer = self.observer.clone();
            mirrors.push(
                RegistryClient::new(options).map_err(|source| SyncError::Upstream {
                    host: registry.to_string(),
                    source: Box::new(source),
                })?,
            );
        }
        let mirror_down = mirrors.iter().map(|_| Default::default()).collect();
        let upstream = Arc::new(Upstream {
            host: registry.to_string(),
            origin,
            mirrors,
            mirror_down,
            transfers: Semaphore::new(settings.concurrency.max(1)),
            reserve: u64::from(settings.rate_limit_reserve.unwrap_or(0)),
        });
        upstreams.insert(registry.to_string(), Arc::clone(&upstream));
        Ok(upstream)
    }
}

fn deferred(reason: &str) -> TagResult {
    TagResult::Deferred {
        reason: reason.to_string(),
    }
}

fn failed_or_deferred(error: SyncError) -> TagResult {
    match error.deferred_reason() {
        Some(reason) => deferred(reason),
        None => TagResult::Failed {
            error: error.to_string(),
        },
    }
}

/// `repository:tag` (or `repository@digest`) at the target, for messages.
/// Where an item lands, whole.
pub fn target_image(item: &SyncItem) -> TargetImage {
    let reference = match (&item.target_tag, item.source.digest()) {
        (Some(tag), _) => TargetReference::Tag(tag.clone()),
        (None, Some(d)) => TargetReference::Digest(d.clone()),
        (None, None) => TargetReference::Selection,
    };
    TargetImage {
        repository: item.target_repository.clone(),
        reference,
    }
}

/// Where an item lands, as text: `repo:tag` or `repo@digest`.
pub fn target_name(item: &SyncItem) -> String {
    match (&item.target_tag, item.source.digest()) {
        (Some(tag), _) => format!("{}:{tag}", item.target_repository),
        (None, Some(d)) => format!("{}@{d}", item.target_repository),
        (None, None) => item.target_repository.clone(),
    }
}

/// A stable identity of a configured tag across runs: `source -> target`.
pub fn item_key(item: &SyncItem) -> String {
    format!("{} -> {}", item.source, target_name(item))
}
