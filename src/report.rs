//! What a run did, per tag and in total: the end-of-run summary and the exit code.

use std::fmt::Write as _;
use std::time::Duration;

use crate::outcome::{CopyStats, Pruned, TagOutcome, TagResult};

/// The summary of a whole run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub tags: Vec<TagOutcome>,
    pub duration: Duration,
    /// `plan` reports what it would do, in the future tense.
    pub planned: bool,
    /// Tags removed by `prune` (with `plan`: that would be removed).
    pub pruned: Vec<Pruned>,
}

impl RunReport {
    pub fn failed(&self) -> usize {
        self.count(|r| matches!(r, TagResult::Failed { .. }))
    }

    pub fn synced(&self) -> usize {
        self.count(|r| matches!(r, TagResult::Synced { .. }))
    }

    pub fn deferred(&self) -> usize {
        self.count(|r| matches!(r, TagResult::Deferred { .. }))
    }

    pub fn unchanged(&self) -> usize {
        self.count(|r| matches!(r, TagResult::Unchanged { .. }))
    }

    fn count(&self, f: impl Fn(&TagResult) -> bool) -> usize {
        self.tags.iter().filter(|t| f(&t.result)).count()
    }

    /// 0 when every tag is in sync, 1 when some failed, 3 when none failed but some were left
    /// for a later run.
    pub fn exit_code(&self) -> i32 {
        if self.failed() > 0 {
            1
        } else if self.deferred() > 0 {
            3
        } else {
            0
        }
    }

    /// The end-of-run text: one line per tag that changed or failed, then totals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut total = CopyStats::default();
        for p in &self.pruned {
            let verb = if self.planned { "prune:" } else { "PRUNED" };
            let _ = writeln!(out, "{verb} {}:{} {}", p.repository, p.tag, p.digest);
        }
        for tag in &self.tags {
            total.add(&tag.stats);
            match &tag.result {
                TagResult::Unchanged { .. } => {}
                TagResult::Synced { digest, new } => {
                    let s = &tag.stats;
                    let verb = if self.planned {
                        if *new { "new" } else { "updated" }
                    } else {
                        ""
                    };
                    let copied = if self.planned { "to copy" } else { "copied" };
                    let mounted = if self.planned { "to mount" } else { "mounted" };
                    let _ = writeln!(
                        out,
                        "{}{} -> {} {digest} {} {copied} ({}), {} {mounted}, {} present",
                        if verb.is_empty() {
                            String::new()
                        } else {
                            format!("{verb}: ")
                        },
                        tag.source,
                        tag.target,
                        plural(s.copied, "blob"),
                        human_bytes(s.copied_bytes),
                        s.mounted,
                        s.present,
                    );
                }
                TagResult::Failed { error } => {
                    let _ = writeln!(out, "FAILED {} -> {}: {error}", tag.source, tag.target);
                }
                TagResult::Deferred { reason } => {
                    let _ = writeln!(out, "DEFERRED {} -> {}: {reason}", tag.source, tag.target);
                }
            }
        }
        let _ = writeln!(
            out,
            "{}: {} {}, {} unchanged, {} failed, {} deferred; {} {} ({}), {} mounted, {} present; {:.1}s",
            plural(self.tags.len() as u64, "tag"),
            self.synced(),
            if self.planned { "to sync" } else { "synced" },
            self.unchanged(),
            self.failed(),
            self.deferred(),
            plural(total.copied, "blob"),
            if self.planned { "to copy" } else { "copied" },
            human_bytes(total.copied_bytes),
            total.mounted,
            total.present,
            self.duration.as_secs_f64(),
        );
        out
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Decimal units, as registries and `docker images` show sizes: "61.2 MB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(61_200_000), "61.2 MB");
        assert_eq!(human_bytes(1_073_741_824), "1.1 GB");
    }
}
