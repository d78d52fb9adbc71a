//! What a run covers beyond the fixed tags: the tags each `tags:` filter selects from the
//! repository's tag list (fetched once per repository per run), and the cosign-style
//! signature, attestation and SBOM tags (`sha256-<hex>.sig`, ...) of the tags being mirrored.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::upstream::UpstreamRef;
use super::{Counters, Engine, RunControl, SyncError, target_ref};
use crate::config::SyncItem;
use crate::destination::{Target, TargetError};
use crate::manifest::OCI_INDEX;
use crate::outcome::{CopyStats, TagId, TagOutcome, TagResult};
use crate::reference::{Digest, Reference};
use crate::registry::{self, FetchedManifest, RegistryClient};

/// Levels of referrers followed: signatures of attestations of an image are three.
const REFERRER_DEPTH: usize = 3;

/// The run's tags so far, which [`Engine::sync_referrers`] extends.
pub(super) struct ReferrerWork<'a> {
    pub items: &'a mut Vec<SyncItem>,
    pub counters: &'a mut Vec<Arc<Counters>>,
    pub synced: &'a mut Vec<(Option<Digest>, TagOutcome)>,
}

impl Engine {
    /// The configured fixed tags plus the tags each `tags:` filter selects now. A selection
    /// whose tag list cannot be read becomes a failed outcome of its own.
    pub(super) async fn expand_selections(&self) -> (Vec<SyncItem>, Vec<TagOutcome>) {
        let mut items = self.config.images.clone();
        let mut failures = Vec::new();
        let mut taken: std::collections::HashSet<String> = items.iter().map(target_ref).collect();
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
                        id: TagId::tag_filters(&selection.source, &selection.target_repository),
                        result: TagResult::Failed {
                            error: e.to_string(),
                            cause: Default::default(),
                        },
                        stats: CopyStats::default(),
                        duration: Duration::ZERO,
                        target_name: self.config.target.name.clone(),
                    };
                    crate::report::tag_finished(&outcome, self.mode == super::Mode::Plan);
                    failures.push(outcome);
                    continue;
                }
            };
            let chosen = crate::tags::select(&tags, &selection.filters);
            tracing::info!(repository = %selection.source.name(), listed = tags.len(), chosen = chosen.len(), "tag filters applied");
            for tag in chosen {
                // The registry client drops tags outside the grammar; never build on one.
                let Ok(source) = selection.source.with_tag(&tag) else {
                    continue;
                };
                let mut options = selection.options.clone();
                options.immutable = selection
                    .immutable
                    .iter()
                    .any(|p| crate::tags::glob_match(p, &tag));
                let item = SyncItem {
                    source,
                    target_repository: selection.target_repository.clone(),
                    target_tag: Some(tag),
                    platforms: selection.platforms.clone(),
                    location: selection.location.clone(),
                    options,
                };
                // A tag listed exactly elsewhere, or chosen by two filters, is synced once.
                if taken.insert(target_ref(&item)) {
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
            let mut lists = self.hub.tag_lists.lock().unwrap_or_else(|p| p.into_inner());
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

    /// For entries with `referrers: true`: the referrers of each mirrored digest, from the
    /// OCI referrers API where upstream has it (copied by digest), plus cosign's
    /// `sha256-<hex>.sig|.att|.sbom` tags; where upstream has no referrers API, its
    /// `sha256-<hex>` fallback tag instead. Also the fallback indexes to keep at the target.
    /// Only `items[from..]` are looked at; the others are known already.
    async fn referrer_items(
        &self,
        items: &[SyncItem],
        found: &[Option<Digest>],
        from: usize,
    ) -> (Vec<SyncItem>, Vec<Fallback>) {
        let mut referrers = Referrers {
            extra: Vec::new(),
            fallbacks: Vec::new(),
            taken: items.iter().map(|i| (target_ref(i), None)).collect(),
        };
        for (item, digest) in items.iter().zip(found).skip(from) {
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
            let repository = item.source.repository();
            let listed = match upstream.origin.list_referrers(repository, &digest).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(repository = %item.source.name(), %digest, error = %e, "cannot list referrers; using the fallback tag");
                    None
                }
            };
            if let Some(entries) = &listed {
                referrers.add_listed(item, &digest, entries);
            }
            let tags = match self.tag_list(&upstream, repository).await {
                Ok(tags) => tags,
                Err(e) => {
                    tracing::warn!(repository = %item.source.name(), error = %e, "cannot list tags to find signatures");
                    continue;
                }
            };
            referrers.add_tagged(item, signature_tags(&tags, &digest, listed.is_some()));
        }
        (referrers.extra, referrers.fallbacks)
    }

    /// Syncs the referrers of what was found (appended to `items`, `counters` and `synced`),
    /// then the referrers of those, up to [`REFERRER_DEPTH`] levels. Returns the fallback
    /// indexes to keep, their entries counted from the first referrer item.
    pub(super) async fn sync_referrers(
        self: &Arc<Self>,
        work: &mut ReferrerWork<'_>,
        priority: &HashMap<String, i64>,
        control: &RunControl,
    ) -> Vec<Fallback> {
        let first = work.items.len();
        let mut from = 0;
        let mut fallbacks = Vec::new();
        for _ in 0..REFERRER_DEPTH {
            let found: Vec<Option<Digest>> = work.synced.iter().map(|(d, _)| d.clone()).collect();
            let (referrers, mut level) = self.referrer_items(work.items, &found, from).await;
            let offset = work.items.len() - first;
            for entry in level.iter_mut().flat_map(|f| f.entries.iter_mut()) {
                entry.1 += offset;
            }
            fallbacks.extend(level);
            if referrers.is_empty() {
                break;
            }
            from = work.items.len();
            self.progress
                .tags_total
                .fetch_add(referrers.len(), Ordering::Relaxed);
            let more: Vec<Arc<Counters>> = referrers
                .iter()
                .map(|_| Arc::new(Counters::default()))
                .collect();
            let done = self.sync_all(&referrers, &more, priority, control).await;
            work.synced.extend(done);
            work.items.extend(referrers);
            work.counters.extend(more);
        }
        fallbacks
    }

    /// Keeps the `sha256-<hex>` fallback index of each subject at a target without the
    /// referrers API, as the distribution spec describes: the referrers copied are added to
    /// what the index lists already, nothing is dropped. Done when a referrer was copied this
    /// run or the index is missing; `first` is where the referrer items start in `finished`.
    /// A failure is reported on the referrers of that subject.
    pub(super) async fn keep_fallbacks(
        &self,
        fallbacks: &[Fallback],
        first: usize,
        finished: &mut [TagOutcome],
    ) {
        // A layout has no referrers API: its fallback tag is how readers find referrers.
        let client = match &self.target {
            Target::Registry(client) => Some(client.as_ref()),
            Target::Layout(_) => None,
        };
        let result =
            |finished: &[TagOutcome], i: usize| finished.get(first + i).map(|o| o.result.clone());
        for fallback in fallbacks {
            let done: Vec<&(serde_json::Value, usize)> = fallback
                .entries
                .iter()
                .filter(|(_, i)| {
                    matches!(
                        result(finished, *i),
                        Some(TagResult::Synced { .. } | TagResult::Unchanged { .. })
                    )
                })
                .collect();
            let synced = done
                .iter()
                .any(|(_, i)| matches!(result(finished, *i), Some(TagResult::Synced { .. })));
            if done.is_empty() {
                continue;
            }
            if let Err(error) = self.keep_fallback(client, fallback, &done, synced).await {
                tracing::warn!(repository = %fallback.repository, subject = %fallback.subject, %error, "cannot update the referrers fallback tag");
                for (_, i) in &fallback.entries {
                    if let Some(outcome) = finished.get_mut(first + i) {
                        outcome.result = TagResult::Failed {
                            error: format!(
                                "referrers fallback tag of {}: {error}",
                                fallback.subject
                            ),
                            cause: Default::default(),
                        };
                    }
                }
            }
        }
    }

    async fn keep_fallback(
        &self,
        client: Option<&RegistryClient>,
        fallback: &Fallback,
        done: &[&(serde_json::Value, usize)],
        synced: bool,
    ) -> Result<(), SyncError> {
        let repository = &fallback.repository;
        let subject = &fallback.subject;
        let tag = format!("{}-{}", subject.algorithm(), subject.encoded());
        let present = self.target.manifest_digest(repository, &tag).await?;
        if present.is_some() && !synced {
            return Ok(());
        }
        if let Some(client) = client
            && client
                .list_referrers(repository, subject)
                .await
                .map_err(TargetError::from)?
                .is_some()
        {
            return Ok(());
        }
        let mut entries = match present {
            Some(_) => match self.target.get_manifest(repository, &tag).await? {
                Some(existing) => registry::index_entries(&existing.bytes).ok_or_else(|| {
                    SyncError::NotAnIndex {
                        repository: repository.to_string(),
                        tag: tag.to_string(),
                    }
                })?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        let before = entries.len();
        for (entry, _) in done {
            let digest = registry::entry_digest(entry);
            if !entries.iter().any(|e| registry::entry_digest(e) == digest) {
                entries.push(entry.clone());
            }
        }
        if present.is_some() && entries.len() == before {
            return Ok(());
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        });
        let bytes = bytes::Bytes::from(serde_json::to_vec(&index).unwrap_or_default());
        let manifest = FetchedManifest {
            digest: crate::manifest::digest_of(&bytes),
            bytes,
            media_type: OCI_INDEX.to_string(),
        };
        self.target
            .put_manifest(repository, &tag, &manifest)
            .await?;
        tracing::info!(repository = %repository, tag = %tag, referrers = entries.len(), "referrers fallback tag updated");
        Ok(())
    }
}

