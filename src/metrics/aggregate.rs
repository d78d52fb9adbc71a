//! Lag summed up over the tags of the last run: series whose number does not grow with the
//! list, for alerts and dashboards over lists too long for a series per tag (`tag_series:
//! out_of_sync`). Exported in both modes, so rules written against them work in either.
//!
//! - `mirrorsync_lag_max_seconds`: the largest `mirrorsync_tag_lag_seconds` of the run;
//! - `mirrorsync_repository_lag_max_seconds{repository}`: the same per target repository;
//! - `mirrorsync_repository_tags_out_of_sync{repository}`: tags the run could not confirm in sync;
//! - `mirrorsync_tag_lag_distribution_seconds`: a histogram of the run's tag lags (a fresh one
//!   each run: its buckets count the tags of the last run, not every run since the start).

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};

const LAG_MAX: &str = "mirrorsync_lag_max_seconds";
const REPOSITORY_LAG_MAX: &str = "mirrorsync_repository_lag_max_seconds";
const REPOSITORY_OUT_OF_SYNC: &str = "mirrorsync_repository_tags_out_of_sync";
const LAG_DISTRIBUTION: &str = "mirrorsync_tag_lag_distribution_seconds";

/// Upper bounds of the lag histogram: a minute up to a week.
const LAG_BUCKETS: [f64; 10] = [
    0.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 43200.0, 86400.0, 259200.0, 604800.0,
];

/// One tag's state at the end of a run, as the aggregates need it.
pub struct TagLag<'a> {
    /// The target repository (without the registry host).
    pub repository: &'a str,
    pub in_sync: bool,
    pub lag_seconds: f64,
}

/// The aggregate series, registered once; [`LagSummary::set`] replaces their values each run.
pub(super) struct LagSummary {
    /// No labels: absent until the first run, like the other per-run series.
    max: GaugeVec,
    repository_max: GaugeVec,
    repository_out_of_sync: IntGaugeVec,
    distribution: Distribution,
}

impl LagSummary {
    pub(super) fn register(registry: &Registry) -> LagSummary {
        let summary = LagSummary {
            max: GaugeVec::new(
                Opts::new(
                    LAG_MAX,
                    "Largest mirrorsync_tag_lag_seconds of the last run (0 when every tag was in sync).",
                ),
                &[],
            )
            .expect("valid metric"),
            repository_max: GaugeVec::new(
                Opts::new(
                    REPOSITORY_LAG_MAX,
                    "Largest tag lag in seconds of the last run, per target repository.",
                ),
                &["repository"],
            )
            .expect("valid metric"),
            repository_out_of_sync: IntGaugeVec::new(
                Opts::new(
                    REPOSITORY_OUT_OF_SYNC,
                    "Tags the last run could not confirm in sync (failed, deferred or lagging), per target repository.",
                ),
                &["repository"],
            )
            .expect("valid metric"),
            distribution: Distribution::new(),
        };
        let collectors: [Box<dyn Collector>; 4] = [
            Box::new(summary.max.clone()),
            Box::new(summary.repository_max.clone()),
            Box::new(summary.repository_out_of_sync.clone()),
            Box::new(summary.distribution.clone_handle()),
        ];
        for c in collectors {
            registry
                .register(c)
                .expect("metric names and labels are distinct constants");
        }
        summary
    }

    /// Replaces every aggregate with what `tags` (the whole run) says.
    pub(super) fn set<'a>(&self, tags: impl IntoIterator<Item = TagLag<'a>>) {
        let mut max = 0.0f64;
        let mut per_repository: BTreeMap<&str, (f64, i64)> = BTreeMap::new();
        let histogram = new_histogram();
        for tag in tags {
            max = max.max(tag.lag_seconds);
            let entry = per_repository.entry(tag.repository).or_default();
            entry.0 = entry.0.max(tag.lag_seconds);
            entry.1 += i64::from(!tag.in_sync);
            histogram.observe(tag.lag_seconds);
        }
        self.max.with_label_values::<&str>(&[]).set(max);
        self.repository_max.reset();
        self.repository_out_of_sync.reset();
        for (repository, (lag, out)) in per_repository {
            self.repository_max
                .with_label_values(&[repository])
                .set(lag);
            self.repository_out_of_sync
                .with_label_values(&[repository])
                .set(out);
        }
        self.distribution.replace(histogram);
    }
}

fn new_histogram() -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(
            LAG_DISTRIBUTION,
            "Tag lags of the last run in seconds (each run exports a fresh histogram).",
        )
        .buckets(LAG_BUCKETS.to_vec()),
    )
    .expect("valid metric")
}

/// A histogram replaced whole each run (the crate's histograms only accumulate), absent
/// until the first run.
struct Distribution {
    current: std::sync::Arc<Mutex<Option<Histogram>>>,
    desc: Vec<Desc>,
}

impl Distribution {
    fn new() -> Distribution {
        Distribution {
            current: Default::default(),
            desc: new_histogram().desc().into_iter().cloned().collect(),
        }
    }

    fn clone_handle(&self) -> Distribution {
        Distribution {
            current: std::sync::Arc::clone(&self.current),
            desc: self.desc.clone(),
        }
    }

    fn replace(&self, histogram: Histogram) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(histogram);
    }
}

impl Collector for Distribution {
    fn desc(&self) -> Vec<&Desc> {
        self.desc.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| h.collect())
            .unwrap_or_default()
    }
}
