//! Several targets in one run: each named target's series in a registry of its own whose
//! common label is `target_name`, rendered together with the process-wide series.

use std::sync::Arc;

use prometheus::Registry;

use super::*;

impl Metrics {
    /// The metrics of one named target of a run over several: its series carry
    /// `target_name="<name>"` and are rendered with this set's (see [`PROCESS_WIDE`]).
    pub fn for_target(&self, name: &str) -> Arc<Metrics> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, child)) = children.iter().find(|(n, _)| n == name) {
            return Arc::clone(child);
        }
        let labels =
            std::collections::HashMap::from([("target_name".to_string(), name.to_string())]);
        // A target name is checked at config load to be a valid label value.
        let registry = Registry::new_custom(None, Some(labels)).unwrap_or_default();
        let child = Arc::new(Metrics::on(registry));
        children.push((name.to_string(), Arc::clone(&child)));
        child
    }

    /// This set's families, with its targets' merged in: with named targets, only the
    /// [`PROCESS_WIDE`] families come from this set, everything else from the targets.
    pub(super) fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.registry.gather();
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if children.is_empty() {
            return families;
        }
        families.retain(|f| PROCESS_WIDE.contains(&f.name()));
        for (_, child) in children.iter() {
            for mut family in child.registry.gather() {
                if PROCESS_WIDE.contains(&family.name()) {
                    continue;
                }
                match families.iter_mut().find(|f| f.name() == family.name()) {
                    Some(existing) => {
                        for m in family.take_metric() {
                            existing.mut_metric().push(m);
                        }
                    }
                    None => families.push(family),
                }
            }
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}

/// Families about the process and the registries it talks to, not about one target: with
/// several targets they have no `target_name` label.
const PROCESS_WIDE: [&str; 10] = [
    PROCESS_START.name,
    SKIPPED_RUNS.name,
    CONFIG_RELOAD_OK.name,
    CONFIG_RELOAD_TIME.name,
    HTTP_REQUESTS.name,
    RUN_HTTP_REQUESTS.name,
    RATELIMIT_REMAINING.name,
    RATELIMIT_SEEN.name,
    REQUEST_WINDOW.name,
    REQUEST_PACE.name,
];
