//! How each tag of a run ended, and what `prune` removed: the data the engine produces and
//! the report, the metrics and the state read. Plain data, no rendering.

use std::time::Duration;

use crate::config::SyncItem;
use crate::reference::{Digest, TargetImage, TargetReference};

/// Blob work done for one tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Blobs streamed from upstream.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Blobs made available from another target repository.
    pub mounted: u64,
    /// Blobs already in the target repository.
    pub present: u64,
}

impl CopyStats {
    /// Adds another tag's work to this total.
    pub fn add(&mut self, other: &CopyStats) {
        self.copied += other.copied;
        self.copied_bytes += other.copied_bytes;
        self.mounted += other.mounted;
        self.present += other.present;
    }
}

/// How one tag ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagResult {
    /// The target already held the upstream digest.
    Unchanged { digest: Digest },
    /// The target now holds the upstream digest (with `plan`: would hold). `previous` is what the
    /// target tag pointed at before (`None`: the tag is new).
    Synced {
        digest: Digest,
        previous: Option<Digest>,
    },
    Failed {
        error: String,
        /// Why, where a user can act on it apart from other failures.
        cause: FailureCause,
    },
    /// Left for a later run (pull-quota reserve reached, stop requested); first in line then.
    Deferred { reason: String },
}

/// What kind of failure a tag met, so drift a user chose (an immutable tag upstream moved) is
/// counted apart from breakage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureCause {
    /// Anything not listed below.
    #[default]
    Other,
    /// Upstream moved a tag the target keeps immutable.
    TagImmutable,
    /// The target refused the repository path (too many components, a name it does not allow).
    NameRefused,
    /// The target refuses manifests pushed by digest, so an index cannot be stored.
    ByDigestRefused,
}

impl FailureCause {
    /// Every cause.
    pub const ALL: [FailureCause; 4] = [
        FailureCause::Other,
        FailureCause::TagImmutable,
        FailureCause::NameRefused,
        FailureCause::ByDigestRefused,
    ];

    /// The `reason` label value, and the `reason` field of a failed tag's log event.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Other => "other",
            FailureCause::TagImmutable => "tag_immutable",
            FailureCause::NameRefused => "name_refused",
            FailureCause::ByDigestRefused => "by_digest_refused",
        }
    }
}

/// One tag's line in the summary.
#[derive(Debug, Clone)]
pub struct TagOutcome {
    pub source: String,
    /// Where it lands: repository and tag, or digest for a digest pin.
    pub target: TargetImage,
    /// The `name` of the target it went to; `None` for a single unnamed `target:`.
    pub target_name: Option<String>,
    pub result: TagResult,
    pub stats: CopyStats,
    pub duration: Duration,
    /// Stable identity across runs (`source -> target`).
    pub key: String,
}

/// One tag pruned (or, in `plan`, to prune).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The target's `name` in a run over several targets.
    pub target_name: Option<String>,
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

/// Where an item lands, whole.
pub fn target_image(item: &SyncItem) -> TargetImage {
    let reference = match (&item.target_tag, item.source.digest()) {
        (Some(tag), _) => TargetReference::Tag(tag.clone()),
        (None, Some(d)) => TargetReference::Digest(d.clone()),
        (None, None) => TargetReference::Selection,
    };
    TargetImage {
        repository: item.target_repository.clone(),
        reference,
    }
}

/// Where an item lands, as text: `repo:tag` or `repo@digest`.
pub fn target_ref(item: &SyncItem) -> String {
    match (&item.target_tag, item.source.digest()) {
        (Some(tag), _) => format!("{}:{tag}", item.target_repository),
        (None, Some(d)) => format!("{}@{d}", item.target_repository),
        (None, None) => item.target_repository.clone(),
    }
}

/// A stable identity of a configured tag across runs: `source -> target`.
pub fn item_key(item: &SyncItem) -> String {
    format!("{} -> {}", item.source, target_ref(item))
}
