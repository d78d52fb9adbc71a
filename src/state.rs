//! What a stateless run needs from earlier runs, kept where the next run finds it.
//!
//! A CronJob pod starts empty, yet sync lag must grow across failing runs and blobs seen in
//! earlier runs should be mountable. So each run reads and writes a small state document: per
//! tag, when it last matched upstream and since when it has been behind; and where blobs were
//! seen at the target. The target stores the document (`Target::{load,save}_document`): for a
//! registry an OCI artifact in the target itself (one tag per shard), for an OCI layout a file
//! in the layout directory. It is the only thing a run writes when nothing changed. This module
//! is the data only; it reads and writes nothing (the run does); when the document cannot be
//! read, the state fallback (`state_fallback`) stands in.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::outcome::{TagOutcome, TagResult};
use crate::reference::Digest;

/// A state document that cannot be read back, or written out.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The stored document is no state this version can read (damaged, or not ours).
    #[error("state document: {0}")]
    Corrupt(#[source] serde_json::Error),
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
}

/// Blob locations kept at most (oldest dropped first), so the document stays small.
const MAX_BLOBS: usize = 200_000;
/// The state document is refused above this size.
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;

/// Per-tag history.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TagState {
    /// Last time the target was seen to match upstream (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced: Option<f64>,
    /// Since when the target has not been confirmed in sync (unix seconds); none while in
    /// sync. Orders the next run's work; lag counts from `last_synced` when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<f64>,
}

/// The whole document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    #[serde(default)]
    pub version: u32,
    /// Keyed by a tag's [`crate::outcome::TagId`] as text (`source -> target`).
    #[serde(default)]
    pub tags: BTreeMap<String, TagState>,
    /// Blob digest -> a target repository that held it.
    #[serde(default)]
    pub blobs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<f64>,
    /// Tags mirrorsync wrote, per target repository: the only ones `prune` may remove.
    #[serde(default)]
    pub created: BTreeMap<String, std::collections::BTreeSet<String>>,
}

/// How stale the stored confirmation times may get before a run that changed nothing else
/// writes the document anyway. A stateless run after a restart sees lag at most this much too
/// high; a daemon running every few seconds writes a few times an hour instead of every run.
pub const REFRESH_SECONDS: f64 = 15.0 * 60.0;

/// What one tag looks like for metrics after a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TagStatus {
    pub in_sync: bool,
    pub last_synced: Option<f64>,
    pub lag_seconds: f64,
}

