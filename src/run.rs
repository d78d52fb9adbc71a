//! One pass: the engine, framed by the state of earlier runs and the metrics of this one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, TagSeries};
use crate::copy::hub::Hub;
use crate::copy::{Engine, Mode};
use crate::metrics::{BlobAction, Metrics, TagLag, TagRunResult};
use crate::outcome::{FailureCause, TagResult};
use crate::registry::{RequestObserver, UploadFlow};
use crate::report::RunReport;
use crate::shard::Shard;
use crate::signals::RunControl;
use crate::state::{self, State};
use crate::target::DOCUMENT_REPOSITORY;

/// How a pass runs.
#[derive(Clone)]
pub struct PassOptions {
    pub mode: Mode,
    pub shard: Option<Shard>,
    pub control: RunControl,
    /// Draw live progress on stderr when it is a terminal.
    pub progress: bool,
    /// Where the tags' history comes from when the state cannot be read.
    pub history: crate::history::History,
    /// Counters the engine updates as tags finish and bytes move (the daemon's liveness);
    /// `None`: its own.
    pub activity: Option<Arc<crate::copy::progress::Progress>>,
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

/// Runs one pass over the configured tags (this shard's share of them), on every target at
/// once: with several, the targets share one pull of each manifest and blob, and each is
/// diffed, written, pruned and recorded on its own. Err only when no target could start.
pub async fn run_pass(
    config: &Config,
    options: &PassOptions,
    metrics: &Arc<Metrics>,
) -> Result<RunReport, String> {
    let started = Instant::now();
    let mut views = config.per_target();
    if let Some(shard) = options.shard {
        for view in &mut views {
            view.images = shard.select(&view.images);
            view.selections = shard.select_selections(&view.selections);
        }
        tracing::info!(shard = %format!("{}/{}", shard.index, shard.count), tags = views.iter().map(|v| v.images.len()).sum::<usize>(), "syncing this shard's share");
    }
    let observer: Arc<dyn RequestObserver> = Arc::new(MetricsObserver(Arc::clone(metrics)));
    if views.len() == 1 {
        let view = views.pop().unwrap_or_else(|| config.clone());
        let target = Shared {
            hub: Arc::default(),
            index: 0,
            observer,
            metrics: Arc::clone(metrics),
            history: options.history.clone(),
        };
        return run_target(view, options, target).await;
    }
    let hub = Hub::new(views.len(), &config.spool_dir, config.spool_size);
    // One live progress line per target would overwrite each other on a terminal.
    let options = &PassOptions {
        progress: false,
        ..options.clone()
    };
    let passes = views.into_iter().enumerate().map(|(index, view)| {
        let name = view.target.name.clone().unwrap_or_default();
        let target = Shared {
            hub: Arc::clone(&hub),
            index,
            observer: Arc::clone(&observer),
            metrics: metrics.for_target(&name),
            history: options.history.for_target(Some(&name)),
        };
        let images = view.images.clone();
        let hub = Arc::clone(&hub);
        async move {
            let outcome = run_target(view, options, target).await;
            hub.finished(index);
            match outcome {
                Ok(report) => report,
                Err(e) => {
                    tracing::error!(target_name = %name, error = %e, "this target's pass could not start; its tags fail");
                    RunReport::failed_to_start(&images, &name, &e)
                }
            }
        }
    });
    let reports = futures_util::future::join_all(passes).await;
    if hub.spool_overflows() > 0 {
        tracing::warn!(
            blobs = hub.spool_overflows(),
            "blobs were not spooled (larger than the room left in spool_size, or spool_dir not writable) and were pulled once per target"
        );
    }
    metrics.count_pass_requests();
    let mut total = RunReport::combine(reports, options.mode == Mode::Plan);
    total.duration = started.elapsed();
    Ok(total)
}

/// What one target's pass shares with the run, and its own metrics and history.
struct Shared {
    hub: Arc<Hub>,
    index: usize,
    observer: Arc<dyn RequestObserver>,
    metrics: Arc<Metrics>,
    history: crate::history::History,
}

/// One target's pass.
async fn run_target(
    config: Config,
    options: &PassOptions,
    shared: Shared,
) -> Result<RunReport, String> {
    let started = Instant::now();
    let Shared {
        hub,
        index,
        observer,
        metrics,
        history,
    } = shared;
    let metrics = &metrics;
    let prune_repos = crate::prune::repositories(&config);
    let tag_series = config.tag_series;
    let target_name = config.target.name.clone();
    let mut engine = Engine::sharing(Arc::new(config), options.mode, Some(observer), hub, index)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(activity) = &options.activity {
        engine.progress = Arc::clone(activity);
    }
    let engine = Arc::new(engine);
    let state_tag = state::state_tag(options.shard.map(|s| (s.index, s.count)));
    let loaded = engine
        .target()
        .load_document(&state_tag, state::MAX_STATE_BYTES)
        .await
        .map_err(|e| e.to_string())
        .and_then(|doc| doc.map_or(Ok(State::default()), |d| State::from_json(&d)));
    // What the target holds now, to skip writing a document that would say the same.
    let mut stored = None;
    let mut state = match loaded {
        Ok(mut s) => {
            stored = Some(s.clone());
            history.merge_into(&mut s);
            s
        }
        Err(e) => match history.recover().await {
            Some((s, from)) => {
                tracing::warn!(error = %e, from, "could not read the state of earlier runs; lag continues from the last values known");
                s
            }
            None => {
                tracing::warn!(error = %e, "could not read the state of earlier runs, and no earlier metrics are at hand; lag starts over");
                State::default()
            }
        },
    };
    engine.remember_blobs(state.blob_locations());
    if let Some(ts) = state.last_success {
        metrics.set_last_success(ts);
    }

    let renderer =
        crate::copy::progress::Renderer::start(Arc::clone(&engine.progress), options.progress);
    let tags = engine.run(&options.control, &state.priorities()).await;
    drop(renderer);
    let mut report = RunReport {
        tags,
        duration: started.elapsed(),
        planned: options.mode == Mode::Plan,
        pruned: Vec::new(),
    };

    if options.mode == Mode::Plan && !prune_repos.is_empty() {
        report.pruned = crate::prune::prune(
            engine.target(),
            &prune_repos,
            &report.tags,
            &mut state,
            true,
        )
        .await;
    }
    if options.mode == Mode::Sync {
        let now = unix_now();
        let statuses = state.record(&report.tags, now);
        if !prune_repos.is_empty() && !options.control.stop.is_cancelled() {
            report.pruned = crate::prune::prune(
                engine.target(),
                &prune_repos,
                &report.tags,
                &mut state,
                false,
            )
            .await;
        }
        metrics.set_tag_series_out_of_sync_only(tag_series == TagSeries::OutOfSync);
        for (tag, status) in report.tags.iter().zip(&statuses) {
            metrics.set_tag(
                &tag.source,
                &tag.target.to_string(),
                status.in_sync,
                status.last_synced,
                status.lag_seconds,
            );
        }
        metrics.set_lag_summary(
            report
                .tags
                .iter()
                .zip(&statuses)
                .map(|(tag, status)| TagLag {
                    repository: &tag.target.repository,
                    in_sync: status.in_sync,
                    lag_seconds: status.lag_seconds,
                }),
        );
        let configured: std::collections::HashSet<(String, String)> = report
            .tags
            .iter()
            .map(|t| (t.source.clone(), t.target.to_string()))
            .collect();
        metrics.retain_tags(&|s, t| configured.contains(&(s.to_string(), t.to_string())));
        let success = (report.failed() == 0 && report.deferred() == 0).then_some(now);
        if success.is_some() {
            state.last_success = success;
        }
        let mut seen = engine.known_blobs();
        seen.retain(|(_, repository)| repository != DOCUMENT_REPOSITORY);
        state.remember_blobs(seen);
        history.remember(&state);
        let saved = if stored.as_ref().is_some_and(|s| state.same_as_stored(s)) {
            tracing::debug!("the run state is unchanged; not written");
            Ok(())
        } else {
            match state.to_json() {
                Ok(body) => engine
                    .target()
                    .save_document(&state_tag, body)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "could not save the run state; the next run cannot see this run's lag");
        }
        record_refusals(&engine, &report, metrics);
        let mut per_registry: HashMap<String, u64> = HashMap::new();
        for tag in &report.tags {
            metrics.add_blobs(BlobAction::Copied, tag.stats.copied);
            metrics.add_blobs(BlobAction::Mounted, tag.stats.mounted);
            metrics.add_blobs(BlobAction::Present, tag.stats.present);
            let registry = tag.source.split('/').next().unwrap_or_default().to_string();
            *per_registry.entry(registry).or_default() += tag.stats.copied_bytes;
        }
        for (registry, bytes) in per_registry {
            metrics.add_bytes_copied(&registry, bytes);
        }
        let counts = [
            (TagRunResult::Unchanged, report.unchanged()),
            (TagRunResult::Synced, report.synced()),
            (TagRunResult::Failed, report.failed()),
            (TagRunResult::Deferred, report.deferred()),
        ];
        metrics.record_run(report.duration.as_secs_f64(), &counts, success);
    }
    for pruned in &mut report.pruned {
        pruned.target_name.clone_from(&target_name);
    }
    Ok(report)
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
