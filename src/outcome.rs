//! How each tag of a run ended, and what `prune` removed: the data the engine produces and
//! the report, the metrics and the state read. Plain data, no rendering.

use std::fmt;
use std::time::Duration;

use crate::config::SyncItem;
use crate::reference::{Digest, Reference, TargetImage, TargetReference};

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
    /// Which tag: where it comes from and where it lands.
    pub id: TagId,
    /// The `name` of the target it went to; `None` for a single unnamed `target:`.
    pub target_name: Option<String>,
    pub result: TagResult,
    pub stats: CopyStats,
    pub duration: Duration,
}

/// A configured tag's identity, the same from one run to the next. Its text
/// (`source -> target`) keys the state document; its two parts, as text, are the `source` and
/// `target` labels of the tag's series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagId {
    pub source: Source,
    /// Where it lands: repository and tag, or digest for a digest pin.
    pub target: TargetImage,
}

impl TagId {
    /// The identity of a configured (or filter-chosen) tag.
    pub fn of(item: &SyncItem) -> TagId {
        TagId {
            source: Source::Image(item.source.clone()),
            target: target_image(item),
        }
    }

    /// The `source` and `target` labels of the tag's series.
    pub fn labels(&self) -> (String, String) {
        (self.source.to_string(), self.target.to_string())
    }

    /// Every tag the filters of `source` would choose for `target_repository`, when its tag
    /// list could not be read.
    pub fn tag_filters(source: &Reference, target_repository: &str) -> TagId {
        TagId {
            source: Source::TagFilters(source.clone()),
            target: TargetImage {
                repository: target_repository.to_string(),
                reference: TargetReference::Selection,
            },
        }
    }
}

impl fmt::Display for TagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.source, self.target)
    }
}

/// Where a tag comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// An image upstream.
    Image(Reference),
    /// A repository whose tag list could not be read: stands for every tag its filters choose.
    TagFilters(Reference),
}

impl Source {
    /// The upstream registry (`docker.io`, `quay.io`, ...).
    pub fn registry(&self) -> &str {
        match self {
            Source::Image(r) | Source::TagFilters(r) => r.registry(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Image(r) => write!(f, "{r}"),
            Source::TagFilters(r) => write!(f, "{} (tag filters)", r.name()),
        }
    }
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
    target_image(item).to_string()
}

/// A stable identity of a configured tag across runs, as text: `source -> target` (see
/// [`TagId`]).
pub fn item_key(item: &SyncItem) -> String {
    TagId::of(item).to_string()
}
