//! The run report a pipeline reads: `sync --once --report FILE` and `plan --report FILE` write
//! one JSON document with the run's start, end, exit code and totals, and one entry per tag and
//! target (see the README's "Run report" for the schema).
//!
//! The file is checked before the run starts ([`ReportFile::open`]: a path that cannot be
//! written is a usage error, exit 2, before any network traffic) and written once at the end,
//! atomically ([`crate::atomic_file`]): a reader sees the previous report or this one, never a
//! part. It is written whatever the end: every tag done, some failed, the run cut short by a
//! signal or `--max-duration` (tags never started are `deferred` with their reason), or the
//! run unable to start (then with the error and no tags). Its `exitCode` is the process's. If
//! the write still fails at the end, the error names the file and the run exits 1 (a 2 stays 2).
//!
//! This module only reads [`RunReport`] and [`TagOutcome`]; the text summary is
//! [`crate::report`]'s.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::TargetKind;
use crate::exit;
use crate::outcome::{CopyStats, TagOutcome, TagResult};
use crate::report::RunReport;

/// The `schemaVersion` of the document. A field added keeps it; a field renamed, removed or
/// given another meaning raises it.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the `--report` path cannot be written: a usage error, found before the run starts.
#[derive(Debug, thiserror::Error)]
#[error("--report {}: {problem}", path.display())]
pub struct ReportPathError {
    path: PathBuf,
    problem: PathProblem,
}

#[derive(Debug, thiserror::Error)]
enum PathProblem {
    #[error("not a file name")]
    NotAFileName,
    #[error("is a directory")]
    Directory,
    #[error("cannot create a file in {dir}: {source}")]
    CannotCreate {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which command wrote the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportCommand {
    Sync,
    Plan,
}

/// The whole document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDocument {
    pub schema_version: u32,
    pub command: ReportCommand,
    /// RFC 3339, UTC, milliseconds.
    pub started_at: String,
    /// Unix seconds.
    pub started_at_unix: i64,
    pub ended_at: String,
    pub ended_at_unix: i64,
    pub duration_ms: u64,
    /// The process's exit code.
    pub exit_code: i32,
    /// Why the run could not start (then `tags` is empty); `null` when it ran.
    pub error: Option<String>,
    pub totals: Totals,
    pub tags: Vec<TagEntry>,
}

/// Tags per result and the blob work of the whole run.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub tags: usize,
    pub unchanged: usize,
    pub new: usize,
    pub updated: usize,
    pub failed: usize,
    pub deferred: usize,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_present: u64,
    pub bytes_copied: u64,
}

/// How one tag ended at one target (with `plan`: what a sync would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryResult {
    Unchanged,
    New,
    Updated,
    Failed,
    Deferred,
}

/// One tag at one target.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEntry {
    pub source: String,
    /// The image reference where it lands: `host/repository:tag`, or
    /// `oci:<layout root>/<repository>:<tag>` for an OCI layout target.
    pub target: String,
    /// The target's `name`; `null` for a single unnamed `target:`.
    pub target_name: Option<String>,
    /// What the target tag pointed at before the run; `null` when absent or not known.
    pub old_digest: Option<String>,
    /// What it points at after the run (with `plan`: would point at); `null` when not synced.
    pub new_digest: Option<String>,
    pub result: EntryResult,
    /// The error of a failed tag, or why a tag was deferred.
    pub reason: Option<String>,
    /// A failed tag's cause: `other`, `tag_immutable`, `name_refused`, `by_digest_refused`.
    pub failure_cause: Option<&'static str>,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_present: u64,
    pub bytes_copied: u64,
    pub duration_ms: u64,
}

impl TagEntry {
    /// The entry of one tag; `location` is where its target lives (see [`target_location`]).
    pub fn from_outcome(tag: &TagOutcome, location: &str) -> TagEntry {
        let (mut old, mut new, mut reason, mut cause) = (None, None, None, None);
        let result = match &tag.result {
            TagResult::Unchanged { digest } => {
                old = Some(digest.to_string());
                new = old.clone();
                EntryResult::Unchanged
            }
            TagResult::Synced { digest, previous } => {
                new = Some(digest.to_string());
                old = previous.as_ref().map(|d| d.to_string());
                if old.is_some() {
                    EntryResult::Updated
                } else {
                    EntryResult::New
                }
            }
            TagResult::Failed { error, cause: c } => {
                reason = Some(error.clone());
                cause = Some(c.as_str());
                EntryResult::Failed
            }
            TagResult::Deferred { reason: why } => {
                reason = Some(why.clone());
                EntryResult::Deferred
            }
        };
        let s = &tag.stats;
        TagEntry {
            source: tag.id.source.to_string(),
            target: format!("{location}{}", tag.id.target),
            target_name: tag.target_name.clone(),
            old_digest: old,
            new_digest: new,
            result,
            reason,
            failure_cause: cause,
            blobs_copied: s.copied,
            blobs_mounted: s.mounted,
            blobs_present: s.present,
            bytes_copied: s.copied_bytes,
            duration_ms: millis(tag.duration),
        }
    }
}