/// Options of a referrer's own item: its referrers are looked for too (cosign signs
/// attestations, so a signature's subject may itself be a referrer).
fn referrer_options() -> crate::config::ItemOptions {
    crate::config::ItemOptions {
        referrers: true,
        ..Default::default()
    }
}

/// The referrer items found so far, each target reference once.
struct Referrers {
    extra: Vec<SyncItem>,
    fallbacks: Vec<Fallback>,
    /// Every target reference taken, with its index in `extra` when it is a referrer copied
    /// by digest.
    taken: HashMap<String, Option<usize>>,
}

impl Referrers {
    /// The referrers upstream's referrers API listed for `digest`: each copied by digest, and
    /// kept in a fallback index of `item`'s repository.
    fn add_listed(&mut self, item: &SyncItem, digest: &Digest, entries: &[serde_json::Value]) {
        let repository = item.source.repository();
        let mut fallback = Fallback {
            repository: item.target_repository.clone(),
            subject: digest.clone(),
            entries: Vec::new(),
        };
        for entry in entries {
            let Some(referrer) = crate::registry::entry_digest(entry) else {
                continue;
            };
            let Ok(source) = Reference::new(
                item.source.registry(),
                repository,
                None,
                Some(referrer.clone()),
            ) else {
                continue;
            };
            let item = SyncItem {
                source,
                target_repository: item.target_repository.clone(),
                target_tag: None,
                platforms: None,
                location: item.location.clone(),
                options: referrer_options(),
            };
            let index = *self.taken.entry(target_ref(&item)).or_insert_with(|| {
                self.extra.push(item);
                Some(self.extra.len() - 1)
            });
            if let Some(index) = index {
                fallback.entries.push((entry.clone(), index));
            }
        }
        let known = self
            .fallbacks
            .iter()
            .any(|f| f.repository == fallback.repository && f.subject == fallback.subject);
        if !fallback.entries.is_empty() && !known {
            self.fallbacks.push(fallback);
        }
    }

