//! What a run did, per tag and in total: each tag's result as it finishes, the end-of-run
//! summary and the exit code.
//!
//! Text logs (the default): a tag that changed, failed or was deferred gets one line on stdout
//! when it finishes, and the end of the run adds the totals; stderr carries only what is not a
//! tag's result (retries, warnings). JSON logs (`--log-format json`): stderr is JSON only, one
//! event per tag as it finishes and one run-summary event; stdout gets the whole summary at the
//! end.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::exit;
use crate::outcome::{CopyStats, Pruned, TagOutcome, TagResult};

/// Whether logs are JSON (set once by `main`).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Chooses JSON events (`true`) or text lines for tag results, the run summary and fatal errors.
pub fn use_json_logs(on: bool) {
    JSON_LOGS.store(on, Ordering::Relaxed);
}

fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// An error that stops a command: `error: ...` on stderr, or one JSON event with JSON logs.
pub fn fatal(message: impl std::fmt::Display) {
    if json_logs() {
        tracing::error!(error = %message, "cannot continue");
    } else {
        eprintln!("error: {message}");
    }
}

/// Announces one tag the moment it finishes, with its own duration: its summary line on stdout
/// (none for an unchanged tag), or one event on stderr with JSON logs. `planned`: a `plan` run,
/// which says what it would do and has copied nothing.
pub fn tag_finished(tag: &TagOutcome, planned: bool) {
    if !json_logs() {
        if let Some(line) = tag_line(tag, planned) {
            // The live progress line on a terminal is cleared first; it is redrawn below.
            let err = std::io::stderr();
            if std::io::IsTerminal::is_terminal(&err) {
                let mut err = err.lock();
                let _ = std::io::Write::write_all(&mut err, b"\r\x1b[2K");
                let _ = std::io::Write::flush(&mut err);
            }
            println!("{line}");
        }
        return;
    }
    let ms = tag.duration.as_millis() as u64;
    let (source, target) = (&tag.id.source, &tag.id.target);
    match &tag.result {
        TagResult::Unchanged { digest } => tracing::debug!(
            %source, %target, target_name = tag.target_name.as_deref(), %digest, result = "unchanged", duration_ms = ms, "tag unchanged"
        ),
        TagResult::Synced { digest, previous } => {
            let result = if previous.is_some() { "updated" } else { "new" };
            let current = previous.as_ref().map(|d| d.to_string());
            if planned {
                tracing::info!(
                    %source, %target, target_name = tag.target_name.as_deref(), %digest, current, result, duration_ms = ms, "would sync"
                );
            } else {
                let s = &tag.stats;
                tracing::info!(
                    %source, %target, target_name = tag.target_name.as_deref(), %digest, previous = current, result,
                    blobs_copied = s.copied, bytes_copied = s.copied_bytes,
                    blobs_mounted = s.mounted, blobs_present = s.present,
                    duration_ms = ms, "tag synced"
                );
            }
        }
        TagResult::Failed { error, cause } => tracing::warn!(
            %source, %target, target_name = tag.target_name.as_deref(), result = "failed", reason = cause.as_str(), %error, duration_ms = ms, "tag failed"
        ),
        TagResult::Deferred { reason } => tracing::info!(
            %source, %target, target_name = tag.target_name.as_deref(), result = "deferred", %reason, duration_ms = ms, "tag deferred"
        ),
    }
}