impl Totals {
    fn of(entries: &[TagEntry], outcomes: &[TagOutcome]) -> Totals {
        let mut stats = CopyStats::default();
        for tag in outcomes {
            stats.add(&tag.stats);
        }
        let count = |r: EntryResult| entries.iter().filter(|e| e.result == r).count();
        Totals {
            tags: entries.len(),
            unchanged: count(EntryResult::Unchanged),
            new: count(EntryResult::New),
            updated: count(EntryResult::Updated),
            failed: count(EntryResult::Failed),
            deferred: count(EntryResult::Deferred),
            blobs_copied: stats.copied,
            blobs_mounted: stats.mounted,
            blobs_present: stats.present,
            bytes_copied: stats.copied_bytes,
        }
    }
}

/// What goes before a [`crate::reference::TargetImage`] to make it a whole reference at a
/// target: `host/` for a registry, `oci:<root>/` for an OCI layout directory.
pub fn target_location(kind: &TargetKind) -> String {
    match kind {
        TargetKind::Registry(endpoint) => format!("{}/", endpoint.host),
        TargetKind::Path(root) => format!("oci:{}/", root.display()),
    }
}

/// Where each target of `config` lives, by target name (`None`: a single unnamed target).
pub fn locations(config: &crate::config::Config) -> impl Fn(Option<&str>) -> String + use<> {
    let known: Vec<(Option<String>, String)> = config
        .targets
        .iter()
        .map(|p| (p.target.name.clone(), target_location(&p.target.kind)))
        .collect();
    move |name| {
        known
            .iter()
            .find(|(n, _)| n.as_deref() == name)
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }
}

/// The report file of one run (a no-op without `--report`).
#[derive(Debug)]
pub struct ReportFile {
    path: Option<PathBuf>,
    command: ReportCommand,
    started: SystemTime,
}

impl ReportFile {
    /// Starts the clock of the run, and checks that `path` can be written (a file can be
    /// created in its directory, and it is not a directory), so a bad path stops the run
    /// before it does anything.
    pub fn open(
        path: Option<&Path>,
        command: ReportCommand,
    ) -> Result<ReportFile, ReportPathError> {
        if let Some(path) = path {
            probe(path).map_err(|problem| ReportPathError {
                path: path.to_path_buf(),
                problem,
            })?;
        }
        Ok(ReportFile {
            path: path.map(Path::to_path_buf),
            command,
            started: SystemTime::now(),
        })
    }

    /// A report for a run that started at `started` (the caller's clock), unchecked.
    pub fn started_at(path: Option<&Path>, command: ReportCommand, started: SystemTime) -> Self {
        ReportFile {
            path: path.map(Path::to_path_buf),
            command,
            started,
        }
    }

    /// Writes the report of a run that started, and returns the exit code of the process:
    /// `exit_code`, or [`exit::FAILED`] when the report could not be written. `location` says where the
    /// target with a given `name` lives (see [`target_location`]).
    pub async fn write_run(
        &self,
        report: &RunReport,
        exit_code: i32,
        location: &dyn Fn(Option<&str>) -> String,
    ) -> i32 {
        let tags: Vec<TagEntry> = report
            .tags
            .iter()
            .map(|t| TagEntry::from_outcome(t, &location(t.target_name.as_deref())))
            .collect();
        let totals = Totals::of(&tags, &report.tags);
        self.write(exit_code, None, totals, tags).await
    }

    /// Writes the report of a run that could not start: the error, no tags.
    pub async fn write_error(&self, error: &str, exit_code: i32) -> i32 {
        self.write(
            exit_code,
            Some(error.to_string()),
            Totals::default(),
            Vec::new(),
        )
        .await
    }

    /// [`ReportFile::write_error`] without an async runtime (before one is built).
    pub fn write_error_blocking(&self, error: &str, exit_code: i32) -> i32 {
        let Some(path) = &self.path else {
            return exit_code;
        };
        let doc = self.document(
            exit_code,
            Some(error.to_string()),
            Totals::default(),
            vec![],
        );
        finish(
            path,
            encode(&doc).and_then(|b| crate::atomic_file::write(path, &b)),
            exit_code,
        )
    }

