//! The per-tag series (`mirrorsync_tag_in_sync`, `_last_synced_timestamp_seconds`,
//! `_lag_seconds`): set per tag at the end of a run, dropped for tags no longer configured, and
//! with `tag_series: out_of_sync` kept only for tags not in sync.
//!
//! They are the only series whose number grows with the tag list, so they are not `prometheus`
//! gauges (each of which keeps its own copy of the family's name, help text and label names, about
//! 600 bytes a series): a tag is one map entry of its two label values and three numbers, written
//! straight into the text exposition when the metrics are rendered.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::Metrics;
use super::families::{Family, TAG_IN_SYNC, TAG_LAG, TAG_LAST_SYNCED};

/// One tag's values: what its three series say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TagValues {
    in_sync: bool,
    /// None: never seen in sync, so no `_last_synced_timestamp_seconds` series.
    last_synced: Option<f64>,
    pub(super) lag: f64,
}

/// The per-tag values of one set of metrics, by (source, target) label values.
pub(super) type TagTable = BTreeMap<(Box<str>, Box<str>), TagValues>;

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
        let key = (Box::from(source), Box::from(target));
        if recorded.out_of_sync_only && in_sync {
            // Only the aggregates speak for a tag in sync.
            recorded.tags.remove(&key);
            return;
        }
        recorded.tags.insert(
            key,
            TagValues {
                in_sync,
                last_synced: last_synced_timestamp,
                lag: lag_seconds,
            },
        );
    }

    /// Keeps only the tags for which `keep(source, target)` is true: the series of the others
    /// disappear (after a config reload, or a run over a changed list).
    pub fn retain_tags(&self, keep: &dyn Fn(&str, &str) -> bool) {
        self.recorded()
            .tags
            .retain(|(source, target), _| keep(source, target));
    }

    /// `tag_series: out_of_sync` (true): from now on, [`Metrics::set_tag`] keeps per-tag series
    /// only for tags not in sync, and drops those of a tag found in sync; false: every tag.
    pub fn set_tag_series_out_of_sync_only(&self, yes: bool) {
        self.recorded().out_of_sync_only = yes;
    }

    /// Appends the per-tag family `family` in the text exposition format, as the `prometheus`
    /// text encoder writes a gauge family: nothing when no tag has the series. `sets` are the
    /// tables to write, each with its `target_name` label value (None: no such label).
    pub(super) fn render_tag_family(
        out: &mut String,
        (family, value): &TagFamily,
        sets: &[(Option<&str>, &TagTable)],
    ) {
        let mut header = false;
        for (target_name, tags) in sets {
            for ((source, target), values) in tags.iter() {
                let Some(v) = value(values) else { continue };
                if !header {
                    header = true;
                    let _ = writeln!(out, "# HELP {} {}", family.name, escape(family.help, false));
                    let _ = writeln!(out, "# TYPE {} gauge", family.name);
                }
                let _ = write!(
                    out,
                    "{}{{source=\"{}\",target=\"{}\"",
                    family.name,
                    escape(source, true),
                    escape(target, true)
                );
                if let Some(name) = target_name {
                    let _ = write!(out, ",target_name=\"{}\"", escape(name, true));
                }
                let _ = writeln!(out, "}} {v}");
            }
        }
    }
}

/// A per-tag family and what a tag's series in it says (None: the tag has none).
pub(super) type TagFamily = (&'static Family, fn(&TagValues) -> Option<f64>);

/// The per-tag families, in the order of their names (the order the text is written in).
pub(super) const TAG_FAMILIES: [TagFamily; 3] = [
    (&TAG_IN_SYNC, |v| Some(if v.in_sync { 1.0 } else { 0.0 })),
    (&TAG_LAG, |v| Some(v.lag)),
    (&TAG_LAST_SYNCED, |v| v.last_synced),
];

/// Escapes a help text (`\` and newline) or a label value (also `"`) for the text format.
fn escape(s: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !s.contains(special) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_targets_label_their_tag_series_and_sort_within_each_target() {
        let m = Metrics::new();
        let a = m.for_target("a");
        let b = m.for_target("b");
        b.set_tag("src/z:1", "z:1", true, Some(10.0), 0.0);
        a.set_tag("src/y:1", "y:1", false, None, 4.5);
        a.set_tag("src/x:1", "x\"q", true, Some(12.5), 0.0);
        let text = m.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mirrorsync_tag_in_sync"))
            .collect();
        assert_eq!(
            lines,
            [
                r#"mirrorsync_tag_in_sync{source="src/x:1",target="x\"q",target_name="a"} 1"#,
                r#"mirrorsync_tag_in_sync{source="src/y:1",target="y:1",target_name="a"} 0"#,
                r#"mirrorsync_tag_in_sync{source="src/z:1",target="z:1",target_name="b"} 1"#,
            ]
        );
        // Never seen in sync: no last-synced series for y, and one header per family.
        assert!(
            !text.contains(r#"last_synced_timestamp_seconds{source="src/y:1""#),
            "{text}"
        );
        assert!(text.contains(
            "mirrorsync_tag_last_synced_timestamp_seconds{source=\"src/x:1\",target=\"x\\\"q\",target_name=\"a\"} 12.5\n"
        ));
        assert_eq!(
            text.matches("# TYPE mirrorsync_tag_lag_seconds gauge")
                .count(),
            1
        );
    }
}