impl State {
    /// Folds a run's outcomes in; returns each tag's status for metrics, in outcome order.
    pub fn record(&mut self, outcomes: &[TagOutcome], now: f64) -> Vec<TagStatus> {
        let mut statuses = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            // Only tags: a digest pin is no tag to prune, and must never become a repository
            // named `repo@sha256`.
            if let TagResult::Synced { .. } = outcome.result
                && let Some(tag) = outcome.id.target.tag_name()
            {
                self.created
                    .entry(outcome.id.target.repository.clone())
                    .or_default()
                    .insert(tag.to_string());
            }
            let entry = self.tags.entry(outcome.id.to_string()).or_default();
            match outcome.result {
                TagResult::Unchanged { .. } | TagResult::Synced { .. } => {
                    entry.last_synced = Some(now);
                    entry.pending_since = None;
                }
                TagResult::Failed { .. } | TagResult::Deferred { .. } => {
                    entry.pending_since.get_or_insert(now);
                }
            }
            // Lag: how long since the target was last confirmed in sync, whichever side kept
            // this run from confirming it (for a tag never in sync: since it was first tried).
            let baseline = entry
                .pending_since
                .map(|since| entry.last_synced.unwrap_or(since));
            statuses.push(TagStatus {
                in_sync: entry.pending_since.is_none(),
                last_synced: entry.last_synced,
                lag_seconds: baseline.map_or(0.0, |since| (now - since).max(0.0)),
            });
        }
        // Tags no longer configured are forgotten.
        let keys: std::collections::HashSet<String> =
            outcomes.iter().map(|o| o.id.to_string()).collect();
        self.tags.retain(|k, _| keys.contains(k));
        statuses
    }

    /// Forgets `created` entries under names that are no repository: versions before 0.1 split
    /// `repo@sha256:<hex>` at its last colon and recorded a repository `repo@sha256`.
    fn drop_invalid_repositories(&mut self) {
        self.created
            .retain(|repository, _| crate::reference::validate_repository(repository).is_ok());
    }

    /// Whether `self` says nothing more than `stored` (what the target holds) beyond what the
    /// next run can recompute: the same tags, pending times, blob locations and created tags,
    /// and confirmation times no more than [`REFRESH_SECONDS`] newer. Then the write is skipped.
    pub fn same_as_stored(&self, stored: &State) -> bool {
        let close = |new: Option<f64>, old: Option<f64>| match (new, old) {
            (None, None) => true,
            (Some(n), Some(o)) => n >= o && n - o < REFRESH_SECONDS,
            _ => false,
        };
        self.version == stored.version
            && self.blobs == stored.blobs
            && self.created == stored.created
            && close(self.last_success, stored.last_success)
            && self.tags.len() == stored.tags.len()
            && self.tags.iter().all(|(key, tag)| {
                stored.tags.get(key).is_some_and(|old| {
                    tag.pending_since == old.pending_since
                        && close(tag.last_synced, old.last_synced)
                })
            })
    }

    /// Longest-pending tags first next run: key -> since when pending.
    pub fn priorities(&self) -> HashMap<String, i64> {
        self.tags
            .iter()
            .filter_map(|(k, t)| t.pending_since.map(|s| (k.clone(), s as i64)))
            .collect()
    }

    /// Blob locations to seed the engine with.
    pub fn blob_locations(&self) -> Vec<(Digest, String)> {
        self.blobs
            .iter()
            .filter_map(|(d, r)| Digest::parse(d).ok().map(|d| (d, r.clone())))
            .collect()
    }

    /// Adds blob locations seen in this run.
    pub fn remember_blobs(&mut self, seen: Vec<(Digest, String)>) {
        for (digest, repository) in seen {
            self.blobs.insert(digest.to_string(), repository);
        }
        while self.blobs.len() > MAX_BLOBS {
            let Some(first) = self.blobs.keys().next().cloned() else {
                break;
            };
            self.blobs.remove(&first);
        }
    }
}

/// The state's tag for a shard (`latest` unsharded).
pub fn state_tag(shard: Option<(usize, usize)>) -> String {
    match shard {
        Some((index, count)) => format!("shard-{index}-of-{count}"),
        None => "latest".to_string(),
    }
}

impl State {
    /// Parses a stored state document, dropping `created` entries under names that are no
    /// repository (earlier versions recorded a digest pin as a repository `repo@sha256`).
    pub fn from_json(bytes: &[u8]) -> Result<State, StateError> {
        let mut state: State = serde_json::from_slice(bytes).map_err(StateError::Corrupt)?;
        state.drop_invalid_repositories();
        Ok(state)
    }