    async fn write(
        &self,
        exit_code: i32,
        error: Option<String>,
        totals: Totals,
        tags: Vec<TagEntry>,
    ) -> i32 {
        let Some(path) = &self.path else {
            return exit_code;
        };
        let doc = self.document(exit_code, error, totals, tags);
        let written = match encode(&doc) {
            Ok(bytes) => crate::atomic_file::write_async(path, bytes).await,
            Err(e) => Err(e),
        };
        finish(path, written, exit_code)
    }

    fn document(
        &self,
        exit_code: i32,
        error: Option<String>,
        totals: Totals,
        tags: Vec<TagEntry>,
    ) -> RunDocument {
        let ended = SystemTime::now().max(self.started);
        let took = ended.duration_since(self.started).unwrap_or_default();
        RunDocument {
            schema_version: SCHEMA_VERSION,
            command: self.command,
            started_at: rfc3339(self.started),
            started_at_unix: unix_seconds(self.started),
            ended_at: rfc3339(ended),
            ended_at_unix: unix_seconds(ended),
            duration_ms: millis(took),
            exit_code,
            error,
            totals,
            tags,
        }
    }
}

/// The exit code once the write is done: a report that could not be written is an error
/// naming the file, and the run fails (unless it is already a failure or a usage error).
fn finish(path: &Path, written: std::io::Result<()>, exit_code: i32) -> i32 {
    match written {
        Ok(()) => exit_code,
        Err(e) => {
            crate::report::fatal(format!(
                "could not write the run report {}: {e}",
                path.display()
            ));
            if exit_code == exit::USAGE {
                exit_code
            } else {
                exit::FAILED
            }
        }
    }
}

