//! The metrics Prometheus alerts on, and the three ways they leave the process.
//!
//! [`Metrics`] holds the series of the README's metrics table in a `prometheus` crate
//! [`Registry`](prometheus::Registry) and renders them with its text encoder (exposition format
//! 0.0.4, every family with `# HELP` and `# TYPE`, families sorted by name, series by label
//! values, so two renders of the same state are byte-identical). The text format keeps counter
//! and gauge types through a Pushgateway; the crate's own push and protobuf support are left out.
//!
//! The rendered text leaves the process through:
//! - [`server::serve`]: `GET /metrics` and `GET /healthz` for the long-running `mirrorsync sync`;
//! - [`push::push`]: a Prometheus Pushgateway, for `sync --once` in a CronJob;
//! - [`textfile::write_textfile`]: a node-exporter textfile, written atomically.
//!
//! Series that have not been recorded yet are absent (for example
//! `mirrorsync_run_last_success_timestamp_seconds` before the first successful run, and the
//! `mirrorsync_config_*` pair outside the daemon), except `mirrorsync_process_start_time_seconds`,
//! `mirrorsync_run_tags` (all four results), `mirrorsync_runs_total` (all three results),
//! `mirrorsync_blobs_total` (all three actions) and `mirrorsync_schedule_skipped_passes_total`,
//! which are always present so that `rate()` and alerts see a 0 rather than nothing. The per-run
//! gauges (`mirrorsync_run_blobs`, `mirrorsync_run_bytes_copied`, `mirrorsync_run_http_requests`,
//! see [`per_run`]) appear when the first run ends. Label values
//! never carry secrets: callers pass image references and registry host names only.

pub mod aggregate;
mod families;
mod per_run;
mod per_tag;
pub mod push;
pub mod server;
mod targets;
pub mod textfile;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use families::{
    BLOBS, BYTES_COPIED, CONFIG_RELOAD_OK, CONFIG_RELOAD_TIME, HTTP_REQUESTS, PROCESS_START,
    RATELIMIT_REMAINING, RATELIMIT_SEEN, REQUEST_PACE, REQUEST_WINDOW, RUN_BLOBS, RUN_BYTES_COPIED,
    RUN_DURATION, RUN_HTTP_REQUESTS, RUN_LAST_SUCCESS, RUN_TAGS, RUN_TAGS_FAILED, RUNS,
    SKIPPED_RUNS, UPLOAD_FLOW,
};

pub use aggregate::TagLag;
pub use push::push;
pub use server::{HealthCheck, serve};
pub use textfile::write_textfile;

/// `Content-Type` of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What happened to one blob of a synced image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobAction {
    /// Streamed from upstream to the target.
    Copied,
    /// Cross-repository mount at the target.
    Mounted,
    /// Already present in the target repository.
    Present,
}

impl BlobAction {
    /// Every action.
    pub const ALL: [BlobAction; 3] = [BlobAction::Copied, BlobAction::Mounted, BlobAction::Present];

    /// The `action` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobAction::Copied => "copied",
            BlobAction::Mounted => "mounted",
            BlobAction::Present => "present",
        }
    }
}

/// The result of one tag in a run, as the `result` label says it (a tag outcome's result
/// without its details; metrics does not depend on outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TagResultKind {
    /// The target already held the upstream digest.
    Unchanged,
    /// The tag was copied or updated.
    Synced,
    /// The tag could not be synced.
    Failed,
    /// Left for a later run (signal, `--max-duration`, rate-limit reserve reached).
    Deferred,
}

impl TagResultKind {
    /// Every result.
    pub const ALL: [TagResultKind; 4] = [
        TagResultKind::Unchanged,
        TagResultKind::Synced,
        TagResultKind::Failed,
        TagResultKind::Deferred,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TagResultKind::Unchanged => "unchanged",
            TagResultKind::Synced => "synced",
            TagResultKind::Failed => "failed",
            TagResultKind::Deferred => "deferred",
        }
    }
}

