//! `prune: true`: tags an entry no longer selects are removed from its target repository, but
//! only tags mirrorsync itself created (recorded in the run state), and never one whose digest a
//! kept tag shares: deleting a manifest in a registry removes every tag that points at it.

use std::collections::HashSet;

use crate::config::Config;
use crate::outcome::{Pruned, TagOutcome, TagResult};
use crate::state::State;
use crate::target::Target;

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
        let mut kept_tags = HashSet::new();
        let mut kept_digests = HashSet::new();
        for outcome in outcomes {
            let Some((repo, tag)) = outcome.target.rsplit_once(':') else {
                continue;
            };
            if repo != repository {
                continue;
            }
            kept_tags.insert(tag.to_string());
            if let TagResult::Unchanged { digest } | TagResult::Synced { digest, .. } =
                &outcome.result
            {
                kept_digests.insert(digest.to_string());
            }
        }
        let created: Vec<String> = state
            .created
            .get(repository)
            .map(|tags| {
                tags.iter()
                    .filter(|t| !kept_tags.contains(*t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for tag in created {
            let digest = match target.manifest_digest(repository, &tag).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    forget(state, repository, &tag, dry_run);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(repository = %repository, tag = %tag, error = %e, "cannot check a tag to prune");
                    continue;
                }
            };
            if kept_digests.contains(&digest.to_string()) && matches!(target, Target::Registry(_)) {
                tracing::warn!(repository = %repository, tag = %tag, %digest, "not pruned: a kept tag points at the same manifest");
                continue;
            }
            if !dry_run {
                match target.remove_tag(repository, &tag, &digest).await {
                    Ok(_) => forget(state, repository, &tag, false),
                    Err(e) => {
                        tracing::warn!(repository = %repository, tag = %tag, error = %e, "prune failed");
                        continue;
                    }
                }
            }
            tracing::info!(repository = %repository, tag = %tag, %digest, dry_run, "pruned a tag no longer selected");
            pruned.push(Pruned {
                repository: repository.clone(),
                tag,
                digest: digest.to_string(),
            });
        }
    }
    pruned
}

fn forget(state: &mut State, repository: &str, tag: &str, dry_run: bool) {
    if dry_run {
        return;
    }
    if let Some(tags) = state.created.get_mut(repository) {
        tags.remove(tag);
    }
}
