//! One run: the engine, framed by the state of earlier runs and the metrics of this one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, TagSeries};
use crate::copy::hub::Hub;
use crate::copy::{Engine, Mode, SyncError};
use crate::destination::{DOCUMENT_REPOSITORY, DocumentError, Target};
use crate::metrics::{BlobAction, Metrics, TagLag, TagResultKind};
use crate::outcome::{FailureCause, TagResult};
use crate::prune::prune;
use crate::registry::{RequestObserver, UploadFlow};
use crate::report::RunReport;
use crate::shard::Shard;
use crate::signals::RunControl;
use crate::state::{self, State, StateError, TagStatus};
use crate::state_fallback::StateFallback;

/// How a run goes.
#[derive(Clone)]
pub struct RunOptions {
    pub mode: Mode,
    pub shard: Option<Shard>,
    pub control: RunControl,
    /// Draw live progress on stderr when it is a terminal.
    pub progress: bool,
    /// Where the tags' history comes from when the state document cannot be read.
    pub fallback: StateFallback,
    /// Counters the engine updates as tags finish and bytes move (the daemon's liveness);
    /// `None`: its own.
    pub activity: Option<Arc<crate::copy::progress::Progress>>,
}

/// Why a run could not start: no tag was tried.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The target's clients could not be built (Docker config, credentials, CA file).
    #[error(transparent)]
    Start(#[from] SyncError),
}