/// The result of a whole run, counted in `mirrorsync_runs_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RunResult {
    /// Every tag ended in sync.
    Success,
    /// A tag failed, or the run could not start.
    Failed,
    /// No tag failed, but some were left for a later run.
    Deferred,
}

impl RunResult {
    /// Every result.
    pub const ALL: [RunResult; 3] = [RunResult::Success, RunResult::Failed, RunResult::Deferred];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Failed => "failed",
            RunResult::Deferred => "deferred",
        }
    }
}

/// What the registry's series cannot answer cheaply: which tags have series (to drop them), and
/// the values read back by callers.
#[derive(Debug, Default)]
struct Recorded {
    /// The per-tag series' values (see [`per_tag`]).
    tags: per_tag::TagTable,
    last_success: Option<f64>,
    /// `tag_series: out_of_sync`: per-tag series only for tags not in sync.
    out_of_sync_only: bool,
}

/// The process's metrics. Updates are atomic operations on `prometheus` series, cheap enough to
/// call from every transfer task; the per-tag series also take one small lock.
pub struct Metrics {
    registry: Registry,
    process_start: Gauge,
    run_last_success: GaugeVec,
    run_duration: GaugeVec,
    run_tags: IntGaugeVec,
    runs: IntCounterVec,
    blobs: IntCounterVec,
    bytes_copied: IntCounterVec,
    http_requests: IntCounterVec,
    ratelimit_remaining: GaugeVec,
    request_window: GaugeVec,
    request_pace: GaugeVec,
    skipped_runs: IntCounter,
    config_reload_ok: IntGaugeVec,
    config_reload_time: GaugeVec,
    lag_summary: aggregate::LagSummary,
    run_counts: per_run::PerRun,
    ratelimit_seen: GaugeVec,
    run_tags_failed: IntGaugeVec,
    upload_flow: IntGaugeVec,
    recorded: Mutex<Recorded>,
    /// One per named target of a run over several (`target_name` label).
    children: Mutex<Vec<(String, Arc<Metrics>)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The current Unix time in seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Unix time of the first [`Metrics::new`] in this process: the process's start, near enough.
fn process_start_time() -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(unix_now)
}