fn encode(doc: &RunDocument) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(doc).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Whether a report could be written at `path`: not a directory, and a new file can be
/// created (and removed) next to it.
fn probe(path: &Path) -> Result<(), PathProblem> {
    if path.file_name().is_none() {
        return Err(PathProblem::NotAFileName);
    }
    if path.is_dir() {
        return Err(PathProblem::Directory);
    }
    let tmp = crate::atomic_file::temp_path(path);
    let dir = tmp.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new(".")).display().to_string();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|source| PathProblem::CannotCreate { dir, source })?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn unix_seconds(t: SystemTime) -> i64 {
    chrono::DateTime::<chrono::Utc>::from(t).timestamp()
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{FailureCause, Source, TagId};
    use crate::reference::{Digest, Reference, TargetImage};
    use std::time::Duration;

    fn tag(name: &str, result: TagResult, copied: u64) -> TagOutcome {
        TagOutcome {
            id: TagId {
                source: Source::Image(
                    Reference::parse(&format!("docker.io/library/{name}:1")).unwrap(),
                ),
                target: TargetImage::tag(&format!("mirror/library/{name}"), "1"),
            },
            target_name: None,
            result,
            stats: CopyStats {
                copied,
                copied_bytes: copied * 100,
                mounted: 1,
                present: 2,
            },
            duration: Duration::from_millis(1500),
        }
    }

    fn digest(n: u8) -> Digest {
        Digest::from_sha256_bytes(&[n; 32])
    }

    fn report() -> RunReport {
        RunReport {
            tags: vec![
                tag("a", TagResult::Unchanged { digest: digest(1) }, 0),
                tag(
                    "b",
                    TagResult::Synced {
                        digest: digest(2),
                        previous: None,
                    },
                    3,
                ),
                tag(
                    "c",
                    TagResult::Synced {
                        digest: digest(3),
                        previous: Some(digest(4)),
                    },
                    1,
                ),
                tag(
                    "d",
                    TagResult::Failed {
                        error: "not found upstream: d".into(),
                        cause: FailureCause::TagImmutable,
                    },
                    0,
                ),
                tag(
                    "e",
                    TagResult::Deferred {
                        reason: "stopped before the copy started".into(),
                    },
                    0,
                ),
            ],
            duration: Duration::from_secs(2),
            planned: false,
            pruned: Vec::new(),
        }
    }

    async fn written(report: &RunReport, code: i32) -> (i32, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let file = ReportFile::open(Some(&path), ReportCommand::Sync).unwrap();
        let code = file
            .write_run(report, code, &|_| "registry.example:5000/".into())
            .await;
        let doc = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        (code, doc)
    }

    #[tokio::test]
    async fn each_result_has_its_digests_reason_and_counts() {
        let (code, doc) = written(&report(), 1).await;
        assert_eq!(code, 1);
        assert_eq!(doc["schemaVersion"], 1);
        assert_eq!(doc["command"], "sync");
        assert_eq!(doc["exitCode"], 1);
        assert_eq!(doc["error"], serde_json::Value::Null);
        let tags = doc["tags"].as_array().unwrap();
        let results: Vec<&str> = tags.iter().map(|t| t["result"].as_str().unwrap()).collect();
        assert_eq!(
            results,
            ["unchanged", "new", "updated", "failed", "deferred"]
        );
        assert_eq!(tags[0]["oldDigest"], tags[0]["newDigest"]);
        assert_eq!(tags[1]["oldDigest"], serde_json::Value::Null);
        assert_eq!(tags[2]["oldDigest"], digest(4).to_string());
        assert_eq!(tags[2]["newDigest"], digest(3).to_string());
        assert_eq!(tags[3]["reason"], "not found upstream: d");
        assert_eq!(tags[3]["failureCause"], "tag_immutable");
        assert_eq!(tags[3]["newDigest"], serde_json::Value::Null);
        assert_eq!(tags[4]["reason"], "stopped before the copy started");
        assert_eq!(tags[4]["failureCause"], serde_json::Value::Null);
        assert_eq!(
            tags[1]["target"],
            "registry.example:5000/mirror/library/b:1"
        );
        assert_eq!(tags[1]["targetName"], serde_json::Value::Null);
        assert_eq!(tags[1]["bytesCopied"], 300);
        assert_eq!(tags[1]["durationMs"], 1500);
        let totals = &doc["totals"];
        for (key, n) in [
            ("tags", 5),
            ("unchanged", 1),
            ("new", 1),
            ("updated", 1),
            ("failed", 1),
            ("deferred", 1),
            ("blobsCopied", 4),
            ("blobsMounted", 5),
            ("blobsPresent", 10),
            ("bytesCopied", 400),
        ] {
            assert_eq!(totals[key], n, "{key}");
        }
    }

    #[tokio::test]
    async fn times_are_rfc3339_utc_and_unix_seconds_of_the_same_instant() {
        let (_, doc) = written(&report(), 0).await;
        for (text, unix) in [("startedAt", "startedAtUnix"), ("endedAt", "endedAtUnix")] {
            let at = chrono::DateTime::parse_from_rfc3339(doc[text].as_str().unwrap()).unwrap();
            assert!(doc[text].as_str().unwrap().ends_with('Z'));
            assert_eq!(at.timestamp(), doc[unix].as_i64().unwrap());
        }
        assert!(doc["endedAtUnix"].as_i64() >= doc["startedAtUnix"].as_i64());
    }

    #[test]
    fn a_layout_target_is_an_oci_reference() {
        let kind = TargetKind::Path(PathBuf::from("/srv/mirror"));
        let entry = TagEntry::from_outcome(
            &tag("a", TagResult::Unchanged { digest: digest(1) }, 0),
            &target_location(&kind),
        );
        assert_eq!(entry.target, "oci:/srv/mirror/mirror/library/a:1");
    }

    #[tokio::test]
    async fn a_run_that_cannot_start_has_the_error_and_no_tags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let file = ReportFile::open(Some(&path), ReportCommand::Plan).unwrap();
        assert_eq!(
            file.write_error("cannot read the docker config", 1).await,
            1
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["command"], "plan");
        assert_eq!(doc["error"], "cannot read the docker config");
        assert_eq!(doc["tags"], serde_json::json!([]));
        assert_eq!(doc["totals"]["tags"], 0);
    }

    #[test]
    fn paths_that_cannot_be_written_are_refused_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = ReportFile::open(Some(dir.path()), ReportCommand::Sync)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        let missing = dir.path().join("absent").join("r.json");
        let err = ReportFile::open(Some(&missing), ReportCommand::Sync)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent"), "{err}");
        // The probe leaves nothing behind.
        let ok = dir.path().join("r.json");
        ReportFile::open(Some(&ok), ReportCommand::Sync).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_report_that_cannot_be_written_at_the_end_makes_the_run_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("r.json");
        let file = ReportFile::started_at(Some(&path), ReportCommand::Sync, SystemTime::now());
        assert_eq!(file.write_run(&report(), 0, &|_| String::new()).await, 1);
        assert_eq!(file.write_run(&report(), 3, &|_| String::new()).await, 1);
        assert_eq!(file.write_error("config", 2).await, 2);
        // Without --report nothing is written and the code is the run's.
        let none = ReportFile::open(None, ReportCommand::Sync).unwrap();
        assert_eq!(none.write_run(&report(), 3, &|_| String::new()).await, 3);
    }
}
