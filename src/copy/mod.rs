//! The engine: every configured tag's journey from upstream to target.
//!
//! Each tag is first inspected (`Engine::inspect`): HEAD upstream and target with the same
//! Accept list; the same digest means unchanged and nothing more is asked upstream (HEADs do not
//! count against Docker Hub's pull quota). A changed tag is then copied (`Engine::copy_tag`)
//! while the pull quota lasts, without waiting for the other tags' inspections: the manifest is
//! fetched by digest (exact bytes, digest verified), its blobs are made present at the target
//! (skipped, mounted, or streamed and verified), child manifests are pushed by digest, and the
//! tag is written last.
//!
//! Up to twice `concurrency` tags are inspected at once and `concurrency` copied at once; copies
//! start in priority order (the longest-pending first, then file order) whatever order the
//! inspections finish in. Blob transfers per upstream host are bounded by that host's
//! `concurrency`. A failing tag never stops the others. A stop request (signal,
//! `--max-duration`) lets running tags finish within a grace period; the rest are deferred.

mod backup;
mod blobs;
mod download;
mod error;
pub mod hub;
mod inspect;
mod ledger;
mod manifests;
mod pool;
mod preflight;
pub mod progress;
mod queue;
mod refusals;
mod rewrite;
mod select;
mod single;
mod spool;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SyncItem, TargetKind};
use crate::destination::{OciLayout, Target};
use crate::outcome::{CopyStats, TagId, TagOutcome, TagResult};
use crate::reference::Digest;
use crate::registry::{
    CredentialStore, EndpointError, HostLimits, LimitSettings, RegistryClient, RequestObserver,
    RetryPolicy, Usage,
};
use crate::signals::RunControl;
use inspect::{Change, Inspection};
use ledger::{BlobLedger, ManifestBudget, ManifestLedger};
use manifests::Route;
use upstream::{Upstream, UpstreamRef};

pub use error::SyncError;

/// Indexes may nest; deeper than this is refused rather than followed.
const MAX_INDEX_DEPTH: usize = 4;
/// Blob checks and copies started at once within one manifest.
const BLOBS_PER_MANIFEST: usize = 8;

/// Tags inspected at once: twice the copies. A HEAD is one cheap round trip (and free of
/// Docker Hub's pull quota; each host's request rate still applies), so inspection runs ahead
/// and a no-op run is round trips only.
fn inspections_at_once(concurrency: usize) -> usize {
    concurrency.saturating_mul(2)
}

/// Items in the order their copies start: the longest-pending first (`priority`: since when a
/// tag is pending, lower first), then list order.
fn copy_order(items: &[SyncItem], priority: &HashMap<String, i64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|i| {
        let since = priority.get(&item_key(&items[*i])).copied();
        (since.unwrap_or(i64::MAX), *i)
    });
    order
}

/// The slots one tag holds or waits for: its inspection slot, its turn in priority order, and
/// the run's copy slots.
struct CopySlots {
    inspecting: OwnedSemaphorePermit,
    turn: pool::Turn,
    copies: Arc<Semaphore>,
}

/// Whether the engine copies or only reports what it would copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    /// `mirrorsync plan`: reads only, writes nothing anywhere.
    Plan,
}

/// Per-tag counters, shared with the tasks that do the tag's work.
#[derive(Default)]
struct Counters {
    copied: AtomicU64,
    copied_bytes: AtomicU64,
    mounted: AtomicU64,
    present: AtomicU64,
    /// Blobs of the manifests read so far (for "N of M blobs copied").
    blobs_total: AtomicU64,
    /// The copy began (a tag abandoned after this was cut short, not skipped).
    started: AtomicBool,
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
    observer: Option<Arc<dyn RequestObserver>>,
    retry: RetryPolicy,
    /// What the engines of this run share (upstreams, tag lists; the spool with several
    /// targets).
    hub: Arc<hub::Hub>,
    /// This engine's target among the run's.
    index: usize,
    blobs: BlobLedger,
    manifests: ManifestLedger,
    /// Manifest bytes held at once, bounded.
    manifest_budget: ManifestBudget,
    /// Blob writes to the target at once (`target.concurrency`).
    target_writes: tokio::sync::Semaphore,
    /// Small blobs read ahead into memory at once (see [`blobs::SMALL_READS_AT_ONCE`]).
    small_reads: tokio::sync::Semaphore,
    /// `target.bytes_per_second`, for every blob byte written to the target.
    target_bytes: Arc<HostLimits>,
    stop: CancellationToken,
    /// Live counters for the terminal progress line.
    pub progress: Arc<progress::Progress>,
}

