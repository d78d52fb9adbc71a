//! The first step of each tag: what upstream holds (a HEAD, which costs no pull quota)
//! against what the target holds. The same digest means unchanged, and nothing more is asked.

use super::upstream::UpstreamRef;
use super::{Engine, SyncError, failed_or_deferred, rewrite};
use crate::config::SyncItem;
use crate::outcome::TagResult;
use crate::reference::Digest;

/// What the inspection of one tag found.
pub(super) enum Inspection {
    Done(TagResult),
    Changed(Change),
}

/// A tag whose target is missing or behind upstream.
pub(super) struct Change {
    pub(super) upstream: UpstreamRef,
    /// Upstream's digest now.
    pub(super) digest: Digest,
    /// What the target tag points at now, if anything.
    pub(super) current: Option<Digest>,
    pub(super) target_ref: String,
}

impl Engine {
    /// What upstream holds for one tag (a HEAD) against what the target holds.
    pub(super) async fn inspect(&self, item: &SyncItem) -> Inspection {
        match self.inspect_inner(item).await {
            Ok(inspection) => inspection,
            Err(e) => Inspection::Done(failed_or_deferred(e)),
        }
    }

    async fn inspect_inner(&self, item: &SyncItem) -> Result<Inspection, SyncError> {
        // An immutable tag's target is asked first: already mirrored, upstream is not asked
        // at all; missing, it is not asked again below.
        let mut target_missing = false;
        if item.options.immutable
            && let Some(tag) = &item.target_tag
        {
            match self
                .target
                .manifest_digest(&item.target_repository, tag)
                .await?
            {
                Some(digest) => return Ok(Inspection::Done(TagResult::Unchanged { digest })),
                None => target_missing = true,
            }
        }
        let upstream = self.upstream(item.source.registry()).await?;
        let repository = item.source.repository();
        let upstream_digest = async {
            match (item.source.digest(), item.source.tag()) {
                (Some(digest), _) => Ok(digest.clone()),
                (None, Some(tag)) => upstream.resolve(repository, tag).await,
                (None, None) => Err(SyncError::NoReference),
            }
        };
        // A target tag is asked at the same time as upstream (over a far link, the target's
        // answer is in by the time upstream's is); a digest reference only once upstream's
        // digest is known.
        let target_tag = async {
            match &item.target_tag {
                Some(_) if target_missing => Some(Ok(None)),
                Some(tag) => Some(
                    self.target
                        .manifest_digest(&item.target_repository, tag)
                        .await,
                ),
                None => None,
            }
        };
        let (digest, at_target) = tokio::join!(upstream_digest, target_tag);
        let digest = digest?;
        let target_ref = item
            .target_tag
            .clone()
            .unwrap_or_else(|| digest.to_string());
        let current = match at_target {
            Some(found) => found?,
            None => {
                self.target
                    .manifest_digest(&item.target_repository, &target_ref)
                    .await?
            }
        };
        if current.as_ref() == Some(&digest) {
            // A manifest fetched to resolve the tag is not needed: do not hold it for the run.
            drop(upstream.take_prefetched(repository, &digest));
            return Ok(Inspection::Done(TagResult::Unchanged { digest }));
        }
        if let (true, Some(current), Some(platforms)) =
            (item.options.single, &current, &item.platforms)
        {
            // The target holds a platform's manifest, upstream an index: compare the child.
            let counters = std::sync::Arc::new(super::Counters::default());
            let route = super::manifests::Route {
                upstream: &upstream,
                source_repo: repository,
                target_repo: &item.target_repository,
                counters: &counters,
                sparse: false,
            };
            if self.single_platform(route, &digest, platforms).await? == *current {
                return Ok(Inspection::Done(TagResult::Unchanged {
                    digest: current.clone(),
                }));
            }
        }
        let filter = item.platforms.as_deref();
        if let Some(current) = &current
            && (filter.is_some() || self.converts_to_oci())
        {
            // A rewritten manifest has its own digest; its annotations say what it was made from.
            let existing = self
                .target
                .get_manifest(&item.target_repository, &current.to_string())
                .await?;
            if existing.is_some_and(|m| rewrite::is_current(&m.bytes, &digest, filter)) {
                drop(upstream.take_prefetched(repository, &digest));
                return Ok(Inspection::Done(TagResult::Unchanged {
                    digest: current.clone(),
                }));
            }
        }
        Ok(Inspection::Changed(Change {
            upstream,
            digest,
            current,
            target_ref,
        }))
    }
}
