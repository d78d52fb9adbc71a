//! `check --connect`: proves, with the clients a sync builds, what a sync needs: pull access to
//! each configured upstream repository, push access to the target, a writable layout directory.
//! Nothing is written: an upload session is opened and cancelled, a probe file removed.

use std::collections::BTreeSet;
use std::path::Path;

use super::Engine;
use super::upstream::UpstreamRef;
use crate::destination::{DOCUMENT_REPOSITORY, Target};
use crate::reference::Reference;

/// One thing a sync needs, and whether it is there (`Err` says why not).
pub struct Probe {
    pub what: String,
    pub result: Result<(), String>,
}

impl Engine {
    /// Every probe, the target's first. Upstream repositories are probed with a HEAD (no pull
    /// quota spent) of one configured tag or digest, or, for an entry that chooses its tags
    /// from the tag list, with that list.
    pub async fn preflight(&self) -> Vec<Probe> {
        let mut probes = self.target_probes().await;
        let mut seen = BTreeSet::new();
        for item in &self.config.images {
            let source = &item.source;
            if !seen.insert((source.registry(), source.repository())) {
                continue;
            }
            let reference = match (source.digest(), source.tag()) {
                (Some(digest), _) => digest.to_string(),
                (None, Some(tag)) => tag.to_string(),
                (None, None) => continue,
            };
            let what = format!(
                "pull from {}/{} (HEAD {reference})",
                source.registry(),
                source.repository()
            );
            let result = self.pull_probe(source, &reference).await;
            probes.push(Probe { what, result });
        }
        for selection in &self.config.selections {
            let source = &selection.source;
            if !seen.insert((source.registry(), source.repository())) {
                continue;
            }
            let what = format!(
                "pull from {}/{} (list tags)",
                source.registry(),
                source.repository()
            );
            let result = self.list_probe(source).await;
            probes.push(Probe { what, result });
        }
        probes
    }

    /// Push access to the target: an upload opened and cancelled in each repository of
    /// [`Engine::push_probe_repositories`]; for a layout, a probe file written and removed.
    async fn target_probes(&self) -> Vec<Probe> {
        let client = match &self.target {
            Target::Registry(client) => client,
            Target::Layout(layout) => {
                return vec![Probe {
                    what: format!("write to OCI layout {}", layout.root().display()),
                    result: writable(layout.root()),
                }];
            }
        };
        let mut probes = Vec::new();
        for repository in self.push_probe_repositories() {
            let result =
                match client.start_upload(&repository).await {
                    Ok(location) => {
                        client.cancel_upload(&repository, &location).await;
                        Ok(())
                    }
                    Err(e) => Err(super::refusals::path_refused(&repository, &e)
                        .unwrap_or_else(|| e.to_string())),
                };
            probes.push(Probe {
                what: format!(
                    "push to target {}/{repository} (open and cancel an upload)",
                    client.host()
                ),
                result,
            });
        }
        probes
    }

    /// Pull access to `source`'s repository: a HEAD of `reference`, or, where the manifest is
    /// not found or HEAD not served, the tag in the tag list.
    async fn pull_probe(&self, source: &Reference, reference: &str) -> Result<(), String> {
        let upstream = self
            .upstream(source.registry())
            .await
            .map_err(|e| e.to_string())?;
        let repository = source.repository();
        match upstream.origin.head_manifest(repository, reference).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => tag_listed(&upstream, repository, source.tag(), "404").await,
            Err(e) if matches!(e.status(), Some(405 | 501)) => {
                let status = e.status().unwrap_or_default().to_string();
                tag_listed(&upstream, repository, source.tag(), &status).await
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Pull access to `source`'s repository, for an entry that chooses its tags: its tag list.
    async fn list_probe(&self, source: &Reference) -> Result<(), String> {
        let upstream = self
            .upstream(source.registry())
            .await
            .map_err(|e| e.to_string())?;
        upstream
            .origin
            .list_tags(source.repository())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// One target repository per top-level namespace (where registries such as Harbor grant
    /// push rights) and path depth (some registries allow exactly two components), and the
    /// repository of mirrorsync's own state.
    fn push_probe_repositories(&self) -> Vec<String> {
        let targets = self
            .config
            .images
            .iter()
            .map(|i| i.target_repository.as_str())
            .chain(
                self.config
                    .selections
                    .iter()
                    .map(|s| s.target_repository.as_str()),
            );
        let mut namespaces = BTreeSet::new();
        let mut repositories = Vec::new();
        for repository in targets.chain([DOCUMENT_REPOSITORY]) {
            let namespace = repository.split('/').next().unwrap_or(repository);
            let depth = repository.split('/').count();
            if namespaces.insert((namespace.to_string(), depth)) {
                repositories.push(repository.to_string());
            }
        }
        repositories
    }
}

/// After a manifest `HEAD` answered `status` (404, 405 or 501): some registries (Nexus, some
/// proxies) do not answer manifest `HEAD` although a sync's `GET` works. The tag list (no pull
/// spent) tells a missing tag from such a registry; a digest cannot be told without a pull.
async fn tag_listed(
    upstream: &UpstreamRef,
    repository: &str,
    tag: Option<&str>,
    status: &str,
) -> Result<(), String> {
    let Some(tag) = tag else {
        return Err(format!(
            "HEAD answered {status}: the digest is missing, or this registry does not answer manifest HEAD (telling which would spend a pull)"
        ));
    };
    match upstream.origin.list_tags(repository).await {
        Ok(tags) if tags.iter().any(|t| t == tag) => Ok(()),
        Ok(_) => Err(format!(
            "not found (HEAD answered {status}, and the tag list does not name {tag})"
        )),
        Err(e) if e.status() == Some(404) => Err(format!(
            "not found (HEAD answered {status}, and so did the repository's tag list)"
        )),
        Err(e) => Err(format!(
            "HEAD answered {status}, and listing the tags to tell why failed: {e}"
        )),
    }
}

/// The layout directory (or, when it does not exist yet, the nearest existing directory above
/// it, where a sync would create it) accepts a new file.
fn writable(root: &Path) -> Result<(), String> {
    let mut dir = root;
    while !dir.exists() {
        dir = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".mirrorsync-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
