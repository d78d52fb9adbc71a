//! `prune: true`: tags an entry no longer selects are removed from its target repository, but
//! only tags mirrorsync itself created (recorded in the run state), and never a manifest that a
//! configured entry still needs. In a registry a tag is removed by deleting its manifest, which
//! removes every tag pointing at it and breaks every index listing it; so a manifest stays when
//! a kept tag, an alias, a digest pin or another entry of the same repository resolves to it,
//! or when an index they resolve to lists it. A repository whose needs cannot be known this
//! run (an unreadable upstream tag list, a target that does not answer) is not pruned at all.

use std::collections::HashSet;

use crate::config::Config;
use crate::destination::{Target, TargetError};
use crate::manifest::Parsed;
use crate::outcome::{Pruned, TagOutcome, TagResult};
use crate::reference::{Digest, TargetReference};
use crate::state::State;

/// Target repositories whose entries ask for pruning.
pub fn repositories(config: &Config) -> HashSet<String> {
    let fixed = config
        .images
        .iter()
        .filter(|i| i.options.prune)
        .map(|i| i.target_repository.clone());
    let selected = config
        .selections
        .iter()
        .filter(|s| s.options.prune)
        .map(|s| s.target_repository.clone());
    fixed.chain(selected).collect()
}

/// Finds (and unless `dry_run`, removes) the tags to prune; updates `state.created`.
pub async fn prune(
    target: &Target,
    repositories: &HashSet<String>,
    outcomes: &[TagOutcome],
    state: &mut State,
    dry_run: bool,
) -> Vec<Pruned> {
    let mut pruned = Vec::new();
    let mut repos: Vec<&String> = repositories.iter().collect();
    repos.sort();
    for repository in repos {
        let entries: Vec<&TagOutcome> = outcomes
            .iter()
            .filter(|o| &o.id.target.repository == repository)
            .collect();
        let Some(candidates) = candidates(repository, &entries, state) else {
            continue;
        };
        // Only a registry deletes manifests; a layout drops the tag alone.
        let needed = if matches!(target, Target::Registry(_)) {
            match needed_manifests(target, repository, &entries).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(repository = %repository, error = %e, "not pruned: cannot tell which manifests the configured entries need");
                    continue;
                }
            }
        } else {
            HashSet::new()
        };
        let repo = Repository {
            target,
            name: repository,
            needed: &needed,
            dry_run,
        };
        for tag in candidates {
            match repo.prune_tag(tag, state).await {
                Ok(done) => pruned.extend(done),
                // The same answer awaits every other tag at this target.
                Err(DeletesRefused) => return pruned,
            }
        }
    }
    pruned
}

/// The target refuses to delete manifests ([`TargetError::refuses_deletes`]).
struct DeletesRefused;

/// The tags mirrorsync created in `repository` that no entry selects any more; `None` when
/// there are none, or when which tags are kept is unknown.
fn candidates(repository: &str, entries: &[&TagOutcome], state: &State) -> Option<Vec<String>> {
    if entries
        .iter()
        .any(|o| o.id.target.reference == TargetReference::Selection)
    {
        tracing::warn!(repository = %repository, "not pruned: a tag filter's tag list could not be read, so which tags it keeps is unknown");
        return None;
    }
    let kept_tags: HashSet<&str> = entries
        .iter()
        .filter_map(|o| o.id.target.tag_name())
        .collect();
    let candidates: Vec<String> = state
        .created
        .get(repository)
        .map(|tags| {
            tags.iter()
                .filter(|t| !kept_tags.contains(t.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    (!candidates.is_empty()).then_some(candidates)
}

/// One target repository being pruned.
struct Repository<'a> {
    target: &'a Target,
    name: &'a str,
    /// Manifests a configured entry still needs: never deleted.
    needed: &'a HashSet<Digest>,
    dry_run: bool,
}

impl Repository<'_> {
    /// Removes one candidate tag (unless its manifest is needed); what was pruned, if any, or
    /// [`DeletesRefused`] when the target deletes nothing (said once, for the rest of the run).
    async fn prune_tag(
        &self,
        tag: String,
        state: &mut State,
    ) -> Result<Option<Pruned>, DeletesRefused> {
        let (target, repository, dry_run) = (self.target, self.name, self.dry_run);
        let digest = match target.manifest_digest(repository, &tag).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                forget(state, repository, &tag, dry_run);
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(repository = %repository, tag = %tag, error = %e, "cannot check a tag to prune");
                return Ok(None);
            }
        };
        if self.needed.contains(&digest) {
            tracing::warn!(repository = %repository, tag = %tag, %digest, "not pruned: a configured entry still needs its manifest (same digest, or listed by an index it needs)");
            return Ok(None);
        }
        if dry_run {
            tracing::info!(repository = %repository, tag = %tag, %digest, "would prune a tag no longer selected");
        } else {
            match target.remove_tag(repository, &tag, &digest).await {
                Ok(_) => {}
                Err(e) if e.refuses_deletes() => {
                    tracing::warn!(repository = %repository, tag = %tag, error = %e, "not pruned: the target does not delete manifests, so tags no longer selected stay; allow deletes there (distribution: `storage.delete.enabled: true`) or drop `prune: true`; not trying again this run");
                    return Err(DeletesRefused);
                }
                Err(e) => {
                    tracing::warn!(repository = %repository, tag = %tag, error = %e, "prune failed");
                    return Ok(None);
                }
            }
            forget(state, repository, &tag, false);
            tracing::info!(repository = %repository, tag = %tag, %digest, "pruned a tag no longer selected");
        }
        Ok(Some(Pruned {
            target_name: None,
            repository: repository.to_string(),
            tag,
            digest: digest.to_string(),
        }))
    }
}

/// Every manifest in `repository` that the configured entries resolve to at the target, and
/// every manifest an index among them lists (at any depth).
async fn needed_manifests(
    target: &Target,
    repository: &str,
    entries: &[&TagOutcome],
) -> Result<HashSet<Digest>, TargetError> {
    let mut roots = Vec::new();
    for entry in entries {
        if let TargetReference::Digest(pin) = &entry.id.target.reference {
            roots.push(pin.clone());
        }
        match &entry.result {
            TagResult::Unchanged { digest } | TagResult::Synced { digest, .. } => {
                roots.push(digest.clone())
            }
            // Not confirmed this run: whatever the target holds for it now is still needed.
            TagResult::Failed { .. } | TagResult::Deferred { .. } => {
                if let TargetReference::Tag(tag) = &entry.id.target.reference
                    && let Some(d) = target.manifest_digest(repository, tag).await?
                {
                    roots.push(d);
                }
            }
        }
    }
    let mut needed = HashSet::new();
    while let Some(digest) = roots.pop() {
        if !needed.insert(digest.clone()) {
            continue;
        }
        let Some(manifest) = target.get_manifest(repository, &digest.to_string()).await? else {
            continue;
        };
        if let Ok(Parsed::Index { manifests }) =
            crate::manifest::parse(&manifest.media_type, &manifest.bytes)
        {
            roots.extend(manifests.into_iter().map(|m| m.digest));
        }
    }
    Ok(needed)
}

fn forget(state: &mut State, repository: &str, tag: &str, dry_run: bool) {
    if dry_run {
        return;
    }
    if let Some(tags) = state.created.get_mut(repository) {
        tags.remove(tag);
    }
}
