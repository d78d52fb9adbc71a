//! What a run covers beyond the fixed tags: the tags each `tags:` filter selects from the
//! repository's tag list (fetched once per repository per run), and the cosign-style
//! signature, attestation and SBOM tags (`sha256-<hex>.sig`, ...) of the tags being mirrored.

use std::sync::Arc;
use std::time::Duration;

use super::upstream::UpstreamRef;
use super::{Engine, SyncError, target_name};
use crate::config::SyncItem;
use crate::outcome::{CopyStats, TagOutcome, TagResult};
use crate::reference::Digest;
use crate::reference::{TargetImage, TargetReference};

impl Engine {
    /// The configured fixed tags plus the tags each `tags:` filter selects now. A selection
    /// whose tag list cannot be read becomes a failed outcome of its own.
    pub(super) async fn expand_selections(&self) -> (Vec<SyncItem>, Vec<TagOutcome>) {
        let mut items = self.config.images.clone();
        let mut failures = Vec::new();
        let mut taken: std::collections::HashSet<String> = items.iter().map(target_name).collect();
        for selection in &self.config.selections {
            let listed = async {
                let upstream = self.upstream(selection.source.registry()).await?;
                self.tag_list(&upstream, selection.source.repository())
                    .await
            }
            .await;
            let tags = match listed {
                Ok(tags) => tags,
                Err(e) => {
                    let outcome = TagOutcome {
                        source: format!("{} (tag filters)", selection.source.name()),
                        target: TargetImage {
                            repository: selection.target_repository.clone(),
                            reference: TargetReference::Selection,
                        },
                        result: TagResult::Failed {
                            error: e.to_string(),
                        },
                        stats: CopyStats::default(),
                        duration: Duration::ZERO,
                        key: format!(
                            "{} (tag filters) -> {}",
                            selection.source.name(),
                            selection.target_repository
                        ),
                    };
                    crate::report::tag_finished(&outcome, self.mode == super::Mode::Plan);
                    failures.push(outcome);
                    continue;
                }
            };
            let chosen = crate::tags::select(&tags, &selection.filters);
            tracing::info!(repository = %selection.source.name(), listed = tags.len(), chosen = chosen.len(), "tag filters applied");
            for tag in chosen {
                let mut options = selection.options.clone();
                options.immutable = selection
                    .immutable
                    .iter()
                    .any(|p| crate::tags::glob_match(p, &tag));
                let item = SyncItem {
                    source: selection.source.with_tag(&tag),
                    target_repository: selection.target_repository.clone(),
                    target_tag: Some(tag),
                    platforms: selection.platforms.clone(),
                    location: selection.location.clone(),
                    options,
                };
                // A tag listed exactly elsewhere, or chosen by two filters, is synced once.
                if taken.insert(target_name(&item)) {
                    items.push(item);
                }
            }
        }
        (items, failures)
    }

    /// A repository's tags, listed once per run.
    async fn tag_list(
        &self,
        upstream: &UpstreamRef,
        repository: &str,
    ) -> Result<Arc<Vec<String>>, SyncError> {
        upstream.reachable().await?;
        let key = format!("{}/{repository}", upstream.host);
        let cell = {
            let mut lists = self.tag_lists.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(lists.entry(key).or_default())
        };
        cell.get_or_try_init(|| async {
            upstream
                .origin
                .list_tags(repository)
                .await
                .map(Arc::new)
                .map_err(|e| upstream.error(e))
        })
        .await
        .cloned()
    }

    /// For entries with `referrers: true`: cosign's `sha256-<hex>.sig|.att|.sbom` tags and the
    /// OCI referrers fallback tag `sha256-<hex>` of each mirrored digest that exist upstream.
    pub(super) async fn referrer_items(
        &self,
        items: &[SyncItem],
        found: &[Option<Digest>],
    ) -> Vec<SyncItem> {
        let mut extra = Vec::new();
        let mut taken: std::collections::HashSet<String> = items.iter().map(target_name).collect();
        for (item, digest) in items.iter().zip(found) {
            // Signatures name upstream's digest: useless where the mirror rewrites manifests.
            if !item.options.referrers || item.platforms.is_some() {
                continue;
            }
            let Some(digest) = digest.clone() else {
                continue;
            };
            let Ok(upstream) = self.upstream(item.source.registry()).await else {
                continue;
            };
            let tags = match self.tag_list(&upstream, item.source.repository()).await {
                Ok(tags) => tags,
                Err(e) => {
                    tracing::warn!(repository = %item.source.name(), error = %e, "cannot list tags to find signatures");
                    continue;
                }
            };
            let base = format!("{}-{}", digest.algorithm(), digest.encoded());
            for suffix in ["", ".sig", ".att", ".sbom"] {
                let tag = format!("{base}{suffix}");
                if !tags.contains(&tag) {
                    continue;
                }
                let referrer = SyncItem {
                    source: item.source.with_tag(&tag),
                    target_repository: item.target_repository.clone(),
                    target_tag: Some(tag),
                    platforms: None,
                    location: item.location.clone(),
                    options: crate::config::ItemOptions::default(),
                };
                if taken.insert(target_name(&referrer)) {
                    extra.push(referrer);
                }
            }
        }
        extra
    }
}