/// Why the state of earlier runs could not be read or saved. Either way the run goes on:
/// lag continues from [`StateFallback`], and the next run reads the state again.
#[derive(Debug, thiserror::Error)]
pub enum StateDocumentError {
    /// The target did not give or take the document (down, refusing, unreachable), or holds
    /// one that is damaged ([`DocumentError::is_corrupt`]).
    #[error(transparent)]
    Target(#[from] DocumentError),
    /// The document is not a state this version can read, or could not be encoded.
    #[error(transparent)]
    State(#[from] StateError),
}

impl StateDocumentError {
    /// Whether the target holds something unreadable, rather than not answering.
    fn is_corrupt(&self) -> bool {
        match self {
            StateDocumentError::Target(e) => e.is_corrupt(),
            StateDocumentError::State(StateError::Corrupt(_)) => true,
            StateDocumentError::State(StateError::Encode(_)) => false,
        }
    }
}

/// Feeds every registry request into the metrics.
struct MetricsObserver(Arc<Metrics>);

impl RequestObserver for MetricsObserver {
    fn request(&self, registry: &str, method: &str, code: &str) {
        self.0.inc_http_request(registry, method, code);
    }
    fn ratelimit_remaining(&self, registry: &str, remaining: u64) {
        self.0.set_ratelimit_remaining(registry, remaining as f64);
    }
    fn request_window(&self, registry: &str, window: usize, pace: Option<f64>) {
        self.0.set_request_window(registry, window, pace);
    }
}

/// Runs once over the configured tags (this shard's share of them), on every target at
/// once: with several, the targets share one pull of each manifest and blob, and each is
/// diffed, written, pruned and recorded on its own. Err only when no target could start.
pub async fn run(
    config: &Config,
    options: &RunOptions,
    metrics: &Arc<Metrics>,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let mut views = shard_views(config, options.shard);
    let observer: Arc<dyn RequestObserver> = Arc::new(MetricsObserver(Arc::clone(metrics)));
    if views.len() == 1 {
        let view = views.pop().unwrap_or_else(|| config.clone());
        let share = TargetShare {
            hub: Arc::default(),
            index: 0,
            observer,
            metrics: Arc::clone(metrics),
            fallback: options.fallback.clone(),
        };
        return run_on_target(view, options, share).await;
    }
    let hub = Hub::new(views.len(), &config.spool_dir, config.spool_size);
    let reports = run_on_every_target(views, options, &hub, &observer, metrics).await;
    if hub.spool_overflows() > 0 {
        tracing::warn!(
            blobs = hub.spool_overflows(),
            "blobs were not spooled (larger than the room left in spool_size, or spool_dir not writable) and were pulled once per target"
        );
    }
    metrics.count_run_requests();
    let mut total = RunReport::combine(reports, options.mode == Mode::Plan);
    total.duration = started.elapsed();
    Ok(total)
}

/// The configuration per target, each cut to this shard's share of the tags.
fn shard_views(config: &Config, shard: Option<Shard>) -> Vec<Config> {
    let mut views = config.per_target();
    if let Some(shard) = shard {
        for view in &mut views {
            view.images = shard.select(&view.images);
            view.selections = shard.select_selections(&view.selections);
        }
        tracing::info!(shard = %format!("{}/{}", shard.index, shard.count), tags = views.iter().map(|v| v.images.len()).sum::<usize>(), "syncing this shard's share");
    }
    views
}

/// Every target's share of the run at once, each with its own metrics and history; a target
/// that cannot start fails its own tags.
async fn run_on_every_target(
    views: Vec<Config>,
    options: &RunOptions,
    hub: &Arc<Hub>,
    observer: &Arc<dyn RequestObserver>,
    metrics: &Arc<Metrics>,
) -> Vec<RunReport> {
    // One live progress line per target would overwrite each other on a terminal.
    let options = &RunOptions {
        progress: false,
        ..options.clone()
    };
    let runs = views.into_iter().enumerate().map(|(index, view)| {
        let name = view.target.name.clone().unwrap_or_default();
        let share = TargetShare {
            hub: Arc::clone(hub),
            index,
            observer: Arc::clone(observer),
            metrics: metrics.for_target(&name),
            fallback: options.fallback.for_target(Some(&name)),
        };
        let images = view.images.clone();
        let hub = Arc::clone(hub);
        async move {
            let outcome = run_on_target(view, options, share).await;
            hub.finished(index);
            match outcome {
                Ok(report) => report,
                Err(e) => {
                    tracing::error!(target_name = %name, error = %e, "this target's pass could not start; its tags fail");
                    RunReport::failed_to_start(&images, &name, &e.to_string())
                }
            }
        }
    });
    futures_util::future::join_all(runs).await
}

/// What one target's share of the run shares with the others, and its own metrics and
/// history.
struct TargetShare {
    hub: Arc<Hub>,
    index: usize,
    observer: Arc<dyn RequestObserver>,
    metrics: Arc<Metrics>,
    fallback: StateFallback,
}

/// One target's share of the run: state read, tags synced, pruned, recorded, state saved.
async fn run_on_target(
    config: Config,
    options: &RunOptions,
    share: TargetShare,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let prune_repos = crate::prune::repositories(&config);
    let tag_series = config.tag_series;
    let target_name = config.target.name.clone();
    let TargetShare {
        hub,
        index,
        observer,
        metrics,
        fallback,
    } = share;
    let mut engine =
        Engine::sharing(Arc::new(config), options.mode, Some(observer), hub, index).await?;
    if let Some(activity) = &options.activity {
        engine.progress = Arc::clone(activity);
    }
    let engine = Arc::new(engine);
    let state_tag = state::state_tag(options.shard.map(|s| (s.index, s.count)));
    let (mut state, stored) = load_state(engine.target(), &state_tag, &fallback).await;
    engine.remember_blobs(state.blob_locations());
    if let Some(ts) = state.last_success {
        metrics.set_last_success(ts);
    }
    let mut report = sync_tags(&engine, options, &state, started).await;
    let target = engine.target();
    if options.mode == Mode::Plan && !prune_repos.is_empty() {
        report.pruned = prune(target, &prune_repos, &report.tags, &mut state, true).await;
    }
    if options.mode == Mode::Sync {
        let now = unix_now();
        let statuses = state.record(&report.tags, now);
        if !prune_repos.is_empty() && !options.control.stop.is_cancelled() {
            report.pruned = prune(target, &prune_repos, &report.tags, &mut state, false).await;
        }
        record_tags(&metrics, tag_series, &report, &statuses);
        let success = (report.failed() == 0 && report.deferred() == 0).then_some(now);
        if success.is_some() {
            state.last_success = success;
        }
        let mut seen = engine.known_blobs();
        seen.retain(|(_, repository)| repository != DOCUMENT_REPOSITORY);
        state.remember_blobs(seen);
        fallback.remember(&state);
        save_state(target, &state_tag, &state, stored.as_ref()).await;
        record_run(&engine, &report, &metrics, success);
    }
    for pruned in &mut report.pruned {
        pruned.target_name.clone_from(&target_name);
    }
    Ok(report)
}

/// The state of earlier runs, and what the target holds now (to skip writing a document that
/// would say the same; `None` when it could not be read).
async fn load_state(
    target: &Target,
    state_tag: &str,
    fallback: &StateFallback,
) -> (State, Option<State>) {
    let error = match read_state(target, state_tag).await {
        Ok(mut state) => {
            let stored = state.clone();
            fallback.merge_into(&mut state);
            return (state, Some(stored));
        }
        Err(e) => e,
    };
    if error.is_corrupt() {
        tracing::debug!("the target holds a state document this version cannot read");
    }
    let state = match fallback.recover().await {
        Some((state, from)) => {
            tracing::warn!(%error, from, "could not read the state of earlier runs; lag continues from the last values known");
            state
        }
        None => {
            tracing::warn!(%error, "could not read the state of earlier runs, and no earlier metrics are at hand; lag starts over");
            State::default()
        }
    };
    (state, None)
}

/// The state document the target holds for `state_tag` (none yet: an empty state).
async fn read_state(target: &Target, state_tag: &str) -> Result<State, StateDocumentError> {
    match target
        .load_document(state_tag, state::MAX_STATE_BYTES)
        .await?
    {
        Some(bytes) => Ok(State::from_json(&bytes)?),
        None => Ok(State::default()),
    }
}

/// Writes the state for the next run, unless the target already holds the same; a failure
/// is logged (the sync itself happened).
async fn save_state(target: &Target, state_tag: &str, state: &State, stored: Option<&State>) {
    if stored.is_some_and(|s| state.same_as_stored(s)) {
        tracing::debug!("the run state is unchanged; not written");
        return;
    }
    let saved: Result<(), StateDocumentError> = match state.to_json() {
        Ok(body) => target
            .save_document(state_tag, body)
            .await
            .map_err(Into::into),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not save the run state; the next run cannot see this run's lag");
    }
}

/// The engine over every tag, with the live progress line while it runs.
async fn sync_tags(
    engine: &Arc<Engine>,
    options: &RunOptions,
    state: &State,
    started: Instant,
) -> RunReport {
    let renderer =
        crate::copy::progress::Renderer::start(Arc::clone(&engine.progress), options.progress);
    let tags = engine.run(&options.control, &state.priorities()).await;
    drop(renderer);
    RunReport {
        tags,
        duration: started.elapsed(),
        planned: options.mode == Mode::Plan,
        pruned: Vec::new(),
    }
}

/// Each tag's series (in sync, last synced, lag), the lag summary, and the series of tags
/// no longer configured dropped.
fn record_tags(
    metrics: &Metrics,
    tag_series: TagSeries,
    report: &RunReport,
    statuses: &[TagStatus],
) {
    metrics.set_tag_series_out_of_sync_only(tag_series == TagSeries::OutOfSync);
    for (tag, status) in report.tags.iter().zip(statuses) {
        let (source, target) = tag.id.labels();
        metrics.set_tag(
            &source,
            &target,
            status.in_sync,
            status.last_synced,
            status.lag_seconds,
        );
    }
    metrics.set_lag_summary(
        report
            .tags
            .iter()
            .zip(statuses)
            .map(|(tag, status)| TagLag {
                repository: &tag.id.target.repository,
                in_sync: status.in_sync,
                lag_seconds: status.lag_seconds,
            }),
    );
    let configured: HashSet<(String, String)> = report.tags.iter().map(|t| t.id.labels()).collect();
    metrics.retain_tags(&|s, t| configured.contains(&(s.to_string(), t.to_string())));
}

/// The run's own series: refusals, blobs and bytes moved, tag counts, duration, success.
fn record_run(engine: &Engine, report: &RunReport, metrics: &Metrics, success: Option<f64>) {
    record_refusals(engine, report, metrics);
    let mut per_registry: HashMap<String, u64> = HashMap::new();
    for tag in &report.tags {
        metrics.add_blobs(BlobAction::Copied, tag.stats.copied);
        metrics.add_blobs(BlobAction::Mounted, tag.stats.mounted);
        metrics.add_blobs(BlobAction::Present, tag.stats.present);
        let registry = tag.id.source.registry().to_string();
        *per_registry.entry(registry).or_default() += tag.stats.copied_bytes;
    }
    for (registry, bytes) in per_registry {
        metrics.add_bytes_copied(&registry, bytes);
    }
    let counts = [
        (TagResultKind::Unchanged, report.unchanged()),
        (TagResultKind::Synced, report.synced()),
        (TagResultKind::Failed, report.failed()),
        (TagResultKind::Deferred, report.deferred()),
    ];
    metrics.record_run(report.duration.as_secs_f64(), &counts, success);
}

/// The run summary's word on what the target refused: failed tags per reason, and the upload
/// flow the target ended the run on (the Docker client's after a refused shortcut).
fn record_refusals(engine: &Engine, report: &RunReport, metrics: &Metrics) {
    let reasons = FailureCause::ALL.map(FailureCause::as_str);
    let counts: Vec<(&str, usize)> = report
        .tags
        .iter()
        .filter_map(|t| match &t.result {
            TagResult::Failed { cause, .. } => Some((cause.as_str(), 1)),
            _ => None,
        })
        .collect();
    metrics.record_failures(&reasons, &counts);
    if let Some(flow) = engine.target().upload_flow() {
        let registry = engine.target().describe();
        metrics.set_upload_flow(
            &registry,
            flow.as_str(),
            &UploadFlow::ALL.map(UploadFlow::as_str),
        );
        if flow != UploadFlow::PutWithBody {
            tracing::info!(%registry, flow = flow.as_str(), "the target's uploads ended the run on the Docker client's flow");
        }
    }
}

/// Now, in unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
