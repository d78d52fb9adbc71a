//! The families of the README's metrics table, in one place: each one's name, `# HELP` text
//! and label names, and how it is registered.

use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// One metric family: its name, `# HELP` text and label names.
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    labels: &'static [&'static str],
}

impl Family {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    pub(super) fn gauge(&self, r: &Registry) -> Gauge {
        register(r, Gauge::with_opts(self.opts()).expect("valid metric"))
    }

    pub(super) fn counter(&self, r: &Registry) -> IntCounter {
        register(r, IntCounter::with_opts(self.opts()).expect("valid metric"))
    }

    pub(super) fn gauge_vec(&self, r: &Registry) -> GaugeVec {
        register(
            r,
            GaugeVec::new(self.opts(), self.labels).expect("valid metric"),
        )
    }

    pub(super) fn int_gauge_vec(&self, r: &Registry) -> IntGaugeVec {
        register(
            r,
            IntGaugeVec::new(self.opts(), self.labels).expect("valid metric"),
        )
    }

    pub(super) fn counter_vec(&self, r: &Registry) -> IntCounterVec {
        register(
            r,
            IntCounterVec::new(self.opts(), self.labels).expect("valid metric"),
        )
    }
}

/// Registers `collector` and returns it. The names and label sets below are constants, distinct
/// and valid, so registering cannot fail.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names and labels are distinct constants");
    collector
}

pub(super) const PROCESS_START: Family = Family {
    name: "mirrorsync_process_start_time_seconds",
    help: "Unix time the process started: the baseline of \"no success since\" alerts before the first successful run.",
    labels: &[],
};

pub(super) const RUN_LAST_SUCCESS: Family = Family {
    name: "mirrorsync_run_last_success_timestamp_seconds",
    help: "Unix time at the end of the last run in which every tag was in sync.",
    labels: &[],
};

pub(super) const RUN_DURATION: Family = Family {
    name: "mirrorsync_run_duration_seconds",
    help: "Duration of the last run in seconds.",
    labels: &[],
};

pub(super) const RUN_TAGS: Family = Family {
    name: "mirrorsync_run_tags",
    help: "Tags per result of the last run: unchanged, synced, failed, deferred.",
    labels: &["result"],
};

pub(super) const RUN_TAGS_FAILED: Family = Family {
    name: "mirrorsync_run_tags_failed",
    help: "Failed tags of the last run by reason: tag_immutable (upstream moved a tag the target keeps immutable), name_refused (the target refused the repository path), by_digest_refused (the target refuses manifests pushed by digest), other.",
    labels: &["reason"],
};

pub(super) const UPLOAD_FLOW: Family = Family {
    name: "mirrorsync_upload_flow",
    help: "1 for the blob upload flow the target registry ended the last run on: put-with-body (ours), patch-then-put (the closing PUT refused a body), single-patch (Content-Range refused: the Docker client's flow); 0 for the others.",
    labels: &["registry", "flow"],
};

pub(super) const RUNS: Family = Family {
    name: "mirrorsync_runs_total",
    help: "Runs, by result: success (every tag in sync), failed (a tag failed, or the run could not start), deferred (work left for a later run).",
    labels: &["result"],
};

pub(super) const TAG_IN_SYNC: Family = Family {
    name: "mirrorsync_tag_in_sync",
    help: "1 when the target held the upstream digest at the last check, 0 otherwise.",
    labels: &["source", "target"],
};

pub(super) const TAG_LAST_SYNCED: Family = Family {
    name: "mirrorsync_tag_last_synced_timestamp_seconds",
    help: "Unix time the target was last seen to match upstream.",
    labels: &["source", "target"],
};

pub(super) const TAG_LAG: Family = Family {
    name: "mirrorsync_tag_lag_seconds",
    help: "0 when the last run confirmed the tag in sync; otherwise seconds since it was last confirmed in sync, whichever side (upstream or target) kept the run from confirming it.",
    labels: &["source", "target"],
};

pub(super) const BLOBS: Family = Family {
    name: "mirrorsync_blobs_total",
    help: "Blobs handled, by action: copied from upstream, mounted from another repository of the target, or already present.",
    labels: &["action"],
};

pub(super) const BYTES_COPIED: Family = Family {
    name: "mirrorsync_bytes_copied_total",
    help: "Blob bytes pulled from each upstream registry.",
    labels: &["registry"],
};

pub(super) const HTTP_REQUESTS: Family = Family {
    name: "mirrorsync_http_requests_total",
    help: "HTTP requests made, by registry, method and status code (\"error\" when no response was received).",
    labels: &["registry", "method", "code"],
};

pub(super) const RATELIMIT_REMAINING: Family = Family {
    name: "mirrorsync_ratelimit_remaining",
    help: "Last ratelimit-remaining value seen from the upstream registry.",
    labels: &["registry"],
};

pub(super) const REQUEST_WINDOW: Family = Family {
    name: "mirrorsync_request_window",
    help: "Requests the registry may have in flight now: shrinks when it answers 429 or 503, grows back as it answers the rest.",
    labels: &["registry"],
};

pub(super) const REQUEST_PACE: Family = Family {
    name: "mirrorsync_request_pace_per_second",
    help: "Requests per second started to the registry since it first answered 429 or 503 (absent until then).",
    labels: &["registry"],
};

pub(super) const SKIPPED_RUNS: Family = Family {
    name: "mirrorsync_schedule_skipped_passes_total",
    help: "Occurrences of the schedule skipped because the previous run was still running.",
    labels: &[],
};

pub(super) const CONFIG_RELOAD_OK: Family = Family {
    name: "mirrorsync_config_last_reload_successful",
    help: "1 when the last load of the configuration (at start or on SIGHUP) succeeded, 0 when it failed and the previous one is kept.",
    labels: &[],
};

pub(super) const CONFIG_RELOAD_TIME: Family = Family {
    name: "mirrorsync_config_last_reload_success_timestamp_seconds",
    help: "Unix time of the last successful load of the configuration (at start or on SIGHUP).",
    labels: &[],
};

pub(super) const RUN_BLOBS: Family = Family {
    name: "mirrorsync_run_blobs",
    help: "Blobs handled by the last run, by action (mirrorsync_blobs_total of that run alone).",
    labels: &["action"],
};

pub(super) const RUN_BYTES_COPIED: Family = Family {
    name: "mirrorsync_run_bytes_copied",
    help: "Blob bytes the last run pulled from each upstream registry (mirrorsync_bytes_copied_total of that run alone).",
    labels: &["registry"],
};

pub(super) const RUN_HTTP_REQUESTS: Family = Family {
    name: "mirrorsync_run_http_requests",
    help: "HTTP requests the last run made, by registry, method and status code (mirrorsync_http_requests_total of that run alone).",
    labels: &["registry", "method", "code"],
};

pub(super) const RATELIMIT_SEEN: Family = Family {
    name: "mirrorsync_ratelimit_remaining_timestamp_seconds",
    help: "Unix time mirrorsync_ratelimit_remaining was last seen from the upstream registry.",
    labels: &["registry"],
};