    /// The signature tags found for `item`, copied by tag.
    fn add_tagged(&mut self, item: &SyncItem, tags: Vec<String>) {
        for tag in tags {
            let Ok(source) = item.source.with_tag(&tag) else {
                continue;
            };
            let referrer = SyncItem {
                source,
                target_repository: item.target_repository.clone(),
                target_tag: Some(tag),
                platforms: None,
                location: item.location.clone(),
                options: referrer_options(),
            };
            if let Entry::Vacant(slot) = self.taken.entry(target_ref(&referrer)) {
                slot.insert(None);
                self.extra.push(referrer);
            }
        }
    }
}

/// Cosign's `sha256-<hex>.sig|.att|.sbom` tags of `digest` among upstream's `tags`, and,
/// without a referrers API (`with_api` false), the `sha256-<hex>` fallback tag.
fn signature_tags(tags: &[String], digest: &Digest, with_api: bool) -> Vec<String> {
    let base = format!("{}-{}", digest.algorithm(), digest.encoded());
    // With the referrers API, the fallback tag is ours to keep, not upstream's to copy.
    let suffixes: &[&str] = if with_api {
        &[".sig", ".att", ".sbom"]
    } else {
        &["", ".sig", ".att", ".sbom"]
    };
    suffixes
        .iter()
        .map(|suffix| format!("{base}{suffix}"))
        .filter(|tag| tags.contains(tag))
        .collect()
}

/// The referrers of one mirrored digest, for its fallback tag at the target.
pub(super) struct Fallback {
    repository: String,
    subject: Digest,
    /// Each referrer's descriptor as upstream listed it, and its item (counted from the first
    /// referrer item).
    entries: Vec<(serde_json::Value, usize)>,
}