impl Engine {
    /// Prepares a run: builds the target client (no request is made yet).
    pub async fn new(
        config: Arc<Config>,
        mode: Mode,
        observer: Option<Arc<dyn RequestObserver>>,
    ) -> Result<Self, SyncError> {
        Engine::sharing(config, mode, observer, Arc::default(), 0).await
    }

    /// Prepares target `index`'s part of a run whose engines share `hub`.
    pub async fn sharing(
        config: Arc<Config>,
        mode: Mode,
        observer: Option<Arc<dyn RequestObserver>>,
        hub: Arc<hub::Hub>,
        index: usize,
    ) -> Result<Self, SyncError> {
        let retry = RetryPolicy::default();
        let credentials = CredentialStore::load(config.docker_config.as_deref())?;
        let target = match &config.target.kind {
            TargetKind::Registry(endpoint) => {
                let usage = Usage {
                    // `target`, or `target:<name>` for one of several targets.
                    label: match &config.target.name {
                        Some(name) => format!("target:{name}"),
                        None => "target".into(),
                    },
                    limits: config.target.limits,
                    retry: retry.clone(),
                    observer: observer.clone(),
                    max_in_flight: inspections_at_once(config.concurrency),
                };
                // Its `auth:`, else the Docker config's credentials, as for any registry.
                let docker = Some((&credentials, endpoint.host.as_str()));
                let client = RegistryClient::for_endpoint(endpoint, docker, usage)
                    .await
                    .map_err(|e| match e {
                        EndpointError::Client(e) => SyncError::Target(e.into()),
                        other => SyncError::Endpoint(other),
                    })?;
                client.learned().set_chunk_size(config.target.chunk_size);
                Target::Registry(Box::new(client))
            }
            TargetKind::Path(path) => Target::Layout(OciLayout::for_target(path, &config.target)),
        };
        let target_writes = tokio::sync::Semaphore::new(config.target.concurrency.max(1));
        let target_bytes = Arc::new(HostLimits::new(LimitSettings {
            bytes_per_second: config.target.limits.bytes_per_second,
            ..LimitSettings::default()
        }));
        Ok(Engine {
            config,
            mode,
            target,
            credentials,
            observer,
            retry,
            hub,
            index,
            blobs: BlobLedger::default(),
            manifests: ManifestLedger::default(),
            manifest_budget: ManifestBudget::default(),
            target_writes,
            small_reads: tokio::sync::Semaphore::new(blobs::SMALL_READS_AT_ONCE),
            target_bytes,
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
            self.blobs.remember(digest, repository);
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
        // Stop requests reach the engine's own token, which blob transfers check.
        let stop = self.stop.clone();
        let outer = control.stop.clone();
        let forward = tokio::spawn(async move {
            outer.cancelled().await;
            stop.cancel();
        });

        // Tag filters are resolved against each repository's tag list, fetched once.
        let (mut items, outcomes) = self.expand_selections().await;
        self.progress
            .tags_total
            .store(items.len(), Ordering::Relaxed);
        let mut counters: Vec<Arc<Counters>> = items
            .iter()
            .map(|_| Arc::new(Counters::default()))
            .collect();
        // Each tag is inspected, then copied if it changed, without waiting for the other
        // tags' inspections (against a far upstream every HEAD is a round trip).
        let mut synced = self.sync_all(&items, &counters, priority, control).await;
        // Signatures and attestations of what was found, after it.
        let first_referrer = items.len();
        let mut work = select::ReferrerWork {
            items: &mut items,
            counters: &mut counters,
            synced: &mut synced,
        };
        let fallbacks = self.sync_referrers(&mut work, priority, control).await;
        forward.abort();
        // In place (the same buffer): a second copy per tag of the whole list would be the
        // largest allocation of a long run.
        let mut finished: Vec<TagOutcome> =
            synced.into_iter().map(|(_, outcome)| outcome).collect();
        if self.mode == Mode::Sync {
            self.keep_fallbacks(&fallbacks, first_referrer, &mut finished)
                .await;
            self.target.cancel_abandoned_uploads().await;
        }
        // The few failed tag filters go first, as they were found first.
        finished.splice(0..0, outcomes);
        finished
    }

    /// The outcome of one tag (not announced).
    fn outcome(
        &self,
        item: &SyncItem,
        result: TagResult,
        stats: CopyStats,
        duration: Duration,
    ) -> TagOutcome {
        TagOutcome {
            id: TagId::of(item),
            target_name: self.config.target.name.clone(),
            result,
            stats,
            duration,
        }
    }

    /// The outcome of one tag that just finished, announced at once (a line or an event).
    fn announce(
        &self,
        item: &SyncItem,
        result: TagResult,
        stats: CopyStats,
        duration: Duration,
    ) -> TagOutcome {
        let outcome = self.outcome(item, result, stats, duration);
        crate::report::tag_finished(&outcome, self.mode == Mode::Plan);
        outcome
    }

    /// Why a changed tag did not finish: never started, or abandoned part way when the grace
    /// period ended (or at a second signal), with how far its blobs got.
    fn unfinished_reason(&self, counters: &Counters, control: &RunControl) -> String {
        if !counters.started.load(Ordering::Relaxed) {
            return "stopped before the copy started".into();
        }
        let when = if control.now.is_cancelled() {
            "stopped at once by a second signal"
        } else {
            "stopped after the grace period"
        };
        let total = counters.blobs_total.load(Ordering::Relaxed);
        if total == 0 {
            return format!("{when}, before its manifest was read");
        }
        let s = counters.snapshot();
        let done = (s.copied + s.mounted + s.present).min(total);
        format!("{when}, {done} of {total} blobs copied")
    }

    /// Inspects every item and copies those that changed, pending first (`priority`, lower
    /// first; then list order). Up to [`inspections_at_once`] tags are inspected (or, changed,
    /// wait for a copy slot) at once and `concurrency` copied at once; copies start strictly in that order (a changed tag waits
    /// until every tag before it was found unchanged or has started its copy), so the pull
    /// quota goes to the longest-pending tags first. Returns, per item, the upstream digest found
    /// (if any) and the result.
    async fn sync_all(
        self: &Arc<Self>,
        items: &[SyncItem],
        counters: &[Arc<Counters>],
        priority: &HashMap<String, i64>,
        control: &RunControl,
    ) -> Vec<(Option<Digest>, TagOutcome)> {
        let run_started = Instant::now();
        let order = copy_order(items, priority);
        let copies = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let turns = Arc::new(pool::Turns::default());
        let width = inspections_at_once(self.config.concurrency);
        let done = self
            .for_each_item(
                items,
                &order,
                control,
                width,
                |engine, item, k, inspecting| {
                    let counters = Arc::clone(&counters[order[k]]);
                    // Passed once this tag has its copy slot or needs none (or is dropped).
                    let turn = pool::Turn::new(Arc::clone(&turns), k);
                    let slots = CopySlots {
                        inspecting,
                        turn,
                        copies: Arc::clone(&copies),
                    };
                    engine.inspect_and_copy(item, counters, slots, control.stop.clone())
                },
            )
            .await;
        // Mapped in place (the same buffer): a copy per tag of the whole list would be the
        // largest allocation of a long run.
        done.into_iter()
            .enumerate()
            .map(|(i, result)| match result {
                Some(Ok(found)) => found,
                // Not started, or abandoned at the end of the grace period: announced now.
                None => {
                    let reason = self.unfinished_reason(&counters[i], control);
                    let took = run_started.elapsed();
                    let outcome =
                        self.announce(&items[i], deferred(&reason), counters[i].snapshot(), took);
                    (None, outcome)
                }
                Some(Err(error)) => {
                    let result = TagResult::Failed {
                        error,
                        cause: Default::default(),
                    };
                    let took = run_started.elapsed();
                    (
                        None,
                        self.announce(&items[i], result, counters[i].snapshot(), took),
                    )
                }
            })
            .collect()
    }

    /// One tag's whole turn: inspected, then, changed, copied once its copy slot comes (in
    /// priority order); announced the moment it finishes, with its own duration.
    async fn inspect_and_copy(
        self: Arc<Self>,
        item: SyncItem,
        counters: Arc<Counters>,
        slots: CopySlots,
        stop: CancellationToken,
    ) -> (Option<Digest>, TagOutcome) {
        let CopySlots {
            inspecting,
            turn,
            copies,
        } = slots;
        let started = Instant::now();
        let (found, result) = match self.inspect(&item).await {
            Inspection::Done(result) => {
                drop(inspecting);
                drop(turn);
                let found = match &result {
                    TagResult::Unchanged { digest } => Some(digest.clone()),
                    _ => None,
                };
                (found, result)
            }
            Inspection::Changed(change) => {
                if self.mode == Mode::Sync {
                    change.upstream.tag_changed();
                }
                let slot = tokio::select! {
                    slot = async {
                        turn.wait().await;
                        copies.acquire_owned().await.ok()
                    } => slot,
                    _ = stop.cancelled() => None,
                };
                // The inspection slot is kept until the copy slot is taken: inspection runs
                // ahead of the copies by a bounded number of tags, so the tags (and memory)
                // waiting for a copy stay bounded too.
                drop(inspecting);
                drop(turn);
                let found = Some(change.digest.clone());
                match slot {
                    Some(_slot) => {
                        counters.started.store(true, Ordering::Relaxed);
                        (found, self.copy_tag(&item, change, &counters).await)
                    }
                    None => (found, deferred("stopped before the copy started")),
                }
            }
        };
        self.progress.tags_done.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        (
            found,
            self.announce(&item, result, counters.snapshot(), took),
        )
    }

    /// Copies one changed tag: content first, the tag last.
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
            // With mirrors, content by digest may come from them while the origin is down.
            if change.upstream.mirrors.is_empty() {
                change.upstream.reachable().await?;
            }
            let copied = self.copy_item(route, item, &change.digest).await?;
            if self.mode == Mode::Sync {
                let manifest = self.body_of(&item.target_repository, &copied).await?;
                if let (Some(template), Some(current), Some(tag)) =
                    (&item.options.backup_tag, &change.current, &item.target_tag)
                {
                    self.keep_backup(&item.target_repository, tag, current, template)
                        .await?;
                }
                self.target
                    .put_manifest(&item.target_repository, &change.target_ref, &manifest)
                    .await
                    .map_err(|e| refusals::explain_tag_put(item, change.current.as_ref(), e))?;
            }
            Ok::<_, SyncError>(copied.manifest.digest)
        }
        .await;
        match copied {
            Ok(digest) => TagResult::Synced {
                digest,
                previous: change.current,
            },
            Err(e) => failed_or_deferred(refusals::explain_path(item, e)),
        }
    }

    /// Whether manifests are converted to OCI on the way (a layout with `digests: oci`).
    fn converts_to_oci(&self) -> bool {
        matches!(&self.target, Target::Layout(l) if l.converts_to_oci())
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
        let mut upstreams = self.hub.upstreams.lock().await;
        if let Some(existing) = upstreams.get(registry) {
            return Ok(Arc::clone(existing));
        }
        let settings =
            (self.hub.layouts.settings(registry, &self.config).await).map_err(SyncError::Layout)?;
        let mut built = Upstream::build(
            registry,
            &settings,
            &self.credentials,
            &self.retry,
            self.observer.clone(),
            inspections_at_once(self.config.concurrency),
        )
        .await?;
        // Every target asks what a tag resolves to; upstream is asked once.
        built.share_resolutions = self.hub.fan_out.is_some();
        let upstream = Arc::new(built);
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
            cause: error.cause(),
            error: error.to_string(),
        },
    }
}

pub use crate::outcome::{item_key, target_ref};
