//! `check --connect`: proves, with the clients a sync builds, what a sync needs: pull access to
//! each configured upstream repository, push access to the target, a writable layout directory.
//! Nothing is written: an upload session is opened and cancelled, a probe file removed.

use std::collections::BTreeSet;
use std::path::Path;

use super::Engine;
use crate::target::{DOCUMENT_REPOSITORY, Target};

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
        let mut probes = Vec::new();
        match &self.target {
            Target::Registry(client) => {
                for repository in self.push_probe_repositories() {
                    let result = match client.start_upload(&repository).await {
                        Ok(location) => {
                            client.cancel_upload(&repository, &location).await;
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    probes.push(Probe {
                        what: format!(
                            "push to target {}/{repository} (open and cancel an upload)",
                            client.host()
                        ),
                        result,
                    });
                }
            }
            Target::Layout(layout) => probes.push(Probe {
                what: format!("write to OCI layout {}", layout.root().display()),
                result: writable(layout.root()),
            }),
        }
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
            let result = async {
                let upstream = self
                    .upstream(source.registry())
                    .await
                    .map_err(|e| e.to_string())?;
                match upstream
                    .origin
                    .head_manifest(source.repository(), &reference)
                    .await
                {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not found (404)".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            .await;
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
            let result = async {
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
            .await;
            probes.push(Probe { what, result });
        }
        probes
    }

    /// One target repository per top-level namespace (where registries such as Harbor grant
    /// push rights), and the repository of mirrorsync's own state.
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
            if namespaces.insert(namespace.to_string()) {
                repositories.push(repository.to_string());
            }
        }
        repositories
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