/// A tag's line in the summary; `None` for an unchanged tag (counted in the totals only).
fn tag_line(tag: &TagOutcome, planned: bool) -> Option<String> {
    let source = &tag.id.source;
    // With several targets, the line says which (`[eu] library/nginx:1.25`).
    let target = match &tag.target_name {
        Some(name) => format!("[{name}] {}", tag.id.target),
        None => tag.id.target.to_string(),
    };
    let s = &tag.stats;
    Some(match &tag.result {
        TagResult::Unchanged { .. } => return None,
        TagResult::Synced { digest, previous } if planned => {
            let blobs = format!(
                "{} to copy ({}), {} to mount, {} present",
                plural(s.copied, "blob"),
                human_bytes(s.copied_bytes),
                s.mounted,
                s.present
            );
            match previous {
                Some(old) => format!("updated: {source} -> {target} {old} -> {digest} {blobs}"),
                None => format!("new: {source} -> {target} {digest} {blobs}"),
            }
        }
        TagResult::Synced { digest, .. } => format!(
            "{source} -> {target} {digest} {} copied ({}), {} mounted, {} present",
            plural(s.copied, "blob"),
            human_bytes(s.copied_bytes),
            s.mounted,
            s.present
        ),
        TagResult::Failed { error, .. } => format!("FAILED {source} -> {target}: {error}"),
        TagResult::Deferred { reason } => format!("DEFERRED {source} -> {target}: {reason}"),
    })
}

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
    /// The reports of a run's targets as one: every tag of each, the longest duration.
    pub fn combine(reports: Vec<RunReport>, planned: bool) -> RunReport {
        let mut total = RunReport {
            tags: Vec::new(),
            duration: Duration::ZERO,
            planned,
            pruned: Vec::new(),
        };
        for report in reports {
            total.tags.extend(report.tags);
            total.pruned.extend(report.pruned);
            total.duration = total.duration.max(report.duration);
        }
        total
    }

    /// A target whose run could not start: each of its tags failed with `error`.
    pub fn failed_to_start(
        items: &[crate::config::SyncItem],
        name: &str,
        error: &str,
    ) -> RunReport {
        let tags = items
            .iter()
            .map(|item| {
                let tag = TagOutcome {
                    id: crate::outcome::TagId::of(item),
                    result: TagResult::Failed {
                        error: format!("target {name}: {error}"),
                        cause: Default::default(),
                    },
                    stats: CopyStats::default(),
                    duration: Duration::ZERO,
                    target_name: Some(name.to_string()),
                };
                tag_finished(&tag, false);
                tag
            })
            .collect();
        RunReport {
            tags,
            duration: Duration::ZERO,
            planned: false,
            pruned: Vec::new(),
        }
    }

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

    /// [`exit::SUCCESS`] when every tag is in sync, [`exit::FAILED`] when some failed,
    /// [`exit::WORK_LEFT`] when none failed but some were left for a later run.
    pub fn exit_code(&self) -> i32 {
        if self.failed() > 0 {
            exit::FAILED
        } else if self.deferred() > 0 {
            exit::WORK_LEFT
        } else {
            exit::SUCCESS
        }
    }

    /// The end-of-run text: one line per tag that changed, failed or was deferred, then totals.
    pub fn render(&self) -> String {
        self.render_with(true)
    }

    /// What the end of a run prints on stdout: with text logs the tags' lines were printed as
    /// each tag finished, so only pruned tags and the totals remain.
    pub fn render_end(&self) -> String {
        self.render_with(json_logs())
    }

    fn render_with(&self, tags: bool) -> String {
        let mut out = String::new();
        for p in &self.pruned {
            let verb = if self.planned { "prune:" } else { "PRUNED" };
            let target = p
                .target_name
                .as_ref()
                .map(|n| format!("[{n}] "))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{verb} {target}{}:{} {}",
                p.repository, p.tag, p.digest
            );
        }
        for tag in &self.tags {
            if let Some(line) = tag_line(tag, self.planned).filter(|_| tags) {
                let _ = writeln!(out, "{line}");
            }
        }
        // With several targets, a totals line per target first.
        let mut names: Vec<&str> = Vec::new();
        for name in self.tags.iter().filter_map(|t| t.target_name.as_deref()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        for name in names {
            let own = RunReport {
                tags: self
                    .tags
                    .iter()
                    .filter(|t| t.target_name.as_deref() == Some(name))
                    .cloned()
                    .collect(),
                duration: self.duration,
                planned: self.planned,
                pruned: Vec::new(),
            };
            let _ = write!(out, "[{name}] ");
            own.totals_line(&mut out, false);
        }
        self.totals_line(&mut out, true);
        out
    }

    /// `N tags: ... synced, ... unchanged, ...; blobs ...` (and the duration when `timed`).
    fn totals_line(&self, out: &mut String, timed: bool) {
        let mut total = CopyStats::default();
        for tag in &self.tags {
            total.add(&tag.stats);
        }
        let _ = write!(
            out,
            "{}: {} {}, {} unchanged, {} failed, {} deferred; {} {} ({}), {} {}, {} present",
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
            if self.planned { "to mount" } else { "mounted" },
            total.present,
        );
        let _ = match timed {
            true => writeln!(out, "; {:.1}s", self.duration.as_secs_f64()),
            false => writeln!(out),
        };
    }

    /// The run-summary event (JSON logs only; text logs have the totals line on stdout).
    /// `exit_code` is the process's (or, in the daemon, the run's).
    pub fn log_summary(&self, exit_code: i32) {
        if !json_logs() {
            return;
        }
        let mut total = CopyStats::default();
        for tag in &self.tags {
            total.add(&tag.stats);
        }
        let (tags, duration_ms) = (self.tags.len(), self.duration.as_millis() as u64);
        let (synced, unchanged) = (self.synced(), self.unchanged());
        let (failed, deferred, pruned) = (self.failed(), self.deferred(), self.pruned.len());
        if self.planned {
            tracing::info!(
                tags,
                would_sync = synced,
                unchanged,
                failed,
                deferred,
                would_prune = pruned,
                duration_ms,
                exit_code,
                "plan finished"
            );
        } else {
            tracing::info!(
                tags,
                synced,
                unchanged,
                failed,
                deferred,
                pruned,
                blobs_copied = total.copied,
                bytes_copied = total.copied_bytes,
                blobs_mounted = total.mounted,
                blobs_present = total.present,
                duration_ms,
                exit_code,
                "run finished"
            );
        }
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
