//! The per-tag series (`mirrorsync_tag_in_sync`, `_last_synced_timestamp_seconds`,
//! `_lag_seconds`): set per tag at the end of a run, dropped for tags no longer configured, and
//! with `tag_series: out_of_sync` kept only for tags not in sync.

use super::Metrics;

impl Metrics {
    /// Sets the three per-tag gauges of `source` -> `target`. `last_synced_timestamp` None
    /// leaves `mirrorsync_tag_last_synced_timestamp_seconds` out for this tag (never seen in
    /// sync).
    pub fn set_tag(
        &self,
        source: &str,
        target: &str,
        in_sync: bool,
        last_synced_timestamp: Option<f64>,
        lag_seconds: f64,
    ) {
        let mut recorded = self.recorded();
        let labels = [source, target];
        if recorded.out_of_sync_only && in_sync {
            // Only the aggregates speak for a tag in sync.
            if recorded
                .lag
                .remove(&(source.to_string(), target.to_string()))
                .is_some()
            {
                self.remove_tag_series(&labels);
            }
            return;
        }
        self.tag_in_sync
            .with_label_values(&labels)
            .set(i64::from(in_sync));
        match last_synced_timestamp {
            Some(ts) => self.tag_last_synced.with_label_values(&labels).set(ts),
            None => {
                // Absent already is fine.
                let _ = self.tag_last_synced.remove_label_values(&labels);
            }
        }
        self.tag_lag.with_label_values(&labels).set(lag_seconds);
        recorded
            .lag
            .insert((source.to_string(), target.to_string()), lag_seconds);
    }

    /// Keeps only the tags for which `keep(source, target)` is true: the series of the others
    /// disappear (after a config reload, or a run over a changed list).
    pub fn retain_tags(&self, keep: &dyn Fn(&str, &str) -> bool) {
        let mut recorded = self.recorded();
        recorded.lag.retain(|(source, target), _| {
            if keep(source, target) {
                return true;
            }
            self.remove_tag_series(&[source.as_str(), target.as_str()]);
            false
        });
    }

    fn remove_tag_series(&self, labels: &[&str; 2]) {
        let _ = self.tag_in_sync.remove_label_values(labels);
        let _ = self.tag_last_synced.remove_label_values(labels);
        let _ = self.tag_lag.remove_label_values(labels);
    }

    /// `tag_series: out_of_sync` (true): from now on, [`Metrics::set_tag`] keeps per-tag series
    /// only for tags not in sync, and drops those of a tag found in sync; false: every tag.
    pub fn set_tag_series_out_of_sync_only(&self, yes: bool) {
        self.recorded().out_of_sync_only = yes;
    }
}
