//! The per-run gauges: what the last run alone added to the process's counters.
//!
//! A `sync --once` run starts its counters at 0 and the Pushgateway keeps only its last push, so
//! `increase()` over pushed counters undercounts (each run's values replace the previous run's).
//! The gauges `mirrorsync_run_blobs`, `mirrorsync_run_bytes_copied` and
//! `mirrorsync_run_http_requests` hold each run's own share, set when the run ends, so a
//! dashboard can sum them over runs; in the daemon they are the difference since the previous
//! run ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGaugeVec};

/// One series of a counter: its family's name and its label pairs, sorted by name.
type SeriesKey = (String, Vec<(String, String)>);

/// The three per-run gauges and the counter values at the end of the previous run.
pub(super) struct PerRun {
    pub(super) blobs: IntGaugeVec,
    pub(super) bytes_copied: IntGaugeVec,
    pub(super) http_requests: IntGaugeVec,
    pub(super) seen: Mutex<HashMap<SeriesKey, u64>>,
}

impl PerRun {
    /// Sets each gauge to what its counter gained since the previous call: every series the
    /// counter has, 0 included, so a value of an earlier run never lingers.
    pub(super) fn end_run(
        &self,
        blobs: &IntCounterVec,
        bytes_copied: &IntCounterVec,
        http_requests: &IntCounterVec,
    ) {
        // A panic elsewhere while holding the lock leaves a consistent map: keep going.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (counter, gauge) in [
            (blobs, &self.blobs),
            (bytes_copied, &self.bytes_copied),
            (http_requests, &self.http_requests),
        ] {
            for (key, value) in counter_values(counter) {
                let before = seen.insert(key.clone(), value).unwrap_or(0);
                let labels: HashMap<&str, &str> = key
                    .1
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                if let Ok(g) = gauge.get_metric_with(&labels) {
                    g.set(i64::try_from(value.saturating_sub(before)).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

/// Every series of `counter` with its current value.
fn counter_values(counter: &IntCounterVec) -> BTreeMap<SeriesKey, u64> {
    let mut out = BTreeMap::new();
    for family in counter.collect() {
        for m in family.get_metric() {
            let mut labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            // Integer counters hold whole numbers well below 2^53.
            let value = m.get_counter().get_value() as u64;
            out.insert((family.name().to_string(), labels), value);
        }
    }
    out
}