    /// The document to store.
    pub fn to_json(&self) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(self).map_err(StateError::Encode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{CopyStats, Source, TagId};
    use crate::reference::{Reference, TargetImage};

    /// The tag `up/app:<tag>` mirrored to `repo:<tag>`.
    fn id(tag: &str) -> TagId {
        TagId {
            source: Source::Image(Reference::parse(&format!("up/app:{tag}")).unwrap()),
            target: TargetImage::tag("repo", tag),
        }
    }

    fn key(tag: &str) -> String {
        id(tag).to_string()
    }

    fn outcome(tag: &str, failed: bool) -> TagOutcome {
        let digest = Digest::from_sha256_bytes(&[7; 32]);
        TagOutcome {
            id: id(tag),
            target_name: None,
            result: if failed {
                TagResult::Failed {
                    error: "x".into(),
                    cause: Default::default(),
                }
            } else {
                TagResult::Unchanged { digest }
            },
            stats: CopyStats::default(),
            duration: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn lag_grows_across_failing_runs_and_resets_after_a_good_one() {
        let mut state = State::default();
        assert_eq!(
            state.record(&[outcome("a", false)], 100.0)[0].lag_seconds,
            0.0
        );
        // Lag counts from the last confirmation (100), not from the first failed run.
        let first = state.record(&[outcome("a", true)], 200.0);
        assert_eq!(first[0].lag_seconds, 100.0);
        assert!(!first[0].in_sync);
        assert_eq!(
            state.record(&[outcome("a", true)], 300.0)[0].lag_seconds,
            200.0
        );
        let third = state.record(&[outcome("a", true)], 450.0);
        assert_eq!(third[0].lag_seconds, 350.0);
        assert_eq!(third[0].last_synced, Some(100.0));
        let good = state.record(&[outcome("a", false)], 500.0);
        assert_eq!(
            good[0],
            TagStatus {
                in_sync: true,
                last_synced: Some(500.0),
                lag_seconds: 0.0
            }
        );
        assert!(state.priorities().is_empty());
    }

    #[test]
    fn digest_pins_are_never_recorded_as_created_tags() {
        let digest = Digest::from_sha256_bytes(&[9; 32]);
        let synced = |target| TagOutcome {
            id: TagId {
                source: Source::Image(Reference::parse("up/app").unwrap()),
                target,
            },
            target_name: None,
            result: TagResult::Synced {
                digest: digest.clone(),
                previous: None,
            },
            stats: CopyStats::default(),
            duration: std::time::Duration::ZERO,
        };
        let mut state = State::default();
        state.record(
            &[
                synced(TargetImage {
                    repository: "team/app".into(),
                    reference: crate::reference::TargetReference::Digest(digest.clone()),
                }),
                synced(TargetImage::tag("team/app", "1.0")),
            ],
            1.0,
        );
        assert_eq!(state.created.len(), 1);
        assert_eq!(
            state.created["team/app"].iter().collect::<Vec<_>>(),
            vec!["1.0"]
        );
        // A state written by the old splitting code is cleaned when read.
        state
            .created
            .entry("team/app@sha256".into())
            .or_default()
            .insert(digest.encoded().to_string());
        state.drop_invalid_repositories();
        assert_eq!(state.created.keys().collect::<Vec<_>>(), vec!["team/app"]);
    }

    #[test]
    fn a_run_that_only_moves_timestamps_a_little_is_not_written() {
        let mut stored = State::default();
        stored.record(&[outcome("a", false), outcome("b", false)], 1000.0);
        stored.last_success = Some(1000.0);
        let mut next = stored.clone();
        next.record(&[outcome("a", false), outcome("b", false)], 1005.0);
        next.last_success = Some(1005.0);
        assert!(next.same_as_stored(&stored));
        // Stale beyond the refresh period: written.
        let mut late = stored.clone();
        late.record(
            &[outcome("a", false), outcome("b", false)],
            1000.0 + REFRESH_SECONDS,
        );
        assert!(!late.same_as_stored(&stored));
        // A failure, a new blob location, a tag gone: written.
        let mut failed = stored.clone();
        failed.record(&[outcome("a", true), outcome("b", false)], 1005.0);
        assert!(!failed.same_as_stored(&stored));
        let mut blobs = next.clone();
        blobs.remember_blobs(vec![(Digest::from_sha256_bytes(&[3; 32]), "x/y".into())]);
        assert!(!blobs.same_as_stored(&stored));
        let mut fewer = stored.clone();
        fewer.record(&[outcome("a", false)], 1005.0);
        assert!(!fewer.same_as_stored(&stored));
    }

    #[test]
    fn a_tag_never_in_sync_lags_since_it_was_first_tried() {
        let mut state = State::default();
        assert_eq!(
            state.record(&[outcome("n", true)], 10.0)[0].lag_seconds,
            0.0
        );
        assert_eq!(
            state.record(&[outcome("n", true)], 25.0)[0].lag_seconds,
            15.0
        );
    }

    #[test]
    fn survives_a_round_trip_and_forgets_removed_tags() {
        let mut state = State::default();
        state.record(&[outcome("a", true), outcome("b", false)], 10.0);
        state.remember_blobs(vec![(
            Digest::from_sha256_bytes(&[1; 32]),
            "library/x".into(),
        )]);
        let text = serde_json::to_vec(&state).unwrap();
        let back: State = serde_json::from_slice(&text).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.priorities().get(&key("a")), Some(&10));
        assert_eq!(back.blob_locations().len(), 1);
        state.record(&[outcome("b", false)], 20.0);
        assert!(!state.tags.contains_key(&key("a")));
    }
}