impl Metrics {
    /// A fresh set of metrics, shared: the always-present series at 0, the others absent.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::on(Registry::new()))
    }

    fn on(r: Registry) -> Metrics {
        let m = Metrics {
            process_start: PROCESS_START.gauge(&r),
            run_last_success: RUN_LAST_SUCCESS.gauge_vec(&r),
            run_duration: RUN_DURATION.gauge_vec(&r),
            run_tags: RUN_TAGS.int_gauge_vec(&r),
            run_tags_failed: RUN_TAGS_FAILED.int_gauge_vec(&r),
            upload_flow: UPLOAD_FLOW.int_gauge_vec(&r),
            runs: RUNS.counter_vec(&r),
            blobs: BLOBS.counter_vec(&r),
            bytes_copied: BYTES_COPIED.counter_vec(&r),
            http_requests: HTTP_REQUESTS.counter_vec(&r),
            ratelimit_remaining: RATELIMIT_REMAINING.gauge_vec(&r),
            request_window: REQUEST_WINDOW.gauge_vec(&r),
            request_pace: REQUEST_PACE.gauge_vec(&r),
            skipped_runs: SKIPPED_RUNS.counter(&r),
            config_reload_ok: CONFIG_RELOAD_OK.int_gauge_vec(&r),
            config_reload_time: CONFIG_RELOAD_TIME.gauge_vec(&r),
            ratelimit_seen: RATELIMIT_SEEN.gauge_vec(&r),
            lag_summary: aggregate::LagSummary::register(&r),
            run_counts: per_run::PerRun {
                blobs: RUN_BLOBS.int_gauge_vec(&r),
                bytes_copied: RUN_BYTES_COPIED.int_gauge_vec(&r),
                http_requests: RUN_HTTP_REQUESTS.int_gauge_vec(&r),
                seen: Mutex::default(),
            },
            recorded: Mutex::new(Recorded::default()),
            children: Mutex::default(),
            registry: r,
        };
        m.process_start.set(process_start_time());
        for result in TagResultKind::ALL {
            m.run_tags.with_label_values(&[result.as_str()]).set(0);
        }
        for result in RunResult::ALL {
            m.runs.with_label_values(&[result.as_str()]);
        }
        for action in BlobAction::ALL {
            m.blobs.with_label_values(&[action.as_str()]);
        }
        m
    }

    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        // A panic elsewhere while holding the lock leaves consistent plain data: keep going.
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the end of a run: its duration, the number of tags per result (results not
    /// listed are 0; a result listed twice is summed), one more run in `mirrorsync_runs_total`
    /// (failed when a tag failed, else deferred when a tag was deferred, else success), and,
    /// when every tag was in sync, the end time as the last success (otherwise the previous
    /// last success is kept).
    pub fn record_run(
        &self,
        duration_seconds: f64,
        tags: &[(TagResultKind, usize)],
        success_timestamp: Option<f64>,
    ) {
        let mut counts: BTreeMap<TagResultKind, usize> =
            TagResultKind::ALL.iter().map(|r| (*r, 0)).collect();
        for &(result, n) in tags {
            *counts.entry(result).or_default() += n;
        }
        self.run_duration
            .with_label_values::<&str>(&[])
            .set(duration_seconds);
        for (result, n) in &counts {
            self.run_tags
                .with_label_values(&[result.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        let run = if counts[&TagResultKind::Failed] > 0 {
            RunResult::Failed
        } else if counts[&TagResultKind::Deferred] > 0 {
            RunResult::Deferred
        } else {
            RunResult::Success
        };
        self.count_run(run);
        if let Some(ts) = success_timestamp {
            self.set_last_success(ts);
        }
    }

    /// Sets `mirrorsync_run_tags_failed{reason}`: failed tags of the last run per reason
    /// (reasons not listed are 0).
    pub fn record_failures(&self, reasons: &[&str], counts: &[(&str, usize)]) {
        for reason in reasons {
            let n = counts
                .iter()
                .filter(|(r, _)| r == reason)
                .map(|(_, n)| n)
                .sum::<usize>();
            self.run_tags_failed
                .with_label_values(&[reason])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets `mirrorsync_upload_flow{registry,flow}`: 1 for `flow`, 0 for the other `flows`.
    pub fn set_upload_flow(&self, registry: &str, flow: &str, flows: &[&str]) {
        for each in flows {
            self.upload_flow
                .with_label_values(&[registry, each])
                .set(i64::from(*each == flow));
        }
    }

    /// Adds one run to `mirrorsync_runs_total{result}`; [`Metrics::record_run`] does it for a
    /// run that ran, callers do it for a run that could not start.
    pub fn count_run(&self, result: RunResult) {
        // The run's own gauges first: a scrape that sees the run counted sees them too.
        self.run_counts
            .end_run(&self.blobs, &self.bytes_copied, &self.http_requests);
        self.runs.with_label_values(&[result.as_str()]).inc();
    }

    /// Ends a run over several targets for the process-wide per-run gauges
    /// (`mirrorsync_run_http_requests`); each target's metrics count their own run.
    pub fn count_run_requests(&self) {
        self.run_counts
            .end_run(&self.blobs, &self.bytes_copied, &self.http_requests);
    }

    /// Seeds `mirrorsync_run_last_success_timestamp_seconds`, e.g. from state persisted by an
    /// earlier run.
    pub fn set_last_success(&self, ts: f64) {
        let mut recorded = self.recorded();
        recorded.last_success = Some(ts);
        self.run_last_success.with_label_values::<&str>(&[]).set(ts);
    }

    /// Records a load of the configuration (daemon: at start and on each SIGHUP):
    /// `mirrorsync_config_last_reload_successful` 1 or 0, and on success
    /// `mirrorsync_config_last_reload_success_timestamp_seconds` = `now`.
    pub fn record_config_load(&self, ok: bool, now: f64) {
        self.config_reload_ok
            .with_label_values::<&str>(&[])
            .set(i64::from(ok));
        if ok {
            self.config_reload_time
                .with_label_values::<&str>(&[])
                .set(now);
        }
    }

    /// Replaces the aggregate lag series (see [`aggregate`]) with those of a whole run.
    pub fn set_lag_summary<'a>(&self, tags: impl IntoIterator<Item = TagLag<'a>>) {
        self.lag_summary.set(tags);
    }

    /// Adds `n` to `mirrorsync_blobs_total{action}`.
    pub fn add_blobs(&self, action: BlobAction, n: u64) {
        self.blobs.with_label_values(&[action.as_str()]).inc_by(n);
    }

    /// Adds `n` blob bytes pulled from upstream `registry`.
    pub fn add_bytes_copied(&self, registry: &str, n: u64) {
        self.bytes_copied.with_label_values(&[registry]).inc_by(n);
    }

    /// Counts one HTTP request to `registry`; `code` is the status ("200") or "error" for a
    /// transport failure.
    pub fn inc_http_request(&self, registry: &str, method: &str, code: &str) {
        self.http_requests
            .with_label_values(&[registry, method, code])
            .inc();
    }

    /// Sets the last `ratelimit-remaining` seen from `registry`, seen now.
    pub fn set_ratelimit_remaining(&self, registry: &str, remaining: f64) {
        self.set_ratelimit_remaining_at(registry, remaining, unix_now());
    }

    /// Sets the last `ratelimit-remaining` seen from `registry`, and the Unix time it was seen
    /// (`mirrorsync_ratelimit_remaining_timestamp_seconds`: alerts ignore an old reading, since
    /// the quota refills while nobody asks).
    pub fn set_ratelimit_remaining_at(&self, registry: &str, remaining: f64, seen: f64) {
        self.ratelimit_remaining
            .with_label_values(&[registry])
            .set(remaining);
        self.ratelimit_seen.with_label_values(&[registry]).set(seen);
    }

    /// Sets the requests `registry` may have in flight, and its pace once it has throttled.
    pub fn set_request_window(&self, registry: &str, window: usize, pace: Option<f64>) {
        self.request_window
            .with_label_values(&[registry])
            .set(window as f64);
        if let Some(pace) = pace {
            self.request_pace.with_label_values(&[registry]).set(pace);
        }
    }

    /// Counts a due occurrence skipped because the previous one was still running.
    pub fn inc_skipped_runs(&self) {
        self.skipped_runs.inc();
    }

    /// Renders every metric in the text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let families = self.gather();
        // The per-tag series of this set, or with named targets those of each target.
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let recorded: Vec<(Option<&str>, MutexGuard<'_, Recorded>)> = if children.is_empty() {
            vec![(None, self.recorded())]
        } else {
            children
                .iter()
                .map(|(name, child)| (Some(name.as_str()), child.recorded()))
                .collect()
        };
        let sets: Vec<(Option<&str>, &per_tag::TagTable)> =
            recorded.iter().map(|(name, r)| (*name, &r.tags)).collect();
        // Every family in the order of its name, the per-tag ones among the others.
        let mut out = String::new();
        let mut per_tag = per_tag::TAG_FAMILIES.iter().peekable();
        let encoder = prometheus::TextEncoder::new();
        for family in &families {
            while let Some(tag_family) = per_tag.next_if(|(f, _)| f.name < family.name()) {
                Metrics::render_tag_family(&mut out, tag_family, &sets);
            }
            // Encoding our own well-formed families into a String cannot fail.
            let _ = encoder.encode_utf8(std::slice::from_ref(family), &mut out);
        }
        for tag_family in per_tag {
            Metrics::render_tag_family(&mut out, tag_family, &sets);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use families::{TAG_IN_SYNC, TAG_LAG};

    const GOLDEN: &str = r#"# HELP mirrorsync_blobs_total Blobs handled, by action: copied from upstream, mounted from another repository of the target, or already present.
# TYPE mirrorsync_blobs_total counter
mirrorsync_blobs_total{action="copied"} 3
mirrorsync_blobs_total{action="mounted"} 2
mirrorsync_blobs_total{action="present"} 0
# HELP mirrorsync_bytes_copied_total Blob bytes pulled from each upstream registry.
# TYPE mirrorsync_bytes_copied_total counter
mirrorsync_bytes_copied_total{registry="docker.io"} 61200000
mirrorsync_bytes_copied_total{registry="quay.io"} 10
# HELP mirrorsync_config_last_reload_success_timestamp_seconds Unix time of the last successful load of the configuration (at start or on SIGHUP).
# TYPE mirrorsync_config_last_reload_success_timestamp_seconds gauge
mirrorsync_config_last_reload_success_timestamp_seconds 1699999100
# HELP mirrorsync_config_last_reload_successful 1 when the last load of the configuration (at start or on SIGHUP) succeeded, 0 when it failed and the previous one is kept.
# TYPE mirrorsync_config_last_reload_successful gauge
mirrorsync_config_last_reload_successful 0
# HELP mirrorsync_http_requests_total HTTP requests made, by registry, method and status code ("error" when no response was received).
# TYPE mirrorsync_http_requests_total counter
mirrorsync_http_requests_total{code="200",method="GET",registry="docker.io"} 2
mirrorsync_http_requests_total{code="200",method="HEAD",registry="docker.io"} 1
mirrorsync_http_requests_total{code="error",method="GET",registry="quay.io"} 1
# HELP mirrorsync_process_start_time_seconds Unix time the process started: the baseline of "no success since" alerts before the first successful run.
# TYPE mirrorsync_process_start_time_seconds gauge
mirrorsync_process_start_time_seconds 1699999000
# HELP mirrorsync_ratelimit_remaining Last ratelimit-remaining value seen from the upstream registry.
# TYPE mirrorsync_ratelimit_remaining gauge
mirrorsync_ratelimit_remaining{registry="docker.io"} 97
# HELP mirrorsync_ratelimit_remaining_timestamp_seconds Unix time mirrorsync_ratelimit_remaining was last seen from the upstream registry.
# TYPE mirrorsync_ratelimit_remaining_timestamp_seconds gauge
mirrorsync_ratelimit_remaining_timestamp_seconds{registry="docker.io"} 1699999400
# HELP mirrorsync_run_blobs Blobs handled by the last run, by action (mirrorsync_blobs_total of that run alone).
# TYPE mirrorsync_run_blobs gauge
mirrorsync_run_blobs{action="copied"} 0
mirrorsync_run_blobs{action="mounted"} 0
mirrorsync_run_blobs{action="present"} 0
# HELP mirrorsync_run_duration_seconds Duration of the last run in seconds.
# TYPE mirrorsync_run_duration_seconds gauge
mirrorsync_run_duration_seconds 12.25
# HELP mirrorsync_run_last_success_timestamp_seconds Unix time at the end of the last run in which every tag was in sync.
# TYPE mirrorsync_run_last_success_timestamp_seconds gauge
mirrorsync_run_last_success_timestamp_seconds 1700000000.5
# HELP mirrorsync_run_tags Tags per result of the last run: unchanged, synced, failed, deferred.
# TYPE mirrorsync_run_tags gauge
mirrorsync_run_tags{result="deferred"} 0
mirrorsync_run_tags{result="failed"} 1
mirrorsync_run_tags{result="synced"} 1
mirrorsync_run_tags{result="unchanged"} 3
# HELP mirrorsync_runs_total Runs, by result: success (every tag in sync), failed (a tag failed, or the run could not start), deferred (work left for a later run).
# TYPE mirrorsync_runs_total counter
mirrorsync_runs_total{result="deferred"} 0
mirrorsync_runs_total{result="failed"} 1
mirrorsync_runs_total{result="success"} 0
# HELP mirrorsync_schedule_skipped_passes_total Occurrences of the schedule skipped because the previous run was still running.
# TYPE mirrorsync_schedule_skipped_passes_total counter
mirrorsync_schedule_skipped_passes_total 1
# HELP mirrorsync_tag_in_sync 1 when the target held the upstream digest at the last check, 0 otherwise.
# TYPE mirrorsync_tag_in_sync gauge
mirrorsync_tag_in_sync{source="docker.io/library/nginx:1.25",target="mirror/library/nginx:1.25"} 1
mirrorsync_tag_in_sync{source="docker.io/library/redis:7.2",target="mirror/library/redis:7.2"} 0
mirrorsync_tag_in_sync{source="odd\\name \"quoted\"\nline",target="t"} 0
# HELP mirrorsync_tag_lag_seconds 0 when the last run confirmed the tag in sync; otherwise seconds since it was last confirmed in sync, whichever side (upstream or target) kept the run from confirming it.
# TYPE mirrorsync_tag_lag_seconds gauge
mirrorsync_tag_lag_seconds{source="docker.io/library/nginx:1.25",target="mirror/library/nginx:1.25"} 0
mirrorsync_tag_lag_seconds{source="docker.io/library/redis:7.2",target="mirror/library/redis:7.2"} 3600
mirrorsync_tag_lag_seconds{source="odd\\name \"quoted\"\nline",target="t"} 1.5
# HELP mirrorsync_tag_last_synced_timestamp_seconds Unix time the target was last seen to match upstream.
# TYPE mirrorsync_tag_last_synced_timestamp_seconds gauge
mirrorsync_tag_last_synced_timestamp_seconds{source="docker.io/library/nginx:1.25",target="mirror/library/nginx:1.25"} 1700000000
mirrorsync_tag_last_synced_timestamp_seconds{source="docker.io/library/redis:7.2",target="mirror/library/redis:7.2"} 1699990000
"#;

    fn populated() -> Arc<Metrics> {
        let m = Metrics::new();
        m.process_start.set(1_699_999_000.0);
        m.record_config_load(true, 1_699_999_100.0);
        m.record_config_load(false, 1_699_999_200.0);
        // Inserted out of order on purpose: the output is sorted.
        m.set_tag(
            "docker.io/library/redis:7.2",
            "mirror/library/redis:7.2",
            false,
            Some(1_699_990_000.0),
            3600.0,
        );
        m.set_tag("odd\\name \"quoted\"\nline", "t", false, None, 1.5);
        m.set_tag(
            "docker.io/library/nginx:1.25",
            "mirror/library/nginx:1.25",
            true,
            Some(1_700_000_000.0),
            0.0,
        );
        m.record_run(
            12.25,
            &[
                (TagResultKind::Unchanged, 2),
                (TagResultKind::Synced, 1),
                (TagResultKind::Failed, 1),
                (TagResultKind::Unchanged, 1),
            ],
            Some(1_700_000_000.5),
        );
        m.add_blobs(BlobAction::Mounted, 2);
        m.add_blobs(BlobAction::Copied, 1);
        m.add_blobs(BlobAction::Copied, 2);
        m.add_bytes_copied("quay.io", 10);
        m.add_bytes_copied("docker.io", 61_200_000);
        m.inc_http_request("quay.io", "GET", "error");
        m.inc_http_request("docker.io", "HEAD", "200");
        m.inc_http_request("docker.io", "GET", "200");
        m.inc_http_request("docker.io", "GET", "200");
        m.set_ratelimit_remaining_at("docker.io", 99.0, 1_699_999_300.0);
        m.set_ratelimit_remaining_at("docker.io", 97.0, 1_699_999_400.0);
        m.inc_skipped_runs();
        m
    }

    #[test]
    fn renders_golden_text_with_escaping() {
        let m = populated();
        let text = m.render();
        if text != GOLDEN {
            println!("rendered:\n{text}");
            for (i, (a, b)) in text.lines().zip(GOLDEN.lines()).enumerate() {
                assert_eq!(a, b, "line {}", i + 1);
            }
            assert_eq!(text, GOLDEN);
        }
        // Stable: rendering again gives the same bytes.
        assert_eq!(m.render(), text);
    }

    #[test]
    fn empty_metrics_render_the_always_present_families() {
        let text = Metrics::new().render();
        assert!(!text.contains(RUN_LAST_SUCCESS.name), "{text}");
        assert!(!text.contains(RUN_DURATION.name), "{text}");
        assert!(!text.contains(TAG_LAG.name), "{text}");
        assert!(!text.contains(CONFIG_RELOAD_OK.name), "daemon only: {text}");
        assert!(
            !text.contains(CONFIG_RELOAD_TIME.name),
            "daemon only: {text}"
        );
        assert!(
            text.contains(&format!(
                "{} {}\n",
                PROCESS_START.name,
                process_start_time()
            )),
            "{text}"
        );
        for r in ["success", "failed", "deferred"] {
            assert!(
                text.contains(&format!("mirrorsync_runs_total{{result=\"{r}\"}} 0\n")),
                "{text}"
            );
        }
        for r in ["unchanged", "synced", "failed", "deferred"] {
            assert!(
                text.contains(&format!("mirrorsync_run_tags{{result=\"{r}\"}} 0\n")),
                "{text}"
            );
        }
        for a in ["copied", "mounted", "present"] {
            assert!(
                text.contains(&format!("mirrorsync_blobs_total{{action=\"{a}\"}} 0\n")),
                "{text}"
            );
        }
        assert!(text.contains("mirrorsync_schedule_skipped_passes_total 0\n"));
        // Every sample line belongs to a family announced with HELP and TYPE just before.
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line}");
            }
        }
    }

    #[test]
    fn all_results_present_and_last_success_kept() {
        let m = Metrics::new();
        m.record_run(1.0, &[(TagResultKind::Failed, 2)], None);
        let text = m.render();
        assert!(text.contains("mirrorsync_run_tags{result=\"unchanged\"} 0\n"));
        assert!(text.contains("mirrorsync_run_tags{result=\"synced\"} 0\n"));
        assert!(text.contains("mirrorsync_run_tags{result=\"failed\"} 2\n"));
        assert!(text.contains("mirrorsync_run_tags{result=\"deferred\"} 0\n"));
        assert!(text.contains("mirrorsync_run_duration_seconds 1\n"));
        assert!(
            !text.contains(RUN_LAST_SUCCESS.name),
            "absent until a success"
        );

        m.set_last_success(100.0);
        assert!(
            m.render()
                .contains("mirrorsync_run_last_success_timestamp_seconds 100\n")
        );
        m.record_run(2.0, &[(TagResultKind::Synced, 3)], Some(200.0));
        assert_eq!(m.recorded().last_success, Some(200.0));
        m.record_run(3.0, &[(TagResultKind::Deferred, 1)], None);
        let text = m.render();
        assert!(text.contains("mirrorsync_run_last_success_timestamp_seconds 200\n"));
        assert!(
            text.contains("mirrorsync_run_tags{result=\"synced\"} 0\n"),
            "reset per run"
        );
        assert!(text.contains("mirrorsync_run_tags{result=\"deferred\"} 1\n"));
        assert!(text.contains("mirrorsync_run_duration_seconds 3\n"));
        // One run counted per record_run, by its worst result; a run that could not start
        // is counted by the caller.
        m.record_run(
            4.0,
            &[(TagResultKind::Failed, 1), (TagResultKind::Deferred, 1)],
            None,
        );
        m.count_run(RunResult::Failed);
        let text = m.render();
        assert!(
            text.contains("mirrorsync_runs_total{result=\"failed\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_runs_total{result=\"success\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_runs_total{result=\"deferred\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn per_run_gauges_hold_each_run_alone_and_reset_to_zero() {
        let m = Metrics::new();
        assert!(
            !m.render().contains(RUN_BYTES_COPIED.name),
            "absent before a run ended"
        );
        m.add_bytes_copied("docker.io", 100);
        m.add_blobs(BlobAction::Copied, 2);
        m.inc_http_request("docker.io", "GET", "200");
        m.inc_http_request("docker.io", "GET", "200");
        m.record_run(1.0, &[(TagResultKind::Synced, 1)], Some(10.0));
        let text = m.render();
        assert!(
            text.contains("mirrorsync_run_bytes_copied{registry=\"docker.io\"} 100\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_run_blobs{action=\"copied\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "mirrorsync_run_http_requests{code=\"200\",method=\"GET\",registry=\"docker.io\"} 2\n"
            ),
            "{text}"
        );
        // The second run copies from quay.io only: docker.io's gauge drops to 0, the counters
        // keep growing.
        m.add_bytes_copied("quay.io", 7);
        m.add_bytes_copied("docker.io", 0);
        m.inc_http_request("quay.io", "HEAD", "404");
        m.count_run(RunResult::Failed);
        let text = m.render();
        assert!(
            text.contains("mirrorsync_run_bytes_copied{registry=\"docker.io\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_run_bytes_copied{registry=\"quay.io\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_bytes_copied_total{registry=\"docker.io\"} 100\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_run_blobs{action=\"copied\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "mirrorsync_run_http_requests{code=\"200\",method=\"GET\",registry=\"docker.io\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "mirrorsync_run_http_requests{code=\"404\",method=\"HEAD\",registry=\"quay.io\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_ratelimit_reading_carries_the_time_it_was_seen() {
        let m = Metrics::new();
        let before = unix_now();
        m.set_ratelimit_remaining("docker.io", 5.0);
        let text = m.render();
        let seen: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "mirrorsync_ratelimit_remaining_timestamp_seconds{registry=\"docker.io\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in {text}"));
        assert!(seen >= before.floor() && seen <= unix_now() + 1.0, "{seen}");
    }

    #[test]
    fn config_loads_set_the_reload_pair() {
        let m = Metrics::new();
        m.record_config_load(true, 100.0);
        let text = m.render();
        assert!(
            text.contains("mirrorsync_config_last_reload_successful 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_config_last_reload_success_timestamp_seconds 100\n"),
            "{text}"
        );
        m.record_config_load(false, 200.0);
        let text = m.render();
        assert!(
            text.contains("mirrorsync_config_last_reload_successful 0\n"),
            "{text}"
        );
        assert!(
            text.contains("mirrorsync_config_last_reload_success_timestamp_seconds 100\n"),
            "the last success is kept: {text}"
        );
    }

    #[test]
    fn retain_tags_drops_unconfigured_series() {
        let m = Metrics::new();
        m.set_tag("a", "ma", true, Some(1.0), 0.0);
        m.set_tag("b", "mb", false, Some(2.0), 5.0);
        m.set_tag("c", "mc", false, None, 7.0);
        m.retain_tags(&|s, t| s == "b" && t == "mb");
        let text = m.render();
        assert!(text.contains("mirrorsync_tag_lag_seconds{source=\"b\",target=\"mb\"} 5\n"));
        assert!(!text.contains("source=\"a\""), "{text}");
        assert!(!text.contains("source=\"c\""), "{text}");
        assert_eq!(
            m.recorded()
                .tags
                .get(&("b".into(), "mb".into()))
                .map(|v| v.lag),
            Some(5.0)
        );
        assert_eq!(m.recorded().tags.get(&("a".into(), "ma".into())), None);
        m.retain_tags(&|_, _| false);
        let text = m.render();
        assert!(
            !text.contains(TAG_IN_SYNC.name) && !text.contains(TAG_LAG.name),
            "{text}"
        );
    }

    #[test]
    fn concurrent_updates_are_all_counted() {
        let m = Metrics::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.add_blobs(BlobAction::Present, 1);
                        m.inc_http_request("r", "GET", "200");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        assert!(text.contains("mirrorsync_blobs_total{action=\"present\"} 8000\n"));
        assert!(text.contains(
            "mirrorsync_http_requests_total{code=\"200\",method=\"GET\",registry=\"r\"} 8000\n"
        ));
    }
}
